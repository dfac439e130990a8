"""`medvl3d <command>`: a thin layer over the Python API.

Each command group lives beside the code it drives, in a module exposing ``register(subparsers)``;
the registered handler parses nothing itself beyond argparse and calls one API function.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

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
    "medvl3d.viz.commands",
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
    worker's traceback in its message; its last line holds the original message. An OSError from the
    system (``[Errno 13] Permission denied: 'x'``) reads ``x: Permission denied``."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        names = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        return f"{names}: {exc.strerror}"
    text = str(exc).strip()
    if "\n" in text:
        last = [line for line in text.splitlines() if line.strip()][-1].strip()
        head, sep, rest = last.partition(": ")
        text = rest if sep and head.isidentifier() and head.endswith(("Error", "Exception")) else last
    return text or type(exc).__name__


def warning_formatter(prefix: str):
    """A ``warnings.formatwarning`` printing ``<prefix>: warning: <message>`` on one line."""

    def formatwarning(message, category, filename, lineno, line=None) -> str:
        return f"{prefix}: warning: {one_line(message)}\n"

    return formatwarning


#: Exit status after the reader of our output went away (``medvl3d info VOL | head``): 128 + SIGPIPE,
#: what a shell reports for tools killed by the signal.
EXIT_BROKEN_PIPE = 141


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    prefix = f"medvl3d {args.command}"
    formatwarning = warnings.formatwarning
    # Warnings printed to the terminal are one line too; recorded ones (tests, logging) keep their objects.
    warnings.formatwarning = warning_formatter(prefix)
    try:
        result = args.func(args)
        sys.stdout.flush()  # here, so that a closed pipe is seen now and not at interpreter exit
    except BrokenPipeError:
        # The reader stopped reading (| head): nothing is wrong and nothing more can be printed.
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except (CLIError, OSError, ValueError, MissingExtra) as exc:
        # Library code raises these with messages that name the file or option and the problem; any other
        # OSError (a folder that cannot be written, a full disk) still names its file in its message.
        print(f"{prefix}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = formatwarning
    return int(result or 0)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it again at exit raises nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (captured in tests)
        pass


if __name__ == "__main__":
    sys.exit(main())
