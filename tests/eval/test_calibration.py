"""`medvl3d evaluate diagnosis --calibrate`: stored in config.json without touching the weights, older
checkpoints score as before, and on real CTs a SynthCT-VL-trained model says it is out of its depth."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import warnings

import numpy as np
import pytest

from medvl3d.cli import main
from medvl3d.infer import Predictor
from medvl3d.infer.calibration import sigmoid
from medvl3d.infer.predictor import OutOfDistributionWarning
from medvl3d.models.checkpoint import resolve_checkpoint

REAL_CTS = ("totalseg/example_ct_sm.nii.gz", "totalseg/dicom_series", "totalseg/pulmonary/ct_cropped.nii.gz")


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _case(root, split="valid", i=0):
    return sorted((root / split).glob(f"{split}_*/{split}_*_a/{split}_*_a_1.nii.gz"))[i]


def test_calibrate_cli_stores_the_fit_and_leaves_the_weights_alone(synth_vl, synth_small, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(synth_vl, run)
    folder = resolve_checkpoint(run)
    weights, before = (
        _sha(folder / "model.safetensors"),
        json.loads((folder / "config.json").read_text(encoding="utf-8")),
    )
    args = ["evaluate", "diagnosis", "--checkpoint", str(run), "--data", str(synth_small), "--bootstrap", "0"]
    out, html = tmp_path / "eval.json", tmp_path / "eval.html"
    assert main([*args, "--calibrate", "platt", "-o", str(out), "--html", str(html)]) == 0
    captured = capsys.readouterr()
    assert re.search(r"calibration \(platt, 24 cases\) stored in .*config\.json", captured.err)
    assert "| raw zero-shot |" in captured.out and "| fresh fit (platt, cross-fitted) |" in captured.out

    assert _sha(folder / "model.safetensors") == weights
    after = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    assert {k: v for k, v in after.items() if k != "calibration"} == before  # nothing else changed
    cal = after["calibration"]
    assert (
        cal["method"] == "platt"
        and cal["fitted_on"]["split"] == "valid"
        and cal["fitted_on"]["n_cases"] == 24
    )
    assert set(cal["labels"]) == set(json.loads(out.read_text(encoding="utf-8"))["labels"])
    assert cal["reference"]["n_cases"] == 24 and cal["reference"]["ranges"]["fov_z"] == [320.0, 320.0]
    assert cal["prompts"] == before["prompts"]
    report = json.loads(out.read_text(encoding="utf-8"))["calibration"]
    assert report["kinds"] == ["raw", "cross_fitted"] and report["macro"]["raw"]["ece"] >= 0
    page = html.read_text(encoding="utf-8")
    assert (
        page.count("<img ") == 3 and "Calibration" in page and "ROC curves" in page
    )  # groups, ROC, reliability

    # A calibrated checkpoint evaluates its stored calibration too, marked as fitted on these cases.
    assert main([*args, "--json"]) == 0
    again = json.loads(capsys.readouterr().out)["calibration"]
    assert again["kinds"] == ["raw", "stored"] and again["stored_in_sample"] is True


def test_uncalibrated_checkpoints_score_exactly_as_before(synth_vl, synth_vl_calibrated, synth_small):
    volume = _case(synth_small)
    old = Predictor.from_checkpoint(synth_vl, device="cpu").set_volume(volume)
    result = old.diagnose(["Cardiomegaly", "Pleural effusion"])
    assert dict(result) == result.raw and set(result.calibration.values()) == {"none"}
    assert result.ood is None and result.out_of_distribution is None
    assert result.notes == ["uncalibrated: fit with `medvl3d evaluate diagnosis --calibrate`"]
    with np.errstate(all="ignore"):
        expected = sigmoid(old.logits(old.image_embedding, ["Cardiomegaly"]))[0, 0]
    assert result["Cardiomegaly"] == pytest.approx(float(expected), rel=1e-9)

    new = Predictor.from_checkpoint(synth_vl_calibrated, device="cpu").set_volume(volume)
    calibrated = new.diagnose(["Cardiomegaly", "Pleural effusion"])
    assert calibrated.raw == pytest.approx(result.raw, rel=1e-6)  # same weights, same raw scores
    assert calibrated.calibration == {"Cardiomegaly": "label", "Pleural effusion": "label"}
    assert (
        new.diagnose(["Lung nodule", "a label nobody trained"]).calibration["a label nobody trained"]
        == "pooled"
    )
    json.loads(calibrated.to_json())  # strict JSON


def test_calibrating_on_the_training_split_or_with_other_prompts(
    synth_vl_calibrated, synth_small, tmp_path, capsys
):
    args = ["evaluate", "diagnosis", "--checkpoint", str(synth_vl_calibrated), "--data", str(synth_small)]
    assert main([*args, "--split", "train", "--calibrate", "isotonic", "--bootstrap", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "split 'train' is the data" in err and "held-out" in err
    from medvl3d.text.prompts import PromptSet

    other = PromptSet(positive=("{} is present.",), negative=("{} is not present.",))
    pred = Predictor.from_checkpoint(synth_vl_calibrated, "cpu", other).set_volume(_case(synth_small))
    result = pred.diagnose(["Cardiomegaly"])
    assert result.calibration == {"Cardiomegaly": "none"} and dict(result) == result.raw
    assert "calibrated with other prompts" in result.notes[0]
    assert pred.ood is not None  # the reference does not depend on the prompts


@pytest.mark.parametrize("case", REAL_CTS)
def test_real_cts_are_out_of_distribution_and_capped_by_calibration(
    case, synth_vl_calibrated, real_dir, capsys
):
    pred = Predictor.from_checkpoint(synth_vl_calibrated, device="cpu")
    with pytest.warns(OutOfDistributionWarning, match="out of the training distribution"):
        pred.set_volume(real_dir / case)
    labels = list(pred.calibration.labels)
    result = pred.diagnose(labels)
    assert result.out_of_distribution is True
    reasons = " ".join(result.ood.reasons)
    assert (
        "field of view" in reasons and "voxel spacing" in reasons
    )  # 32^3 torsos at ~1 cm, never a 3 mm slab
    for label in labels:
        assert result[label] <= result.max_supported[label] + 1e-12
        assert result.max_supported[label] < 1.0
    # the CLI: the warning (one line on a terminal, see test_hostile_inputs), the verdict in the JSON
    argv = [
        "diagnose",
        str(real_dir / case),
        "--checkpoint",
        str(synth_vl_calibrated),
        "--labels",
        "Cardiomegaly",
    ]
    with pytest.warns(
        OutOfDistributionWarning, match=r"field of view .* mm \(reference 352 x 352 x 320 mm\)"
    ):
        assert main([*argv, "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["out_of_distribution"]["out_of_distribution"] is True
    with pytest.warns(OutOfDistributionWarning):
        assert main([*argv, "--device", "cpu"]) == 0
    assert "OUT OF DISTRIBUTION" in capsys.readouterr().out.splitlines()[-1]


def test_a_training_case_is_within_the_distribution(synth_vl_calibrated, synth_small):
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutOfDistributionWarning)
        pred = Predictor.from_checkpoint(synth_vl_calibrated, device="cpu").set_volume(
            _case(synth_small, "train")
        )
    assert pred.ood.out_of_distribution is False and pred.ood.checked == ["input profile", "embedding"]
