"""CLI: ``medvl3d diagnose`` and ``medvl3d segment``, thin layers over :class:`medvl3d.infer.Predictor`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PROMPTS_HELP = "prompt YAML (positive/negative templates) to score with instead of the checkpoint's"


def _axes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(a) for a in text.split(",") if a.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected array axes like 1,2, got {text!r}") from None


def device_option(value: str | None) -> str | None:
    """The ``--device`` value, checked before anything is loaded (the error names the option)."""
    from medvl3d.device import check_device_name

    try:
        return check_device_name(value)
    except ValueError as exc:
        raise ValueError(f"--device: {exc}") from None


def register(subparsers) -> None:
    """Add ``diagnose`` and ``segment`` to ``medvl3d``."""
    p = subparsers.add_parser("diagnose", help="zero-shot diagnosis of one volume with a checkpoint")
    p.add_argument("volume", help="NIfTI/NRRD/MHA file or DICOM folder")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (or a run folder)")
    p.add_argument(
        "--labels", required=True, help='comma-separated names, e.g. "pleural effusion, emphysema"'
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA if available)")
    p.add_argument("--prompts", default=None, help=PROMPTS_HELP)
    p.set_defaults(func=_diagnose)

    p = subparsers.add_parser(
        "segment",
        help="segment one volume with a segmentation checkpoint",
        description="Write the label map in the input file's own geometry (shape, affine, header) and a "
        "JSON of per-label volumes in mL beside it.",
    )
    p.add_argument("volume", help="NIfTI/NRRD/MHA file or DICOM folder")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (or a run folder)")
    p.add_argument("-o", "--out", required=True, help="output mask (.nii.gz, .nii, .nrrd or .mha)")
    p.add_argument("--json-out", default=None, help="volumes JSON (default: the mask's name with .json)")
    p.add_argument(
        "--targets",
        default=None,
        help='comma-separated labels to keep, e.g. "pulmonary artery, pulmonary vein" (default: all)',
    )
    p.add_argument(
        "--describe",
        default=None,
        help='lesion description for a lesion model (malenia), e.g. "round hypodense lesion in the liver"',
    )
    p.add_argument(
        "--attributes",
        default=None,
        help='lesion attribute values for a lesion model, e.g. "organ=liver,density=hypodense"',
    )
    p.add_argument(
        "--largest-component",
        default=None,
        metavar="LABELS",
        help='keep only the largest connected piece of these labels, e.g. "liver, spleen", or "all"',
    )
    p.add_argument("--overlap", type=float, default=None, help="sliding-window overlap")
    p.add_argument(
        "--flip-axes",
        type=_axes,
        default=None,
        help="test-time mirroring along array axes, e.g. 1,2 (never 0 for left/right labels)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA if available)")
    p.add_argument("--progress", action="store_true", help="show the sliding window's progress bar")
    p.set_defaults(func=_segment)


def _diagnose(args: argparse.Namespace) -> int:
    from medvl3d.infer import Predictor, parse_labels

    labels = parse_labels(args.labels)  # before loading anything: an empty list fails fast
    device = device_option(args.device)
    predictor = Predictor.from_checkpoint(args.checkpoint, device=device, prompts=args.prompts)
    predictor.require("embeddings", "medvl3d diagnose")
    # An out-of-distribution volume is reported by a warning line (OutOfDistributionWarning) and in the
    # result: in JSON under "out_of_distribution", in the table as a closing note.
    result = predictor.set_volume(args.volume).diagnose(labels)
    if args.json:
        print(json.dumps({**result.to_dict(), "volume": args.volume}, indent=2, allow_nan=False))
    else:
        print(result.to_table())
        for note in result.notes:
            print(f"note: {note}")
        if result.out_of_distribution:
            print("note: OUT OF DISTRIBUTION (see the warning): these numbers may be confidently wrong")
    return 0


def json_beside(mask: str | Path) -> Path:
    """`mask.nii.gz` -> `mask.json` (the volumes JSON written beside a mask)."""
    mask = Path(mask)
    name = mask.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return mask.with_name(name + ".json")


def _segment(args: argparse.Namespace) -> int:
    from medvl3d.data.io import prepare_output_path
    from medvl3d.infer import Predictor

    prepare_output_path(args.out, inputs=[args.volume])  # before the model runs: a bad path fails fast
    device = device_option(args.device)
    window = {k: v for k, v in (("overlap", args.overlap), ("flip_axes", args.flip_axes)) if v is not None}
    predictor = Predictor.from_checkpoint(args.checkpoint, device=device, window=window)
    if predictor.outputs == "lesions":  # zero-shot lesion segmentation: a query, or every lesion found
        if args.largest_component is not None:
            raise ValueError("--largest-component: applies to organ labels, not to a lesion model")
        result = predictor.set_volume(args.volume, progress=args.progress).segment(
            targets=args.targets, describe=args.describe, attributes=args.attributes
        )
    else:
        predictor.require("logits", "medvl3d segment")
        if args.describe is not None or args.attributes is not None:
            predictor.require("lesions", "medvl3d segment --describe/--attributes")
        result = predictor.set_volume(args.volume, progress=args.progress).segment(
            targets=args.targets, largest_component=args.largest_component
        )
    json_path = Path(args.json_out) if args.json_out else json_beside(args.out)
    result.save(args.out, json_path)
    volumes = result.volumes_ml()
    width = max(len("label"), *(len(k) for k in volumes)) if volumes else len("label")
    print(f"{'label':<{width}}  volume (mL)")
    for name, ml in volumes.items():
        print(f"{name:<{width}}  {ml:10.1f}")
    for lesion in result.lesions:
        print(f"lesion: {json.dumps(lesion.to_dict())}")
    print(f"mask: {args.out}\nvolumes: {json_path}")
    return 0
