"""Experiment configuration: small typed dataclasses, read from YAML, with dotted command-line overrides.

Configs are data: YAML is read with ``yaml.safe_load`` only and nothing in it is ever evaluated. Every
key and every override is checked against the dataclass fields and their types, so a typo
(``train.lr`` instead of ``optim.lr``) is an error naming the key, not a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from medvl3d.atomic import atomic_write_text

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

    ``text_source`` picks the text paired with each volume: the ``report``, its ``summary`` (BrgSA),
    ``generated`` text (GTGM) or ``auto`` (the report when non-empty, else generated text).
    """

    root: str = "data/synthct"
    format: str = "auto"
    train_split: str = "train"
    valid_split: str = "valid"
    text_source: Literal["report", "summary", "generated", "auto"] = "report"
    summariser: dict = field(default_factory=dict)
    generator: dict = field(default_factory=dict)
    preprocess: dict = field(default_factory=dict)
    cache_dir: str | None = None
    batch_size: int = 4
    num_workers: int = 0


@dataclass
class ModelConfig:
    """A registered model name plus keyword overrides for ``create_model``."""

    name: str = "test_clip"
    overrides: dict = field(default_factory=dict)


@dataclass
class TaskConfig:
    """A registered task (objective) name plus keyword parameters for ``build_task``."""

    name: str = "clip"
    params: dict = field(default_factory=dict)


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and cosine decay to ``min_lr_ratio * lr``."""

    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 10
    betas: list = field(default_factory=lambda: [0.9, 0.98])
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
        if not 0 < self.dist_timeout_min < float("inf"):
            raise ValueError(
                f"config key 'train.dist_timeout_min': must be a positive number of minutes, "
                f"got {self.dist_timeout_min!r}"
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
    prompts: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from medvl3d.text.prompts import PromptSet

        try:  # zero-shot prompts are used only at evaluation time: check them before training
            PromptSet.from_dict(self.prompts or {})
        except ValueError as exc:
            raise ValueError(f"config key 'prompts': {exc}") from None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (int -> float is allowed); raise ValueError if not."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(f"config key {key!r}: {value!r} is not a valid {_type_name(tp)}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ValueError(f"config key {key!r}: {value!r} is not one of {list(allowed)}")
        return value
    if tp is type(None):
        if value is not None:
            raise ValueError(f"config key {key!r}: expected null, got {value!r}")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"config key {key!r}: expected a bool (true/false), got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"config key {key!r}: expected an int, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config key {key!r}: expected a float, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"config key {key!r}: expected a string, got {value!r}")
        return value
    if tp in (dict, list):
        if not isinstance(value, tp):
            raise ValueError(f"config key {key!r}: expected a {tp.__name__}, got {value!r}")
        return value
    raise ValueError(f"config key {key!r}: unsupported field type {_type_name(tp)}")


def _from_dict(cls: type, data: Any, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"config section {prefix or '<root>'!r} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f" in section {prefix!r}" if prefix else ""
        raise ValueError(f"unknown config key(s) {unknown}{where}; valid keys: {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _from_dict(tp, value, key)
        else:
            kwargs[name] = _coerce(value, tp, key)
    return cls(**kwargs)


def config_from_dict(data: dict) -> ExperimentConfig:
    """Build a validated :class:`ExperimentConfig` from a plain (YAML-shaped) dict."""
    return _from_dict(ExperimentConfig, data, "")


def config_to_dict(cfg: ExperimentConfig) -> dict:
    """The config as plain nested dicts (what YAML and JSON hold)."""
    return dataclasses.asdict(cfg)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ValueError(f"override {item!r} must look like section.key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ValueError(f"override {item!r} has an empty key")
    # YAML scalar syntax for the value (3e-4, true, null, [0.9, 0.98]); safe_load never evaluates code.
    value = yaml.safe_load(raw) if raw.strip() else ""
    # PyYAML reads "3e-4" (no dot) as a string; accept it as a number when it parses as one.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            pass
    return key.split("."), value


def apply_overrides(data: dict, overrides: typing.Iterable[str]) -> dict:
    """Apply ``section.key=value`` overrides to a config dict (validated later against the dataclasses).

    Keys inside free-form dict fields (``model.overrides.width=32``) are allowed; any other unknown key
    is an error naming it.
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
                if not last and cls is None and tp is not dict:
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
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{p}: not valid YAML: {exc}") from exc
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
