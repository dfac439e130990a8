"""A training run's folder: one training process at a time, and a resume that trains what the run was
trained with.

* **Lock**: the main process holds an exclusive ``flock`` on ``<run>/.train.lock`` while it trains, so a
  second ``medvl3d train`` into the same folder is refused instead of interleaving checkpoints and
  metrics. The kernel releases the lock when its process dies (even by ``kill -9``), so a killed run
  never leaves the folder stuck.
* **Resume check**: before anything is written, the new config is compared with the one the run's latest
  checkpoint was trained with. A change of a key that alters what is trained (objective, model, data,
  preprocessing, optimiser, schedule, seed, ...) is an error unless it is explicitly allowed
  (``allow_changes``, CLI ``--allow-change KEY``). Operational keys (:data:`OPERATIONAL_KEYS`: logging,
  checkpoint and evaluation intervals, device, workers, progress bars) may change freely.
* **Records, not overwrites**: ``config.yaml`` is the config the run started with and is never
  replaced by a resume; every accepted change is appended to ``config_changes.jsonl`` with the step it
  applies from. ``config.yaml`` is written only once a start has succeeded, and a failed start in a new
  folder removes the folder again, so no folder is left holding only a config.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from medvl3d.atomic import atomic_write_text
from medvl3d.config import ExperimentConfig, config_from_dict, config_to_dict, save_config

try:  # POSIX; elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "CHANGES_NAME",
    "CONFIG_NAME",
    "LOCK_NAME",
    "OPERATIONAL_KEYS",
    "RunFolder",
    "RunFolderInUse",
    "config_changes",
]

CONFIG_NAME = "config.yaml"
CHANGES_NAME = "config_changes.jsonl"
LOCK_NAME = ".train.lock"

#: Keys a resume may change without permission: they change how a run is executed, logged or
#: checkpointed, not the weights it trains.
OPERATIONAL_KEYS = frozenset(
    {
        "output",
        "train.progress",
        "train.log_every",
        "train.ckpt_every",
        "train.eval_every",
        "train.device",
        "train.dist_timeout_min",
        "train.compile",
        "data.num_workers",
        "data.cache_dir",
    }
)

#: Why some changes cannot work at all, shown beside them.
_REASONS = {
    "data.batch_size": "would change the data order",
    "task.name": "another objective",
    "task.params": "another objective",
    "model.name": "another model",
}


class RunFolderInUse(FileExistsError):
    """Another process is training into this run folder."""


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``{"a.b.c": leaf}`` (lists are leaves)."""
    if not isinstance(value, dict) or (not value and prefix):
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, child in value.items():
        out.update(_flatten(child, f"{prefix}.{key}" if prefix else str(key)))
    return out


_ABSENT = "<absent>"


def config_changes(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose value differs between two plain config dicts -> ``(old, new)``."""
    a, b = (_flatten(json.loads(json.dumps(d, default=str))) for d in (old, new))
    keys = sorted(a.keys() | b.keys())
    return {k: (a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in keys if a.get(k, _ABSENT) != b.get(k, _ABSENT)}


def _covered(key: str, allowed: Iterable[str]) -> bool:
    return any(key == a or key.startswith(f"{a}.") for a in allowed)


class RunFolder:
    """The folder of one training run (see the module doc).

    Args:
        path: the run folder (``cfg.output``).
        main: whether this process writes the folder (rank 0); the others only check.
    """

    def __init__(self, path: str | os.PathLike, main: bool = True):
        self.path = Path(path)
        self.main = main
        self._fd: int | None = None
        self._created = False

    # -- lock -------------------------------------------------------------------------------------------
    def lock(self) -> None:
        """Take the run's lock (main process only); a RunFolderInUse naming the holder if it is taken."""
        if not self.main or fcntl is None:
            return
        self._created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        lock_path = self.path / LOCK_NAME
        while True:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "unknown"
                os.close(fd)
                raise RunFolderInUse(
                    f"{self.path}: another medvl3d train ({holder}) is training into this run folder; wait "
                    "for it to finish, or choose another output folder"
                ) from None
            # The lock is ours unless the previous holder removed the file meanwhile: then lock the new one.
            try:
                same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd

    def release(self, failed: bool = False) -> None:
        """Drop the lock; after a failed start, remove the folder again if this start created it and
        nothing else was written into it."""
        if self._fd is None:
            return
        lock_path = self.path / LOCK_NAME
        with contextlib.suppress(FileNotFoundError):
            lock_path.unlink()  # while still holding the lock (see lock())
        os.close(self._fd)
        self._fd = None
        if failed and self._created:
            with contextlib.suppress(OSError):
                self.path.rmdir()  # only if empty

    # -- resume check -------------------------------------------------------------------------------------
    def check_resume(
        self, cfg: ExperimentConfig, checkpoint: Path | None, allow_changes: Sequence[str] = ()
    ) -> dict[str, tuple[Any, Any]]:
        """The changes of ``cfg`` against the config the run's latest ``checkpoint`` was trained with.

        Returns:
            The changed keys -> ``(old, new)`` (empty for a new run, or without changes).

        Raises:
            ValueError: a change that alters what is trained and is not in ``allow_changes``, naming the
                keys, their values and how to allow them.
        """
        if checkpoint is None:
            return {}
        source = checkpoint / "config.json"
        try:
            saved = json.loads(source.read_text(encoding="utf-8")).get("train")
        except (OSError, ValueError):
            saved = None
        if not isinstance(saved, dict):  # a checkpoint without its training config: the run's config.yaml
            from medvl3d.config import load_config

            source = self.path / CONFIG_NAME
            if not source.is_file():
                return {}
            saved = config_to_dict(load_config(source))
        else:
            # A key added to the config schema after the run started reads as its default, not a change.
            # A saved config that no longer parses is compared as written.
            with contextlib.suppress(ValueError, TypeError):
                saved = config_to_dict(config_from_dict(saved))
        changes = config_changes(saved, config_to_dict(cfg))
        free = (*OPERATIONAL_KEYS, *allow_changes)
        refused = {k: v for k, v in changes.items() if not _covered(k, free)}
        if refused:
            listed = "; ".join(f"{k} {old!r} -> {new!r}{_reason(k)}" for k, (old, new) in refused.items())
            flags = " ".join(f"--allow-change {k}" for k in refused)
            raise ValueError(
                f"{source}: resuming this run would change what it trains: {listed}; train into a new output "
                f"folder, or allow the changes with {flags} (Python: train(..., allow_changes=[...]))"
            )
        return changes

    # -- records ------------------------------------------------------------------------------------------
    def record_start(self, cfg: ExperimentConfig, changes: dict[str, tuple[Any, Any]], step: int) -> None:
        """Once the start has succeeded: write ``config.yaml`` if the run has none yet, and append the
        accepted ``changes`` to ``config_changes.jsonl`` (main process only)."""
        if not self.main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        config_path = self.path / CONFIG_NAME
        if step == 0 or not config_path.is_file():
            save_config(cfg, config_path)
        if step > 0 and changes:
            record = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "from_step": step,
                "changes": {k: {"from": old, "to": new} for k, (old, new) in changes.items()},
            }
            log = self.path / CHANGES_NAME
            before = log.read_text(encoding="utf-8") if log.is_file() else ""
            atomic_write_text(log, before + json.dumps(record, default=str) + "\n", fsync=True)


def _reason(key: str) -> str:
    """`` (why)`` for keys whose change cannot work at all, else ``""``."""
    for prefix, why in _REASONS.items():
        if key == prefix or key.startswith(f"{prefix}."):
            return f" ({why})"
    return ""
