"""SynthCT-VL's pulmonary artery and vein trees look like lungs': arteries beside the bronchi and connected
from the hilum, veins away from the bronchi and the arteries (between segments), both reaching the hila."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medvl3d.data.synth.generator import LUNG_CENTRE
from medvl3d.data.synth.geometry import Grid
from medvl3d.data.synth.phantom import ORGAN_IDS, build_anatomy
from medvl3d.data.synth.vessels import _companion_tree, _key, build_trees, paint_trees

SPACING = 2.5
# A lung crop (the artery/vein training field of view): 300 x 220 x 180 mm around the lungs and hila.
GRID = Grid.centred((120, 88, 72), (SPACING,) * 3, (LUNG_CENTRE[2], LUNG_CENTRE[1], LUNG_CENTRE[0]))
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def cases():
    out = []
    for seed in SEEDS:
        rng = np.random.default_rng([seed, 0])
        anat = build_anatomy(GRID, rng, "contrast-enhanced")
        trees = build_trees(anat, rng)
        vessels = np.zeros(GRID.shape, np.uint8)
        paint_trees(anat, trees, vessels)
        out.append((anat, trees, vessels))
    return out


def test_artery_tree_is_connected_from_the_trunk(cases):
    for _, trees, _ in cases:
        ends = {_key(a.p1) for a in trees.artery}
        connected = sum(_key(a.p0) in ends for a in trees.artery)
        # Every artery but the pulmonary trunk starts where another one ends: one tree, trunk to periphery.
        assert connected == len(trees.artery) - 1 and len(trees.artery) > 50, (connected, len(trees.artery))


def test_companion_tree_is_connected_and_runs_beside_its_bronchus():
    from medvl3d.data.synth.geometry import Segment

    def seg(a, b, r):
        return Segment(np.array(a, np.float32), np.array(b, np.float32), r, r * 0.9, 0)

    root = np.array([0, 0, 0], np.float32)
    parent = seg([0, 0, 0], [0, 0, 30], 4.0)
    kids = [seg([0, 0, 30], [20, 0, 50], 3.0), seg([0, 0, 30], [-20, 0, 50], 2.5)]
    bronchi = [parent, *kids]
    radii = [(s.r0, s.r1) for s in bronchi]
    arteries = _companion_tree(bronchi, radii, root + [0, 10, 0], np.array([0, 1.0, 0], np.float32), gap=1.5)
    assert np.allclose(arteries[0].p0, [0, 10, 0])
    for kid in arteries[1:]:
        assert np.allclose(kid.p0, arteries[0].p1)  # children start where the parent artery ends
    for b, a in zip(bronchi, arteries):
        gap = np.linalg.norm(a.p1 - b.p1)
        assert gap == pytest.approx(b.r1 + a.r1 + 1.5, abs=1e-4)  # beside it, not inside it
        assert abs(float((a.p1 - b.p1) @ b.direction)) < 1e-4  # offset perpendicular to the bronchus


def test_bronchiectasis_dilates_bronchi_not_their_arteries():
    rng = np.random.default_rng([3, 0])
    anat = build_anatomy(GRID, rng, "contrast-enhanced")
    trees = build_trees(anat, rng, bronchiectasis=True)
    # "Signet ring": a dilated bronchus beside a normal-calibre artery (before, the artery dilated too).
    beside = [
        b.r1 / a.r1
        for b in trees.airway
        for a in trees.artery
        if b.depth >= 2 and np.linalg.norm(a.p1 - b.p1) == pytest.approx(b.r1 + a.r1 + 1.5)
    ]
    assert beside and max(beside) > 1.7, beside[:5]


def test_arteries_beside_bronchi_veins_between_segments(cases):
    for anat, _, v in cases:
        lung = np.isin(anat.organs, [ORGAN_IDS["lung_right"], ORGAN_IDS["lung_left"]])
        to_air = ndimage.distance_transform_edt(v != 3, sampling=GRID.spacing)
        to_art = ndimage.distance_transform_edt(v != 1, sampling=GRID.spacing)
        art_air = np.median(to_air[(v == 1) & lung])
        vein_air = np.median(to_air[(v == 2) & lung])
        vein_art = np.median(to_art[(v == 2) & lung])
        assert art_air < 6.0, art_air  # the broncho-arterial bundle: the wall touches the artery
        assert vein_air > 2 * art_air and vein_art > 2 * art_air, (art_air, vein_air, vein_art)


def test_both_trees_reach_the_hila_in_one_piece(cases):
    x = GRID.axes()[0]
    fractions = []
    for anat, _, v in cases:
        for lung, side in (("lung_right", x >= 0), ("lung_left", x < 0)):
            lid = ORGAN_IDS[lung]
            for lab, key in ((1, "artery_hilum"), (2, "vein_hilum")):
                cc, _ = ndimage.label((v == lab) & side[:, None, None], structure=np.ones((3, 3, 3)))
                sizes = np.bincount(cc.ravel())[1:]
                assert sizes.size, (lung, lab)
                biggest = np.argwhere(cc == sizes.argmax() + 1) * SPACING + np.asarray(GRID.origin)
                hilum = anat.landmarks[f"{key}_{lid}"]
                # The main tree of each lung starts at its hilum ...
                assert np.sqrt(((biggest - hilum) ** 2).sum(1)).min() < 2 * SPACING, (lung, lab)
                fractions.append(sizes.max() / sizes.sum())
        # ... and the artery and vein hila lie close together in the mediastinal side of the lung.
        for lung in ("lung_right", "lung_left"):
            lid = ORGAN_IDS[lung]
            gap = np.linalg.norm(anat.landmarks[f"artery_hilum_{lid}"] - anat.landmarks[f"vein_hilum_{lid}"])
            assert gap < 60, gap
    # Most of each tree is that one piece (thin peripheral branches may fall apart at 2.5 mm).
    assert np.median(fractions) > 0.9 and min(fractions) > 0.6, fractions


def test_centre_moves_the_field_of_view(tmp_path):
    import json

    import nibabel as nib

    from medvl3d.cli import main

    out = tmp_path / "lungs"
    argv = ["synth", "--out", str(out), "--n-train", "1", "--n-test", "0", "--size", "16x16x16"]
    argv += ["--spacing", "6,7,7", "--centre", "75,5,-3", "--workers", "1", "--no-progress"]
    assert main(argv) == 0
    img = nib.load(next(out.rglob("train_1_a_1.nii.gz")))
    centre = img.affine @ np.array([7.5, 7.5, 7.5, 1.0])  # the middle of the 16^3 grid, RAS mm
    assert np.allclose(centre[:3], [-3, 5, 75])  # --centre is z,y,x like --size and --spacing
    args = json.loads((out / "splits.json").read_text(encoding="utf-8"))["args"]
    assert args["centre"] == [75.0, 5.0, -3.0]
    with pytest.raises(ValueError, match="wide variation"):
        from medvl3d.data.synth import generate

        generate(tmp_path / "w", n_train=1, n_test=0, centre=LUNG_CENTRE, variation="wide")
