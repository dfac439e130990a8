"""`medvl3d info` and `medvl3d preprocess`: argument parsing and printing over the data API."""

from __future__ import annotations

import argparse
import json

from medvl3d.data.cache import run_preprocess
from medvl3d.data.dicom import UNEVEN_CHOICES
from medvl3d.data.io import volume_info
from medvl3d.data.preprocess import IntensitySpec, PreprocessSpec


def _format_info(info: dict) -> str:
    st = info["stats"]
    pct = ", ".join(f"{k} {v:.1f}" for k, v in st["percentiles"].items())
    affine = "\n".join("  " + " ".join(f"{v:10.4f}" for v in row) for row in info["affine"])
    return "\n".join(
        [
            f"path         {info['path']}",
            f"shape        {' x '.join(map(str, info['shape']))} (RAS)",
            f"spacing      {' x '.join(f'{s:g}' for s in info['spacing'])} mm",
            f"orientation  {info['orientation']} in the file, RAS after loading",
            f"modality     {info['modality']}",
            f"dtype        {info['dtype']}",
            f"intensity    min {st['min']:.1f}, max {st['max']:.1f}, mean {st['mean']:.1f}, "
            f"std {st['std']:.1f} {st['unit']}",
            f"percentiles  {pct}",
            "affine (voxel -> RAS mm)",
            affine,
        ]
    )


def cmd_info(args: argparse.Namespace) -> int:
    info = volume_info(
        args.volume, modality=args.modality, series_uid=args.series_uid, uneven_slices=args.uneven_slices
    )
    print(json.dumps(info, indent=1) if args.json else _format_info(info))
    return 0


def spec_from_args(args: argparse.Namespace) -> PreprocessSpec:
    """Build the PreprocessSpec described by the `preprocess` options."""
    if args.spec:
        with open(args.spec, encoding="utf-8") as fh:
            try:
                data = json.load(fh)
            except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
                raise ValueError(f"--spec {args.spec}: not a JSON PreprocessSpec ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError(f"--spec {args.spec}: expected a JSON object of PreprocessSpec fields")
        try:
            return PreprocessSpec.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"--spec {args.spec}: {exc}") from None
    return PreprocessSpec(
        orientation=args.orientation,
        spacing=None if args.native_spacing else tuple(args.spacing),
        intensity=IntensitySpec(ct_window=tuple(args.window), mr_percentiles=tuple(args.mr_percentiles)),
        spatial_size=tuple(args.size) if args.size else None,
        foreground_crop=args.foreground_crop,
        foreground_threshold=args.foreground_threshold,
        foreground_margin=args.foreground_margin,
    )


def cmd_preprocess(args: argparse.Namespace) -> int:
    summary = run_preprocess(
        args.dataset,
        args.out,
        spec_from_args(args),
        split=args.split,
        shard=args.shard,
        workers=args.workers,
        progress=not args.no_progress,
        on_error="skip" if args.skip_errors else "raise",
    )
    failed = summary["failed"]
    redone = f" ({summary['stale']} redone: their source changed)" if summary.get("stale") else ""
    print(
        f"shard {summary['shard']}: {summary['written']} written{redone}, {summary['skipped']} already done, "
        f"{len(failed)} failed of {summary['total']} cases in {summary['seconds']:.1f} s "
        f"-> {summary['out_dir']}"
    )
    for cid, msg in failed.items():
        print(f"  failed {cid}: {msg}")
    return 1 if failed else 0


def register(subparsers) -> None:
    """Add `info` and `preprocess` to `medvl3d`."""
    p = subparsers.add_parser("info", help="geometry, orientation and HU statistics of a volume")
    p.add_argument("volume", help="NIfTI/NRRD/MHA file or DICOM series folder")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--modality", choices=["CT", "MR"], help="override the detected modality")
    p.add_argument("--series-uid", help="series to read from a DICOM folder holding several")
    p.add_argument(
        "--uneven-slices",
        choices=UNEVEN_CHOICES,
        default="error",
        help="a DICOM series with gaps or uneven slice spacing: refuse it (error, the default) or "
        "interpolate it onto an even grid (resample)",
    )
    p.set_defaults(func=cmd_info)

    d = PreprocessSpec()
    p = subparsers.add_parser(
        "preprocess", help="resample/window a dataset once into a memory-mapped cache (resumable, shardable)"
    )
    p.add_argument("dataset", help="MSD folder or *.json, *.jsonl manifest, KiTS23 or CT-RATE root")
    p.add_argument("--out", required=True, help="cache folder")
    p.add_argument("--split", help="dataset split (default: train / every manifest line)")
    p.add_argument("--shard", default="0/1", help="i/n: process cases with index %% n == i (default 0/1)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--spec", help="JSON file with a PreprocessSpec (overrides the options below)")
    p.add_argument("--orientation", default=d.orientation, help="target axis code (default RAS)")
    p.add_argument("--spacing", type=float, nargs=3, default=list(d.spacing), metavar=("X", "Y", "Z"))
    p.add_argument("--native-spacing", action="store_true", help="do not resample")
    p.add_argument("--window", type=float, nargs=2, default=list(d.intensity.ct_window), metavar=("LO", "HI"))
    p.add_argument(
        "--mr-percentiles",
        type=float,
        nargs=2,
        default=list(d.intensity.mr_percentiles),
        metavar=("LO", "HI"),
    )
    p.add_argument("--size", type=int, nargs=3, metavar=("X", "Y", "Z"), help="centre crop/pad to this size")
    p.add_argument("--foreground-crop", action="store_true", help="crop to voxels above the threshold")
    p.add_argument("--foreground-threshold", type=float, default=d.foreground_threshold)
    p.add_argument("--foreground-margin", type=int, default=d.foreground_margin)
    p.add_argument("--skip-errors", action="store_true", help="record failing cases and go on")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_preprocess)
