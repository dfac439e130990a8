"""Hostile and clumsy inputs, end to end: each one gets exactly one outcome, asserted here.

* a one-line error naming the file or option (exit status 2, no traceback),
* a one-line warning and a correct result, or
* a correct result.

The matrix covers volume headers, text and CSV files, checkpoints, command-line options and output paths.
DICOM series geometry, the preprocessing cache and run folders have their own files
(``tests/data/test_dicom_geometry.py``, ``tests/data/test_cache_sources.py``,
``tests/train/test_run_folder.py``).
"""

from __future__ import annotations

import csv
import io
import json
import re
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medvl3d import cli
from medvl3d.cli import main
from medvl3d.data.io import GeometryWarning, read_volume

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "clip_synth_tiny.yaml"


def _nifti(path: Path, affine: np.ndarray, data: np.ndarray | None = None) -> Path:
    """A NIfTI whose sform is exactly ``affine`` (nibabel would refuse to build some of these itself)."""
    data = np.zeros((6, 7, 8), np.int16) if data is None else data
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(data.shape)
    hdr.set_data_dtype(data.dtype)
    hdr["pixdim"][1:4] = 1.0
    hdr["qform_code"], hdr["sform_code"] = 0, 1
    hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = affine[0], affine[1], affine[2]
    nib.save(nib.Nifti1Image(data, None, hdr), str(path))
    return path


def _rotation_z(degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    out = np.eye(4)
    out[:2, :2] = [[c, -s], [s, c]]
    return out


def _one_line_error(capsys, command: str, *needles: str) -> str:
    """The single error line of the last `main` call: it names what it must and nothing else is printed."""
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"medvl3d {command}: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)
    return lines[0]


# --- volume headers --------------------------------------------------------------------------------------

BAD_HEADERS = {
    "all-zero affine": (np.zeros((4, 4)), "voxel sizes 0 x 0 x 0 mm: an axis of zero length"),
    "zero slice spacing": (np.diag([1.0, 1.0, 0.0, 1.0]), "voxel sizes 1 x 1 x 0 mm"),
    "NaN affine": (np.diag([1.0, np.nan, 1.0, 1.0]), "affine (voxel -> world map) holds NaN"),
    "parallel axes": (
        np.array([[1.0, 1.0, 0, 0], [0, 0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]]),
        "voxel axes are parallel",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_headers_that_cannot_place_the_image_are_one_line_errors(tmp_path, capsys, case):
    affine, message = BAD_HEADERS[case]
    path = _nifti(tmp_path / "bad.nii.gz", affine)
    assert main(["info", str(path)]) == 2
    _one_line_error(capsys, "info", f"{path}: ", message)


def test_a_single_voxel_is_not_a_volume(tmp_path, capsys):
    path = _nifti(tmp_path / "one.nii.gz", np.eye(4), np.zeros((1, 1, 1), np.int16))
    assert main(["info", str(path)]) == 2
    _one_line_error(capsys, "info", f"{path}: image shape (1, 1, 1) has fewer than 2 voxels along an axis")


UNUSUAL_HEADERS = {
    "1000 mm voxels": (
        np.diag([1000.0, 1000.0, 1000.0, 1.0]),
        r"voxel size 1000 x 1000 x 1000 mm is implausible",
    ),
    "1 micrometre voxels": (np.diag([0.001, 0.001, 0.001, 1.0]), r"voxel size 0.001 x 0.001 x 0.001 mm"),
    "sheared axes": (
        np.array([[1.0, 0.5, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]]),
        r"voxel axes are sheared \(they meet 27 degrees off a right angle\)",
    ),
    "oblique axes": (_rotation_z(20.0), r"oblique to the patient axes by up to 20\.0 degrees"),
}


@pytest.mark.parametrize("case", sorted(UNUSUAL_HEADERS))
def test_unusual_headers_warn_and_still_read(tmp_path, case):
    affine, message = UNUSUAL_HEADERS[case]
    path = _nifti(tmp_path / "odd.nii.gz", affine)
    with pytest.warns(GeometryWarning, match=rf"{re.escape(str(path))}: .*{message}"):
        vol = read_volume(path)
    assert vol.shape == (6, 7, 8)


def test_ordinary_and_slightly_oblique_headers_read_silently(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_volume(_nifti(tmp_path / "plain.nii.gz", np.diag([0.7, 0.7, 2.5, 1.0])))
        read_volume(_nifti(tmp_path / "tilted.nii.gz", _rotation_z(0.5)))  # scanner rounding, not oblique


def test_warnings_are_printed_as_one_line():
    fmt = cli.warning_formatter("medvl3d info")
    # a multi-line message keeps its last line, as errors do (one_line)
    assert fmt(GeometryWarning("a\n  ValueError: x: sheared"), GeometryWarning, "io.py", 1) == (
        "medvl3d info: warning: x: sheared\n"
    )
    assert fmt("plain message", UserWarning, "io.py", 1) == "medvl3d info: warning: plain message\n"


def test_resampling_a_1000_mm_header_is_refused_before_allocating(tmp_path, capsys):
    image = _nifti(
        tmp_path / "huge.nii.gz", np.diag([1000.0, 1000.0, 1000.0, 1.0]), np.zeros((64, 64, 64), np.int16)
    )
    manifest = tmp_path / "cases.jsonl"
    manifest.write_text(json.dumps({"image": str(image), "case_id": "huge"}) + "\n", encoding="utf-8")
    with pytest.warns(GeometryWarning, match="implausible"):
        code = main(["preprocess", str(manifest), "--out", str(tmp_path / "cache"), "--no-progress"])
    assert code == 2
    _one_line_error(
        capsys,
        "preprocess",
        "case huge: ",
        str(image),
        "would make 42666x42666x42666 voxels",
        "over the limit",
    )


# --- text and CSV files ----------------------------------------------------------------------------------


def _csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


GERMAN = "Beidseitiger Pleuraerguss. Kein Nachweis von Lungenrundherden. Herz normal groß."


@pytest.mark.parametrize(("text", "problem"), [("", "empty"), ("...", "no words"), (GERMAN, "not English")])
def test_summaries_of_unreadable_reports_are_flagged(capsys, text, problem):
    with pytest.warns(UserWarning, match=rf"1 of 1 reports cannot be read \(1 {problem}\)"):
        assert main(["text", "summarize", "--text", text]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record == {"index": 0, "summary": "no acute findings.", "problem": problem}


def test_summaries_carry_a_problem_column_and_a_row_id(tmp_path):
    src = _csv(tmp_path / "r.csv", [{"report_text": t} for t in ("Cardiomegaly.", GERMAN, "")])
    out = tmp_path / "s.jsonl"
    with pytest.warns(UserWarning, match=r"2 of 3 reports cannot be read \(1 not English, 1 empty\)"):
        assert main(["text", "summarize", str(src), "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(r["index"], r["problem"]) for r in records] == [(0, ""), (1, "not English"), (2, "empty")]
    assert records[0]["summary"] == "cardiomegaly."


def test_a_200_kb_report_is_labelled(tmp_path, capsys):
    long_report = "Bilateral pleural effusion. " + "The trachea is midline. " * 8500  # ~200 kB in one field
    src = _csv(
        tmp_path / "r.csv", [{"id": "a", "report_text": long_report}, {"id": "b", "report_text": "Normal."}]
    )
    out = tmp_path / "labels.csv"
    assert len(long_report) > 200_000
    assert main(["text", "label", str(src), "--out", str(out)]) == 0
    rows = _read_csv(out)
    assert [(r["index"], r["id"]) for r in rows] == [("0", "a"), ("1", "b")]  # row ids kept
    assert float(rows[0]["Pleural effusion"]) > 0.5 and float(rows[1]["Pleural effusion"]) < 0.5
    assert "-> " in capsys.readouterr().out


def test_a_long_ctrate_report_is_read(tmp_path):
    from medvl3d.data.datasets.ctrate import _read_csv as read_ctrate_csv

    src = _csv(
        tmp_path / "train_reports.csv", [{"VolumeName": "train_1_a_1.nii.gz", "Findings_EN": "x" * 300_000}]
    )
    assert len(read_ctrate_csv(src)["train_1_a_1"]["Findings_EN"]) == 300_000


@pytest.mark.parametrize(
    ("command", "column"), [("label", "report_text"), ("summarize", "report_text"), ("attributes", "report")]
)
def test_writing_over_the_input_is_refused(tmp_path, capsys, command, column):
    src = _csv(tmp_path / "R.csv", [{"id": "1", column: "A 2 cm cyst in the left kidney. Cardiomegaly."}])
    before = src.read_bytes()
    assert main(["text", command, str(src), "--out", str(src)]) == 2
    _one_line_error(capsys, "text", f"{src}: refusing to write over the input")
    assert src.read_bytes() == before


def test_attribute_tables_keep_a_row_id(tmp_path):
    src = _csv(tmp_path / "d.csv", [{"report": "A 2 cm cyst in the left kidney."}] * 2)
    out = tmp_path / "parsed.csv"
    assert main(["text", "attributes", str(src), "--out", str(out)]) == 0
    assert [r["index"] for r in _read_csv(out)] == ["0", "1"]


def _records(tmp_path: Path, reports: list[str]):
    from medvl3d.data.datasets import CaseRecord

    out = []
    for i, report in enumerate(reports):
        image = tmp_path / f"c{i}.nii.gz"
        nib.save(nib.Nifti1Image(np.full((4, 4, 4), -500, np.int16), np.eye(4)), str(image))
        out.append(CaseRecord(case_id=f"c{i}", image=image, report=report))
    return out


def test_brgsa_leaves_unreadable_reports_out_of_training_text(tmp_path):
    from medvl3d.data.datasets import VolumeDataset
    from medvl3d.train.data import TextSourceDataset

    base = VolumeDataset(_records(tmp_path, ["Bilateral pleural effusion.", GERMAN, "", "Cardiomegaly."]))
    with pytest.warns(
        UserWarning, match=r"2 of 4 cases are left out of training.*c1 \(not English\), c2 \(empty\)"
    ):
        ds = TextSourceDataset(base, "summary")
    assert len(ds) == 2
    assert [ds[i]["text"] for i in range(2)] == ["pleural effusion (bilateral).", "cardiomegaly."]
    # an LLM reads German: only the empty report is left out
    with pytest.warns(UserWarning, match=r"1 of 4 cases"):
        llm = TextSourceDataset(
            base, "summary", {"backend": "llm", "url": "http://127.0.0.1:9", "model": "m"}
        )
    assert llm.indices == [0, 1, 3]


def test_brgsa_refuses_an_unreadable_report_it_could_not_list(tmp_path):
    from medvl3d.data.datasets import VolumeDataset
    from medvl3d.train.data import TextSourceDataset

    class NoListing(torch.utils.data.Dataset):  # a dataset that cannot list its reports up front
        def __init__(self, base):
            self.base = base

        def __len__(self):
            return len(self.base)

        def __getitem__(self, i):
            return self.base[i]

    ds = TextSourceDataset(NoListing(VolumeDataset(_records(tmp_path, ["Cardiomegaly.", GERMAN]))), "summary")
    assert ds[0]["text"] == "cardiomegaly."
    with pytest.raises(
        ValueError, match=r"sample 'c1': the 'rule' summariser cannot read its report \(not English\)"
    ):
        ds[1]


# --- checkpoints -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from medvl3d import models
    from medvl3d.models.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = models.create_model("test_vit_clip")
    info = {
        "model": {"name": "test_vit_clip", "family": "vl", "config": model.config.to_dict()},
        "preprocess": {"spacing": None, "spatial_size": [32, 32, 32]},
        "task": "clip",
        "modality": "CT",
        "labels": [],
    }
    good = save_checkpoint(root / "good", 1, model, info)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    nan = save_checkpoint(root / "nan", 1, model, info)
    volume = root / "ct.nii.gz"
    nib.save(
        nib.Nifti1Image(np.full((20, 22, 24), -600, np.int16), np.diag([2.0, 2.0, 3.0, 1.0])), str(volume)
    )
    return {"good": good, "nan": nan, "volume": volume}


def test_nan_weights_are_refused_naming_the_checkpoint(checkpoints, capsys):
    argv = ["diagnose", str(checkpoints["volume"]), "--checkpoint", str(checkpoints["nan"]), "--labels", "x"]
    assert main([*argv, "--json"]) == 2
    _one_line_error(
        capsys, "diagnose", str(checkpoints["nan"] / "model.safetensors"), "NaN or infinite values"
    )
    assert capsys.readouterr().out == ""  # no "NaN" pretending to be JSON


def test_non_finite_outputs_are_refused_naming_the_checkpoint(checkpoints, monkeypatch):
    from medvl3d.infer import Predictor

    pred = Predictor.from_checkpoint(checkpoints["good"], device="cpu")
    monkeypatch.setattr(pred.model, "score", lambda img, txt: torch.full((img.shape[0], 2), float("inf")))
    pred.set_volume(checkpoints["volume"])
    with pytest.raises(
        ValueError,
        match=rf"{re.escape(str(checkpoints['good']))}: the model gives NaN or infinite probabilities",
    ):
        pred.diagnose(["pleural effusion"])


def test_diagnose_json_is_strict_json(checkpoints, capsys):
    argv = [
        "diagnose",
        str(checkpoints["volume"]),
        "--checkpoint",
        str(checkpoints["good"]),
        "--labels",
        "x, y",
    ]
    assert main([*argv, "--json", "--device", "cpu"]) == 0
    probs = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert set(probs["probabilities"]) == {"x", "y"}


# --- command-line options --------------------------------------------------------------------------------


def _bad_prompts(tmp_path: Path) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text("positive: ['{}.'\nnegative: [x]\n", encoding="utf-8")
    return path


def _binary_prompts(tmp_path: Path) -> Path:
    path = tmp_path / "p.yaml"
    path.write_bytes(b"\xff\xfe\x00positive")
    return path


OPTION_CASES = {
    "batch size 0": (
        ["train", str(CONFIG), "--set", "data.batch_size=0"],
        "train",
        "batch_size must be >= 1, got 0",
    ),
    "override value not YAML": (
        ["train", str(CONFIG), "--set", "optim.betas=[0.9"],
        "train",
        "override 'optim.betas=[0.9': the value is not valid YAML",
    ),
    "train on a TPU": (
        ["train", str(CONFIG), "--set", "train.device=tpu"],
        "train",
        "device 'tpu' is not a torch device",
    ),
    "diagnose on a TPU": (
        ["diagnose", "v.nii.gz", "--checkpoint", "ck", "--labels", "x", "--device", "tpu"],
        "diagnose",
        "--device: device 'tpu' is not a torch device",
    ),
    "segment on a TPU": (
        ["segment", "v.nii.gz", "--checkpoint", "ck", "-o", "{tmp}/m.nii.gz", "--device", "tpu"],
        "segment",
        "--device: device 'tpu'",
    ),
    "evaluate on a TPU": (
        ["evaluate", "diagnosis", "--checkpoint", "ck", "--data", "d", "--device", "xla"],
        "evaluate",
        "--device: device 'xla' is not supported",
    ),
    "malformed prompts YAML": (
        ["diagnose", "v.nii.gz", "--checkpoint", "ck", "--labels", "x", "--prompts", "{bad_prompts}"],
        "diagnose",
        "p.yaml: prompt config is not valid YAML (",
    ),
    "prompts not text": (
        ["diagnose", "v.nii.gz", "--checkpoint", "ck", "--labels", "x", "--prompts", "{binary_prompts}"],
        "diagnose",
        "p.yaml: prompt config is not UTF-8 text",
    ),
    "malformed config YAML": (["train", "{bad_prompts}"], "train", "p.yaml: config is not valid YAML ("),
    "preprocess spec not JSON": (
        ["preprocess", "d", "--out", "{tmp}/c", "--spec", "{bad_prompts}"],
        "preprocess",
        "--spec {tmp}/p.yaml: not a JSON PreprocessSpec (Expecting value",
    ),
}


@pytest.mark.parametrize("case", sorted(OPTION_CASES))
def test_bad_options_are_one_line_errors_naming_the_option(tmp_path, capsys, case):
    argv, command, message = OPTION_CASES[case]
    paths = {"tmp": tmp_path, "bad_prompts": _bad_prompts(tmp_path)}
    if "{binary_prompts}" in argv:
        paths["binary_prompts"] = _binary_prompts(tmp_path)
    argv = [a.format(**paths) for a in argv]
    assert main(argv) == 2
    _one_line_error(capsys, command, message.format(**paths))


def test_info_piped_into_head_exits_quietly(tmp_path, monkeypatch, capsys):
    path = _nifti(tmp_path / "v.nii.gz", np.eye(4))

    class ClosedPipe(io.StringIO):
        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("sys.stdout", ClosedPipe())
    assert main(["info", str(path)]) == cli.EXIT_BROKEN_PIPE
    assert capsys.readouterr().err == ""


# --- output paths ----------------------------------------------------------------------------------------


@pytest.fixture
def blocked(tmp_path) -> Path:
    """A regular file: any output path below it cannot be created (whoever runs the tests, root included)."""
    path = tmp_path / "a_file"
    path.write_text("x", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "argv",
    [
        ["synth", "--out", "{blocked}/synth", "--n-train", "1", "--n-test", "0", "--no-progress"],
        ["text", "label", "{csv}", "--out", "{blocked}/labels.csv"],
        ["text", "summarize", "--text", "Cardiomegaly.", "--out", "{blocked}/s.jsonl"],
        ["preprocess", "{manifest}", "--out", "{blocked}/cache", "--no-progress"],
        ["segment", "{volume}", "--checkpoint", "ck", "-o", "{blocked}/mask.nii.gz"],
        ["train", str(CONFIG), "-o", "{blocked}/run"],
    ],
    ids=["synth", "text label", "text summarize", "preprocess", "segment", "train"],
)
def test_outputs_that_cannot_be_written_are_one_line_errors(tmp_path, capsys, blocked, argv):
    volume = _nifti(tmp_path / "v.nii.gz", np.eye(4))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"image": str(volume)}) + "\n", encoding="utf-8")
    reports = _csv(tmp_path / "r.csv", [{"report_text": "Cardiomegaly."}])
    paths = {"blocked": blocked, "csv": reports, "manifest": manifest}
    argv = [a.format(volume=volume, **paths) for a in argv]
    assert main(argv) == 2
    _one_line_error(capsys, argv[0], str(blocked))


def test_a_permission_error_deep_in_a_command_is_one_line(tmp_path, capsys, monkeypatch):
    import medvl3d.data.synth.generator as generator

    def refuse(job):
        raise PermissionError(13, "Permission denied", str(tmp_path / "out" / "train" / "case.nii.gz"))

    monkeypatch.setattr(generator, "_run_case", refuse)
    argv = ["synth", "--out", str(tmp_path / "out"), "--n-train", "1", "--n-test", "0", "--workers", "1"]
    assert main([*argv, "--no-progress"]) == 2
    line = _one_line_error(capsys, "synth")
    assert line == f"medvl3d synth: error: {tmp_path / 'out' / 'train' / 'case.nii.gz'}: Permission denied"
