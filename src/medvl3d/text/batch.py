"""Batch text jobs behind ``medvl3d text ...``: label reports, parse lesion descriptions, summarise reports.

Each job reads a CSV (or texts), writes its output atomically (CSV or JSONL) and, when the input carries
ground truth, returns a metrics table; the CLI only prints what these functions return.
"""

from __future__ import annotations

import csv
import json
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from medvl3d.atomic import atomic_path
from medvl3d.csvfile import unlimited_fields
from medvl3d.schema import ATTRIBUTES, CTRATE_LABELS, LESION_ORGANS, attribute_codes, encode_attribute
from medvl3d.text.attributes import AttributeParser, default_parser
from medvl3d.text.labeller import report_problem

# --- files ----------------------------------------------------------------------------------------------


def read_csv(path: str | Path, required: Sequence[str] = ()) -> tuple[list[dict[str, str]], list[str]]:
    """Rows (column -> cell text) and column names of a CSV file.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is empty, not valid CSV, or lacks a required column (the message names the
            file and lists the columns it has).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV file not found: {path}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh, unlimited_fields():  # reports of any length
            reader = csv.DictReader(fh)
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    except (csv.Error, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a readable UTF-8 CSV file ({exc})") from None
    if not columns:
        raise ValueError(f"{path}: empty CSV file (no header row)")
    missing = [c for c in required if c not in columns]
    if missing:
        raise ValueError(
            f"{path}: no column {', '.join(map(repr, missing))}; the columns are: {', '.join(columns)} "
            "(choose one with --text-column)"
        )
    return [{k: (v or "") for k, v in row.items() if k is not None} for row in rows], columns


#: Column of every output table holding the row's position in the input (0-based, header not counted), so
#: results can be joined back to their input; an input column of that name is kept as the row id instead.
ROW_ID = "index"


def check_output(out: str | Path | None, inputs: Sequence[str | Path | None]) -> Path | None:
    """Check an output path before any work: refuse one of the inputs (writing it would destroy the
    input) or a folder, and create its parent folder. Returns ``out`` as a Path (None stays None).

    Raises:
        ValueError: ``out`` is an input or a folder.
        OSError: the parent folder cannot be created (naming it).
    """
    if out is None:
        return None
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"{out}: is a folder; --out needs a file name")
    for source in inputs:
        if source is not None and out.exists() and Path(source).exists() and os.path.samefile(out, source):
            raise ValueError(f"{out}: refusing to write over the input {source}; choose another --out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"{out}: cannot create the output folder {out.parent}: {exc.strerror}") from None
    return out


def _atomic_write(path: str | Path, write: Any) -> Path:
    """Stream ``write(fh)`` into a UTF-8 text file atomically (see :mod:`medvl3d.atomic`)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        write(fh)
    return path


def write_csv(path: str | Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> Path:
    """Write rows as CSV atomically."""

    def write(fh: Any) -> None:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    return _atomic_write(path, write)


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    """Write one JSON object per line atomically."""
    return _atomic_write(
        path, lambda fh: fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    )


# --- attributes -----------------------------------------------------------------------------------------


@dataclass
class AttributeResult:
    """Parsed descriptions and, when the CSV has coded attribute columns, their accuracy."""

    rows: list[dict[str, Any]]
    columns: list[str]
    #: group (lesion type, then "all") -> attribute -> (accuracy, number of coded cells)
    accuracy: dict[str, dict[str, tuple[float, int]]] = field(default_factory=dict)
    #: one line per flagged row ("<file>, row 5: unknown shape code 7 for kidney"); its bad cells are not
    #: scored, the rest of the sheet is
    flagged: list[str] = field(default_factory=list)


def gold_codes(cell: str, organ: str, attribute: str, where: str) -> set[int] | None:
    """The sheet codes in one cell (``"2"``, ``"2.0"``; ``"1、2"`` means both), or None for an empty cell.

    Raises:
        ValueError: a code that is not a number or not in the schema, naming ``where`` and the attribute.
    """
    cell = cell.strip()
    if not cell:
        return None
    table = attribute_codes(organ, attribute)
    codes = set()
    for part in re.split(r"[、,;/|]|\band\b", cell):
        try:
            code = int(float(part))
        except ValueError:
            raise ValueError(f"{where}: {attribute} {cell!r} is not a code") from None
        if code not in table:
            raise ValueError(f"{where}: unknown {attribute} code {code} for {organ}; codes: {table}")
        codes.add(code)
    return codes


def parse_descriptions(
    path: str | Path,
    *,
    text_column: str = "report",
    organ_column: str | None = "organ",
    group_column: str | None = "lesion",
    out: str | Path | None = None,
    parser: AttributeParser | None = None,
) -> AttributeResult:
    """Parse every lesion description of a CSV into the 7 Malenia attributes.

    The output keeps the input columns (after ``index``, the row's position in the input) and adds
    ``pred_organ``, ``pred_<attribute>`` (value name),
    ``pred_<attribute>_code``, ``problem`` (why a description could not be read: empty, no words,
    not English) and ``flag`` (why a coded cell of the row could not be scored). When the CSV also has
    coded attribute columns (the annotation-sheet format), the accuracy per group (``group_column``, e.g.
    the lesion type) and attribute is computed: empty cells are skipped, a cell with several codes ("1、2")
    counts a prediction of any of them as correct, and a prediction of None counts as wrong. A bad cell
    (a code that is not a number or not in the schema, an unknown organ) flags its row and is left out of
    the accuracy; the rest of the sheet is still scored, and a warning counts the flagged rows.

    Args:
        path: the CSV file.
        text_column: column holding the description.
        organ_column: column naming the organ (inferred from the text where absent or empty).
        group_column: column to group accuracy by (ignored when absent).
        out: optional CSV path to write.
        parser: the attribute parser (the built-in one if None).

    Raises:
        ValueError: a missing text column or ``out`` is the input file.
    """
    check_output(out, [path])
    parser = parser or default_parser()
    rows, columns = read_csv(path, [text_column])
    has_organ = organ_column is not None and organ_column in columns
    coded = [a for a in ATTRIBUTES if a in columns]
    group_by = group_column if group_column in columns else None
    hits: dict[str, dict[str, list[int]]] = {}
    out_rows, flagged = [], []
    for i, row in enumerate(tqdm(rows, desc="parse descriptions", disable=len(rows) < 500, leave=False)):
        where = f"{path}, row {i + 2}"
        record, flags = _parse_row(parser, row, i, text_column, organ_column if has_organ else None)
        organ = record["pred_organ"] or None
        for attr in coded:
            if not row[attr].strip():
                continue
            try:
                if organ is None:
                    raise ValueError(f"{attr} is coded but the organ is unknown; add an organ column")
                gold = gold_codes(row[attr], organ, attr, where)
            except ValueError as exc:
                flags.append(str(exc).removeprefix(f"{where}: "))
                continue
            correct = int(record[f"pred_{attr}_code"] in gold)
            for group in ([row[group_by]] if group_by else []) + ["all"]:
                hits.setdefault(group, {}).setdefault(attr, []).append(correct)
        record["flag"] = "; ".join(flags)
        flagged += [f"{where}: {record['flag']}"] * bool(flags)
        out_rows.append(record)
    out_columns = [ROW_ID] * (ROW_ID not in columns) + columns + ["pred_organ"]
    out_columns += [f"pred_{a}{s}" for a in ATTRIBUTES for s in ("", "_code")] + ["problem", "flag"]
    if out is not None:
        write_csv(out, out_rows, out_columns)
    if flagged:
        warnings.warn(
            f"{len(flagged)} of {len(rows)} rows of {path} are flagged and their bad cells not scored "
            f"(see the flag column); first: {flagged[0]}",
            UserWarning,
            stacklevel=2,
        )
    groups = sorted(g for g in hits if g != "all") + ["all"] * ("all" in hits)
    accuracy = {g: {a: (float(np.mean(v)), len(v)) for a, v in hits[g].items()} for g in groups}
    return AttributeResult(out_rows, out_columns, accuracy, flagged)


def _parse_row(
    parser: AttributeParser, row: dict[str, str], index: int, text_column: str, organ_column: str | None
) -> tuple[dict[str, Any], list[str]]:
    """One output record (input columns + predictions) and the flags of its organ cell."""
    text = row[text_column]
    flags = []
    organ = (row[organ_column].strip().lower() or None) if organ_column else None
    if organ is not None and organ not in LESION_ORGANS:
        flags.append(f"unknown organ {organ!r}; known: {', '.join(LESION_ORGANS)}")
        organ = None
    organ = organ or parser.infer_organ(text)
    values = parser.parse(text, organ)
    codes = {a: encode_attribute(organ, a, v) if organ and v else None for a, v in values.items()}
    record: dict[str, Any] = {ROW_ID: index, **row, "pred_organ": organ or ""}
    record["problem"] = report_problem(text) or ""
    for attr in ATTRIBUTES:
        record[f"pred_{attr}"] = values[attr] or ""
        record[f"pred_{attr}_code"] = "" if codes[attr] is None else codes[attr]
    return record, flags


def format_accuracy_table(accuracy: dict[str, dict[str, tuple[float, int]]]) -> str:
    """Text table: one row per group, one column per attribute, accuracy (n)."""
    attrs = [a for a in ATTRIBUTES if any(a in per for per in accuracy.values())]
    width = max([len("lesion type"), *map(len, accuracy)])
    head = f"{'lesion type':{width}s} " + " ".join(f"{a[:12]:>12s}" for a in attrs)
    lines = [head, "-" * len(head)]
    for group, per in accuracy.items():
        cells = [f"{per[a][0]:.3f} ({per[a][1]})" if a in per else "" for a in attrs]
        lines.append(f"{group:{width}s} " + " ".join(f"{c:>12s}" for c in cells))
    return "\n".join(lines)


# --- report labels --------------------------------------------------------------------------------------


@dataclass
class LabelResult:
    """Per-label probabilities of every report and, when the CSV has the label columns, their metrics."""

    probs: np.ndarray
    rows: list[dict[str, Any]]
    columns: list[str]
    metrics: dict[str, dict[str, float]] | None = None


def label_reports(
    path: str | Path,
    *,
    text_column: str = "report_text",
    out: str | Path | None = None,
    model: str | Path | None = None,
    threshold: float = 0.5,
    limit: int | None = None,
) -> LabelResult:
    """Label every report of a CSV with the 18 CT-RATE abnormalities.

    Writes (when ``out`` is given) ``index`` (the row's position in the input), the non-label input
    columns but the report, then per label its probability and a 0/1 column ``<label> (pred)`` at
    ``threshold``, and ``problem``. Writing over the input file is refused (it would lose the reports).
    When all 18 label columns are present, per-label and macro AUROC/F1 are computed with
    :func:`medvl3d.text.labeller.evaluate_labeller`.

    Args:
        model: a fitted labeller saved with ``ReportLabeller.save`` (the rule labeller if None).
        limit: only the first ``limit`` reports.
    """
    from medvl3d.text.labeller import ReportLabeller, evaluate_labeller

    check_output(out, [path, model])
    rows, columns = read_csv(path, [text_column])
    rows = rows[:limit] if limit is not None else rows
    if not rows:
        raise ValueError(f"{path}: no reports in the file")
    labeller = ReportLabeller.load(model) if model is not None else ReportLabeller()
    reports = [r[text_column] for r in rows]
    problems = [report_problem(text) for text in reports]
    probs = labeller.predict_many(reports, progress=len(reports) >= 200, problems=problems)
    labels = list(labeller.labels)
    keep = [c for c in columns if c not in labels and c != text_column]
    out_rows = []
    for i, (row, p, problem) in enumerate(zip(rows, probs, problems)):
        record: dict[str, Any] = {ROW_ID: i, **{c: row[c] for c in keep}}
        for lab, value in zip(labels, p):
            record[lab] = f"{value:.4f}"
            record[f"{lab} (pred)"] = int(value >= threshold)
        record["problem"] = problem or ""
        out_rows.append(record)
    out_columns = [ROW_ID] * (ROW_ID not in keep) + keep
    out_columns += [c for lab in labels for c in (lab, f"{lab} (pred)")] + ["problem"]
    if out is not None:
        write_csv(out, out_rows, out_columns)
    metrics = None
    if all(lab in columns for lab in CTRATE_LABELS) and tuple(labels) == CTRATE_LABELS:
        y = _label_matrix(rows, path)
        metrics = evaluate_labeller(None, y, probs=probs, labels=labels, threshold=threshold)
    return LabelResult(probs, out_rows, out_columns, metrics)


# --- summaries ------------------------------------------------------------------------------------------


def summarize_reports(
    path: str | Path | None = None,
    *,
    texts: Sequence[str] = (),
    text_column: str = "report_text",
    backend: str = "rule",
    url: str | None = None,
    model: str | None = None,
    cache_dir: str | Path | None = None,
    out: str | Path | None = None,
    limit: int | None = None,
) -> SummaryResult:
    """Summarise reports from a CSV and/or given texts into their high-level findings.

    Returns (and writes as JSONL when ``out`` is given) one record per report: ``{"index", "report",
    "summary", "problem"}`` plus the CSV's other columns. ``problem`` says why a report has no
    meaningful summary (empty, no words, not English for the rule backend; see
    :func:`~medvl3d.text.summariser.summary_problem`): its summary reads "no acute findings.", which
    must not pass for a normal study, so such reports are also named in a warning. Writing over the
    input file is refused. When the CSV has the 18 CT-RATE label columns, the rule
    labeller scores the full reports and the summaries against them (AUROC/F1): a summary that drops or
    invents findings scores lower than its report.

    Args:
        backend: ``"rule"`` (built-in, deterministic) or ``"llm"`` (an OpenAI-compatible endpoint at ``url``
            serving ``model``; answers are cached in ``cache_dir``, by default
            ``~/.cache/medvl3d/llm_summaries``, so each report is sent once).
    """
    from medvl3d.text.summariser import build_summariser, summary_problem

    check_output(out, [path])
    records: list[dict[str, Any]] = []
    columns: list[str] = []
    if path is not None:
        rows, columns = read_csv(path, [text_column])
        rows = rows[:limit] if limit is not None else rows
        records += [
            {**{k: v for k, v in r.items() if k != text_column}, "report": r[text_column]} for r in rows
        ]
    records += [{"report": t} for t in texts]
    if not records:
        raise ValueError("nothing to summarise: give a CSV file or --text")
    if backend == "llm":
        cache = (
            Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "medvl3d" / "llm_summaries"
        )
        cfg: dict[str, Any] = {"backend": "llm", "url": url, "model": model, "cache_dir": str(cache)}
    elif url or model:
        raise ValueError("--url and --model only apply to --backend llm")
    else:
        cfg = {"backend": backend}
    summariser = build_summariser(cfg)
    for i, record in enumerate(tqdm(records, desc="summarise", disable=len(records) < 50, leave=False)):
        record["index"] = i
        record["summary"] = summariser.summarise(record["report"])
        record["problem"] = summary_problem(record["report"], backend) or ""
    _warn_problems([r["problem"] for r in records], "summaries say nothing about their studies")
    if out is not None:
        write_jsonl(out, records)
    metrics = None
    if path is not None and all(lab in columns for lab in CTRATE_LABELS):
        from medvl3d.text.labeller import ReportLabeller, evaluate_labeller

        labelled = records[: len(records) - len(texts)]
        y = _label_matrix(labelled, path)
        labeller = ReportLabeller()
        metrics = {
            name: evaluate_labeller([r[key] for r in labelled], y, labeller=labeller)
            for name, key in (("full report", "report"), ("summary", "summary"))
        }
    return SummaryResult(records, metrics)


def _warn_problems(problems: Sequence[str], consequence: str) -> None:
    """One warning counting the reports of each problem, when there are any."""
    counts = {p: problems.count(p) for p in dict.fromkeys(problems) if p}
    if counts:
        listed = ", ".join(f"{n} {p}" for p, n in counts.items())
        warnings.warn(
            f"{sum(counts.values())} of {len(problems)} reports cannot be read ({listed}): their "
            f"{consequence} (see the problem column)",
            UserWarning,
            stacklevel=3,
        )


@dataclass
class SummaryResult:
    """Summaries and, when the CSV has the CT-RATE label columns, labeller metrics on reports vs summaries."""

    records: list[dict[str, Any]]
    metrics: dict[str, dict[str, dict[str, float]]] | None = None


def _label_matrix(rows: Sequence[dict[str, Any]], path: str | Path) -> np.ndarray:
    """The ``[N, 18]`` 0/1 CT-RATE label matrix of CSV rows."""
    try:
        return np.array([[int(float(r[lab])) for lab in CTRATE_LABELS] for r in rows], dtype=int)
    except ValueError:
        raise ValueError(f"{path}: the label columns must hold 0/1 values") from None
