"""Experiment configuration: small typed dataclasses, read from YAML, with dotted command-line overrides.

Configs are data: YAML is read with ``yaml.safe_load`` only and nothing in it is ever evaluated. Every
key and every override is checked against the dataclass fields and their types, so a typo
(``train.lr`` instead of ``optim.lr``) is an error naming the key, not a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from medvl3d.atomic import atomic_write_text
from medvl3d.data.preprocess import PreprocessSpec
from medvl3d.device import check_device_name
from medvl3d.text.generator import GeneratorConfig, MeasuredGeneratorConfig
from medvl3d.text.prompts import PromptSet
from medvl3d.text.summariser import RuleSummariserConfig, SummariserConfig
from medvl3d.typed import build_dataclass, to_plain
from medvl3d.yamlfile import read_yaml, yaml_error

__all__ = [
    "DataConfig",
    "ModelConfig",
    "TaskConfig",
    "OptimConfig",
    "TrainConfig",
    "ExperimentConfig",
    "load_config",
    "save_config",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
]


@dataclass
class DataConfig:
    """Where the training data lives and how a sample becomes a batch row.

    ``text_source`` picks the text paired with each volume (for tasks that train with text): the
    ``report``, its ``summary`` (BrgSA), ``generated`` text (GTGM) or ``auto`` (the report when non-empty,
    else generated text). ``label_fraction`` keeps that fraction of the training cases (at least one, a
    deterministic subset drawn from ``label_seed``): the 1% / 10% / 100% label budgets of transfer studies.
    """

    root: str = "data/synthct"
    format: str = "auto"
    train_split: str = "train"
    valid_split: str = "valid"
    text_source: Literal["report", "summary", "generated", "auto"] = "report"
    summariser: SummariserConfig = field(default_factory=RuleSummariserConfig)
    generator: GeneratorConfig = field(default_factory=MeasuredGeneratorConfig)
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    cache_dir: str | None = None
    batch_size: int = 4
    num_workers: int = 0
    label_fraction: float = 1.0
    label_seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if not 0 < self.label_fraction <= 1:
            raise ValueError(f"label_fraction must be in (0, 1], got {self.label_fraction}")


@dataclass
class ModelConfig:
    """A registered model name, config overrides for ``create_model`` (checked against the model's config
    class when the experiment config is read) and an optional pretrained encoder to start from."""

    name: str = "test_resenc_clip"
    overrides: dict = field(default_factory=dict)
    encoder_from: str | None = None

    def __post_init__(self) -> None:
        from medvl3d.models.registry import model_config

        try:
            model_config(self.name, **self.overrides)
        except (TypeError, ValueError) as exc:
            raise ValueError(str(exc)) from None


@dataclass
class TaskConfig:
    """A registered task (objective) name plus keyword parameters for ``build_task``, checked against the
    task's signature when the experiment config is read."""

    name: str = "clip"
    params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from medvl3d.train.tasks import check_task

        try:
            check_task(self.name, self.params)
        except (TypeError, ValueError) as exc:
            raise ValueError(str(exc)) from None


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and cosine decay to ``min_lr_ratio * lr``."""

    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 10
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    min_lr_ratio: float = 0.0


@dataclass
class TrainConfig:
    """Loop settings; ``steps`` counts optimiser steps (each of ``accum_steps`` micro-batches).

    ``eval_every`` > 0 evaluates zero-shot diagnosis on ``data.valid_split`` every that many steps (and at
    the last). ``dist_timeout_min`` bounds every DDP wait (rank 0 preprocessing the cache or evaluating
    while the others wait); the process-group default (10 minutes with NCCL) kills long ones.
    """

    steps: int = 100
    accum_steps: int = 1
    amp: Literal["bf16", "none"] = "none"
    compile: bool = False
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 50
    eval_every: int = 0
    grad_clip: float = 1.0
    device: str = "auto"
    progress: bool = True
    dist_timeout_min: float = 60.0

    def __post_init__(self) -> None:
        for key in ("steps", "accum_steps", "log_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        check_device_name(self.device)  # its message names the device; availability is checked at start
        if not 0 < self.dist_timeout_min < float("inf"):
            raise ValueError(
                f"dist_timeout_min: must be a positive number of minutes, got {self.dist_timeout_min!r}"
            )


@dataclass
class ExperimentConfig:
    """One experiment: data, model, objective, optimiser, loop, output folder and prompt settings."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: str = "runs/experiment"
    prompts: PromptSet = field(default_factory=PromptSet)  # zero-shot prompts, checked before training


def config_from_dict(data: dict) -> ExperimentConfig:
    """Build a validated :class:`ExperimentConfig` from a plain (YAML-shaped) dict."""
    if not isinstance(data, dict):
        raise ValueError(f"a config must be a mapping at the top level, got {data!r}")
    return build_dataclass(ExperimentConfig, data, "config", ValueError)


def config_to_dict(cfg: ExperimentConfig) -> dict:
    """The config as plain nested dicts (what YAML and JSON hold)."""
    return to_plain(cfg)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ValueError(f"override {item!r} must look like section.key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ValueError(f"override {item!r} has an empty key")
    # YAML scalar syntax for the value (3e-4, true, null, [0.9, 0.98]); safe_load never evaluates code.
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ValueError(f"override {item!r}: the value is not valid YAML ({yaml_error(exc)})") from None
    # PyYAML reads "3e-4" (no dot) as a string; accept it as a number when it parses as one.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            pass
    return key.split("."), value


def apply_overrides(data: dict, overrides: typing.Iterable[str]) -> dict:
    """Apply ``section.key=value`` overrides to a config dict (validated later against the dataclasses).

    Keys inside free-form dict fields (``model.overrides.width=32``) and tagged-union sections
    (``data.summariser.backend=llm``) are checked when the config is built; any other unknown key is an
    error naming it here.
    """
    data = typing.cast(dict, yaml.safe_load(yaml.safe_dump(data)))  # deep copy of plain data
    for item in overrides:
        path, value = _parse_override(item)
        cls: Any = ExperimentConfig
        node = data
        for i, part in enumerate(path):
            last = i == len(path) - 1
            if cls is not None:
                fields = {f.name: f for f in dataclasses.fields(cls)}
                if part not in fields:
                    where = ".".join(path[:i]) or "<root>"
                    raise ValueError(
                        f"override {item!r}: unknown key {part!r} in {where}; valid keys: {sorted(fields)}"
                    )
                tp = typing.get_type_hints(cls)[part]
                cls = tp if dataclasses.is_dataclass(tp) else None
                # dicts and tagged unions of dataclasses are sections whose keys are checked at build time
                free = tp is dict or all(dataclasses.is_dataclass(a) for a in typing.get_args(tp) or [0])
                if not last and cls is None and not free:
                    raise ValueError(f"override {item!r}: {'.'.join(path[: i + 1])} is not a section")
            if last:
                node[part] = value
            else:
                child = node.get(part)
                if child is None:
                    child = node[part] = {}
                if not isinstance(child, dict):
                    raise ValueError(f"override {item!r}: {'.'.join(path[: i + 1])} is not a section")
                node = child
    return data


def load_config(path: str | os.PathLike | dict, overrides: typing.Iterable[str] = ()) -> ExperimentConfig:
    """Read a YAML experiment config and apply dotted overrides, e.g. ``["optim.lr=3e-4"]``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: bad YAML, an unknown key or a value of the wrong type (the message names it).
    """
    if isinstance(path, dict):
        data, source = path, "<dict>"
    else:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        data = read_yaml(p, "config") or {}
        source = str(p)
    if not isinstance(data, dict):
        raise ValueError(f"{source}: a config must be a mapping at the top level")
    try:
        return config_from_dict(apply_overrides(data, overrides))
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from exc


def save_config(cfg: ExperimentConfig, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically and durably (temp file, fsync, ``os.replace``)."""
    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False), fsync=True)
