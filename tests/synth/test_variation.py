"""The wide variation of SynthCT-VL: field of view, grids, body, determinism, contrast phases and HU."""

from __future__ import annotations

import argparse
import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medvl3d.data.synth import generate
from medvl3d.data.synth.case import CaseConfig
from medvl3d.data.synth.geometry import Grid
from medvl3d.data.synth.phantom import ORGAN_IDS, TISSUE_HU, build_anatomy
from medvl3d.data.synth.variation import (
    CONTRAST_PHASES,
    PHASE_HU,
    draw_field_of_view,
    draw_wide_params,
    reconstruct_wide,
)

# Largest field of view of the tiny wide sets: 24 x 48 x 48 voxels at 10 x 8 x 8 mm (240 x 384 x 384 mm).
WIDE = {"size": (24, 48, 48), "spacing": (10.0, 8.0, 8.0)}
ABDOMINAL = ("liver", "spleen", "kidney_right", "kidney_left", "pancreas")


@pytest.fixture(scope="module")
def wide_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("wide") / "set"
    generate(out, n_train=6, n_test=2, seed=5, workers=1, progress=False, variation="wide", **WIDE)
    rows = [json.loads(line) for s in ("train", "valid") for line in open(out / f"manifest_{s}.jsonl")]
    return out, rows


def _load(out, rel):
    img = nib.load(out / rel)
    return np.asarray(img.dataobj), img.affine


def test_field_of_view_varies_and_stays_within_the_configured_size(wide_set):
    out, rows = wide_set
    shapes, centres = set(), []
    for r in rows:
        ct, aff = _load(out, r["image"])
        assert all(n <= m for n, m in zip(ct.shape, (48, 48, 24))), ct.shape
        shapes.add(ct.shape)
        centres.append(aff[:3, :3] @ ((np.asarray(ct.shape) - 1) / 2) + aff[:3, 3])
    assert len(shapes) >= 5, shapes
    assert np.ptp(np.asarray(centres)[:, 2]) > 40  # axial level changes by more than 4 slices
    # Draws alone: slabs, abdomens and whole extents all occur, at levels from chest to lower abdomen.
    rng = np.random.default_rng(0)
    draws = [draw_field_of_view(rng, (128, 128, 110), (3.0, 3.0, 3.0)) for _ in range(300)]
    ext_z = np.array([s[2] * 3.0 for s, _ in draws])
    cz = np.array([c[2] for _, c in draws])
    assert ext_z.min() < 100 and (ext_z == 330).mean() > 0.2 and ((ext_z > 150) & (ext_z < 300)).any()
    assert cz.min() < -150 and cz.max() > 0


def test_label_maps_and_image_share_one_grid(wide_set):
    out, rows = wide_set
    for r in rows:
        ct, aff = _load(out, r["image"])
        assert ct.dtype == np.int16
        assert np.allclose(np.diag(aff)[:3], (8.0, 8.0, 10.0))  # configured spacing, (x, y, z)
        for key in ("organs", "label", "vessels"):
            lab, aff_l = _load(out, r[key])
            assert lab.shape == ct.shape and np.array_equal(aff_l, aff), (r["case_id"], key)
    # Loaders read the per-case shapes: the organ task through the MSD dataset.json.
    from medvl3d.data.datasets import open_dataset

    ds = open_dataset(out)
    s = ds.load_sample(0)
    assert s["image"].shape == s["label"].shape


def test_wide_output_is_deterministic_and_seeded(tmp_path):
    kw = dict(
        n_train=2, n_test=1, progress=False, variation="wide", size=(16, 32, 32), spacing=(12.0, 10.0, 10.0)
    )
    generate(tmp_path / "a", seed=4, workers=1, **kw)
    generate(tmp_path / "b", seed=4, workers=2, **kw)
    generate(tmp_path / "c", seed=5, workers=1, **kw)

    def files(root):
        return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    fa, fb, fc = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert fa.keys() == fb.keys() and [k for k in fa if fa[k] != fb[k]] == []
    ct = next(k for k in fa if str(k).endswith("train_1_a_1.nii.gz"))
    assert fa[ct] != fc[ct]
    assert json.loads(fa[next(k for k in fa if k.name == "splits.json")])["args"]["variation"] == "wide"


def test_standard_is_the_default_and_unknown_variations_fail(tmp_path):
    assert CaseConfig((8, 8, 8), (1.0, 1.0, 1.0), 0).variation == "standard"
    kw = dict(
        n_train=1, n_test=0, seed=2, workers=1, progress=False, size=(12, 24, 24), spacing=(15.0, 12.0, 12.0)
    )
    generate(tmp_path / "a", **kw)
    generate(tmp_path / "b", variation="standard", **kw)
    for p in sorted((tmp_path / "a").rglob("*")):
        if p.is_file():
            assert p.read_bytes() == (tmp_path / "b" / p.relative_to(tmp_path / "a")).read_bytes(), p
    assert "variation" not in json.loads((tmp_path / "a" / "splits.json").read_text())["args"]
    with pytest.raises(ValueError, match="narrow"):
        generate(tmp_path / "c", variation="narrow", **kw)
    with pytest.raises(ValueError, match="narrow"):
        CaseConfig((8, 8, 8), (1.0, 1.0, 1.0), 0, variation="narrow")


def test_cli_variation_flag(tmp_path, capsys):
    from medvl3d.data.synth import commands

    parser = argparse.ArgumentParser(prog="medvl3d")
    commands.register(parser.add_subparsers(dest="command"))
    argv = ["synth", "--out", str(tmp_path / "o"), "--n-train", "1", "--n-test", "0", "--size", "12x24x24"]
    argv += ["--spacing", "15,12,12", "--workers", "1", "--no-progress", "--variation", "wide"]
    args = parser.parse_args(argv)
    assert args.variation == "wide" and args.func(args) == 0
    row = json.loads((tmp_path / "o" / "manifest_train.jsonl").read_text().splitlines()[0])
    assert row["contrast_phase"] in CONTRAST_PHASES
    with pytest.raises(SystemExit):
        parser.parse_args(["synth", "--out", "x", "--variation", "narrow"])


def test_contrast_phases_present_and_consistent(wide_set):
    rng = np.random.default_rng(1)
    drawn = [draw_wide_params(rng, p, TISSUE_HU).contrast_phase for p in ["contrast-enhanced"] * 200]
    assert set(drawn) == {"arterial", "portal-venous", "delayed"}
    assert draw_wide_params(rng, "non-contrast", TISSUE_HU).contrast_phase == "non-contrast"
    _, rows = wide_set
    for r in rows:  # the lesion-level phase and the fine phase agree
        assert (r["contrast_phase"] == "non-contrast") == (r["phase"] == "non-contrast"), r
    with pytest.raises(ValueError, match="venous"):
        draw_wide_params(rng, "non-contrast", TISSUE_HU, contrast_phase="venous")


def _torso(seed: int, contrast_phase: str):
    """A whole uncropped torso (416 x 416 x 300 mm at 6.5 x 6.5 x 6 mm) of the wide variation."""
    rng = np.random.default_rng([seed, CONTRAST_PHASES.index(contrast_phase)])
    phase = "non-contrast" if contrast_phase == "non-contrast" else "contrast-enhanced"
    wide = draw_wide_params(rng, phase, TISSUE_HU, contrast_phase=contrast_phase)
    grid = Grid.centred((64, 64, 50), (6.5, 6.5, 6.0), (0.0, 0.0, -80.0))
    anat = build_anatomy(grid, rng, phase, wide=wide)
    return anat, wide, reconstruct_wide(anat.ct, grid, rng, wide.scanner), grid


@pytest.fixture(scope="module")
def torsos():
    return {ph: _torso(7, ph) for ph in CONTRAST_PHASES}


def test_organs_stay_inside_the_body(torsos):
    for ph, (anat, _, ct, _) in torsos.items():
        # The body: the largest component of the per-slice filled silhouette (arms and table are apart).
        sil = np.stack([ndimage.binary_fill_holes(anat.ct[:, :, k] > -500) for k in range(ct.shape[2])], -1)
        lab, n = ndimage.label(sil)
        body = lab == 1 + np.argmax(ndimage.sum_labels(sil, lab, range(1, n + 1)))
        labelled = anat.organs > 0
        assert labelled.sum() > 1000
        assert (labelled & ~body).sum() == 0, ph
        # Solid organs never touch the sides of an uncropped torso grid; every one of them is drawn.
        for name in ABDOMINAL:
            m = anat.organs == ORGAN_IDS[name]
            assert m.sum() > 30, (ph, name)
            assert not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any()), (ph, name)


def test_organ_hu_plausible_per_phase(torsos):
    for ph, (anat, wide, ct, _) in torsos.items():
        ranges = PHASE_HU[ph]
        for name, tissue in (("liver", "liver"), ("spleen", "spleen")):
            m = ndimage.binary_erosion(anat.organs == ORGAN_IDS[name])
            lo, hi = ranges[tissue]
            lo -= 50 if (tissue == "liver" and wide.fatty_liver) else 0
            # Inside the organ: its HU, plus vessels (liver) and noise; 25 HU of slack for partial volume.
            assert lo - 25 <= float(np.median(ct[m])) <= hi + 25, (ph, name, float(np.median(ct[m])))
        kid = ndimage.binary_erosion(
            np.isin(anat.organs, [ORGAN_IDS["kidney_right"], ORGAN_IDS["kidney_left"]])
        )
        lo = min(ranges["kidney"][0], ranges["kidney_medulla"][0])
        hi = max(ranges["kidney"][1], ranges["kidney_medulla"][1])
        assert lo - 25 <= float(np.median(ct[kid])) <= hi + 25, (ph, float(np.median(ct[kid])))
        aorta = ndimage.binary_erosion(anat.organs == ORGAN_IDS["aorta"])
        assert ranges["aorta"][0] - 30 <= float(np.median(ct[aorta])) <= ranges["aorta"][1] + 30, ph
        fat = ndimage.binary_erosion(anat.organs == ORGAN_IDS["subcutaneous_fat"])
        assert -140 <= float(np.median(ct[fat])) <= -60, ph
    # Enhancement order across phases: kidneys and aorta are brighter with contrast than without.
    med = {ph: float(np.median(t[2][t[0].organs == ORGAN_IDS["aorta"]])) for ph, t in torsos.items()}
    assert med["arterial"] > med["portal-venous"] > med["non-contrast"] + 40
    assert torsos["arterial"][1].hu["kidney"] > torsos["arterial"][1].hu["kidney_medulla"]


def test_scanner_noise_and_blur_follow_the_draw():
    grid = Grid.centred((40, 40, 20), (3.0, 3.0, 3.0), (0.0, 0.0, 0.0))
    flat = np.full(grid.shape, 40.0, np.float32)
    rng = np.random.default_rng(0)
    stds = []
    for noise in (6.0, 25.0):
        wide = draw_wide_params(rng, "non-contrast", TISSUE_HU)
        sc = type(wide.scanner)(noise_hu=noise, blur_xy_mm=1.0, blur_z_mm=1.0, shading_hu=0.0)
        ct = reconstruct_wide(flat, grid, rng, sc)
        assert ct.dtype == np.int16 and abs(float(ct.mean()) - 40) < 1.5
        stds.append(float(ct.std()))
    assert abs(stds[0] - 6) < 1.5 and abs(stds[1] - 25) < 3, stds
