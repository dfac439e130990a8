"""`medvl3d synth`: generate the SynthCT-VL data set (thin layer over `medvl3d.data.synth.generate`)."""

from __future__ import annotations

import argparse
import json


def _triple(kind: type):
    def parse(text: str):
        parts = text.lower().replace("x", ",").split(",")
        try:
            vals = tuple(kind(p) for p in parts if p.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected three numbers like 64x128x128, got {text!r}"
            ) from None
        if len(vals) != 3:
            raise argparse.ArgumentTypeError(f"expected three numbers like 64x128x128, got {text!r}")
        return vals

    return parse


def _names(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()] if text else []


def register(subparsers) -> None:
    """Add `medvl3d synth` and `medvl3d synth-preview`."""
    from .generator import DEFAULT_SIZE, DEFAULT_SPACING

    p = subparsers.add_parser(
        "synth", help="generate the SynthCT-VL data set (CT-RATE + MSD + JSONL layouts)"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n-train", type=int, default=32, help="cases in the train split")
    p.add_argument("--n-test", type=int, default=8, help="cases in the valid split")
    p.add_argument("--size", type=_triple(int), default=DEFAULT_SIZE, help="DxHxW voxels (z, y, x)")
    p.add_argument(
        "--spacing",
        type=_triple(float),
        default=DEFAULT_SPACING,
        help="z,y,x voxel size in mm (e.g. 5,2.75,2.75 or 5x2.75x2.75)",
    )
    p.add_argument(
        "--centre",
        type=_triple(float),
        default=None,
        help="z,y,x mm of the field-of-view centre (standard variation; default mid-thorax to upper "
        "abdomen; 75,0,0 centres a crop on the lungs and hila)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lesion-types", default=None, help="lesion type YAML (default: the shipped one)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all CPUs)")
    p.add_argument(
        "--unseen-lesion-types",
        type=_names,
        default=None,
        help="comma-separated lesion types kept out of train (default: the YAML's unseen types)",
    )
    p.add_argument(
        "--underrepresented",
        type=_names,
        default=None,
        help="comma-separated CT-RATE labels at <= 2%% prevalence in train",
    )
    p.add_argument(
        "--unseen-abnormalities",
        type=_names,
        default=None,
        help="comma-separated CT-RATE labels absent from train",
    )
    p.add_argument(
        "--variation",
        choices=("standard", "wide"),
        default="standard",
        help="standard: the fixed phantom; wide: domain-randomised field of view, size, contrast phase, "
        "HU, scanner and anatomy (for models that must transfer to real CT)",
    )
    p.add_argument("--preview", type=int, default=0, help="also write N preview PNGs to OUT/preview")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from .generator import generate
    from .preview import preview

    summary = generate(
        args.out,
        n_train=args.n_train,
        n_test=args.n_test,
        size=args.size,
        spacing=args.spacing,
        seed=args.seed,
        lesion_types=args.lesion_types,
        workers=args.workers,
        progress=not args.no_progress,
        unseen_lesion_types=args.unseen_lesion_types,
        underrepresented=args.underrepresented,
        unseen_abnormalities=args.unseen_abnormalities,
        variation=args.variation,
        centre=args.centre,
    )
    print(json.dumps({k: summary[k] for k in ("out_dir", "n_train", "n_test", "seconds", "volumes_per_s")}))
    if args.preview:
        for path in preview(args.out, args.preview, None):
            print(path)
    return 0
