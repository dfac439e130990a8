"""CLI: ``medvl3d evaluate diagnosis`` and ``medvl3d evaluate segmentation``.

Each handler parses nothing beyond argparse and calls one API function
(:func:`medvl3d.eval.diagnosis.evaluate_diagnosis`, :func:`medvl3d.eval.segmentation.evaluate_segmentation`,
and for a Malenia checkpoint :func:`medvl3d.eval.lesion_segmentation.evaluate_lesion_types`).
"""

from __future__ import annotations

import argparse
import json
import sys

from medvl3d.infer.commands import PROMPTS_HELP, device_option


def register(subparsers) -> None:
    """Add ``evaluate`` (``diagnosis`` and ``segmentation``) to ``medvl3d``."""
    p = subparsers.add_parser("evaluate", help="evaluate a checkpoint")
    sub = p.add_subparsers(dest="what", metavar="WHAT")
    sub.required = True
    d = sub.add_parser("diagnosis", help="zero-shot diagnosis AUROC/F1/ACC/precision with bootstrap CIs")
    d.add_argument("--checkpoint", required=True, help="checkpoint folder (or a run folder)")
    d.add_argument("--data", required=True, help="dataset root (SynthCT-VL, CT-RATE, JSONL manifest)")
    d.add_argument("--split", default="valid")
    d.add_argument("--labels", default=None, help="comma-separated subset of labels (default: all)")
    d.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (0 = no intervals)")
    d.add_argument("-o", "--out", default=None, help="also write the full results as JSON here")
    d.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    d.add_argument("--device", default=None)
    d.add_argument("--prompts", default=None, help=PROMPTS_HELP)
    d.add_argument(
        "--calibrate",
        choices=("isotonic", "platt", "temperature"),
        default=None,
        help="fit per-label calibrators and an out-of-distribution reference on these (held-out) cases and "
        "store them in the checkpoint's config.json (the weights are not touched)",
    )
    d.add_argument("--folds", type=int, default=5, help="cross-fitting folds of the calibration numbers")
    d.add_argument("--html", default=None, help="also write a page of ROC curves and reliability diagrams")
    d.set_defaults(func=_evaluate_diagnosis)

    s = sub.add_parser(
        "segmentation",
        help="Dice, NSD and HD95 per class of a segmentation checkpoint; Dice, NSD and detection recall per "
        "lesion type (seen and unseen, as the data folder records them) of a Malenia checkpoint",
    )
    s.add_argument("--checkpoint", required=True, help="checkpoint folder (or a run folder)")
    s.add_argument("--data", required=True, help="dataset root (MSD, KiTS23, JSONL manifest, SynthCT-VL)")
    s.add_argument("--split", default="valid")
    s.add_argument("--format", default=None, help="dataset layout (default: as in training)")
    s.add_argument("--nsd-tolerance", type=float, default=2.0, help="NSD tolerance in mm (default 2)")
    s.add_argument("--overlap", type=float, default=None, help="sliding-window overlap")
    s.add_argument("-o", "--out", default=None, help="also write the full results as JSON here")
    s.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    s.add_argument("--device", default=None)
    s.add_argument(
        "--html", default=None, help="also write a page of Dice box plots per class (per lesion type)"
    )
    s.set_defaults(func=_evaluate_segmentation)


def _check_outputs(args: argparse.Namespace) -> None:
    """Before any work: output paths that are writable and not an input, and plotting for ``--html``."""
    from medvl3d.viz.html import check_output_path

    inputs = [args.checkpoint, args.data]
    for option in ("out", "html"):
        path = getattr(args, option, None)
        if path is not None:
            check_output_path(path, f"--{option}", inputs)
    if args.html is not None:
        from medvl3d.extras import require

        require("matplotlib", "viz", "--html")


def _evaluate_diagnosis(args: argparse.Namespace) -> int:
    from medvl3d.eval.diagnosis import evaluate_diagnosis
    from medvl3d.infer import parse_labels

    labels = parse_labels(args.labels) if args.labels is not None else None
    _check_outputs(args)
    if args.folds < 2:
        raise ValueError(f"--folds: need at least 2, got {args.folds}")
    report = evaluate_diagnosis(
        args.checkpoint,
        args.data,
        split=args.split,
        labels=labels,
        bootstrap=args.bootstrap,
        device=device_option(args.device),
        progress=sys.stderr.isatty(),
        prompts=args.prompts,
        calibrate=args.calibrate,
        folds=args.folds,
    )
    if args.out:
        report.to_json(args.out)
    if args.html:
        from medvl3d.viz.eval_pages import write_diagnosis_page

        write_diagnosis_page(report, args.html)
    print(report.to_json() if args.json else report.to_markdown())
    if report.fitted is not None:
        from medvl3d.eval.calibration import store_calibration

        where = store_calibration(args.checkpoint, report.fitted)
        print(f"calibration ({args.calibrate}, {report.n_cases} cases) stored in {where}", file=sys.stderr)
    return 0


def _evaluate_segmentation(args: argparse.Namespace) -> int:
    from medvl3d.eval.segmentation import evaluate_segmentation
    from medvl3d.models.checkpoint import read_info

    _check_outputs(args)
    if (read_info(args.checkpoint).get("model") or {}).get("family") == "malenia":
        return _evaluate_lesions(args)
    report = evaluate_segmentation(
        args.checkpoint,
        args.data,
        split=args.split,
        format=args.format,
        nsd_tolerance_mm=args.nsd_tolerance,
        device=device_option(args.device),
        window={"overlap": args.overlap} if args.overlap is not None else None,
        progress=sys.stderr.isatty(),
    )
    if args.out:
        report.to_json(args.out)
    if args.html:
        from medvl3d.viz.eval_pages import write_segmentation_page

        write_segmentation_page(report, args.html)
    print(report.to_json() if args.json else report.to_markdown())
    return 0


def _evaluate_lesions(args: argparse.Namespace) -> int:
    """`evaluate segmentation` of a Malenia checkpoint: scores per lesion type of the data folder."""
    from medvl3d.atomic import atomic_write_json
    from medvl3d.eval.lesion_segmentation import evaluate_lesion_types, format_lesion_table

    for option in ("format", "overlap"):
        if getattr(args, option) is not None:
            raise ValueError(
                f"--{option}: not used for a lesion-segmentation (Malenia) checkpoint, which reads the data "
                "folder's own layout and lesion records with its stored window"
            )
    scores = evaluate_lesion_types(
        args.checkpoint,
        args.data,
        split=args.split,
        nsd_tolerance_mm=args.nsd_tolerance,
        device=device_option(args.device) or "cpu",
    )
    record = {
        "checkpoint": str(args.checkpoint),
        "data": str(args.data),
        "split": args.split,
        "nsd_tolerance_mm": args.nsd_tolerance,
        "lesion_types": scores,
    }
    if args.out:
        atomic_write_json(args.out, record, indent=2)
    if args.html:
        from medvl3d.viz.eval_pages import write_lesion_page

        write_lesion_page(scores, args.html, checkpoint=args.checkpoint, data=args.data, split=args.split)
    print(json.dumps(record, indent=2) if args.json else format_lesion_table(scores))
    return 0
