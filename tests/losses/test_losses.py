"""Losses against hand-computed values, and the distributed gather against a single process."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from medvl3d.losses import (
    barlow_twins_loss,
    clip_loss,
    gather_with_grad,
    modality_gap,
    multi_positive_nce,
    siglip_loss,
)

EYE = torch.eye(2)


def test_clip_loss_hand_computed():
    # logits = scale * I: each row's CE is log(1 + e^-s); both directions are equal.
    for s in (1.0, 3.0):
        loss = clip_loss(EYE, EYE, s)
        assert loss.item() == pytest.approx(math.log(1 + math.exp(-s)), rel=1e-6)


def test_clip_loss_asymmetric_hand_computed():
    img = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    txt = EYE
    # image->text rows: [1, 0] (label 0), [0.6, 0.8] (label 1); text->image rows: [1, 0.6], [0, 0.8].
    i2t = math.log(1 + math.exp(-1)) + (-0.8 + math.log(math.exp(0.6) + math.exp(0.8)))
    t2i = (-1 + math.log(math.exp(1) + math.exp(0.6))) + (-0.8 + math.log(1 + math.exp(0.8)))
    assert clip_loss(img, txt, 1.0).item() == pytest.approx((i2t / 2 + t2i / 2) / 2, rel=1e-6)


def test_clip_loss_rejects_unpaired():
    with pytest.raises(ValueError, match="paired"):
        clip_loss(torch.zeros(3, 2), torch.zeros(2, 2), 1.0)


def test_siglip_loss_hand_computed():
    # logits = s * I + b; positives on the diagonal, negatives elsewhere; sum / B.
    s, b = 2.0, -1.0
    pos = -F.logsigmoid(torch.tensor(s + b)).item()
    neg = -F.logsigmoid(torch.tensor(-b)).item()
    assert siglip_loss(EYE, EYE, s, b).item() == pytest.approx((2 * pos + 2 * neg) / 2, rel=1e-6)


def test_barlow_twins_hand_computed():
    z = torch.tensor([[1.0, 2.0], [-1.0, -2.0]])  # both dims perfectly correlated across the batch
    # C = [[1, 1], [1, 1]]: on-diagonal term 0, off-diagonal sum 2.
    assert barlow_twins_loss(z, z, lambd=0.5).item() == pytest.approx(1.0, abs=1e-4)
    # Anti-correlated views: C = -1 on the diagonal -> (1 - (-1))^2 per dim.
    assert barlow_twins_loss(z, -z, lambd=0.0).item() == pytest.approx(8.0, abs=1e-3)
    decorrelated = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert barlow_twins_loss(decorrelated, decorrelated).item() == pytest.approx(0.0, abs=1e-4)
    with pytest.raises(ValueError, match="at least 2"):
        barlow_twins_loss(z[:1], z[:1])


def test_multi_positive_nce_hand_computed():
    logits = torch.tensor([[0.0, 0.0, math.log(2.0)], [5.0, 1.0, 2.0]])
    mask = torch.tensor([[1, 0, 1], [0, 0, 0]])  # second row has no positive: ignored
    expected = -(math.log(0.25) + math.log(0.5)) / 2
    assert multi_positive_nce(logits, mask).item() == pytest.approx(expected, rel=1e-6)
    none = multi_positive_nce(logits.requires_grad_(), torch.zeros(2, 3))
    assert none.item() == 0.0 and none.requires_grad


def test_modality_gap():
    assert modality_gap(torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 3.0]])) == pytest.approx(math.sqrt(2))
    x = torch.randn(8, 4)
    assert modality_gap(x, 5 * x) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(
        ValueError, match=r"modality gap expects \[N, E\] and \[M, E\], got \(8, 4\) and \(4,\)"
    ):
        modality_gap(x, x[0])
    with pytest.raises(ValueError, match="modality gap needs at least one image"):
        modality_gap(x[:0], x)


def test_gather_identity_when_not_distributed():
    x = torch.randn(3, 2)
    assert gather_with_grad(x) is x


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, img: torch.Tensor, txt: torch.Tensor, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        n = img.shape[0] // world
        gathered = gather_with_grad(torch.arange(2.0).reshape(1, 2) + 10 * rank)
        li = img[rank * n : (rank + 1) * n].clone().requires_grad_()
        lt = txt[rank * n : (rank + 1) * n].clone().requires_grad_()
        losses = {
            "clip": clip_loss(li, lt, 3.0),
            "siglip": siglip_loss(li, lt, 3.0, -1.0),
            "barlow": barlow_twins_loss(li, lt),
        }
        result = {"gathered": gathered.detach()}
        for name, loss in losses.items():
            gi, gt = torch.autograd.grad(loss, (li, lt))
            result[name] = (loss.detach(), gi, gt)
        torch.save(result, f"{out}/rank{rank}.pt")
        # Leave together: a rank tearing gloo down while its peer still talks aborts (SIGABRT) at random.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_gather_with_grad_two_process_gloo(tmp_path, monkeypatch):
    """Per-rank losses on local shards, after DDP's gradient averaging (sum over ranks / world), give the
    gradient of the single-process loss on the combined batch; the mean of the rank losses is that loss."""
    world = 2
    # Spawned workers import this module by name (`tests.losses.test_losses`): make the repo importable.
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))
    torch.manual_seed(0)
    img = F.normalize(torch.randn(8, 6), dim=-1)
    txt = F.normalize(torch.randn(8, 6), dim=-1)
    mp.start_processes(
        _worker, args=(world, _free_port(), img, txt, str(tmp_path)), nprocs=world, start_method="spawn"
    )
    res = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    expected_gather = torch.tensor([[0.0, 1.0], [10.0, 11.0]])
    for r in range(world):
        assert torch.equal(res[r]["gathered"], expected_gather)
    full = {"clip": lambda i, t: clip_loss(i, t, 3.0), "siglip": lambda i, t: siglip_loss(i, t, 3.0, -1.0)}
    full["barlow"] = barlow_twins_loss
    n = img.shape[0] // world
    for name, fn in full.items():
        fi, ft = img.clone().requires_grad_(), txt.clone().requires_grad_()
        loss = fn(fi, ft)
        gi, gt = torch.autograd.grad(loss, (fi, ft))
        # Rank losses: local means (clip, siglip) average to the full loss; Barlow is global on every rank.
        mean_rank_loss = sum(res[r][name][0] for r in range(world)) / world
        assert mean_rank_loss.item() == pytest.approx(loss.item(), rel=1e-5), name
        for r in range(world):
            sl = slice(r * n, (r + 1) * n)
            # DDP averages parameter gradients over ranks: the local shard's gradient / world.
            torch.testing.assert_close(res[r][name][1] / world, gi[sl], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(res[r][name][2] / world, gt[sl], rtol=1e-5, atol=1e-6)


def test_present_class_dice_scores_a_right_answer_as_right_whatever_absent_classes_hold():
    from monai.losses import DiceCELoss, DiceLoss

    from medvl3d.losses.dice import PresentClassDiceCELoss

    n_classes = 16
    target = torch.zeros(2, 1, 8, 8, 8)
    target[0, 0, 2:5, 2:5, 2:5] = 7  # one small lesion class of 16 in the batch
    right = torch.zeros(2, n_classes, 8, 8, 8)
    right[:, 0] = 12.0
    right[0, 7, 2:5, 2:5, 2:5] = 24.0  # every voxel right; absent classes at probability ~6e-6 a voxel
    ce = F.cross_entropy(right, target[:, 0].long())
    every = DiceCELoss(to_onehot_y=True, softmax=True)(right, target)
    assert every - ce > 0.85  # MONAI's mean over every class: 14 absent classes score Dice ~0 each
    assert PresentClassDiceCELoss()(right, target) - ce < 1e-3
    # A prediction that misses the lesion costs the whole Dice of the one class present, its batch Dice.
    missed = right.clone()
    missed[0, 7] = 0.0
    ce_missed = F.cross_entropy(missed, target[:, 0].long())
    present = PresentClassDiceCELoss()(missed, target)
    assert present - ce_missed > 0.99
    one = DiceLoss(to_onehot_y=True, softmax=True, include_background=False, batch=True, reduction="none")
    assert torch.allclose(present - ce_missed, one(missed, target).flatten()[6])
    # No foreground in the batch: cross-entropy alone.
    empty = torch.zeros_like(target)
    assert torch.allclose(PresentClassDiceCELoss()(right, empty), F.cross_entropy(right, empty[:, 0].long()))
    with pytest.raises(ValueError, match=r"label ids outside \[0, 16\)"):
        PresentClassDiceCELoss()(right, target + 9)
