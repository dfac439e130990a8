"""`medvl3d report` and the evaluation pages: what the page holds for each model family, the
out-of-distribution warning on a real CT, the lesion table hook, one-line errors, self-contained HTML."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest

from medvl3d.cli import main
from medvl3d.infer.predictor import OutOfDistributionWarning
from medvl3d.infer.segmentation import Lesion
from medvl3d.models.checkpoint import read_info
from medvl3d.viz.report import VolumeReport, build_report


def _case(root, i=0):
    return sorted((root / "valid").glob("valid_*/valid_*_a/valid_*_a_1.nii.gz"))[i]


def _images(page: str) -> int:
    return len(re.findall(r'<img src="data:image/png;base64,', page))


@pytest.fixture(scope="module")
def synth_report(synth_small, synth_vl_calibrated, synth_seg) -> VolumeReport:
    labels = ["Cardiomegaly", "Pleural effusion", "Emphysema"]
    return build_report(_case(synth_small, 3), [synth_vl_calibrated, synth_seg], labels=labels, device="cpu")


def test_report_of_a_diagnosis_and_an_organ_model(synth_report, synth_small):
    vl, seg = synth_report.runs
    assert (vl.family, seg.family) == ("vl", "seg")
    assert list(vl.diagnosis) == ["Cardiomegaly", "Pleural effusion", "Emphysema"]
    assert vl.ood is not None and seg.ood is None  # an organ checkpoint holds no reference
    assert seg.segmentation.mask.shape == synth_report.volume.shape
    content = json.loads(json.dumps(synth_report.to_dict(), allow_nan=False))
    assert content["runs"][0]["provenance"]["calibration"]["method"] == "isotonic"
    assert content["runs"][1]["provenance"]["sliding_window"]["patch_size"] == [32, 32, 32]
    assert content["geometry"]["spacing_mm"] == [11.0, 11.0, 10.0]

    page = synth_report.to_html()
    present = [i for i in np.unique(seg.segmentation.mask) if i != 0]
    assert _images(page) == 1 + 1 + len(present)  # probability bars, overview, one figure per structure
    assert "<script" not in page and "http" not in page.split("<body>")[1]  # self-contained, no fetches
    for label in vl.diagnosis:
        assert f"<td>{label}</td>" in page
    assert "Not checked for being out of distribution: synth_seg" in page  # the organ model
    assert "No lesion table: none of these checkpoints is a lesion-segmentation model" in page
    assert "&quot;ct_window&quot;" in page  # preprocessing provenance, escaped JSON
    # a case of the split the reference was fitted on: within the distribution
    assert vl.ood.out_of_distribution is False and "Within the training distribution" in page
    assert "Out of the training distribution" not in page


def test_real_ct_report_carries_the_warning_and_calibrated_probabilities(
    synth_vl_calibrated, synth_seg, real_dir, tmp_path, capsys
):
    volume = real_dir / "totalseg" / "example_ct_sm.nii.gz"
    out, js = tmp_path / "r" / "report.html", tmp_path / "r" / "report.json"
    args = ["report", str(volume), "--checkpoint", str(synth_vl_calibrated), "--checkpoint", str(synth_seg)]
    with pytest.warns(OutOfDistributionWarning):
        assert main([*args, "-o", str(out), "--json", str(js), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip() == f"report: {out.resolve()} (OUT OF DISTRIBUTION)"
    content = json.loads(js.read_text(encoding="utf-8"))
    assert content["out_of_distribution"] is True
    diagnosis = content["runs"][0]["diagnosis"]
    assert list(diagnosis["probabilities"]) == read_info(synth_vl_calibrated)["labels"]  # the trained labels
    for label, p in diagnosis["probabilities"].items():
        assert p <= diagnosis["max_supported"][label] + 1e-12
    page = out.read_text(encoding="utf-8")
    assert "Out of the training distribution" in page and "field of view 366 x 303 x 90 mm" in page
    assert "out of distribution: read with caution" not in page  # drawn inside the chart, not as text
    assert page.index('class="warn"') < page.index("Diagnosis:")  # the warning comes first


def test_lesion_rows_plug_into_the_report(synth_report):
    seg = synth_report.runs[1].segmentation
    seg.lesions.append(
        Lesion(7, "hepatocellular carcinoma", 12.5, {"shape": "irregular", "density": "hypo"}, 0.8)
    )
    try:
        page = synth_report.to_html()
    finally:
        seg.lesions.clear()
    assert "<th>density</th><th>shape</th>" in page
    row = '<td class="num">7</td><td>hepatocellular carcinoma</td><td class="num">12.50</td><td>hypo</td>'
    assert row + "<td>irregular</td><td>0.80</td>" in page
    assert synth_report.to_dict()["runs"][1]["segmentation"]["lesions"] == []


def test_a_report_without_matplotlib_keeps_its_text_and_says_how_to_get_images(synth_report, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # a plain `pip install medvl3d` (no viz extra)
    page = synth_report.to_html()
    assert _images(page) == 0 and "<img" not in page
    assert "they need matplotlib: pip install &#x27;medvl3d[viz]&#x27;" in page
    for label in synth_report.runs[0].diagnosis:
        assert f"<td>{label}</td>" in page  # the probabilities are still there, as a table
    assert "<td>liver</td>" in page or "Not found: " in page  # and the structures with their volumes


def test_report_errors_are_one_line(
    synth_vl_calibrated, synth_seg, synth_small, tmp_path, capsys, monkeypatch
):
    volume = str(_case(synth_small))
    base = ["report", volume, "--checkpoint", str(synth_seg)]
    cases = [
        ([*base, "-o", volume], "refusing to write over the input"),
        (
            [*base, "-o", str(tmp_path / "r.html"), "--describe", "a round hypodense liver lesion"],
            "--describe needs a lesion-segmentation (Malenia) checkpoint",
        ),
        (
            [*base, "-o", str(tmp_path / "r.html"), "--targets", "liver, brain"],
            "unknown segmentation targets ['brain']",
        ),
        ([*base, "-o", str(tmp_path / "r.html"), "--window", "100", "-100"], "--window: need LOW < HIGH"),
        ([*base, "-o", str(tmp_path)], "is a folder"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "r.html").exists()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main([*base, "-o", str(tmp_path / "r.html")]) == 2
    assert capsys.readouterr().err.strip() == (
        "medvl3d report: error: medvl3d report needs matplotlib, which is not installed: "
        "pip install 'medvl3d[viz]'"
    )


def test_targets_keep_only_the_named_structures(synth_seg, synth_small):
    report = build_report(_case(synth_small), [synth_seg], targets="liver, spleen", device="cpu")
    seg = report.runs[0].segmentation
    assert set(np.unique(seg.mask)) <= {0, 1, 2}
    assert set(seg.label_names.values()) == {"background", "liver", "spleen"}


def test_evaluation_pages(synth_seg, synth_small, tmp_path, capsys):
    html = tmp_path / "seg.html"
    args = [
        "evaluate",
        "segmentation",
        "--checkpoint",
        str(synth_seg),
        "--data",
        str(synth_small),
        "--format",
        "msd",
    ]
    assert main([*args, "--html", str(html), "--device", "cpu"]) == 0
    page = html.read_text(encoding="utf-8")
    assert _images(page) == 1 and "Dice per case and class" in page and "Segmentation of 24 cases" in page
    assert main([*args, "--html", str(synth_small)]) == 2
    assert "refusing to write over the input" in capsys.readouterr().err
