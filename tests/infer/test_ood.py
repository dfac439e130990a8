"""Out-of-distribution checks: input profiles measured by hand, range checks with their tolerances, the
conformal embedding threshold, and the stored form giving the same verdicts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medvl3d.data.io import Volume
from medvl3d.infer.ood import DistributionReference, fit_reference, input_profile


def ct(shape=(10, 20, 30), spacing=(2.0, 2.0, 3.0), soft=0.5, seed=0) -> Volume:
    """Air (-1000 HU) with a fraction `soft` of voxels at 40 HU."""
    rng = np.random.default_rng(seed)
    array = np.where(rng.random(shape) < soft, 40, -1000).astype(np.int16)
    return Volume(array, np.diag([*spacing, 1.0]), spacing, "RAS", "CT")


def test_input_profile_hand_computed():
    vol = ct()
    p = input_profile(vol)
    assert p.fov_mm == (20.0, 40.0, 90.0) and p.spacing_mm == (2.0, 2.0, 3.0)
    soft = float((vol.array == 40).mean())
    assert p.intensity["soft_tissue_fraction"] == pytest.approx(soft)
    assert p.intensity["air_fraction"] == pytest.approx(1 - soft)
    assert p.intensity["lung_fraction"] == p.intensity["bone_fraction"] == p.intensity["fat_fraction"] == 0
    mr = input_profile(Volume(vol.array, vol.affine, vol.spacing, "RAS", "MR"))
    assert mr.intensity == {}  # HU bands mean nothing for MR


def test_profile_ranges_flag_what_the_reference_never_had():
    ref = fit_reference([input_profile(ct(seed=s, soft=0.4 + 0.02 * s)) for s in range(5)])
    assert ref.ranges["fov_z"] == (90.0, 90.0)
    same = ref.check(input_profile(ct(seed=9, soft=0.45)))
    assert not same.out_of_distribution and same.checked == ["input profile"]
    # within the tolerances: 20% more field of view, spacing x1.2, 1-8 points more or less soft tissue
    for near in (ct(shape=(12, 24, 36), soft=0.49), ct(spacing=(2.4, 2.4, 3.0), soft=0.39)):
        verdict = ref.check(input_profile(near))
        assert not verdict.out_of_distribution, verdict.reasons
    far = ref.check(input_profile(ct(shape=(10, 20, 10), spacing=(0.5, 0.5, 3.0), soft=0.9)))
    assert far.out_of_distribution
    text = " | ".join(far.reasons)
    assert "field of view 5 x 10 x 30 mm (reference 20 x 40 x 90 mm)" in text
    assert "voxel spacing 0.5 x 0.5 x 3 mm (reference 2 x 2 x 3 mm)" in text
    assert "soft tissue 90% of voxels (reference 40-48%)" in text
    assert "out of the training distribution" in far.message("scan.nii.gz")
    mr = ref.check(
        input_profile(Volume(np.zeros((10, 20, 30)), np.diag([2.0, 2, 3, 1]), (2, 2, 3), "RAS", "MR"))
    )
    assert "modality MR (reference CT)" in mr.reasons


def test_embedding_threshold_is_the_conformal_quantile_of_leave_one_out_distances():
    rng = np.random.default_rng(0)
    centre = rng.normal(size=16)
    emb = centre + 0.3 * rng.normal(size=(99, 16))
    ref = fit_reference([], emb, alpha=0.01)
    bank = ref.embeddings
    dist = 1 - bank @ bank.T
    np.fill_diagonal(dist, np.inf)
    loo = np.sort(dist.min(axis=1))
    assert ref.threshold == pytest.approx(loo[98])  # ceil(100 * 0.99) = 99th smallest of 99: the largest
    inside = ref.check(None, emb[5])
    assert not inside.out_of_distribution and inside.nearest_distance == pytest.approx(0.0, abs=1e-3)
    outside = ref.check(None, -centre)
    assert outside.out_of_distribution and outside.nearest_distance > ref.threshold
    assert outside.checked == ["embedding"] and "image embedding" in outside.reasons[0]
    with pytest.raises(ValueError, match="embedding of size 8 against a reference of size 16"):
        ref.check(None, np.ones(8))
    with pytest.raises(ValueError, match="at least 2 cases"):
        fit_reference([], emb[:1])


def test_stored_reference_gives_the_same_verdicts():
    rng = np.random.default_rng(1)
    profiles = [input_profile(ct(seed=s)) for s in range(6)]
    emb = rng.normal(size=(6, 8))
    ref = fit_reference(profiles, emb)
    again = DistributionReference.from_dict(json.loads(json.dumps(ref.to_dict())))
    for query in (emb[2], rng.normal(size=8)):
        for profile in (profiles[0], input_profile(ct(spacing=(1.0, 1.0, 1.0)))):
            a, b = ref.check(profile, query), again.check(profile, query)
            assert a.to_dict() == b.to_dict()
    with pytest.raises(ValueError, match="ckpt: malformed out-of-distribution reference"):
        DistributionReference.from_dict({"ranges": {}}, "ckpt")
