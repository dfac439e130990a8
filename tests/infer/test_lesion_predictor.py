"""The Predictor and the visual report with a lesion-segmentation (``malenia`` family) checkpoint:
``segment(describe=... | attributes=...)`` goes through the family's segmenter, the result keeps the input's
grid and carries its lesions, and what a lesion model cannot answer is a one-line error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medvl3d.infer import Predictor
from medvl3d.infer.segmentation import Lesion, SegmentationResult


@pytest.fixture(scope="module")
def lesion_checkpoint(tmp_path_factory):
    """An untrained `test_malenia` checkpoint on the SynthCT-VL demo grid (one 32^3 window per volume)."""
    from medvl3d.models import create_model
    from medvl3d.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = create_model("test_malenia")
    info = {
        "model": {"name": "test_malenia", "family": "malenia", "config": model.config.to_dict()},
        "preprocess": {"spacing": None, "intensity": {"ct_window": [-200.0, 300.0]}},
        "modality": "CT",
        "label_names": {"0": "background", "1": "lesion"},
        "inference": {"patch_size": [32, 32, 32], "overlap": 0.0},
        "lesion_types": {},
    }
    return save_checkpoint(tmp_path_factory.mktemp("lesion_ckpt") / "checkpoints", 1, model, info)


def _case(root):
    return sorted((root / "valid").glob("valid_*/valid_*_a/valid_*_a_1.nii.gz"))[0]


def test_segment_by_description_or_attributes(lesion_checkpoint, synth_small):
    pred = Predictor.from_checkpoint(lesion_checkpoint, device="cpu").set_volume(_case(synth_small))
    assert pred.family == "malenia" and pred.outputs == "lesions"
    described = pred.segment(describe="a round hypodense lesion in the liver with well-defined margins")
    by_values = pred.segment(attributes={"organ": "liver", "density": "hypodense"})
    for result in (described, by_values, pred.segment()):
        assert isinstance(result, SegmentationResult)
        assert result.mask.shape == pred.volume.shape
        assert all(isinstance(lesion, Lesion) for lesion in result.lesions)
        ids = {int(i) for i in np.unique(result.mask)} - {0}
        assert ids == {lesion.id for lesion in result.lesions}  # every labelled region is a listed lesion
    with pytest.raises(ValueError, match="targets= picks labels of organ models"):
        pred.segment(targets="liver")
    with pytest.raises(ValueError, match="describe= or attributes=, not both"):
        pred.segment(describe="a cyst", attributes={"density": "hypodense"})


def test_report_with_a_lesion_model(lesion_checkpoint, synth_seg, synth_small):
    from medvl3d.viz.report import build_report

    report = build_report(
        _case(synth_small),
        [synth_seg, lesion_checkpoint],
        describe="a round hypodense lesion in the liver",
        device="cpu",
    )
    organs, lesions = report.runs
    assert (organs.outputs, lesions.outputs) == ("logits", "lesions")
    assert lesions.segmentation.mask.shape == report.volume.shape
    page = report.to_html()
    assert "No lesion table: none of these checkpoints" not in page
    if lesions.segmentation.lesions:
        assert "<th>lesion</th>" in page
    else:
        assert "No lesion found by" in page


def test_segment_command_with_a_lesion_model(lesion_checkpoint, synth_small, tmp_path, capsys):
    import json

    import nibabel as nib

    from medvl3d.cli import main

    case = _case(synth_small)
    out = tmp_path / "lesions.nii.gz"
    args = ["segment", str(case), "--checkpoint", str(lesion_checkpoint), "-o", str(out)]
    assert main([*args, "--attributes", "organ=liver,density=hypodense"]) == 0
    printed = capsys.readouterr().out
    written = nib.load(str(out))
    source = nib.load(str(case))
    assert written.shape == source.shape and np.allclose(written.affine, source.affine)
    record = json.loads(out.with_name("lesions.json").read_text(encoding="utf-8"))
    assert len(record["lesions"]) == printed.count("lesion: {")
    assert main([*args, "--describe", "a round hypodense lesion in the liver"]) == 0
    capsys.readouterr()
    for extra, message in (
        (["--largest-component", "all"], "--largest-component: applies to organ labels"),
        (["--attributes", "organ=liver,colour=green"], "colour"),
    ):
        assert main([*args, *extra]) != 0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err


def test_describe_with_an_organ_model_names_the_family_it_needs(synth_seg, synth_small, tmp_path, capsys):
    from medvl3d.cli import main

    out = tmp_path / "m.nii.gz"
    code = main(
        [
            "segment",
            str(_case(synth_small)),
            "--checkpoint",
            str(synth_seg),
            "-o",
            str(out),
            "--describe",
            "a cyst",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1
    assert "needs a lesion-segmentation ('malenia' family) checkpoint" in err and not out.exists()
