"""AdamW parameter groups and the warm-up + cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch
from train_standins import ToyVL

from medvl3d.config import OptimConfig
from medvl3d.train.optim import build_optimizer, build_scheduler, param_groups, warmup_cosine


def test_schedule_shape():
    total, warm = 100, 10
    f = [warmup_cosine(s, warm, total) for s in range(total)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # linear ramp
    assert all(b > a for a, b in zip(f[:9], f[1:10]))
    assert all(b <= a for a, b in zip(f[10:], f[11:]))  # monotone decay afterwards
    # cosine midpoint: half-way through the decay the multiplier is 0.5
    assert warmup_cosine(warm + (total - warm) // 2, warm, total) == pytest.approx(0.5)
    assert warmup_cosine(total, warm, total, min_ratio=0.1) == pytest.approx(0.1)
    assert warmup_cosine(warm + 30, warm, total) == pytest.approx(0.5 * (1 + math.cos(math.pi * 30 / 90)))


def test_scheduler_steps_per_optimizer_step():
    model = ToyVL()
    opt = build_optimizer(model, OptimConfig(lr=1.0, warmup_steps=4))
    sched = build_scheduler(opt, OptimConfig(lr=1.0, warmup_steps=4), total_steps=20)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:5] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    assert lrs[5] < 1.0


def test_no_decay_on_norms_biases_embeddings_and_logit_scale():
    model = ToyVL()
    groups = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in groups[0]["params"]}
    undecayed = {names[id(p)] for p in groups[1]["params"]}
    assert decayed == {"conv.weight", "proj.weight"}
    assert {"logit_scale", "tok.weight", "norm.weight", "conv.bias"} <= undecayed
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    frozen = ToyVL()
    for p in frozen.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(frozen, OptimConfig())
    assert isinstance(build_optimizer(model, OptimConfig()), torch.optim.AdamW)
