"""Atomic writes: a file or folder appears under its final name complete, or not at all.

Everything is written to a hidden temporary name in the target's own folder (so the rename never crosses
a filesystem) and moved into place with ``os.replace``; on any exception the temporary is removed and the
target is left as it was. With ``fsync=True`` the data is flushed to disk before the rename and the
folder after it, so the new file also survives a power loss (checkpoints, configs).

``atomic_dir(overwrite=True)`` never deletes the old folder before the new one is in place: the old one is
renamed aside to ``.old-<name>-<random>``, the new one renamed in, and only then the aside copy removed (or
renamed back if the second rename fails). A process killed between the two renames leaves both complete
folders; :func:`restore_aside` puts the old one back under its name.

Temporaries are created with mode 0666 (files) / 0777 (folders) filtered by the process umask, i.e. the
mode any ``open``/``mkdir`` would give, not the owner-only 0600/0700 of ``tempfile.mkstemp``/``mkdtemp``:
caches and checkpoints on a shared lab machine stay readable by the group the umask allows.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "ASIDE_DIR_PREFIX",
    "TMP_DIR_PREFIX",
    "aside_dir_target",
    "atomic_dir",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "remove_stale_temps",
    "restore_aside",
    "temp_dir_target",
]

TMP_DIR_PREFIX = ".tmp-"
#: Prefix of the old folder that ``atomic_dir(overwrite=True)`` moves aside while the new one is renamed in.
#: Deliberately not ``TMP_DIR_PREFIX``: callers delete stale temporaries, but an aside copy may be the only
#: complete folder left by a crash.
ASIDE_DIR_PREFIX = ".old-"
_ATTEMPTS = 100


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    # Makes a rename durable; not supported on every platform/filesystem, where it is harmless to skip.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _create_unique(folder: Path, prefix: str, suffix: str, make: Callable[[Path], None]) -> Path:
    """Create ``folder/<prefix><random><suffix>`` with ``make`` (which must fail if the name exists)."""
    for _ in range(_ATTEMPTS):
        tmp = folder / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            make(tmp)
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(errno.EEXIST, f"{folder}: no free temporary name {prefix}*{suffix}")


def _make_file(path: Path) -> None:
    # O_EXCL: never reuse a name; 0o666 lets the kernel apply the umask (and any default ACL).
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def _make_dir(path: Path) -> None:
    os.mkdir(path, 0o777)


@contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str | None = None, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; move it onto ``path`` when the block succeeds.

    For writers that need a file name (nibabel, SimpleITK, safetensors, ``np.save``). The temporary is
    ``.<name>.<random><suffix>`` and already exists (empty); by default it ends like ``path``
    (``.nii.gz`` whole), so writers that pick the format from the name, or append one (``np.save``), write
    the temporary itself. On any exception the temporary is removed and ``path`` is untouched. Missing
    parent folders are created.

    Args:
        path: the final file.
        suffix: ending of the temporary name (default: the ending of ``path``).
        fsync: flush the file before the rename and the folder after it.
    """
    path = Path(path)
    if suffix is None:
        suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_unique(path.parent, f".{path.name}.", suffix, _make_file)
    try:
        yield tmp
        if fsync:
            _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    path = Path(path)
    with atomic_path(path, suffix=".tmp", fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, fsync: bool = False) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically (no newline translation); returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def atomic_write_json(
    path: str | os.PathLike,
    obj: Any,
    *,
    indent: int | None = None,
    ensure_ascii: bool = True,
    default: Callable[[Any], Any] | None = None,
    fsync: bool = False,
) -> Path:
    """Write ``json.dumps(obj, ...)`` to ``path`` atomically (no trailing newline); returns the path."""
    text = json.dumps(obj, indent=indent, ensure_ascii=ensure_ascii, default=default)
    return atomic_write_text(path, text, fsync=fsync)


@contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = False, fsync: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``path``; rename it to ``path`` when the block succeeds.

    The folder is ``.tmp-<name>-<random>`` (see :func:`temp_dir_target` to recognise the leftovers of a
    killed process). On any exception it is removed and ``path`` is untouched.

    Args:
        path: the final folder.
        overwrite: replace an existing ``path``: it is renamed aside just before the rename and removed
            after it (renamed back if the rename fails). Otherwise an existing non-empty ``path`` (e.g.
            written meanwhile by a concurrent process) raises FileExistsError.
        fsync: flush every file and folder inside before the rename, and the parent after it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_unique(path.parent, f"{TMP_DIR_PREFIX}{path.name}-", "", _make_dir)
    aside = None
    try:
        yield tmp
        if fsync:
            for item in sorted(tmp.rglob("*"), reverse=True):  # contents before their folders
                if item.is_dir():
                    _fsync_dir(item)
                else:
                    _fsync_file(item)
            _fsync_dir(tmp)
        aside = _move_aside(path) if overwrite else None
        try:
            os.replace(tmp, path)
        except BaseException as exc:
            if aside is not None:
                _put_back(aside, path, exc)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise FileExistsError(exc.errno, f"{path}: already exists, not replaced") from exc
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if fsync:
        _fsync_dir(path.parent)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)  # only now: the new folder is in place (and durable)


def _move_aside(path: Path) -> Path | None:
    """Rename an existing folder ``path`` to a fresh ``.old-<name>-<random>`` beside it; None if absent."""
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path}: exists and is not a folder; atomic_dir replaces only folders")
    for _ in range(_ATTEMPTS):
        if not path.exists():
            return None
        aside = path.parent / f"{ASIDE_DIR_PREFIX}{path.name}-{secrets.token_hex(4)}"
        try:
            # A taken name fails (POSIX would at most replace an *empty* folder there, which loses nothing).
            os.replace(path, aside)
        except FileNotFoundError:
            continue  # removed meanwhile by another writer: nothing to keep
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                continue
            raise
        return aside
    raise FileExistsError(errno.EEXIST, f"{path.parent}: no free name {ASIDE_DIR_PREFIX}{path.name}-*")


def _put_back(aside: Path, path: Path, exc: BaseException) -> None:
    """Rename the old folder back after the new one failed to go in; note on ``exc`` where it stayed."""
    try:
        os.replace(aside, path)
    except OSError as back:  # e.g. a concurrent writer filled ``path`` meanwhile: keep the copy findable
        # A warning, not BaseException.add_note: that needs Python 3.11 and the project supports 3.10.
        warnings.warn(
            f"the previous {path.name} could not be renamed back ({back}); it is kept as {aside}",
            RuntimeWarning,
            stacklevel=4,
        )


def remove_stale_temps(folder: str | os.PathLike, names: Iterable[str]) -> None:
    """Remove :func:`atomic_dir` temporaries in ``folder`` left by a crashed write of any of ``names``.

    Call it only while no other process writes those names (other targets' temporaries are left alone).
    """
    wanted = set(names)
    for tmp in Path(folder).glob(f"{TMP_DIR_PREFIX}*"):
        if temp_dir_target(tmp) in wanted:
            shutil.rmtree(tmp, ignore_errors=True)


def restore_aside(path: str | os.PathLike) -> Path | None:
    """Recover from an :func:`atomic_dir` overwrite killed between its two renames.

    If ``path`` is missing, the most recently modified ``.old-<name>-*`` copy beside it is renamed back to
    ``path``. Aside copies beside an existing ``path`` are leftovers of a process killed after its new folder
    was in place, and are removed. Call it only while no other process writes ``path`` (like removing stale
    temporaries).

    Returns:
        ``path`` when a copy was renamed back, else None.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return None
    asides = [p for p in path.parent.glob(f"{ASIDE_DIR_PREFIX}*") if aside_dir_target(p) == path.name]
    asides.sort(key=lambda p: p.stat().st_mtime_ns)
    restored = None
    if not path.exists() and asides:
        os.replace(asides.pop(), path)
        restored = path
    for stale in asides:
        shutil.rmtree(stale, ignore_errors=True)
    return restored


def _prefixed_target(path: Path, prefix: str) -> str | None:
    name = path.name
    if not name.startswith(prefix) or "-" not in name[len(prefix) :]:
        return None
    return name[len(prefix) :].rsplit("-", 1)[0]


def temp_dir_target(tmp: Path) -> str | None:
    """The final folder name an :func:`atomic_dir` temporary was made for, or None if ``tmp`` is not one."""
    return _prefixed_target(tmp, TMP_DIR_PREFIX)


def aside_dir_target(aside: Path) -> str | None:
    """The folder name an :func:`atomic_dir` aside copy (old content) belongs to, or None if not one."""
    return _prefixed_target(aside, ASIDE_DIR_PREFIX)
