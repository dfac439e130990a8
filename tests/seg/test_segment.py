"""`medvl3d segment` and the Predictor on segmentation checkpoints: masks overlay the input exactly (real
NIfTI and DICOM CTs), per-label volumes, wrong-family checkpoints, atomic writes."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from medvl3d.cli import main
from medvl3d.data.io import read_volume
from medvl3d.infer import Predictor
from medvl3d.models import create_model
from medvl3d.models.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def coarse_seg(tmp_path_factory):
    """An untrained segmentation checkpoint on a 6 mm grid (fast on whole real CTs; geometry is the point)."""
    torch.manual_seed(0)
    model = create_model("test_resenc_seg", n_classes=3)
    info = {
        "model": {"name": "test_resenc_seg", "family": "seg", "config": model.config.to_dict()},
        "preprocess": {"spacing": [6.0, 6.0, 6.0], "intensity": {"ct_window": [-200.0, 300.0]}},
        "modality": "CT",
        "label_names": {"0": "background", "1": "a", "2": "b"},
        "inference": {"patch_size": [32, 32, 16], "overlap": 0.25},
    }
    return save_checkpoint(tmp_path_factory.mktemp("coarse") / "checkpoints", 1, model, info)


@pytest.mark.parametrize("case", ["totalseg/example_ct_sm.nii.gz", "totalseg/dicom_series", "pulmonary"])
def test_masks_of_real_cts_overlay_the_input_exactly(real_dir, coarse_seg, tmp_path, case, capsys):
    source = real_dir / (case if case != "pulmonary" else "totalseg/pulmonary/ct_cropped.nii.gz")
    out = tmp_path / "mask.nii.gz"
    assert main(["segment", str(source), "--checkpoint", str(coarse_seg), "-o", str(out)]) == 0
    mask = nib.load(str(out))
    if source.is_dir():  # a DICOM series: compare with the grid the reader builds
        vol = read_volume(source)
        assert mask.shape == vol.source_shape
        np.testing.assert_allclose(mask.affine, vol.source_affine, atol=1e-4)
    else:
        ref = nib.load(str(source))
        assert mask.shape == ref.shape
        np.testing.assert_allclose(mask.affine, ref.affine, atol=1e-5)
        assert nib.aff2axcodes(mask.affine) == nib.aff2axcodes(ref.affine)  # LPS stays LPS
    data = np.asarray(mask.dataobj)
    assert data.dtype == np.uint8 and set(np.unique(data)) <= {0, 1, 2}
    volumes = json.loads((tmp_path / "mask.json").read_text())
    assert set(volumes["labels"]) == {"a", "b"}
    ml = abs(np.linalg.det(mask.affine[:3, :3])) / 1000
    assert volumes["labels"]["a"]["volume_ml"] == pytest.approx((data == 1).sum() * ml)
    assert "mask: " in capsys.readouterr().out


def test_a_learned_mask_lands_where_the_structures_are(trained_seg, blob_task, tmp_path):
    image = blob_task / "imagesTr" / "blob_009.nii.gz"
    result = Predictor.from_checkpoint(trained_seg).set_volume(image).segment()
    truth = np.asarray(nib.load(str(blob_task / "labelsTr" / "blob_009.nii.gz")).dataobj)
    for c in (1, 2):
        dice = 2 * ((result.mask == c) & (truth == c)).sum() / ((result.mask == c).sum() + (truth == c).sum())
        assert dice > 0.7, (c, dice)
    assert result.volumes_ml()["ball"] == pytest.approx((result.mask == 1).sum() * 2 * 2 * 3 / 1000)


def test_wrong_family_checkpoints_are_one_line_errors(coarse_seg, tmp_path, capsys, real_dir):
    ct = str(real_dir / "totalseg" / "example_ct_sm.nii.gz")
    vl = create_model("test_vit_clip")
    vl_info = {"model": {"name": "test_vit_clip", "family": "vl", "config": vl.config.to_dict()}}
    vl_ckpt = save_checkpoint(tmp_path / "vl", 1, vl, vl_info)
    assert main(["segment", ct, "--checkpoint", str(vl_ckpt), "-o", str(tmp_path / "m.nii.gz")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs a segmentation checkpoint" in err and str(vl_ckpt) in err
    assert not (tmp_path / "m.nii.gz").exists()
    assert main(["diagnose", ct, "--checkpoint", str(coarse_seg), "--labels", "emphysema"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs a vision-language checkpoint" in err and "'seg'" in err
    assert main(["evaluate", "segmentation", "--checkpoint", str(vl_ckpt), "--data", str(tmp_path)]) == 2
    assert "needs a segmentation checkpoint" in capsys.readouterr().err


def test_segment_refuses_its_input_and_leaves_no_partial_mask(
    coarse_seg, real_dir, tmp_path, monkeypatch, capsys
):
    ct = real_dir / "totalseg" / "example_ct_sm.nii.gz"
    assert main(["segment", str(ct), "--checkpoint", str(coarse_seg), "-o", str(ct)]) == 2
    assert "refusing to write over an input" in capsys.readouterr().err

    def dies(img, filename):  # a crash half-way through writing the file
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", dies)
    out = tmp_path / "mask.nii.gz"
    assert main(["segment", str(ct), "--checkpoint", str(coarse_seg), "-o", str(out)]) == 2
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_segment_targets_and_lesion_prompts(coarse_seg, real_dir):
    pred = Predictor.from_checkpoint(coarse_seg, device="cpu").set_volume(
        real_dir / "totalseg" / "example_ct_sm.nii.gz"
    )
    full = pred.segment()
    only_b = pred.segment(targets=["B"])  # names are matched case-insensitively
    assert only_b.label_names == {0: "background", 2: "b"}
    np.testing.assert_array_equal(only_b.mask, np.where(full.mask == 2, 2, 0))
    assert set(only_b.volumes_ml()) == {"b"} and only_b.lesions == []
    assert json.loads(only_b.to_json())["labels"]["b"]["voxels"] == int((only_b.mask == 2).sum())
    with pytest.raises(
        ValueError, match=r"unknown segmentation targets \['c'\]; this checkpoint segments \['a', 'b'\]"
    ):
        pred.segment(targets="a, c")
    for prompt in ({"describe": "a round hypodense lesion"}, {"attributes": {"density": "hypodense"}}):
        with pytest.raises(
            ValueError,
            match=r"needs a lesion-segmentation \('malenia' family\) checkpoint, but this one holds a 'seg'",
        ):
            pred.segment(**prompt)


def test_largest_component_keeps_one_piece_of_the_named_labels_only(coarse_seg, real_dir, tmp_path):
    from scipy import ndimage

    pred = Predictor.from_checkpoint(coarse_seg, device="cpu").set_volume(
        real_dir / "totalseg" / "example_ct_sm.nii.gz"
    )
    full = pred.segment()
    pieces = {i: ndimage.label(full.mask == i, np.ones((3, 3, 3)))[1] for i in (1, 2)}
    assert max(pieces.values()) > 1  # the untrained model scatters its labels: something to remove
    kept = pred.segment(largest_component="a")
    comps, n = ndimage.label(full.mask == 1, np.ones((3, 3, 3)))
    if n:
        largest = np.bincount(comps.ravel())[1:].argmax() + 1
        np.testing.assert_array_equal(kept.mask == 1, comps == largest)
    np.testing.assert_array_equal(kept.mask == 2, full.mask == 2)  # "b" was not named: untouched
    every = pred.segment(largest_component="all")
    for i in (1, 2):
        assert ndimage.label(every.mask == i, np.ones((3, 3, 3)))[1] == min(pieces[i], 1)
    with pytest.raises(ValueError, match=r"unknown segmentation targets \['c'\]"):
        pred.segment(largest_component="c")
    out = tmp_path / "m.nii.gz"
    source = real_dir / "totalseg" / "example_ct_sm.nii.gz"
    assert (
        main(
            [
                "segment",
                str(source),
                "--checkpoint",
                str(coarse_seg),
                "-o",
                str(out),
                "--largest-component",
                "all",
            ]
        )
        == 0
    )
    np.testing.assert_array_equal(np.asarray(read_volume(out, modality="unknown").array), every.mask)
