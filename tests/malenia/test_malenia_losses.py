"""Hungarian matching on Dice + BCE, the mask loss and the per-attribute alignment loss, on made-up cases."""

from __future__ import annotations

import torch

from medvl3d.losses.mask_matching import (
    attribute_alignment_loss,
    bce_cost,
    dice_cost,
    hungarian_match,
    hungarian_match_stages,
    mask_loss,
)


def _masks() -> torch.Tensor:
    t = torch.zeros(3, 10)
    t[0, :3] = 1
    t[1, 3:6] = 1
    t[2, 6:] = 1
    return t


def test_dice_and_bce_costs_by_hand():
    targets = _masks()[:1]
    logits = torch.full((1, 10), -20.0)
    logits[0, :3] = 20.0  # a perfect prediction
    assert torch.allclose(dice_cost(logits, targets), torch.tensor([[0.0]]), atol=1e-6)
    assert float(bce_cost(logits, targets)) < 1e-6
    zero = torch.zeros(1, 10)  # p = 0.5 everywhere: Dice = (2*1.5 + 1) / (5 + 3 + 1), BCE = ln 2
    assert torch.allclose(dice_cost(zero, targets), torch.tensor([[1 - 4 / 9]]), atol=1e-6)
    assert torch.allclose(bce_cost(zero, targets), torch.tensor([[0.6931472]]), atol=1e-5)


def test_hungarian_match_finds_the_permutation():
    targets = _masks()
    perm = [2, 0, 3, 1]  # token i predicts target perm[i] (token 2 predicts nothing)
    logits = torch.full((4, 10), -10.0)
    for tok, g in enumerate(perm):
        if g < 3:
            logits[tok][targets[g] > 0] = 10.0
    rows, cols = hungarian_match(logits, targets)
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 2), (1, 0), (3, 1)]
    empty_rows, empty_cols = hungarian_match(logits, targets[:0])
    assert empty_rows.numel() == 0 and empty_cols.numel() == 0


def test_mask_loss_orders_predictions():
    targets = _masks()
    good = (targets * 20 - 10).requires_grad_()
    bad = torch.zeros_like(targets)
    assert float(mask_loss(good.detach(), targets)) < 0.01 < float(mask_loss(bad, targets))
    mask_loss(good, targets).backward()
    assert good.grad is not None
    assert float(mask_loss(good[:0].detach(), targets[:0])) == 0.0


def test_alignment_prefers_the_right_values():
    # 3 tokens, values [hypo, hyper, no lesion]; tokens 0, 1 matched (hypo, hyper), token 2 unmatched.
    positives = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.bool)
    matched = torch.tensor([True, True, False])
    right = torch.eye(3) * 10
    wrong = right[[1, 0, 2]]
    assert float(attribute_alignment_loss(right, positives, matched)) < 0.01
    assert float(attribute_alignment_loss(wrong, positives, matched)) > 5
    # Only unmatched tokens: the no-lesion term alone, weighted.
    none = torch.zeros(3, dtype=torch.bool)
    full = attribute_alignment_loss(torch.zeros(3, 3), positives[[2, 2, 2]], none, no_lesion_weight=1.0)
    assert torch.allclose(full, torch.log(torch.tensor(3.0)))


def test_stages_at_once_equal_stage_by_stage():
    """Deep supervision scores all decoder stages together: the same matches and the same mean loss."""
    gen = torch.Generator().manual_seed(0)
    targets = _masks()
    logits = 5 * torch.randn(4, 5, 10, generator=gen)  # 4 stages, 5 tokens
    for k, (rows, cols) in enumerate(hungarian_match_stages(logits, targets)):
        ref_rows, ref_cols = hungarian_match(logits[k], targets)
        assert torch.equal(rows, ref_rows) and torch.equal(cols, ref_cols)
    assert all(r.numel() == 0 for r, _ in hungarian_match_stages(logits, targets[:0]))
    # Alignment: 3 stages of 6 tokens (2 images), 4 values (the last "no lesion"), 3 tokens matched per stage.
    sim = torch.randn(3, 6, 4, generator=gen)
    matched = torch.zeros(3, 6, dtype=torch.bool)
    positives = torch.zeros(3, 6, 4, dtype=torch.bool)
    positives[..., -1] = True
    for k in range(3):
        rows = torch.randperm(6, generator=gen)[:3]
        matched[k, rows] = True
        positives[k, rows] = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 1, 0]], dtype=torch.bool)
    at_once = attribute_alignment_loss(sim, positives, matched)
    one_by_one = torch.stack([attribute_alignment_loss(sim[k], positives[k], matched[k]) for k in range(3)])
    assert torch.allclose(at_once, one_by_one.mean(), atol=1e-6)


def test_empty_mask_loss_keeps_pushing_a_lesion_sized_false_mask():
    """On an empty target, Dice + mean BCE barely push down a confident false blob of a few hundred voxels
    (Dice's gradient falls as 1 / (sum + 1)^2); the empty-mask loss pushes it as hard as any lesion."""
    from medvl3d.losses.mask_matching import empty_mask_loss, mask_loss

    logits = torch.full((1, 32**3), -8.0)
    logits[0, :300] = 6.0  # a false lesion of 300 voxels
    grads = []
    for loss_fn in (lambda x: mask_loss(x, torch.zeros_like(x)), empty_mask_loss):
        x = logits.clone().requires_grad_(True)
        loss_fn(x).backward()
        grads.append(float(x.grad[0, :300].abs().mean()))
    assert grads[1] > 50 * grads[0]
    assert float(empty_mask_loss(torch.full((2, 1000), -10.0))) < 1e-3  # nothing predicted: no loss
    assert empty_mask_loss(torch.zeros(0, 10)).item() == 0.0
