"""Segmentation metrics against hand-computed cubes, the undefined-case rules, and the crop's exactness."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medvl3d.eval.seg_metrics import (
    ClassMetrics,
    format_segmentation_table,
    segmentation_metrics,
    summarise_cases,
)

SPACING = (1.5, 0.8, 1.0)  # anisotropic on purpose: distances must use mm, not voxels


def _cube(shape: tuple[int, int, int], start: tuple[int, int, int], side: int, label: int = 1) -> np.ndarray:
    out = np.zeros(shape, dtype=np.uint8)
    out[tuple(slice(s, s + side) for s in start)] = label
    return out


def test_identical_maps_are_perfect():
    truth = _cube((20, 16, 16), (3, 4, 5), 6, label=1)
    truth[10:15, 2:9, 9:14] = 2
    for pred in (truth.copy(), torch.from_numpy(truth.astype(np.int64))):
        res = segmentation_metrics(pred, truth, SPACING, {1: "liver", 2: "kidney"})
        assert list(res) == ["liver", "kidney"]
        assert (res["liver"].truth_voxels, res["kidney"].pred_voxels) == (6**3, 5 * 7 * 5)
        for m in res.values():
            assert (m.dice, m.nsd, m.hd95, m.note) == (pytest.approx(1.0), pytest.approx(1.0), 0.0, None)


def test_shifted_cube_matches_hand_computed_values():
    n, k = 8, 2  # an n-cube against itself shifted by k voxels along axis 0 (1.5 mm per voxel)
    truth = _cube((20, 16, 16), (4, 4, 4), n)
    pred = _cube((20, 16, 16), (4 + k, 4, 4), n)
    shift_mm = k * SPACING[0]  # 3.0 mm
    below = segmentation_metrics(pred, truth, SPACING, {1: "c"}, nsd_tolerance_mm=0.5)["c"]
    above = segmentation_metrics(pred, truth, SPACING, {1: "c"}, nsd_tolerance_mm=shift_mm + 0.5)["c"]
    # overlap (n - k) n^2 of 2 n^3 voxels
    assert below.dice == pytest.approx((n - k) / n)
    # every surface voxel lies within the shift of the other surface; a whole face (n^2 of the
    # n^3 - (n-2)^3 = 296 surface voxels, > 5%) lies exactly at it, so the 95th percentile is the shift
    assert below.hd95 == pytest.approx(shift_mm, abs=1e-5)
    # below the smallest spacing only voxels on both surfaces count: the 4 side faces over the
    # n - k overlapping slices, 4 (n - 1) (n - k) = 168 of 296 on each side
    assert below.nsd == pytest.approx(4 * (n - 1) * (n - k) / (n**3 - (n - 2) ** 3))
    assert above.nsd == pytest.approx(1.0)
    assert (below.truth_voxels, below.pred_voxels, below.note) == (n**3, n**3, None)


def test_undefined_cases_follow_the_rules():
    truth = _cube((12, 12, 12), (1, 1, 1), 4, label=1)
    truth[7:10, 7:10, 7:10] = 3  # 3: in truth only
    pred = _cube((12, 12, 12), (1, 1, 1), 4, label=1)
    pred[6:8, 1:3, 6:9] = 2  # 2: in prediction only
    classes = {0: "background", 1: "both", 2: "pred_only", 3: "truth_only", 4: "neither"}
    res = segmentation_metrics(pred, truth, SPACING, classes)
    assert "background" not in res
    assert res["both"].dice == pytest.approx(1.0) and res["both"].note is None
    assert res["neither"] == ClassMetrics(None, None, None, 0, 0, "absent in truth and prediction")
    assert res["pred_only"] == ClassMetrics(0.0, 0.0, None, 0, 12, "absent in truth")
    assert res["truth_only"] == ClassMetrics(0.0, 0.0, None, 27, 0, "absent in prediction")
    assert res["truth_only"].to_dict() == {
        "dice": 0.0,
        "nsd": 0.0,
        "hd95": None,
        "truth_voxels": 27,
        "pred_voxels": 0,
        "note": "absent in prediction",
    }


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"pred": np.zeros((4, 4, 5), np.int16)},
            r"pred shape \(4, 4, 5\) differs from truth shape \(4, 4, 4\)",
        ),
        ({"pred": np.zeros((4, 4), np.int16)}, r"pred must be a 3D label map.*\(4, 4\)"),
        ({"pred": np.zeros((4, 4, 4), np.float32)}, "pred must be an integer label map, got dtype float32"),
        ({"truth": -np.ones((4, 4, 4), np.int8)}, "truth holds negative labels"),
        ({"spacing": (1.0, 0.0, 1.0)}, "spacing must be 3 positive"),
        ({"spacing": (1.0, -1.0, 1.0)}, "spacing must be 3 positive"),
        ({"spacing": (1.0, 1.0)}, "spacing must be 3 positive"),
        ({"spacing": (1.0, math.nan, 1.0)}, "spacing must be 3 positive"),
        ({"spacing": "abc"}, "spacing must be 3 positive"),
        ({"classes": {1: "a", 2: "a"}}, "class names must be unique.*'a'"),
        ({"classes": {-1: "a"}}, "class ids must be non-negative"),
        ({"classes": {1: "mean"}}, "reserved"),
        ({"nsd_tolerance_mm": -1.0}, "nsd_tolerance_mm"),
    ],
)
def test_bad_input_raises_a_clear_error(kwargs, match):
    args = {
        "pred": np.zeros((4, 4, 4), np.int16),
        "truth": np.zeros((4, 4, 4), np.int16),
        "spacing": (1.0, 1.0, 1.0),
        "classes": {1: "a"},
    }
    with pytest.raises(ValueError, match=match):
        segmentation_metrics(**{**args, **kwargs})


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")
def test_crop_equals_full_volume_computation():
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

    rng = np.random.default_rng(0)
    truth = np.zeros((24, 20, 16), np.int32)
    truth[2:12, 3:15, 4:12] = 1
    truth[0:6, 12:20, 10:16] = 2  # touches three borders of the volume: the crop is clipped there
    pred = truth.copy()
    pred[rng.random(truth.shape) < 0.05] = 0  # speckle holes
    pred[14:18, 3:7, 2:5] = 1  # a distant false-positive island: large HD95
    pred[0:7, 11:20, 9:16][rng.random((7, 9, 7)) < 0.5] = 2
    res = segmentation_metrics(pred, truth, SPACING, {1: "a", 2: "b"}, nsd_tolerance_mm=1.2)
    for c, name in ((1, "a"), (2, "b")):
        p = torch.from_numpy(pred == c)[None, None]
        t = torch.from_numpy(truth == c)[None, None]
        full = (
            compute_dice(p, t, include_background=True).item(),
            compute_surface_dice(p, t, [1.2], include_background=True, spacing=SPACING).item(),
            compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=SPACING).item(),
        )
        got = res[name]
        assert (got.dice, got.nsd, got.hd95) == pytest.approx(full, rel=1e-6)
        assert 0 < got.dice < 1 and 0 < got.nsd < 1 and got.hd95 > 0  # a case where the numbers could differ


def _hand_made_cases() -> list[dict[str, ClassMetrics]]:
    absent = ClassMetrics(None, None, None, 0, 0, "absent in truth and prediction")
    return [
        {"liver": ClassMetrics(0.8, 0.6, 2.0, 10, 10), "kidney": absent, "spleen": absent},
        {
            "liver": ClassMetrics(0.6, 0.4, 4.0, 10, 10),
            "kidney": ClassMetrics(0.0, 0.0, None, 0, 5, "absent in truth"),
            "spleen": absent,
        },
        {
            "liver": ClassMetrics(1.0, 1.0, 0.0, 10, 10),
            "kidney": ClassMetrics(0.5, 0.7, 3.0, 8, 8),
            "spleen": absent,
        },
    ]


def test_summarise_cases_uses_defined_values_only():
    s = summarise_cases(_hand_made_cases())
    assert list(s) == ["liver", "kidney", "spleen", "mean"]
    liver = s["liver"]["dice"]
    assert liver["mean"] == pytest.approx(0.8)
    assert liver["std"] == pytest.approx(math.sqrt((0.0 + 0.04 + 0.04) / 3))  # population std
    assert (liver["median"], liver["n"], liver["n_undefined"]) == (pytest.approx(0.8), 3, 0)
    # kidney: the undefined first case is left out (averaging it in as 0 would give 1/6)
    kidney = s["kidney"]
    assert (kidney["dice"]["mean"], kidney["dice"]["std"]) == (pytest.approx(0.25), pytest.approx(0.25))
    assert (kidney["dice"]["n"], kidney["dice"]["n_undefined"]) == (2, 1)
    assert kidney["hd95"] == {"mean": 3.0, "std": 0.0, "median": 3.0, "n": 1, "n_undefined": 2}
    assert s["spleen"]["nsd"] == {"mean": None, "std": None, "median": None, "n": 0, "n_undefined": 3}
    # overall: mean over classes of the class means, spleen (no defined value) left out
    assert s["mean"]["dice"]["mean"] == pytest.approx((0.8 + 0.25) / 2)
    assert s["mean"]["hd95"]["mean"] == pytest.approx((2.0 + 3.0) / 2)
    assert (s["mean"]["dice"]["n"], s["mean"]["dice"]["n_undefined"]) == (2, 1)


def test_summarise_cases_rejects_empty_and_mismatched_cases():
    with pytest.raises(ValueError, match="no cases"):
        summarise_cases([])
    cases = _hand_made_cases()
    del cases[1]["spleen"]
    with pytest.raises(ValueError, match=r"case 1 scores different classes.*spleen"):
        summarise_cases(cases)


def test_format_segmentation_table():
    table = format_segmentation_table(summarise_cases(_hand_made_cases()), nsd_tolerance_mm=2.0)
    lines = table.strip().splitlines()
    assert lines[0] == "| class | Dice | NSD@2mm | HD95 mm | n (undefined) |"
    assert len(lines) == 2 + 4  # header, rule, three classes, the mean
    liver, kidney, spleen, mean = lines[2:]
    assert liver == "| liver | 0.800 ± 0.163 | 0.667 ± 0.249 | 2.00 ± 1.63 | 3 (0) |"
    assert kidney == "| kidney | 0.250 ± 0.250 | 0.350 ± 0.350 | 3.00 ± 0.00 [n=1] | 2 (1) |"
    assert spleen == "| spleen | n/a | n/a | n/a | 0 (3) |"
    assert mean.startswith("| mean | 0.525 ± 0.275 |") and mean.endswith("| 2 (1) |")
    assert "NSD |" in format_segmentation_table(summarise_cases(_hand_made_cases()))
