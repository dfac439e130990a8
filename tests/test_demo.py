"""`medvl3d demo`: its config ships inside the package; its labeller step reads the generated CT-RATE CSVs."""

from __future__ import annotations

import csv
from importlib import resources
from pathlib import Path

import pytest

import medvl3d
from medvl3d.config import load_config
from medvl3d.demo import CONFIG_NAME, _label_generated_reports, demo_config
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
    assert cfg.data.text_source == "summary" and cfg.data.preprocess["spatial_size"] == [32, 32, 32]


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
