"""Checkpoints: a folder with safetensors weights, a JSON of everything needed to rebuild the model, and
(for training) the optimiser/scheduler/data-order/RNG state.

This module sits below training: inference and evaluation load models through it without importing
``medvl3d.train``. ``config.json`` records the model family (``model.family``), so a checkpoint of any
family is rebuilt with the same strict checks; format version 1 (vision-language only, one vision config
for both architectures) is read and migrated on load.

Layout under a run folder::

    checkpoints/
      step-00000050/  model.safetensors  config.json  train_state.pt
      step-00000100/  ...
      last            # a one-line pointer file: "step-00000100"

Writes are crash-safe (:mod:`medvl3d.atomic`): a checkpoint is written into
``checkpoints/.tmp-step-<N>-<random>/``, every file is fsynced, the folder is renamed to ``step-<N>`` and
only then is ``last`` replaced (temp file + fsync + ``os.replace``).
A crash at any point leaves the previous ``last`` pointing at a complete checkpoint. Re-saving an existing
step moves the old folder aside first; a crash between the two renames is undone by the next save, or
by ``latest_checkpoint(root, repair=True)`` when the training loop resumes (``medvl3d.atomic.restore_aside``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from medvl3d.atomic import (
    ASIDE_DIR_PREFIX,
    aside_dir_target,
    atomic_dir,
    atomic_write_text,
    remove_stale_temps,
    restore_aside,
)

__all__ = [
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "CONFIG_NAME",
    "STATE_NAME",
    "save_checkpoint",
    "latest_checkpoint",
    "resolve_checkpoint",
    "read_info",
    "load_model",
    "load_train_state",
    "load_encoder",
    "read_weights",
    "check_finite_weights",
    "check_family",
    "unwrap_model",
    "migrate_bank_options",
]

FORMAT_VERSION = 2
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
STATE_NAME = "train_state.pt"
_POINTER = "last"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def _write_weights(model: nn.Module, folder: Path) -> None:
    # safetensors refuses shared storage; clone+contiguous gives each tensor its own buffer.
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})


def _write_config(info: dict, folder: Path) -> None:
    (folder / CONFIG_NAME).write_text(json.dumps(info, indent=2, sort_keys=False), encoding="utf-8")


def _write_train_state(state: dict, folder: Path) -> None:
    torch.save(state, folder / STATE_NAME)


def _write_pointer(root: Path, name: str) -> None:
    atomic_write_text(root / _POINTER, name + "\n", fsync=True)


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    model: nn.Module,
    info: dict,
    train_state: dict | None = None,
    keep: int = 2,
) -> Path:
    """Write ``root/step-<step>`` atomically and point ``root/last`` at it.

    Args:
        root: the ``checkpoints`` folder of a run.
        step: optimiser step the weights belong to.
        model: the model (DDP/compile wrappers are unwrapped).
        info: the JSON-serialisable description written as ``config.json`` (the training loop's
            ``make_info``: ``model`` with ``name``, ``family`` and ``config``, preprocessing, the task's
            additions); ``step`` and ``format_version`` are added.
        train_state: optimiser, scheduler, data-order and RNG states (``train_state.pt``), or None.
        keep: how many completed ``step-*`` folders to keep (older ones are removed after ``last`` moves).

    Returns:
        The final checkpoint folder.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    final = root / name
    remove_stale_temps(root, [name])  # debris of an earlier crash at this same step
    restore_aside(final)  # an earlier overwrite of this step killed between its two renames
    info = {"format_version": FORMAT_VERSION, **info, "step": int(step)}
    # Every file is fsynced before the rename, the checkpoints folder after it.
    with atomic_dir(final, overwrite=True, fsync=True) as tmp:
        _write_weights(unwrap_model(model), tmp)
        _write_config(info, tmp)
        if train_state is not None:
            _write_train_state(train_state, tmp)
    _write_pointer(root, name)
    if keep > 0:
        done = sorted(p for p in root.glob("step-*") if p.is_dir())
        for old in done[:-keep]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: str | os.PathLike, repair: bool = False) -> Path | None:
    """The checkpoint that ``root/last`` points at, or None when there is none yet.

    With ``repair`` (only the one process that writes ``root``, e.g. rank 0 resuming training), a
    checkpoint that a killed re-save left moved aside is renamed back first; readers never change files.
    """
    root = Path(root)
    pointer = root / _POINTER
    if not pointer.is_file():
        return None
    target = root / pointer.read_text(encoding="utf-8").strip()
    if repair and not target.exists():
        restore_aside(target)  # a re-save of this step was killed after moving the old folder aside
    if not target.exists() and any(
        aside_dir_target(p) == target.name for p in root.glob(f"{ASIDE_DIR_PREFIX}*")
    ):
        raise FileNotFoundError(
            f"{pointer} points at {target}, which a killed re-save left as {root}/.old-{target.name}-*; "
            "resuming the training run restores it"
        )
    if not (target / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{pointer} points at {target}, which has no {WEIGHTS_NAME}")
    return target


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """Accept a checkpoint folder, a run's ``checkpoints`` folder or a run folder; return the checkpoint.

    Raises:
        FileNotFoundError: the path does not exist, or the folder lacks ``config.json`` or the weights.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir() and not (path / CONFIG_NAME).exists() and not (path / WEIGHTS_NAME).exists():
        for root in (path, path / "checkpoints"):
            if (root / _POINTER).is_file():
                found = latest_checkpoint(root)
                if found is not None:
                    path = found
                    break
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path} is not a checkpoint folder (expected {CONFIG_NAME} + {WEIGHTS_NAME})"
        )
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (path / name).is_file():
            raise FileNotFoundError(f"checkpoint folder {path} is missing {name}")
    return path


def read_info(path: str | os.PathLike) -> dict:
    """The parsed ``config.json`` of a checkpoint (see :func:`resolve_checkpoint` for accepted paths)."""
    folder = resolve_checkpoint(path)
    try:
        info = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{folder / CONFIG_NAME}: not valid JSON: {exc}") from exc
    if not isinstance(info, dict) or "model" not in info or "name" not in info.get("model", {}):
        raise ValueError(f"{folder / CONFIG_NAME}: missing the 'model' section with its 'name'")
    version = info.get("format_version")
    if version == 1:
        info = _migrate_v1(info)
    elif version != FORMAT_VERSION:
        raise ValueError(
            f"{folder / CONFIG_NAME}: unsupported format_version {version!r} (expected 1 or {FORMAT_VERSION})"
        )
    return migrate_bank_options(info)


def migrate_bank_options(info: dict) -> dict:
    """A model section without options added later (written before they existed) gets the values its
    model was built and scored with: ``LEGACY_BANK_OPTIONS`` for vision-language models,
    ``LEGACY_MALENIA_OPTIONS`` for Malenia; fields it records are kept. Returns a copy when anything is
    filled in."""
    from medvl3d.models.config import LEGACY_BANK_OPTIONS
    from medvl3d.models.malenia import LEGACY_MALENIA_OPTIONS

    model = info.get("model") or {}
    config = model.get("config")
    legacy = {"vl": LEGACY_BANK_OPTIONS, "malenia": LEGACY_MALENIA_OPTIONS}.get(model.get("family", "vl"))
    if legacy is None or not isinstance(config, dict):
        return info
    missing = {k: v for k, v in legacy.items() if k not in config}
    if not missing:
        return info
    info = json.loads(json.dumps(info))  # a deep copy
    info["model"]["config"].update(missing)
    return info


# Fields of format-1 vision configs that only one architecture used (the other ignored them).
_V1_VISION_ONLY = {
    "vit": ("depth", "patch_size", "heads", "mlp_ratio", "pool"),
    "resenc": ("stage_blocks", "max_width", "norm", "stem_stride"),
}


def _migrate_v1(info: dict) -> dict:
    """Format 1 -> 2: the family is "vl" and the vision config loses the other architecture's fields,
    which format-1 models carried but never used (so the rebuilt model is the same network)."""
    info = json.loads(json.dumps(info))  # a deep copy
    model = info["model"]
    model.setdefault("family", "vl")
    vision = (model.get("config") or {}).get("vision")
    if isinstance(vision, dict):
        arch = vision.get("arch", "vit")
        for other, names in _V1_VISION_ONLY.items():
            if other != arch:
                for name in names:
                    vision.pop(name, None)
        vision["arch"] = arch
    info["format_version"] = FORMAT_VERSION
    return info


def _build_model(model_info: dict, source: str) -> nn.Module:
    """Rebuild an untrained model from the checkpoint's ``model`` section (name, family, config)."""
    from medvl3d.models.registry import model_from_config

    if not isinstance(model_info.get("config"), dict):
        raise ValueError(f"{source}: the 'model' section has no 'config' dict")
    family = model_info.get("family")
    if not isinstance(family, str):
        raise ValueError(f"{source}: the 'model' section has no 'family'")
    try:
        return model_from_config(family, model_info["config"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: invalid model config: {exc}") from exc


def read_weights(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict in a checkpoint folder's ``model.safetensors`` (a corrupt file is a ValueError)."""
    path = Path(folder) / WEIGHTS_NAME
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{path}: cannot read safetensors weights: {exc}") from exc


def check_finite_weights(state: dict[str, torch.Tensor], source: str) -> None:
    """A ValueError naming ``source`` and the tensors when any floating-point weight is NaN or infinite
    (a diverged or damaged checkpoint, whose every prediction would be NaN)."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(
            f"{source}: {len(bad)} of {len(state)} weight tensors hold NaN or infinite values "
            f"(e.g. {bad[:3]}); the checkpoint is unusable (training diverged or the file is damaged)"
        )


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model``; any missing, unexpected or mis-shaped key is a ValueError naming it."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(own[k].shape) != tuple(state[k].shape)
    )
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
        if shapes:
            parts.append(f"shape mismatches {shapes[:10]}{' ...' if len(shapes) > 10 else ''}")
        raise ValueError(f"{source} does not match the model described by its config: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def load_model(
    path: str | os.PathLike, device: str | torch.device | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model exactly as saved: ``(model in eval mode, info from config.json)``.

    Raises:
        FileNotFoundError: the folder or its ``config.json`` / ``model.safetensors`` is missing.
        ValueError: the weights do not match the config (names the mismatched keys) or hold NaN/inf.
    """
    folder = resolve_checkpoint(path)
    info = read_info(folder)
    model = _build_model(info["model"], str(folder / CONFIG_NAME))
    state = read_weights(folder)
    check_finite_weights(state, str(folder / WEIGHTS_NAME))
    load_state_strict(model, state, str(folder / WEIGHTS_NAME))
    if device is not None:
        model = model.to(device)
    model.eval()
    info["path"] = str(folder)
    return model, info


def load_train_state(folder: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """The training state saved beside the weights (optimiser, scheduler, data order, RNG)."""
    path = Path(folder) / STATE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint folder {folder} has no {STATE_NAME} (not a training checkpoint)")
    # weights_only=False: the state holds numpy/python RNG tuples; it is our own file, written by save.
    return torch.load(path, map_location=map_location, weights_only=False)


def check_family(info: dict, allowed: tuple[str, ...], what: str) -> str:
    """The checkpoint's family; a ValueError naming the checkpoint when ``what`` (e.g. "medvl3d segment")
    cannot use a model of that family."""
    family = info["model"].get("family", "vl")
    if family not in allowed:
        where = info.get("path", "the checkpoint")
        raise ValueError(
            f"{where}: {what} needs a model of family {' or '.join(repr(a) for a in allowed)}, but this "
            f"checkpoint holds a {family!r} model ({info['model'].get('name')})"
        )
    return family


def load_encoder(path: str | os.PathLike) -> tuple[Any, dict[str, torch.Tensor], str]:
    """The image encoder of a checkpoint: ``(vision config, encoder state dict, source)``.

    Vision-language checkpoints give their image tower (``visual.*``), segmentation checkpoints their
    encoder (``encoder.*``), so any pretraining method (and any fine-tuned model) can be transferred.

    Raises:
        FileNotFoundError: the checkpoint is missing.
        ValueError: a checkpoint of a family without an image encoder.
    """
    from medvl3d.models.config import model_config_from_dict
    from medvl3d.models.registry import get_family

    folder = resolve_checkpoint(path)
    info = read_info(folder)
    family = info["model"].get("family", "vl")
    fam = get_family(family)
    prefix, key = {"vl": ("visual.", "vision"), "seg": ("encoder.", "encoder")}.get(family, (None, None))
    if prefix is None:
        raise ValueError(f"{folder}: a {family!r} checkpoint has no image encoder to transfer")
    cfg = model_config_from_dict(info["model"]["config"], fam.config_cls)
    weights = folder / WEIGHTS_NAME
    encoder = {k[len(prefix) :]: v for k, v in read_weights(folder).items() if k.startswith(prefix)}
    if not encoder:
        raise ValueError(f"{weights}: no {prefix}* weights in this checkpoint")
    check_finite_weights(encoder, str(weights))
    return getattr(cfg, key), encoder, str(weights)
