"""CLI: ``medvl3d report``, a thin layer over :func:`medvl3d.viz.report.build_report`."""

from __future__ import annotations

import argparse
from pathlib import Path

from medvl3d.infer.commands import PROMPTS_HELP, device_option


def register(subparsers) -> None:
    """Add ``report`` to ``medvl3d``."""
    p = subparsers.add_parser(
        "report",
        help="one self-contained HTML page of what the checkpoints say about a volume",
        description="Diagnose and/or segment one volume with every --checkpoint and write one HTML page: "
        "the out-of-distribution warning, calibrated probabilities, axial/coronal/sagittal views through "
        "each segmented structure with its mask, lesions, and the preprocessing and model provenance.",
    )
    p.add_argument("volume", help="NIfTI/NRRD/MHA file or DICOM folder")
    p.add_argument(
        "--checkpoint",
        action="append",
        required=True,
        help="checkpoint or run folder of any family; repeat to combine a diagnosis and an organ model",
    )
    p.add_argument("--labels", default=None, help="abnormalities to diagnose (default: the checkpoint's own)")
    p.add_argument(
        "--describe", default=None, help="lesion description (needs a lesion-segmentation checkpoint)"
    )
    p.add_argument(
        "--targets", default=None, help='keep only these segmentation labels, e.g. "liver, spleen"'
    )
    p.add_argument("-o", "--out", required=True, help="the HTML page to write")
    p.add_argument("--json", default=None, help="also write the report's content as JSON here")
    p.add_argument(
        "--window",
        nargs=2,
        type=float,
        default=None,
        metavar=("LOW", "HIGH"),
        help="grey levels of the views (default: CT soft tissue -160 240)",
    )
    p.add_argument("--prompts", default=None, help=PROMPTS_HELP)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA if available)")
    p.add_argument("--progress", action="store_true", help="show the sliding window's progress bar")
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from medvl3d.extras import require
    from medvl3d.viz.html import check_output_path
    from medvl3d.viz.report import build_report

    require("matplotlib", "viz", "medvl3d report")  # before any model runs
    inputs = [args.volume, *args.checkpoint]
    check_output_path(args.out, "--out", inputs)
    if args.json:
        check_output_path(args.json, "--json", [*inputs, args.out])
    if args.window is not None and not args.window[0] < args.window[1]:
        raise ValueError(f"--window: need LOW < HIGH, got {args.window[0]:g} {args.window[1]:g}")
    report = build_report(
        args.volume,
        args.checkpoint,
        labels=args.labels,
        describe=args.describe,
        targets=args.targets,
        device=device_option(args.device),
        prompts=args.prompts,
        progress=args.progress,
    )
    path = report.write(args.out, args.json, args.window)
    verdict = {True: "OUT OF DISTRIBUTION", False: "within the training distribution", None: "not checked"}
    print(f"report: {Path(path).resolve()} ({verdict[report.out_of_distribution]})")
    return 0
