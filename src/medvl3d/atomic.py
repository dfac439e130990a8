"""Atomic writes: a file or folder appears under its final name complete, or not at all.

Everything is written to a hidden temporary name in the target's own folder (so the rename never crosses
a filesystem) and moved into place with ``os.replace``; on any exception the temporary is removed and the
target is left as it was. With ``fsync=True`` the data is flushed to disk before the rename and the
folder after it, so the new file also survives a power loss (checkpoints, configs).

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "TMP_DIR_PREFIX",
    "atomic_dir",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "temp_dir_target",
]

TMP_DIR_PREFIX = ".tmp-"
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
def atomic_path(path: str | os.PathLike, *, suffix: str = ".tmp", fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; move it onto ``path`` when the block succeeds.

    For writers that need a file name (nibabel, SimpleITK, safetensors, ``np.save``). The temporary is
    ``.<name>.<random><suffix>`` and already exists (empty); pass the target's extension as ``suffix``
    when the writer picks the format from it. On any exception the temporary is removed and ``path``
    is untouched. Missing parent folders are created.

    Args:
        path: the final file.
        suffix: ending of the temporary name.
        fsync: flush the file before the rename and the folder after it.
    """
    path = Path(path)
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
    with atomic_path(path, fsync=fsync) as tmp:
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
        overwrite: remove an existing ``path`` just before the rename. Otherwise an existing non-empty
            ``path`` (e.g. written meanwhile by a concurrent process) raises FileExistsError.
        fsync: flush every file and folder inside before the rename, and the parent after it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_unique(path.parent, f"{TMP_DIR_PREFIX}{path.name}-", "", _make_dir)
    try:
        yield tmp
        if fsync:
            for item in sorted(tmp.rglob("*"), reverse=True):  # contents before their folders
                if item.is_dir():
                    _fsync_dir(item)
                else:
                    _fsync_file(item)
            _fsync_dir(tmp)
        if overwrite and path.exists():
            shutil.rmtree(path)
        try:
            os.replace(tmp, path)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise FileExistsError(exc.errno, f"{path}: already exists, not replaced") from exc
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if fsync:
        _fsync_dir(path.parent)


def temp_dir_target(tmp: Path) -> str | None:
    """The final folder name an :func:`atomic_dir` temporary was made for, or None if ``tmp`` is not one."""
    name = tmp.name
    if not name.startswith(TMP_DIR_PREFIX) or "-" not in name[len(TMP_DIR_PREFIX) :]:
        return None
    return name[len(TMP_DIR_PREFIX) :].rsplit("-", 1)[0]
