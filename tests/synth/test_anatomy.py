"""Phantom anatomy: organ HU per phase after reconstruction, artery/vein trees, CLI and speed smoke."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from medvl3d.data.synth.case import reconstruct
from medvl3d.data.synth.geometry import Grid
from medvl3d.data.synth.phantom import ORGAN_IDS, build_anatomy
from medvl3d.data.synth.vessels import build_trees, paint_trees

GRID = Grid.centred((80, 80, 40), (4.4, 4.4, 8.0), (0.0, 0.0, -10.0))

# (non-contrast, contrast) acceptable mean-HU ranges of eroded organs, around the design targets.
RANGES = {
    "liver": ((40, 75), (95, 130)),
    "spleen": ((30, 65), (100, 140)),
    "kidney_right": ((20, 50), (120, 175)),
    "pancreas": ((25, 60), (80, 120)),
    "heart": ((25, 60), (110, 160)),
    "aorta": ((25, 60), (140, 190)),
    "skeletal_muscle": ((35, 65), (45, 75)),
    "subcutaneous_fat": ((-130, -80), (-130, -80)),
    "lung_right": ((-900, -740), (-900, -700)),  # includes intrapulmonary vessels, as real lung masks do
    "vertebrae": ((200, 700), (200, 700)),
}


@pytest.fixture(scope="module")
def phases():
    out = {}
    for k, phase in enumerate(("non-contrast", "contrast-enhanced")):
        rng = np.random.default_rng([21, k])
        anat = build_anatomy(GRID, rng, phase)
        vessels = np.zeros(GRID.shape, np.uint8)
        paint_trees(anat, build_trees(anat, rng), vessels)
        out[phase] = (anat, vessels, reconstruct(anat.ct, GRID, rng))
    return out


@pytest.mark.parametrize("organ", sorted(RANGES))
def test_organ_hu_in_range(phases, organ):
    for k, phase in enumerate(("non-contrast", "contrast-enhanced")):
        anat, _, ct = phases[phase]
        m = ndimage.binary_erosion(anat.organs == ORGAN_IDS[organ])
        assert m.sum() > 20, organ
        lo, hi = RANGES[organ][k]
        assert lo <= ct[m].mean() <= hi, (organ, phase, float(ct[m].mean()))


def test_noise_level_like_ct():
    rng = np.random.default_rng(0)
    flat = np.full(GRID.shape, 40.0, np.float32)
    ct = reconstruct(flat, GRID, rng)
    # Reconstruction noise of a standard soft-tissue kernel: ~10-20 HU, spatially correlated.
    assert 10 <= ct.std() <= 20 and abs(ct.mean() - 40) < 1
    corr = np.corrcoef(ct[:-1].ravel(), ct[1:].ravel())[0, 1]
    assert corr > 0.3


def test_artery_and_vein_same_hu_and_arteries_beside_bronchi(phases):
    anat, vessels, _ = phases["contrast-enhanced"]
    ct = anat.ct  # before noise: the painted vessel HU
    core = {lab: ndimage.binary_erosion(vessels == lab) | ((vessels == lab) & (ct > 0)) for lab in (1, 2)}
    art, vein = np.median(ct[core[1]]), np.median(ct[core[2]])
    assert art > 150 and vein > 150 and abs(art - vein) < 25, (art, vein)
    dist = ndimage.distance_transform_edt(vessels != 3, sampling=GRID.spacing)
    lung = np.isin(anat.organs, [ORGAN_IDS["lung_right"], ORGAN_IDS["lung_left"]])
    d_art = np.median(dist[(vessels == 1) & lung])
    d_vein = np.median(dist[(vessels == 2) & lung])
    assert d_art < 0.7 * d_vein, (d_art, d_vein)
    assert min((vessels == lab).sum() for lab in (1, 2, 3)) > 100
    # Same HU under contrast, different without contrast? No: both are blood (~40 HU) in either phase.
    anat_nc, vessels_nc, _ = phases["non-contrast"]
    assert abs(np.median(anat_nc.ct[(vessels_nc == 1) & (anat_nc.ct > -100)]) - 40) < 20


def test_cli_and_speed_smoke(tmp_path, capsys):
    """`medvl3d synth` parses and runs end to end, printing throughput (no timing assertion)."""
    import argparse

    from medvl3d.data.synth import commands

    parser = argparse.ArgumentParser(prog="medvl3d")
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "synth",
            "--out",
            str(tmp_path / "o"),
            "--n-train",
            "1",
            "--n-test",
            "1",
            "--size",
            "24x40x40",
            "--spacing",
            "12,9,9",
            "--workers",
            "1",
            "--no-progress",
            "--preview",
            "1",
        ]
    )
    assert args.size == (24, 40, 40) and args.spacing == (12.0, 9.0, 9.0)
    assert args.func(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    info = json.loads(lines[0])
    assert info["n_train"] == 1 and info["volumes_per_s"] > 0
    assert lines[1].endswith(".png") and (tmp_path / "o" / "preview").is_dir()
    with pytest.raises(SystemExit):
        parser.parse_args(["synth", "--out", "x", "--size", "24x40"])
    bad = parser.parse_args(
        ["synth", "--out", str(tmp_path / "o"), "--lesion-types", str(tmp_path / "no.yaml")]
    )
    with pytest.raises(FileNotFoundError, match="no.yaml"):
        bad.func(bad)


def test_organ_hu_stats_hand_computed():
    from medvl3d.data.synth.realism import organ_hu_stats

    ct = np.array([[10.0, 20.0], [30.0, -5.0]])
    lab = np.array([[1, 1], [2, 0]])
    s = organ_hu_stats(ct, lab, {"a": (1,), "ab": (1, 2), "none": (7,)})
    assert s["a"] == (15.0, 5.0, 2) and s["ab"][0] == 20.0 and s["ab"][2] == 3 and s["none"] is None


def test_compare_with_real_ct(real_dir, tmp_path):
    """Soft-tissue and lung means stay within 35 HU of the real TotalSegmentator case (docs/synthct.md)."""
    from medvl3d.data.synth.realism import compare_with_totalseg

    table = compare_with_totalseg(real_dir, tmp_path)
    assert (tmp_path / "synthct_vs_real.png").stat().st_size > 10_000
    rows = {r.split("|")[1].strip(): r.split("|")[2:4] for r in table.splitlines()[2:]}
    for organ in ("liver", "spleen", "skeletal_muscle", "vertebrae", "ribs", "lung_right", "lung_left"):
        syn, real = (float(c.split("±")[0]) for c in rows[organ])
        assert abs(syn - real) <= 35, (organ, syn, real)
