"""CLI: ``medvl3d train``, ``medvl3d diagnose`` and ``medvl3d evaluate diagnosis``.

Each handler parses nothing beyond argparse and calls one API function (:func:`medvl3d.train.train`,
:class:`medvl3d.infer.Predictor`, :func:`medvl3d.eval.diagnosis.evaluate_diagnosis`).
"""

from __future__ import annotations

import argparse
import json
import sys

_PROMPTS_HELP = "prompt YAML (positive/negative templates) to score with instead of the checkpoint's"


def register(subparsers) -> None:
    """Add ``train``, ``diagnose`` and ``evaluate`` to ``medvl3d``."""
    p = subparsers.add_parser(
        "train",
        help="pretrain / train from a YAML experiment config",
        description="Train from a YAML config; resumes from OUTPUT/checkpoints/last when it exists. "
        "Multi-GPU / multi-node: torchrun --nproc_per_node N -m medvl3d.cli train CONFIG.",
    )
    p.add_argument("config", help="experiment YAML (see configs/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=3e-4 (repeatable)",
    )
    p.set_defaults(func=_train)

    p = subparsers.add_parser("diagnose", help="zero-shot diagnosis of one volume with a checkpoint")
    p.add_argument("volume", help="NIfTI/NRRD/MHA file or DICOM folder")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (or a run folder)")
    p.add_argument(
        "--labels", required=True, help='comma-separated names, e.g. "pleural effusion, emphysema"'
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA if available)")
    p.add_argument("--prompts", default=None, help=_PROMPTS_HELP)
    p.set_defaults(func=_diagnose)

    p = subparsers.add_parser("evaluate", help="evaluate a checkpoint")
    sub = p.add_subparsers(dest="what", metavar="WHAT")
    sub.required = True
    d = sub.add_parser("diagnosis", help="zero-shot diagnosis AUROC/F1/accuracy/precision with bootstrap CIs")
    d.add_argument("--checkpoint", required=True, help="checkpoint folder (or a run folder)")
    d.add_argument("--data", required=True, help="dataset root (SynthCT-VL, CT-RATE, JSONL manifest)")
    d.add_argument("--split", default="valid")
    d.add_argument("--labels", default=None, help="comma-separated subset of labels (default: all)")
    d.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (0 = no intervals)")
    d.add_argument("--out", default=None, help="also write the full results as JSON here")
    d.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    d.add_argument("--device", default=None)
    d.add_argument("--prompts", default=None, help=_PROMPTS_HELP)
    d.set_defaults(func=_evaluate_diagnosis)


def _train(args: argparse.Namespace) -> int:
    from medvl3d.train import train

    run_dir = train(args.config, args.overrides)
    print(f"run folder: {run_dir}")
    return 0


def _diagnose(args: argparse.Namespace) -> int:
    from medvl3d.infer import Predictor, parse_labels

    labels = parse_labels(args.labels)  # before loading anything: an empty list fails fast
    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device, prompts=args.prompts)
    probs = predictor.set_volume(args.volume).diagnose(labels)
    if args.json:
        print(json.dumps({"volume": args.volume, "probabilities": probs}, indent=2))
    else:
        width = max(len("label"), *(len(k) for k in probs))
        print(f"{'label':<{width}}  probability")
        for name, p in probs.items():
            print(f"{name:<{width}}  {p:.3f}")
    return 0


def _evaluate_diagnosis(args: argparse.Namespace) -> int:
    from medvl3d.eval.diagnosis import evaluate_diagnosis
    from medvl3d.infer import parse_labels

    labels = parse_labels(args.labels) if args.labels is not None else None
    report = evaluate_diagnosis(
        args.checkpoint,
        args.data,
        split=args.split,
        labels=labels,
        bootstrap=args.bootstrap,
        device=args.device,
        progress=sys.stderr.isatty(),
        prompts=args.prompts,
    )
    if args.out:
        report.to_json(args.out)
    print(report.to_json() if args.json else report.to_markdown())
    return 0
