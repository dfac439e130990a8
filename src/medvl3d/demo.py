"""`medvl3d demo`: the most complete end-to-end path, on embedded or shared data."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the end-to-end demo")
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.set_defaults(func=lambda args: run_demo(args.out))


def run_demo(out: str) -> int:
    print(f"medvl3d demo -> {out} (nothing to run yet)")
    return 0
