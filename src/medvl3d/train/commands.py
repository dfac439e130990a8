"""CLI: ``medvl3d train`` and ``medvl3d finetune``.

Each handler parses nothing beyond argparse and calls one API function (:func:`medvl3d.train.train`,
:func:`medvl3d.train.finetune.finetune`).
"""

from __future__ import annotations

import argparse


def _allow_change_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-change",
        dest="allow_changes",
        action="append",
        default=[],
        metavar="KEY",
        help="when resuming, accept a changed config value that alters what the run trains, e.g. "
        "--allow-change train.steps (repeatable; recorded in the run's config_changes.jsonl)",
    )


def register(subparsers) -> None:
    """Add ``train`` and ``finetune`` to ``medvl3d``."""
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
    p.add_argument("-o", "--out", default=None, help="run folder (sets output)")
    _allow_change_option(p)
    p.set_defaults(func=_train)

    p = subparsers.add_parser(
        "finetune",
        help="train a segmentation model from a pretrained encoder (or from scratch)",
        description="Train a segmentation model (default config: the packaged seg_synth_tiny.yaml). "
        "--checkpoint takes the image encoder of any pretrained checkpoint (CLIP, SigLIP, BrgSA, GTGM); "
        "--label-fraction trains on a deterministic subset of the labelled cases.",
    )
    p.add_argument("config", nargs="?", default=None, help="segmentation experiment YAML (optional)")
    p.add_argument("--checkpoint", default=None, help="pretrained checkpoint: start from its encoder")
    p.add_argument("--from-scratch", action="store_true", help="random initialisation (ignore any encoder)")
    p.add_argument("--label-fraction", type=float, default=None, help="fraction of training cases, (0, 1]")
    p.add_argument("--data", default=None, help="dataset root (sets data.root)")
    p.add_argument("-o", "--out", default=None, help="run folder (sets output)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    _allow_change_option(p)
    p.set_defaults(func=_finetune)


def _train(args: argparse.Namespace) -> int:
    from medvl3d.train import train

    overrides = [*args.overrides, *([f"output={args.out}"] if args.out else [])]
    allowed = {"allow_changes": args.allow_changes} if args.allow_changes else {}
    run_dir = train(args.config, overrides, **allowed)
    print(f"run folder: {run_dir}")
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from medvl3d.train.finetune import finetune

    run_dir = finetune(
        args.config,
        checkpoint=args.checkpoint,
        from_scratch=args.from_scratch,
        label_fraction=args.label_fraction,
        data=args.data,
        out=args.out,
        overrides=args.overrides,
        allow_changes=args.allow_changes,
    )
    print(f"run folder: {run_dir}")
    return 0
