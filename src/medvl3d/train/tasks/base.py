"""What every training objective declares: the `Task` base class and the task registry.

A task is an `nn.Module` whose `forward(batch)` returns `{"loss": ..., named parts}`. Everything that
differs between objectives lives on the task, so the training loop stays one loop:

- `families`: which model families it trains; `needs_text` / `needs_label`: which sample keys the
  training data must carry (a segmentation task trains on MSD/KiTS data that has no reports);
- `model_overrides(facts)`: config fields taken from the data (e.g. `n_classes` from the label names);
- `sample_transform(data)`: a random per-sample transform run in the loader workers after preprocessing
  (patch sampling and augmentation), seeded per drawn sample so a resumed run draws the same patches;
- `validation_keys` and `validate(model, valid, ctx)`: what periodic validation means (zero-shot AUROC,
  Dice ...), run on the preprocessed validation split every `train.eval_every` steps;
- `checkpoint_info(ctx)`: what goes into the checkpoint's `config.json` beyond the model and preprocessing.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

__all__ = [
    "TASKS",
    "DataFacts",
    "TaskContext",
    "Task",
    "register_task",
    "check_task",
    "build_task",
    "task_class",
]


@dataclass
class DataFacts:
    """What the training data says about itself, read once from its first sample.

    Attributes:
        modality: "CT", "MR" or "unknown".
        labels: abnormality label names (CT-RATE style, for zero-shot diagnosis), sorted.
        label_names: label map id -> name (segmentation data: MSD ``labels``, KiTS classes), or None.
    """

    modality: str = "CT"
    labels: list[str] = field(default_factory=list)
    label_names: dict[int, str] | None = None


@dataclass
class TaskContext:
    """What a task's validation and checkpoint hooks may read: the experiment config and the data facts."""

    cfg: Any
    facts: DataFacts


TASKS: dict[str, type[Task]] = {}


class Task(nn.Module):
    """Base class of the training objectives (see the module docstring for the hooks)."""

    families: ClassVar[tuple[str, ...]] = ("vl",)
    needs_text: ClassVar[bool] = True
    needs_label: ClassVar[bool] = False
    #: sample keys the validation split keeps in memory (label maps are large: only when scored)
    validation_keys: ClassVar[tuple[str, ...]] = ("image", "meta")

    @classmethod
    def model_overrides(cls, facts: DataFacts) -> dict[str, Any]:
        """Model config fields that come from the data (applied unless the config sets them)."""
        return {}

    def sample_transform(self, data: Any) -> Callable[[dict], dict] | None:
        """A random transform of one preprocessed training sample (None: the sample as it is)."""
        return None

    def validate(self, model: nn.Module, valid: Sequence[dict], ctx: TaskContext) -> dict[str, float]:
        """Validation metrics on the preprocessed validation split (logged as ``val_*``)."""
        return {}

    def checkpoint_info(self, ctx: TaskContext) -> dict[str, Any]:
        """Entries the checkpoint's ``config.json`` needs to use the model (prompts, class names ...)."""
        return {}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: register a `Task` subclass under `name`."""

    def deco(cls: type[Task]) -> type[Task]:
        if name in TASKS:
            raise ValueError(f"task {name!r} is already registered")
        TASKS[name] = cls
        return cls

    return deco


def task_class(name: str) -> type[Task]:
    """The registered task class `name`; an unknown name is a ValueError listing the known ones."""
    from medvl3d.train import tasks as _  # noqa: F401  (registers the built-in tasks)

    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def _parameters(cls: type[Task]) -> list[str]:
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "model")]


def check_task(name: str, params: dict[str, Any]) -> type[Task]:
    """Validate a task name and its parameter names without building it; returns the task class.

    Raises:
        ValueError: unknown task name.
        TypeError: a parameter the task does not take (named in the message).
    """
    cls = task_class(name)
    allowed = _parameters(cls)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise TypeError(f"task {name!r} got unknown parameter(s) {unknown}; it takes {allowed}")
    return cls


def build_task(name: str, model: nn.Module, **params: Any) -> Task:
    """Build task `name` around `model`.

    Raises:
        ValueError: unknown task name, or a model of a family the task cannot train.
        TypeError: a parameter the task does not take (named in the message).
    """
    cls = check_task(name, params)
    family = getattr(type(getattr(model, "config", None)), "family", None)
    if family is not None and family not in cls.families:
        raise ValueError(
            f"task {name!r} trains models of family {' or '.join(cls.families)}, got a {family!r} model"
        )
    return cls(model, **params)


def log_parts(**parts: torch.Tensor | float) -> dict[str, torch.Tensor]:
    """Detached scalar tensors for logging (the loop reduces them across ranks on logged steps)."""
    return {
        k: (v.detach() if isinstance(v, torch.Tensor) else torch.tensor(float(v))) for k, v in parts.items()
    }
