"""2-process `torchrun` on CPU (gloo): loss and gradients equal one process on the combined batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medvl3d import models
from medvl3d.config import config_from_dict
from medvl3d.train import tasks
from medvl3d.train.data import collate_samples
from medvl3d.train.loop import forward_backward, train

HERE = Path(__file__).resolve().parent

# float32 reductions in a different order (per-rank partial sums, gloo all-reduce) give equal results up to
# float error: losses within 1e-5 relative, gradients within 1e-4 of each tensor's largest |gradient|
# (measured: <= 2.1e-6). A real bug (e.g. summed instead of averaged gradients) is off by 50% or more.
RTOL, GRAD_TOL = 1e-5, 1e-4


def test_two_process_torchrun_matches_single_process(tmp_path):
    from ddp_worker import run_cfg
    from train_standins import PairDataset

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, str(HERE / "ddp_worker.py"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = torch.load(tmp_path / "step.pt")
    assert got["world"] == 2

    torch.manual_seed(0)
    model = models.create_model("test_vit_clip")
    task = tasks.build_task("clip", model)
    ds = PairDataset(4)
    ref = forward_backward(task, [collate_samples([ds[i] for i in range(4)])], torch.device("cpu"))
    # the CLIP loss over all 4 pairs, all-gathered
    assert got["loss"] == pytest.approx(float(ref["loss"]), rel=RTOL)
    ref_grads = {n: p.grad for n, p in task.named_parameters() if p.grad is not None}
    assert set(got["grads"]) == set(ref_grads) and "model.visual.patch_embed.weight" in ref_grads
    for n, g in ref_grads.items():
        err = float((got["grads"][n] - g).abs().max())
        assert err <= GRAD_TOL * float(g.abs().max()) + 1e-8, (n, err)

    # the whole loop: 3 optimiser steps, 2 ranks x batch 2 vs one process x batch 4
    torch.manual_seed(0)
    model = models.create_model("test_vit_clip")
    cfg = config_from_dict(run_cfg(tmp_path / "single_run", 4))
    single = train(cfg, model=model, task=tasks.build_task("clip", model), dataset=PairDataset(8))
    from safetensors.torch import load_file

    a = load_file(str(next((tmp_path / "ddp_run" / "checkpoints").glob("step-*")) / "model.safetensors"))
    b = load_file(str(next((single / "checkpoints").glob("step-*")) / "model.safetensors"))
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_non_finite_loss_on_one_rank_stops_every_rank(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, str(HERE / "ddp_worker.py"), str(tmp_path), "nan"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,  # a rank left waiting in a collective would hang until the gloo timeout (30 min)
    )
    assert proc.returncode != 0
    assert "rank 0: FloatingPointError" in proc.stdout and "rank 1: FloatingPointError" in proc.stdout


def test_configured_timeout_reaches_init_process_group(tmp_path, monkeypatch):
    """``train.dist_timeout_min`` bounds every DDP wait: it is the process group's timeout."""
    from datetime import timedelta

    import medvl3d.train.distributed as distributed

    seen: list[dict] = []

    def init_process_group(**kwargs):
        seen.append(kwargs)
        raise RuntimeError("stop after the spy")

    monkeypatch.setattr(distributed.dist, "init_process_group", init_process_group)
    for key, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    cfg = config_from_dict(
        {"train": {"device": "cpu", "dist_timeout_min": 7.5, "progress": False}, "output": str(tmp_path)}
    )
    with pytest.raises(RuntimeError, match="stop after the spy"):
        train(cfg)
    assert seen == [{"backend": "gloo", "timeout": timedelta(minutes=7.5)}]
