"""`finetune`: train a segmentation model from a pretrained encoder (or from scratch) on labelled data.

A thin layer over :func:`medvl3d.train.train`: it starts from a segmentation config (the packaged
`seg_synth_tiny.yaml` by default) and sets the encoder checkpoint, the label fraction, the data and the
output folder, so the GTGM-style protocol (pretrained vs scratch at 1%, 10%, 100% of the labels) is one
command per cell.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from medvl3d.config import ExperimentConfig, config_to_dict, load_config

__all__ = ["DEFAULT_SEG_CONFIG", "finetune_config", "finetune"]

#: The segmentation config `finetune` starts from when none is given (shipped inside the package).
DEFAULT_SEG_CONFIG = "seg_synth_tiny.yaml"


def _default_config() -> dict:
    import yaml

    text = (resources.files("medvl3d") / "configs" / DEFAULT_SEG_CONFIG).read_text(encoding="utf-8")
    return yaml.safe_load(text)


def finetune_config(
    config: str | os.PathLike | None = None,
    *,
    checkpoint: str | os.PathLike | None = None,
    from_scratch: bool = False,
    label_fraction: float | None = None,
    data: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
) -> ExperimentConfig:
    """The experiment config `finetune` runs (see :func:`finetune` for the arguments)."""
    if checkpoint is not None and from_scratch:
        raise ValueError("--checkpoint and --from-scratch exclude each other")
    sets = list(overrides)
    if data is not None:
        sets.append(f"data.root={data}")
    if out is not None:
        sets.append(f"output={out}")
    if label_fraction is not None:
        sets.append(f"data.label_fraction={label_fraction}")
    if checkpoint is not None:
        from medvl3d.models.checkpoint import resolve_checkpoint

        sets.append(f"model.encoder_from={resolve_checkpoint(checkpoint)}")
    if from_scratch:
        sets.append("model.encoder_from=null")
    cfg = load_config(config if config is not None else _default_config(), sets)
    from medvl3d.train.tasks import task_class

    if not task_class(cfg.task.name).needs_label:  # segmentation, avfusion: tasks that learn label maps
        raise ValueError(f"finetune trains segmentation; the config's task is {cfg.task.name!r}")
    if cfg.model.encoder_from is not None:
        _warn_preprocess_mismatch(cfg)
    return cfg


def _warn_preprocess_mismatch(cfg: ExperimentConfig) -> None:
    """Transfer assumes the encoder sees what it was pretrained on: warn when the spacing or the CT window
    of the fine-tuning data differ from the pretraining checkpoint's."""
    from medvl3d.models.checkpoint import read_info

    pre = read_info(cfg.model.encoder_from).get("preprocess") or {}
    now = config_to_dict(cfg)["data"]["preprocess"]
    for key, label in (("spacing", "spacing"), ("intensity", "intensity window")):
        if key in pre and pre[key] != now[key]:
            warnings.warn(
                f"{cfg.model.encoder_from}: pretrained with {label} {pre[key]}, fine-tuning with {now[key]} "
                f"(set data.preprocess.{key} to match, or expect a weaker transfer)",
                UserWarning,
                stacklevel=3,
            )


def finetune(
    config: str | os.PathLike | None = None, *, allow_changes: Sequence[str] = (), **options: Any
) -> Path:
    """Train a segmentation model; returns its run folder.

    Args:
        config: a segmentation experiment YAML (default: the packaged `seg_synth_tiny.yaml`).
        options: the keywords of :func:`finetune_config`: `checkpoint` (a pretrained checkpoint whose
            image encoder the model starts from), `from_scratch` (ignore any encoder checkpoint in the
            config), `label_fraction` (train on this fraction of the labelled cases, e.g. 0.01, 0.1, 1),
            `data` (`data.root`), `out` (`output`), `overrides` (further `section.key=value` settings).
        allow_changes: config keys a resume may change (see :func:`medvl3d.train.train`).
    """
    from medvl3d.train.loop import train

    return train(finetune_config(config, **options), allow_changes=allow_changes)
