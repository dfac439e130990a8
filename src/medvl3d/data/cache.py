"""Preprocessed cache: every case resampled and windowed once, read back with memory mapping.

Layout of ``out_dir``::

    spec.json                 the PreprocessSpec (a re-run with another spec is an error)
    <case_id>/image.npy       float16 [C, X, Y, Z] in [0, 1]
    <case_id>/label.npy       smallest integer dtype [1, X, Y, Z] (when the case has a label)
    <case_id>/sample.json     report, labels, lesions, meta (incl. the preprocessed affine) and the
                              fingerprint of the source it was made from

Images are stored as float16: after the window they lie in [0, 1], where float16's spacing is at most
2**-11, i.e. under 1 HU for a 2000 HU window, at half the size of float32.

Each case is written into a hidden temporary folder and renamed into place, so a case folder either
holds a complete case or does not exist; a re-run skips finished cases whose source is unchanged. The
fingerprint (each source file's size and modification time, a digest of the case's report and labels;
see ``VolumeDataset.source_fingerprint``) is stored with the case, so a regenerated or replaced volume,
or an edited report, makes the next run redo that case instead of keeping the old one. Shards split the
stable case order (case i goes to shard i % n), so many machines can share one ``out_dir``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from medvl3d.atomic import atomic_dir, atomic_write_json, remove_stale_temps
from medvl3d.data.io import smallest_int_dtype
from medvl3d.data.preprocess import PreprocessSpec, preprocess_sample

# 2: CT-RATE reports are stored with FINDINGS:/IMPRESSION: headers (join_report); 1 had none.
CACHE_VERSION = 2


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n."""
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard {text}: need 0 <= i < n")
    return i, n


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return np.asarray(value).tolist()
    if isinstance(value, Path):
        return str(value)
    return value


def write_case(
    sample: dict, out_dir: Path, case_id: str, source: dict | None = None, overwrite: bool = False
) -> Path:
    """Write one preprocessed sample as ``out_dir/case_id/`` atomically (temp folder + rename).

    ``source`` is the fingerprint of what the case was made from; ``overwrite`` replaces a stale case."""
    final = out_dir / case_id
    try:
        with atomic_dir(final, overwrite=overwrite) as tmp:
            image = np.asarray(torch.as_tensor(sample["image"]).numpy(), dtype=np.float32)
            np.save(tmp / "image.npy", image.astype(np.float16))
            if sample.get("label") is not None:
                label = torch.as_tensor(sample["label"]).numpy()
                np.save(tmp / "label.npy", label.astype(smallest_int_dtype(label)))
            record = {
                "case_id": case_id,
                "report": sample.get("report", ""),
                "labels": sample.get("labels", {}),
                "lesions": sample.get("lesions", {}),
                "meta": sample.get("meta", {}),
                "source": source,
            }
            (tmp / "sample.json").write_text(json.dumps(_jsonable(record), indent=1), encoding="utf-8")
    except FileExistsError:
        if not (final / "sample.json").is_file():  # not a concurrent writer finishing first
            raise
    return final


def _check_spec(out_dir: Path, spec: PreprocessSpec) -> None:
    path = out_dir / "spec.json"
    wanted = {"version": CACHE_VERSION, "spec": spec.to_dict()}
    if path.is_file():
        found = json.loads(path.read_text(encoding="utf-8"))
        if found.get("version") != CACHE_VERSION:
            raise ValueError(
                f"{path}: cache format version {found.get('version')} was written by another medvl3d "
                f"(this one writes version {CACHE_VERSION}); use a new --out folder"
            )
        # Compared as specs: a field added later with a neutral default keeps older caches valid.
        if PreprocessSpec.from_dict(found.get("spec") or {}) != spec:
            raise ValueError(
                f"{path}: cache was written with another preprocessing spec ({found.get('spec')}); "
                f"use a new --out folder for {wanted['spec']}"
            )
        return
    atomic_write_json(path, wanted, indent=1)


# Per-process state of pool workers (set once by the initializer, not pickled per task).
_WORKER: dict[str, Any] = {}


def _init_worker(dataset: Any, spec: PreprocessSpec, out_dir: Path, threads: int) -> None:
    torch.set_num_threads(max(1, threads))
    _WORKER.update(dataset=dataset, spec=spec, out_dir=out_dir)


def _raw_sample(dataset: Any, index: int) -> dict:
    return dataset.load_sample(index) if hasattr(dataset, "load_sample") else dataset[index]


def _process(index: int, case_id: str, source: dict | None = None, overwrite: bool = False) -> str:
    dataset, spec, out_dir = _WORKER["dataset"], _WORKER["spec"], _WORKER["out_dir"]
    try:
        sample = preprocess_sample(_raw_sample(dataset, index), spec)
    except (ValueError, FileNotFoundError) as exc:
        raise type(exc)(f"case {case_id}: {exc}") from exc
    write_case(sample, out_dir, case_id, source, overwrite)
    return case_id


def _fingerprint(dataset: Any, index: int) -> dict | None:
    fingerprint = getattr(dataset, "source_fingerprint", None)
    return None if fingerprint is None else fingerprint(index)


def _is_current(case_dir: Path, source: dict | None) -> bool:
    """Whether a finished case was made from ``source`` (always, for datasets that cannot tell)."""
    if source is None:
        return True
    try:
        stored = json.loads((case_dir / "sample.json").read_text(encoding="utf-8")).get("source")
    except (OSError, ValueError):
        return False  # unreadable: make it again
    return stored == json.loads(json.dumps(source))  # compared as stored (tuples become lists)


def _case_ids(dataset: Any) -> list[str]:
    ids = getattr(dataset, "case_ids", None)
    return list(ids) if ids is not None else [f"case_{i:06d}" for i in range(len(dataset))]


def preprocess_dataset(
    dataset: Dataset,
    spec: PreprocessSpec,
    out_dir: str | Path,
    *,
    shard: tuple[int, int] = (0, 1),
    workers: int = 1,
    progress: bool = True,
    on_error: str = "raise",
) -> dict:
    """Write every case of this shard into ``out_dir`` (see the module docstring), skipping done ones.

    Args:
        dataset: a raw dataset (e.g. from :func:`medvl3d.data.datasets.open_dataset`) without transform.
        spec: the preprocessing to apply.
        out_dir: cache folder (created); its ``spec.json`` must match ``spec``.
        shard: (i, n): process cases with index % n == i.
        workers: processes; 1 runs in this process.
        progress: show a tqdm bar (cases/s).
        on_error: "raise" stops at the first failing case; "skip" records it in the summary.

    Returns:
        Summary dict: ``total`` (cases in the shard), ``written``, ``skipped`` (already done),
        ``stale`` (done from a source that has changed since, hence written again; part of ``written``),
        ``failed`` (id -> error), ``seconds``, ``out_dir``, ``shard``, ``case_ids`` (all cases of
        ``dataset``, in its order).
        ``CachedDataset(summary)`` reads exactly these cases back, in this order.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if getattr(dataset, "transform", None) is not None:
        raise ValueError("preprocess_dataset applies the spec itself: pass the dataset without a transform")
    i_shard, n_shard = shard
    if not (n_shard >= 1 and 0 <= i_shard < n_shard):
        raise ValueError(f"shard {shard}: need 0 <= i < n")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_spec(out_dir, spec)

    ids = _case_ids(dataset)
    mine = [(i, cid) for i, cid in enumerate(ids) if i % n_shard == i_shard]
    my_ids = {cid for _, cid in mine}
    # Leftovers of an interrupted run of this shard (other shards' temp folders are theirs).
    remove_stale_temps(out_dir, my_ids)
    todo, stale = [], 0
    for i, cid in mine:
        source = _fingerprint(dataset, i)
        done = (out_dir / cid / "sample.json").is_file()
        if done and not _is_current(out_dir / cid, source):
            stale += 1
        elif done:
            continue
        todo.append((i, cid, source, (out_dir / cid).exists()))  # replace a stale or incomplete case
    summary: dict[str, Any] = {
        "total": len(mine),
        "written": 0,
        "skipped": len(mine) - len(todo),
        "stale": stale,
        "failed": {},
        "out_dir": str(out_dir),
        "shard": f"{i_shard}/{n_shard}",
        "case_ids": ids,
    }
    start = time.perf_counter()
    bar = tqdm(total=len(todo), unit="case", desc=f"preprocess {i_shard}/{n_shard}", disable=not progress)

    def failed(cid: str, exc: BaseException) -> None:
        if on_error == "raise":
            raise exc
        summary["failed"][cid] = str(exc)

    try:
        if workers <= 1 or len(todo) <= 1:
            _init_worker(dataset, spec, out_dir, torch.get_num_threads())
            for i, cid, source, overwrite in todo:
                try:
                    _process(i, cid, source, overwrite)
                    summary["written"] += 1
                except Exception as exc:  # reported per case or re-raised
                    failed(cid, exc)
                bar.update(1)
        else:
            threads = max(1, (os.cpu_count() or 1) // workers)
            # spawn: forking a process whose OpenMP pool is live can deadlock the children.
            ctx = mp.get_context("spawn")
            with ProcessPoolExecutor(workers, ctx, _init_worker, (dataset, spec, out_dir, threads)) as pool:
                futures = {pool.submit(_process, i, cid, src, over): cid for i, cid, src, over in todo}
                try:
                    for fut in as_completed(futures):
                        try:
                            fut.result()
                            summary["written"] += 1
                        except Exception as exc:
                            failed(futures[fut], exc)
                        bar.update(1)
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    raise
    finally:
        bar.close()
        _WORKER.clear()
    summary["seconds"] = round(time.perf_counter() - start, 3)
    return summary


def run_preprocess(
    dataset_path: str | Path,
    out_dir: str | Path,
    spec: PreprocessSpec,
    *,
    split: str | None = None,
    shard: str | tuple[int, int] = (0, 1),
    workers: int = 1,
    progress: bool = True,
    on_error: str = "raise",
    **dataset_kwargs: Any,
) -> dict:
    """Open a dataset of any layout and cache it (what `medvl3d preprocess` runs)."""
    from medvl3d.data.datasets import open_dataset

    if split is not None:
        dataset_kwargs["split"] = split
    dataset = open_dataset(dataset_path, **dataset_kwargs)
    shard_t = parse_shard(shard) if isinstance(shard, str) else shard
    return preprocess_dataset(
        dataset, spec, out_dir, shard=shard_t, workers=workers, progress=progress, on_error=on_error
    )


class CachedDataset(Dataset):
    """Read a preprocessed cache with memory mapping; yields the dict samples of docs/contracts.md.

    Args:
        out_dir: the cache folder written by :func:`preprocess_dataset`, or that function's summary
            (then its ``case_ids`` select and order the cases: one dataset of a shared cache folder).
        case_ids: read only these cases, in this order (default: every case in the folder, sorted).
        transform: optional callable applied to each sample (e.g. augmentation).
    """

    def __init__(
        self,
        out_dir: str | Path | dict,
        *,
        case_ids: list[str] | None = None,
        transform: Callable[[dict], dict] | None = None,
    ) -> None:
        failed: dict = {}
        if isinstance(out_dir, dict):
            case_ids = case_ids if case_ids is not None else out_dir.get("case_ids")
            failed = out_dir.get("failed") or {}
            out_dir = out_dir["out_dir"]
        self.root = Path(out_dir)
        spec_path = self.root / "spec.json"
        if not spec_path.is_file():
            raise FileNotFoundError(f"{spec_path}: not a preprocessed cache (no spec.json)")
        info = json.loads(spec_path.read_text(encoding="utf-8"))
        self.spec = PreprocessSpec.from_dict(info["spec"])
        self.transform = transform
        if case_ids is None:
            self._ids = sorted(
                p.name
                for p in self.root.iterdir()
                if not p.name.startswith(".") and (p / "sample.json").is_file()
            )
        else:
            self._ids = [str(c) for c in case_ids]
            missing = [c for c in self._ids if not (self.root / c / "sample.json").is_file()]
            broken = [f"{c}: {failed[c]}" for c in missing if c in failed]
            if broken:
                raise ValueError(
                    f"{self.root}: {len(broken)} cases failed during preprocessing (e.g. {broken[:3]}); "
                    "fix or exclude them"
                )
            if missing:
                raise ValueError(
                    f"{self.root}: {len(missing)} of {len(self._ids)} cases are not in the cache yet "
                    f"(e.g. {missing[:3]}); run the remaining preprocess shards first"
                )

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def case_ids(self) -> list[str]:
        return list(self._ids)

    def reports(self) -> list[str]:
        """The report of every case, in order, without reading any image."""
        return [
            json.loads((self.root / c / "sample.json").read_text(encoding="utf-8")).get("report", "")
            for c in self._ids
        ]

    def __getitem__(self, index: int) -> dict:
        case = self.root / self._ids[index]
        record = json.loads((case / "sample.json").read_text(encoding="utf-8"))
        image = np.load(case / "image.npy", mmap_mode="r")
        sample = {
            "image": torch.from_numpy(np.asarray(image, dtype=np.float32)),
            "report": record.get("report", ""),
            "labels": {k: int(v) for k, v in record.get("labels", {}).items()},
            "lesions": {int(k): v for k, v in record.get("lesions", {}).items()},
            "meta": record.get("meta", {}),
        }
        if (case / "label.npy").is_file():
            label = np.load(case / "label.npy", mmap_mode="r")
            sample["label"] = torch.from_numpy(np.asarray(label, dtype=np.int64))
        return self.transform(sample) if self.transform is not None else sample
