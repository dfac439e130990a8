"""`medvl3d <command>`: a thin layer over the Python API.

Each command group lives beside the code it drives, in a module exposing ``register(subparsers)``;
the registered handler parses nothing itself beyond argparse and calls one API function.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from medvl3d.extras import MissingExtra

# Modules that contribute subcommands, in the order they appear in `medvl3d --help`.
COMMAND_MODULES: tuple[str, ...] = (
    "medvl3d.demo",
    "medvl3d.data.commands",
    "medvl3d.data.synth.commands",
    "medvl3d.text.commands",
    "medvl3d.train.commands",
    "medvl3d.infer.commands",
    "medvl3d.eval.commands",
)


class CLIError(Exception):
    """An error whose message is shown to the user as is, without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medvl3d", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def one_line(exc: BaseException) -> str:
    """The message of an error as one line. An error raised in a data-loader worker arrives with the
    worker's traceback in its message; its last line holds the original message."""
    text = str(exc).strip()
    if "\n" in text:
        last = [line for line in text.splitlines() if line.strip()][-1].strip()
        head, sep, rest = last.partition(": ")
        text = rest if sep and head.isidentifier() and head.endswith(("Error", "Exception")) else last
    return text or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except (CLIError, OSError, ValueError, MissingExtra) as exc:
        # Library code raises these with messages that name the file or option and the problem.
        print(f"medvl3d {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
