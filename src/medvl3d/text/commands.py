"""`medvl3d text {label,attributes,summarize}`: thin CLI over :mod:`medvl3d.text.batch`."""

from __future__ import annotations

import argparse
import json

from medvl3d.schema import CTRATE_LABELS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``medvl3d text ...`` to the CLI."""
    text = subparsers.add_parser("text", help="report labels, lesion attributes, report summaries")
    sub = text.add_subparsers(dest="text_command", metavar="TEXT_COMMAND")
    sub.required = True

    label = sub.add_parser("label", help="label radiology reports with the 18 CT-RATE abnormalities")
    label.add_argument("reports", help="CSV file with one report per row")
    label.add_argument("--text-column", default="report_text", help="column holding the report (report_text)")
    label.add_argument("--out", help="CSV to write: per-label probabilities and 0/1 predictions")
    label.add_argument("--model", help="a fitted labeller saved with ReportLabeller.save (default: rules)")
    label.add_argument("--threshold", type=float, default=0.5, help="probability for a 1 (0.5)")
    label.add_argument("--limit", type=int, help="only the first N reports")
    label.set_defaults(func=_label)

    attrs = sub.add_parser("attributes", help="parse lesion descriptions into Malenia attributes")
    attrs.add_argument("descriptions", help="CSV file with one lesion description per row")
    attrs.add_argument("--text-column", default="report", help="column holding the description (report)")
    attrs.add_argument(
        "--organ-column", default="organ", help="column naming the organ (organ; else inferred)"
    )
    attrs.add_argument("--group-column", default="lesion", help="column to group accuracy by (lesion)")
    attrs.add_argument("--out", help="CSV to write: the input plus pred_<attribute> columns")
    attrs.add_argument(
        "--no-defaults", action="store_true", help="leave attributes the text is silent on empty"
    )
    attrs.set_defaults(func=_attributes)

    summ = sub.add_parser("summarize", help="condense reports to their high-level findings")
    summ.add_argument("reports", nargs="?", help="CSV file with one report per row")
    summ.add_argument("--text", action="append", default=[], help="a report given inline (repeatable)")
    summ.add_argument("--text-column", default="report_text", help="column holding the report (report_text)")
    summ.add_argument("--backend", choices=("rule", "llm"), default="rule", help="summariser (rule)")
    summ.add_argument("--url", help="OpenAI-compatible endpoint for --backend llm")
    summ.add_argument("--model", help="model name served at --url, for --backend llm")
    summ.add_argument("--cache-dir", help="answer cache for --backend llm (~/.cache/medvl3d/llm_summaries)")
    summ.add_argument("--out", help="JSONL to write: one {report, summary} per line")
    summ.add_argument("--limit", type=int, help="only the first N reports of the CSV")
    summ.set_defaults(func=_summarize)


def _label(args: argparse.Namespace) -> int:
    from medvl3d.text.batch import label_reports
    from medvl3d.text.labeller import format_table

    result = label_reports(
        args.reports,
        text_column=args.text_column,
        out=args.out,
        model=args.model,
        threshold=args.threshold,
        limit=args.limit,
    )
    n_pos = result.probs.sum(0) if result.probs.size else []
    print(f"labelled {len(result.rows)} reports" + (f" -> {args.out}" if args.out else ""))
    if result.metrics is None:
        for lab, expected in zip(CTRATE_LABELS, n_pos):
            print(f"  {lab:36s} expected positives {expected:8.1f}")
        return 0
    print(format_table({"labeller": result.metrics}))
    return 0


def _attributes(args: argparse.Namespace) -> int:
    from medvl3d.text.attributes import AttributeParser
    from medvl3d.text.batch import format_accuracy_table, parse_descriptions

    result = parse_descriptions(
        args.descriptions,
        text_column=args.text_column,
        organ_column=args.organ_column,
        group_column=args.group_column,
        out=args.out,
        parser=AttributeParser(defaults=not args.no_defaults),
    )
    problems = sum(bool(r["problem"]) for r in result.rows)
    print(
        f"parsed {len(result.rows)} descriptions"
        + (f" ({problems} unreadable: see the problem column)" if problems else "")
        + (f" -> {args.out}" if args.out else "")
    )
    for line in result.flagged:
        print(f"flagged (not scored): {line}")
    if result.accuracy:
        print("per-attribute accuracy against the coded columns (n coded cells):")
        print(format_accuracy_table(result.accuracy))
    elif not args.out:
        for row in result.rows[:20]:
            print(
                json.dumps({k[5:]: v for k, v in row.items() if k.startswith("pred_") and "_code" not in k})
            )
    return 0


def _summarize(args: argparse.Namespace) -> int:
    from medvl3d.cli import CLIError
    from medvl3d.text.batch import summarize_reports
    from medvl3d.text.labeller import format_table
    from medvl3d.text.summariser import LLMError

    try:
        result = summarize_reports(
            args.reports,
            texts=args.text,
            text_column=args.text_column,
            backend=args.backend,
            url=args.url,
            model=args.model,
            cache_dir=args.cache_dir,
            out=args.out,
            limit=args.limit,
        )
    except LLMError as exc:
        raise CLIError(f"the LLM summariser failed: {exc}") from None
    if args.out:
        print(f"summarised {len(result.records)} reports -> {args.out}")
    else:
        for record in result.records:
            shown = {"index": record["index"], "summary": record["summary"]}
            if record["problem"]:
                shown["problem"] = record["problem"]
            print(json.dumps(shown, ensure_ascii=False))
    if result.metrics:
        print("labeller on the full reports vs on their summaries (CT-RATE label columns as truth):")
        print(format_table(result.metrics))
    return 0
