"""medvl3d.atomic: modes follow the umask, failures leave nothing behind, targets are replaced atomically."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat

import pytest

from medvl3d.atomic import (
    atomic_dir,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    remove_stale_temps,
    temp_dir_target,
)


@pytest.fixture
def umask():
    """Set a umask for one test and restore the previous one afterwards."""
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077, 0o002])
def test_file_and_folder_modes_follow_the_umask(tmp_path, umask, mask):
    umask(mask)
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    atomic_write_text(tmp_path / "b.txt", "x")
    atomic_write_json(tmp_path / "c.json", {"a": 1})
    with atomic_path(tmp_path / "d.nii.gz", suffix=".nii.gz") as tmp:
        tmp.write_bytes(b"x")
    with atomic_dir(tmp_path / "case") as folder:
        (folder / "image.npy").write_bytes(b"x")
    for name in ("a.bin", "b.txt", "c.json", "d.nii.gz", "case/image.npy"):
        assert _mode(tmp_path / name) == 0o666 & ~mask, name
    assert _mode(tmp_path / "case") == 0o777 & ~mask


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_fsync_writes_get_the_same_modes(tmp_path, umask):
    umask(0o027)
    atomic_write_text(tmp_path / "last", "step-1\n", fsync=True)
    with atomic_dir(tmp_path / "step-1", fsync=True) as folder:
        (folder / "w").write_bytes(b"w")
    assert _mode(tmp_path / "last") == 0o640
    assert _mode(tmp_path / "step-1") == 0o750 and _mode(tmp_path / "step-1" / "w") == 0o640


def test_text_and_json_round_trip(tmp_path):
    text = "naïve ünïcode\r\nline two\n"
    assert atomic_write_text(tmp_path / "t.txt", text) == tmp_path / "t.txt"
    assert (tmp_path / "t.txt").read_bytes() == text.encode("utf-8")  # no newline translation
    obj = {"report": "Pleural effusion – bilateral", "p": [0.5, 1.0], "nested": {"k": None}}
    atomic_write_json(tmp_path / "o.json", obj, indent=1, ensure_ascii=False)
    raw = (tmp_path / "o.json").read_text(encoding="utf-8")
    assert raw == json.dumps(obj, indent=1, ensure_ascii=False) and "–" in raw
    assert json.loads(raw) == obj
    atomic_write_json(tmp_path / "d.json", {"x": {1, 2}}, default=sorted)
    assert json.loads((tmp_path / "d.json").read_text(encoding="utf-8")) == {"x": [1, 2]}
    atomic_write_bytes(tmp_path / "sub" / "deeper" / "b.bin", b"\x00\xff")  # parents are created
    assert (tmp_path / "sub" / "deeper" / "b.bin").read_bytes() == b"\x00\xff"


def test_existing_target_is_replaced_not_appended(tmp_path):
    target = tmp_path / "out.json"
    target.write_text('{"old": "a much longer previous content"}', encoding="utf-8")
    inode = os.stat(target).st_ino
    atomic_write_json(target, {"new": 1})
    assert target.read_text(encoding="utf-8") == '{"new": 1}'
    assert os.stat(target).st_ino != inode  # a new file renamed over the old one, not rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_target_keeps_old_content_until_the_block_succeeds(tmp_path):
    target = tmp_path / "vol.nii.gz"
    target.write_bytes(b"old")
    with atomic_path(target, suffix=".nii.gz") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".vol.nii.gz.") and tmp.name.endswith(".nii.gz")
        assert tmp.exists() and tmp != target
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vol.nii.gz"]


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_failure_inside_atomic_path_leaves_target_and_folder_unchanged(tmp_path, error):
    target = tmp_path / "labeller.json"
    target.write_text("previous", encoding="utf-8")
    with pytest.raises(error):
        with atomic_path(target) as tmp:
            tmp.write_text("half", encoding="utf-8")
            raise error("killed while writing")
    assert target.read_text(encoding="utf-8") == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labeller.json"]


def test_failure_while_serialising_json_leaves_nothing(tmp_path):
    target = tmp_path / "new.json"
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_failure_inside_atomic_dir_leaves_target_and_folder_unchanged(tmp_path):
    final = tmp_path / "step-00000002"
    final.mkdir()
    (final / "model.safetensors").write_bytes(b"old weights")
    with pytest.raises(RuntimeError):
        with atomic_dir(final, overwrite=True, fsync=True) as tmp:
            assert temp_dir_target(tmp) == "step-00000002" and tmp.parent == tmp_path
            (tmp / "model.safetensors").write_bytes(b"half")
            raise RuntimeError("disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000002"]
    assert (final / "model.safetensors").read_bytes() == b"old weights"


def test_atomic_dir_overwrite_and_existing_target(tmp_path):
    final = tmp_path / "case"
    with atomic_dir(final) as tmp:
        (tmp / "sample.json").write_text("1", encoding="utf-8")
    assert (final / "sample.json").read_text(encoding="utf-8") == "1"
    # Without overwrite an existing complete folder (a concurrent writer) is an error, and kept.
    with pytest.raises(FileExistsError, match="already exists"):
        with atomic_dir(final) as tmp:
            (tmp / "sample.json").write_text("2", encoding="utf-8")
    assert (final / "sample.json").read_text(encoding="utf-8") == "1"
    with atomic_dir(final, overwrite=True) as tmp:
        (tmp / "other.json").write_text("3", encoding="utf-8")
    assert sorted(p.name for p in final.iterdir()) == ["other.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case"]


def test_temp_dir_target_recognises_only_atomic_dir_temporaries(tmp_path):
    assert temp_dir_target(tmp_path / ".tmp-tiny_001-k1ll3d") == "tiny_001"
    assert temp_dir_target(tmp_path / ".tmp-case-with-dashes-0a1b2c3d") == "case-with-dashes"
    assert temp_dir_target(tmp_path / "tiny_001") is None
    assert temp_dir_target(tmp_path / ".tmp-nodash") is None


def _checkpoint(folder, weights: bytes) -> None:
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").write_text('{"step": 2}', encoding="utf-8")


def _content(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _fail_renames_of(monkeypatch, *prefixes: str) -> None:
    """Make ``os.replace`` of a source whose name starts with one of ``prefixes`` fail with EIO."""
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if os.path.basename(src).startswith(prefixes):
            raise OSError(errno.EIO, "simulated I/O error", str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def test_overwrite_keeps_the_old_folder_when_the_final_rename_fails(tmp_path, monkeypatch):
    final = tmp_path / "step-00000002"
    _checkpoint(final, b"old weights")
    old = _content(final)
    _fail_renames_of(monkeypatch, ".tmp-")  # the new folder moving in: the critical rename
    with pytest.raises(OSError, match="simulated I/O error"):
        with atomic_dir(final, overwrite=True, fsync=True) as tmp:
            (tmp / "model.safetensors").write_bytes(b"new weights")
            (tmp / "config.json").write_text('{"step": 2, "new": true}', encoding="utf-8")
    # The old checkpoint is back under its own name, untouched; neither the new temporary nor an aside
    # copy is left (the pre-fix rmtree-then-rename lost the old folder here).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000002"]
    assert _content(final) == old


def test_successful_overwrite_leaves_only_the_new_content(tmp_path):
    final = tmp_path / "step-00000002"
    _checkpoint(final, b"old weights")
    (final / "train_state.pt").write_bytes(b"only in the old folder")
    with atomic_dir(final, overwrite=True, fsync=True) as tmp:
        (tmp / "model.safetensors").write_bytes(b"new weights")
    assert _content(final) == {"model.safetensors": b"new weights"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000002"]


def _overwrite_and_die_at(final, crash_at: int) -> int:
    """Fork a child that overwrites ``final`` and is killed (``os._exit``, no cleanup) just before its
    ``crash_at``-th rename/removal; returns the child's exit code (0: it finished before that call)."""
    pid = os.fork()
    if pid:
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    calls = 0

    def dying(fn):
        def wrapper(*args, **kwargs):
            nonlocal calls
            calls += 1
            if calls == crash_at:
                os._exit(17)
            return fn(*args, **kwargs)

        return wrapper

    try:
        os.replace, os.rename, shutil.rmtree = dying(os.replace), dying(os.rename), dying(shutil.rmtree)
        with atomic_dir(final, overwrite=True) as tmp:
            (tmp / "model.safetensors").write_bytes(b"new weights")
            (tmp / "config.json").write_text('{"step": 2, "new": true}', encoding="utf-8")
    finally:
        os._exit(0 if calls < crash_at else 3)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="simulates a killed process with fork")
def test_a_kill_at_any_point_of_an_overwrite_leaves_one_complete_folder(tmp_path):
    from medvl3d.atomic import aside_dir_target, restore_aside

    new = {"config.json": b'{"step": 2, "new": true}', "model.safetensors": b"new weights"}
    crash_at = 1
    while True:
        run = tmp_path / f"run{crash_at}"
        run.mkdir()
        final = run / "step-00000002"
        _checkpoint(final, b"old weights")
        old = _content(final)
        code = _overwrite_and_die_at(final, crash_at)
        assert code in (0, 17), f"child failed with exit code {code}"
        killed = code == 17
        if killed:
            # Killed mid-way: the complete old or new folder sits under its name or a recognisable aside name.
            asides = [p for p in run.iterdir() if aside_dir_target(p) == final.name]
            assert final.is_dir() or asides, f"kill before call {crash_at}: {sorted(os.listdir(run))}"
        restore_aside(final)
        assert _content(final) in (old, new), f"kill before call {crash_at}"
        assert not [p for p in run.iterdir() if aside_dir_target(p)], f"kill before call {crash_at}"
        if not killed:
            assert _content(final) == new
            break
        crash_at += 1
    # The replacing rename, the aside rename and the aside removal were each a kill point.
    assert crash_at >= 4


def test_atomic_path_temporary_ends_like_the_target_so_np_save_writes_it(tmp_path):
    np = pytest.importorskip("numpy")
    target = tmp_path / "x.npy"
    with atomic_path(target) as tmp:
        assert tmp.name.endswith(".npy")
        np.save(tmp, np.arange(5))  # np.save appends .npy to any other name and writes elsewhere
    assert np.load(target).tolist() == [0, 1, 2, 3, 4]
    assert [p.name for p in tmp_path.iterdir()] == ["x.npy"]
    with atomic_path(tmp_path / "v.nii.gz") as tmp:
        assert tmp.name.endswith(".nii.gz")


def test_overwrite_of_a_file_is_refused_and_leaves_it(tmp_path):
    target = tmp_path / "step"
    target.write_bytes(b"a file")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        with atomic_dir(target, overwrite=True) as tmp:
            (tmp / "a").write_bytes(b"new")
    assert target.read_bytes() == b"a file" and [p.name for p in tmp_path.iterdir()] == ["step"]


def test_failed_rename_back_warns_where_the_old_folder_is(tmp_path, monkeypatch):
    final = tmp_path / "step-00000002"
    _checkpoint(final, b"old weights")
    old = _content(final)
    _fail_renames_of(monkeypatch, ".tmp-", ".old-")  # moving in and moving back both fail
    with pytest.warns(RuntimeWarning, match=r"kept as .*\.old-step-00000002-"):
        with pytest.raises(OSError, match="simulated I/O error"):
            with atomic_dir(final, overwrite=True) as tmp:
                (tmp / "model.safetensors").write_bytes(b"new weights")
    (aside,) = tmp_path.glob(".old-step-00000002-*")
    assert _content(aside) == old


def test_remove_stale_temps_removes_only_the_named_targets(tmp_path):
    for name in (".tmp-a-1234", ".tmp-b-5678", ".old-a-9999", "a"):
        (tmp_path / name).mkdir()
    remove_stale_temps(tmp_path, ["a"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".old-a-9999", ".tmp-b-5678", "a"]
