"""Vessel metrics against hand-computed cases: Dice, clDice, HD95 and the artery/vein confusion rate."""

from __future__ import annotations

import numpy as np
import pytest

from medvl3d.eval.vessel_metrics import av_confusion, cldice, summarise_vessels, vessel_metrics


def _trunk_and_branch() -> tuple[np.ndarray, np.ndarray]:
    """A thick trunk (5 x 5 x 20 voxels) and a 1-voxel branch of 20 voxels leaving it."""
    trunk = np.zeros((40, 20, 20), bool)
    trunk[0:20, 8:13, 8:13] = True
    branch = np.zeros_like(trunk)
    branch[20:40, 10, 10] = True
    return trunk, branch


def test_cldice_counts_a_missed_thin_branch_that_dice_hardly_sees():
    trunk, branch = _trunk_and_branch()
    truth = trunk | branch
    dice = 2 * trunk.sum() / (truth.sum() + trunk.sum())
    assert dice > 0.97  # 500 of 520 voxels found
    # Skeletons: the trunk's centreline (~20 voxels) and the branch (20): half the truth's centreline is
    # missed (sensitivity ~0.5), everything predicted is on the truth (precision 1) -> clDice ~2/3.
    value = cldice(trunk, truth)
    assert 0.55 < value < 0.75, value
    assert cldice(truth, truth) == pytest.approx(1.0)


def test_cldice_undefined_and_empty_cases():
    trunk, _ = _trunk_and_branch()
    empty = np.zeros_like(trunk)
    assert cldice(empty, empty) is None
    assert cldice(trunk, empty) == 0.0 and cldice(empty, trunk) == 0.0
    with pytest.raises(ValueError, match="shape"):
        cldice(trunk, trunk[:-1])


def test_av_confusion_counts_only_voxels_that_are_vessel_in_both():
    truth = np.zeros((30, 10, 10), np.uint8)
    truth[:, 2, 2] = 1  # artery: 30 voxels
    truth[:, 7, 7] = 2  # vein: 30 voxels
    pred = truth.copy()
    pred[:10, 2, 2] = 2  # 10 artery voxels called vein
    pred[20:, 7, 7] = 0  # 10 vein voxels missed: not a confusion, and not in the denominator
    pred[:5, 5, 5] = 1  # 5 extra artery voxels on background: neither
    rate, n = av_confusion(pred, truth, [1, 2])
    assert n == 50 and rate == pytest.approx(10 / 50)
    assert av_confusion(np.zeros_like(truth), truth, [1, 2]) == (None, 0)


def test_vessel_metrics_per_class_and_hd95_from_seg_metrics():
    truth = np.zeros((40, 20, 20), np.uint8)
    truth[5:35, 4:8, 4:8] = 1
    truth[5:35, 12:16, 12:16] = 2
    pred = np.roll(truth, 2, axis=0)  # both tubes shifted by 2 voxels along x
    out = vessel_metrics(pred, truth, (1.5, 1.0, 1.0), {1: "pulmonary_artery", 2: "pulmonary_vein"})
    art = out["classes"]["pulmonary_artery"]
    assert art["dice"] == pytest.approx(2 * 28 * 16 / (2 * 30 * 16))  # 28 of 30 slices overlap
    assert art["truth_voxels"] == art["pred_voxels"] == 480
    assert 0 < art["hd95"] <= 3.0 + 1e-6  # a 2-voxel shift at 1.5 mm: no surface voxel is further
    assert out["av_confusion"] == 0.0 and out["both_vessel_voxels"] == 2 * 28 * 16
    # Names in label order are accepted too; HD95 can be skipped (then no spacing is needed).
    quick = vessel_metrics(pred, truth, None, ["pulmonary_artery", "pulmonary_vein"], hd95=False)
    assert quick["classes"]["pulmonary_vein"]["hd95"] is None
    assert quick["classes"]["pulmonary_vein"]["dice"] == pytest.approx(art["dice"])


def test_vessel_metrics_bad_inputs_are_one_line_errors():
    a = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="differs"):
        vessel_metrics(a, a[:3], None, ["artery"], hd95=False)
    with pytest.raises(ValueError, match="integer"):
        vessel_metrics(a.astype(np.float32), a, None, ["artery"], hd95=False)
    with pytest.raises(ValueError, match="spacing"):
        vessel_metrics(a, a, None, ["artery"])
    with pytest.raises(ValueError, match="3D"):
        vessel_metrics(a[0], a[0], None, ["artery"], hd95=False)


def test_summary_averages_defined_values_only():
    truth = np.zeros((10, 10, 10), np.uint8)
    truth[2:8, 5, 5] = 1
    perfect = vessel_metrics(truth, truth, None, ["a", "v"], hd95=False)  # vein absent in both: None
    half = truth.copy()
    half[5:8, 5, 5] = 0
    partial = vessel_metrics(half, truth, None, ["a", "v"], hd95=False)
    summary = summarise_vessels([perfect, partial])
    assert perfect["classes"]["v"]["dice"] is None
    assert summary["dice_a"] == pytest.approx((1.0 + 2 * 3 / 9) / 2)
    assert summary["dice_v"] is None and summary["dice"] == pytest.approx(summary["dice_a"])
    assert summary["av_confusion"] == 0.0
    with pytest.raises(ValueError, match="no cases"):
        summarise_vessels([])
