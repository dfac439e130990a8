"""`medvl3d text label/attributes/summarize` through `medvl3d.cli.main`, on the real CSVs."""

from __future__ import annotations

import csv
import json
import re

import pytest

from medvl3d.cli import main
from medvl3d.schema import ATTRIBUTES, CTRATE_LABELS


def _read(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_label_real_reports_with_metrics(real_dir, tmp_path, capsys):
    out = tmp_path / "labels.csv"
    src = real_dir / "ctrate_reports" / "train.csv"
    assert main(["text", "label", str(src), "--limit", "60", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = _read(out)
    assert len(rows) == 60
    for lab in CTRATE_LABELS:
        assert 0.0 <= float(rows[0][lab]) <= 1.0
        assert rows[0][f"{lab} (pred)"] in ("0", "1")
    assert "report_text" not in rows[0]  # the text is not copied, ids are
    macro = re.search(r"^macro\s+([\d.]+)\s+([\d.]+)$", printed, re.M)
    assert macro, printed
    assert float(macro.group(1)) > 0.85  # measured 0.977 on these 60 reports


def test_label_missing_text_column_names_file_and_columns(real_dir, capsys):
    src = real_dir / "ctrate_reports" / "train.csv"
    assert main(["text", "label", str(src), "--text-column", "Findings_EN", "--limit", "2"]) == 2
    err = capsys.readouterr().err
    assert "train.csv: no column 'Findings_EN'" in err and "report_text" in err


def test_attributes_real_descriptions(real_dir, tmp_path, capsys):
    out = tmp_path / "parsed.csv"
    src = real_dir / "malenia" / "renal_cyst.csv"
    assert main(["text", "attributes", str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = _read(out)
    assert len(rows) == 67
    assert rows[0]["pred_location"] == "left kidney" and rows[0]["pred_location_code"] == "1"
    assert all(f"pred_{a}" in rows[0] for a in ATTRIBUTES)
    line = next(ln for ln in printed.splitlines() if ln.startswith("renal_cyst"))
    accuracies = [float(x) for x in re.findall(r"(\d\.\d{3}) \(", line)]
    assert len(accuracies) == 7 and min(accuracies) >= 0.92


def test_attributes_bad_rows_get_a_problem_not_a_crash(tmp_path, capsys):
    src = tmp_path / "d.csv"
    src.write_text(
        "case,report\n"
        "a,\n"
        "b,...\n"
        "c,右肾见类圆形低密度影\n"
        'd,"Contrast-enhanced CT: a round hypodense lesion in the left kidney, well-defined."\n',
        encoding="utf-8",
    )
    out = tmp_path / "p.csv"
    assert main(["text", "attributes", str(src), "--out", str(out)]) == 0
    assert "3 unreadable" in capsys.readouterr().out
    rows = _read(out)
    assert [r["problem"] for r in rows] == ["empty", "no words", "not English", ""]
    assert rows[3]["pred_organ"] == "kidney" and rows[3]["pred_shape"] == "round-like"
    assert all(r["pred_shape"] == "" for r in rows[:3])


def test_summarize_inline_and_csv(tmp_path, capsys):
    assert main(["text", "summarize", "--text", "Bilateral pleural effusion. No pulmonary nodule."]) == 0
    summary = json.loads(capsys.readouterr().out.strip())["summary"]
    assert "pleural effusion" in summary and "nodule" not in summary
    src = tmp_path / "r.csv"
    src.write_text('id,report_text\n1,"Cardiomegaly. No effusion."\n2,""\n', encoding="utf-8")
    out = tmp_path / "s.jsonl"
    with pytest.warns(UserWarning, match=r"1 of 2 reports cannot be read \(1 empty\)"):
        assert main(["text", "summarize", str(src), "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in records] == ["1", "2"]
    assert "cardiomegaly" in records[0]["summary"].lower()
    assert [r["problem"] for r in records] == ["", "empty"]  # the empty report's summary says nothing


def test_cli_errors_are_clean(tmp_path, capsys):
    assert main(["text", "attributes", str(tmp_path / "none.csv")]) == 2
    assert "CSV file not found" in capsys.readouterr().err
    assert main(["text", "summarize", "--text", "x", "--url", "http://localhost:1"]) == 2
    assert "only apply to --backend llm" in capsys.readouterr().err
    assert main(["text", "summarize"]) == 2
    assert "nothing to summarise" in capsys.readouterr().err


def test_label_unreadable_reports_get_zero_probabilities_and_a_problem(tmp_path, capsys):
    src = tmp_path / "r.csv"
    src.write_text(
        "id,report_text\n"
        "1,\n"
        "2,?!.\n"
        "3,Sağ akciğerde plevral efüzyon izlenmektedir ve kalp boyutları artmıştır.\n"
        "4,There is a large right pleural effusion. No lung nodule.\n",
        encoding="utf-8",
    )
    out = tmp_path / "l.csv"
    with pytest.warns(UserWarning, match="English"):
        assert main(["text", "label", str(src), "--out", str(out)]) == 0
    rows = _read(out)
    assert [r["problem"] for r in rows] == ["empty", "no words", "not English", ""]
    assert all(float(r[lab]) == 0.0 for r in rows[:3] for lab in CTRATE_LABELS)
    assert float(rows[3]["Pleural effusion"]) > 0.5 > float(rows[3]["Lung nodule"])
    assert "expected positives" in capsys.readouterr().out  # no label columns: no metrics table


# The summaries keep the positive findings: the labeller scores them almost as well as the full reports.
@pytest.mark.filterwarnings("ignore:.*not look like English:UserWarning")
def test_summarize_real_reports_scores_summaries_against_the_labels(real_dir, tmp_path, capsys):
    src = real_dir / "ctrate_reports" / "train.csv"
    out = tmp_path / "s.jsonl"
    assert main(["text", "summarize", str(src), "--limit", "30", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 30 and all(r["summary"] for r in records)
    assert records[0]["AccessionNo"] == "train_1" and "report_text" not in records[0]
    macro = re.search(r"^macro\s+([\d.]+)\s+([\d.]+)\s+\|?\s*([\d.]+)\s+([\d.]+)$", printed, re.M)
    assert macro, printed
    assert float(macro.group(1)) > 0.85  # the labeller on the full reports
    assert float(macro.group(3)) > 0.85  # ... and on the summaries: they keep the findings
