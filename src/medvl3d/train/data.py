"""From datasets to training batches: preprocessing, the text paired with each volume, a resumable
deterministic data order sharded across ranks, and collation.

The data order is a pure function of ``(seed, epoch, batch index)``: every epoch is a seeded permutation
of the dataset, cut into global batches of ``batch_size * world_size``; rank ``r`` takes the ``r``-th
contiguous slice of each global batch. The loop records how many batches it has *consumed*, so a
resumed run continues with exactly the batches an uninterrupted run would have seen, whatever the
number of loader workers (which prefetch ahead).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from medvl3d.config import DataConfig
from medvl3d.data.datasets import open_split

__all__ = [
    "BatchOrder",
    "ResumableBatchSampler",
    "TextSourceDataset",
    "PreprocessedDataset",
    "DrawnDataset",
    "SubsetDataset",
    "label_subset",
    "collate_samples",
    "build_dataset",
    "build_loader",
]


class BatchOrder:
    """Deterministic, sharded batch order: ``indices(epoch, batch)`` for this rank.

    Incomplete final batches are dropped so that every rank sees the same number of equally sized
    batches (a requirement for DDP and for comparing against one process on the combined batch).

    With ``repeat``, a dataset smaller than one global batch is repeated within each epoch instead of
    refused: right for tasks that draw a different random patch at each visit (segmentation with a few
    labelled cases), wrong for contrastive ones (a case would be its own negative), which keep the error.
    """

    def __init__(
        self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1, repeat: bool = False
    ):
        global_batch = batch_size * world_size
        if n < 1 or (n < global_batch and not repeat):
            raise ValueError(
                f"the dataset has {n} samples, fewer than one global batch "
                f"({batch_size} per rank x {world_size} ranks = {global_batch})"
            )
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.copies = -(-global_batch // n)  # 1 unless a small dataset is repeated
        self.batches_per_epoch = n * self.copies // global_batch
        self._perm_epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n * self.copies, generator=g) % self.n
            self._perm, self._perm_epoch = perm, epoch
        return self._perm

    def indices(self, epoch: int, batch: int) -> list[int]:
        """Sample indices of this rank's share of global batch ``batch`` in ``epoch``."""
        start = batch * self.batch_size * self.world_size + self.rank * self.batch_size
        return self._permutation(epoch)[start : start + self.batch_size].tolist()

    def position(self, consumed: int) -> tuple[int, int]:
        """``(epoch, batch)`` after ``consumed`` batches."""
        return divmod(consumed, self.batches_per_epoch)


class ResumableBatchSampler(Sampler[list[int]]):
    """An endless batch sampler following a :class:`BatchOrder`, starting after ``start`` batches.

    With ``keyed``, each index comes with the number of its draw (its position in the global stream of
    drawn samples), which :class:`DrawnDataset` turns into the seed of that sample's random transform.
    """

    def __init__(self, order: BatchOrder, start: int = 0, keyed: bool = False):
        self.order, self.start, self.keyed = order, start, keyed

    def __iter__(self) -> Iterator[list]:
        k = self.start
        o = self.order
        while True:
            indices = o.indices(*o.position(k))
            if self.keyed:
                first = (k * o.world_size + o.rank) * o.batch_size
                indices = [(i, first + j) for j, i in enumerate(indices)]
            yield indices
            k += 1

    def __len__(self) -> int:  # DataLoader asks; the sampler is endless by design
        return 2**62


class DrawnDataset(Dataset):
    """Applies a task's random per-sample transform (patch sampling, augmentation) with a seed drawn from
    ``(seed, draw)``: indexed by the ``(index, draw)`` pairs of a keyed :class:`ResumableBatchSampler`, it
    gives the same patches in a resumed run and with any number of loader workers."""

    def __init__(self, base: Dataset, transform: Callable[[dict, int], dict], seed: int):
        self.base, self.transform, self.seed = base, transform, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, draw = key
        seed = int(np.random.SeedSequence([self.seed, draw]).generate_state(1)[0])
        return self.transform(self.base[index], seed)


class SubsetDataset(Dataset):
    """The cases ``indices`` of a dataset, in that order (keeps ``case_ids`` for the cache)."""

    def __init__(self, base: Dataset, indices: Sequence[int]):
        self.base, self.indices = base, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.base[self.indices[i]]

    @property
    def case_ids(self) -> list[str] | None:
        ids = getattr(self.base, "case_ids", None)
        return None if ids is None else [ids[i] for i in self.indices]

    def reports(self) -> list[str] | None:
        """The reports of these cases, when the base dataset can list them without reading volumes."""
        reports = getattr(self.base, "reports", None)
        if reports is None:
            return None
        every = reports()
        return None if every is None else [every[i] for i in self.indices]

    def source_fingerprint(self, i: int) -> dict | None:
        """The base dataset's fingerprint of this case (None when it has none), for the cache."""
        fingerprint = getattr(self.base, "source_fingerprint", None)
        return None if fingerprint is None else fingerprint(self.indices[i])


def label_subset(n: int, fraction: float, seed: int) -> list[int]:
    """Indices of ``round(fraction * n)`` cases (at least one), sorted: the first cases of a permutation
    seeded by ``seed``, so the 1% subset lies inside the 10% one of the same seed."""
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    k = max(1, int(round(fraction * n)))
    return sorted(int(i) for i in np.random.default_rng(seed).permutation(n)[:k])


class PreprocessedDataset(Dataset):
    """Applies a ``medvl3d.data.preprocess.PreprocessSpec`` to each sample of a dataset."""

    def __init__(self, base: Dataset, spec: Any):
        from medvl3d.data.preprocess import preprocess_sample

        self.base, self.spec, self._fn = base, spec, preprocess_sample

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        return self._fn(self.base[i], self.spec)


class TextSourceDataset(Dataset):
    """Adds ``sample["text"]``: the text a volume is aligned with during pretraining.

    ``report`` uses the report as is; ``summary`` condenses it with the configured summariser (BrgSA);
    ``generated`` describes the volume itself (GTGM's text generator, which measures *raw* intensities);
    ``auto`` takes the report when it is not empty and generated text otherwise. Summaries and generated
    texts are deterministic per sample and memoised per index.

    A report the summariser cannot read (empty, no words, not English for the rule summariser; see
    :func:`medvl3d.text.summariser.summary_problem`) would be summarised as "no acute findings." and
    teach the model that its volume is normal. With ``summary``, such cases are left out, with a warning
    naming them, when ``base`` can list its reports (``base.reports()``: the dataset layouts and the
    cache); otherwise reading one is an error naming the case.

    Args:
        base: the dataset whose samples get a ``text``.
        source: report | summary | generated | auto.
        summariser_cfg: a ``medvl3d.text.summariser.SummariserConfig`` (or its dict).
        generator_cfg: a ``medvl3d.text.generator.GeneratorConfig`` (or its dict).
        raw: the raw (unpreprocessed) dataset with the same indexing, when ``base`` is preprocessed
            (e.g. a cache): generated text is measured on it.
    """

    def __init__(
        self,
        base: Dataset,
        source: str = "report",
        summariser_cfg: Any = None,
        generator_cfg: Any = None,
        raw: Dataset | None = None,
    ):
        if source not in ("report", "summary", "generated", "auto"):
            raise ValueError(f"unknown text_source {source!r}; use report, summary, generated or auto")
        self.base, self.source, self.raw = base, source, raw
        self._memo: dict[int, str] = {}
        self._summariser = None
        self._generator = None
        self._backend = "rule"
        self.indices: list[int] = list(range(len(base)))
        if source == "summary":
            from medvl3d.text.summariser import build_summariser, summariser_config

            typed = summariser_config(summariser_cfg)
            self._summariser, self._backend = build_summariser(typed), typed.backend
            self.indices = self._readable_cases()
        if source in ("generated", "auto"):
            from medvl3d.text.generator import build_text_generator

            self._generator = build_text_generator(generator_cfg)

    def _readable_cases(self) -> list[int]:
        """Indices of the cases whose report can be summarised (all of them when the base cannot list its
        reports: each is then checked when read); warns about the others."""
        from medvl3d.text.summariser import summary_problem

        lister = getattr(self.base, "reports", None)
        reports = lister() if lister is not None else None
        if reports is None:
            return list(range(len(self.base)))
        problems = [summary_problem(r, self._backend) for r in reports]
        keep = [i for i, p in enumerate(problems) if p is None]
        dropped = [i for i, p in enumerate(problems) if p is not None]
        if not dropped:
            return keep
        ids = getattr(self.base, "case_ids", None) or list(range(len(reports)))
        counts = {p: problems.count(p) for p in dict.fromkeys(problems) if p}
        detail = ", ".join(f"{n} {p}" for p, n in counts.items())
        named = ", ".join(f"{ids[i]} ({problems[i]})" for i in dropped[:5])
        if not keep:
            raise ValueError(
                f"none of the {len(reports)} reports can be summarised by the {self._backend!r} summariser "
                f"({detail}, e.g. {named}); use text_source 'report' or 'generated'"
            )
        warnings.warn(
            f"{len(dropped)} of {len(reports)} cases are left out of training: the {self._backend!r} "
            f"summariser cannot read their reports ({detail}, e.g. {named}), and 'no acute findings.' "
            "would teach the model that their volumes are normal",
            UserWarning,
            stacklevel=3,
        )
        return keep

    def __len__(self) -> int:
        return len(self.indices)

    def _text(self, i: int, sample: dict) -> str:
        report = sample.get("report") or ""
        if self.source == "report" or (self.source == "auto" and report.strip()):
            return report
        if i not in self._memo:
            if self.source == "summary":
                from medvl3d.text.summariser import summary_problem

                problem = summary_problem(report, self._backend)
                if problem is not None:
                    case = (sample.get("meta") or {}).get("case_id", i)
                    raise ValueError(
                        f"sample {case!r}: the {self._backend!r} summariser cannot read its report "
                        f"({problem}); fix or remove the case, or use text_source 'report' or 'generated'"
                    )
                self._memo[i] = self._summariser.summarise(report)
            else:
                self._memo[i] = self._generator.generate(self.raw[i] if self.raw is not None else sample)
        return self._memo[i]

    def __getitem__(self, i: int) -> dict:
        index = self.indices[i]
        sample = dict(self.base[index])
        text = self._text(index, sample)
        if not text.strip():
            case = (sample.get("meta") or {}).get("case_id", index)
            raise ValueError(
                f"sample {case!r} has no text for text_source={self.source!r} (empty report); "
                "use text_source 'auto' or 'generated' for volumes without reports"
            )
        sample["text"] = text
        return sample


def _as_tensor(x: Any) -> torch.Tensor:
    t = torch.as_tensor(x)
    if hasattr(t, "as_tensor"):  # MONAI MetaTensor -> plain tensor (models get plain tensors)
        t = t.as_tensor()
    return t


def collate_samples(samples: Sequence[dict]) -> dict:
    """Stack images (and label maps) into ``[B, C, X, Y, Z]``; keep texts, labels and meta as lists.

    ``labels`` (abnormality name -> 0/1) becomes ``labels`` (list of dicts) plus ``label_names`` and a
    float ``label_matrix [B, L]`` over the union of names (missing = NaN) for supervised or auxiliary use.
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    batch: dict[str, Any] = {}
    shapes = {tuple(_as_tensor(s["image"]).shape) for s in samples}
    if len(shapes) != 1:
        cases = [s.get("meta", {}).get("case_id") for s in samples]
        raise ValueError(
            f"images in a batch have different shapes {sorted(shapes)} (cases {cases}); "
            "set a fixed crop/resample size in data.preprocess"
        )
    batch["image"] = torch.stack([_as_tensor(s["image"]).float() for s in samples])
    if all("label" in s for s in samples):
        batch["label"] = torch.stack([_as_tensor(s["label"]).long() for s in samples])
    for key in ("text", "report"):
        if any(key in s for s in samples):
            batch[key] = [s.get(key, "") for s in samples]
    if any("labels" in s for s in samples):
        labels = [dict(s.get("labels") or {}) for s in samples]
        names = sorted({k for d in labels for k in d})
        mat = torch.full((len(samples), len(names)), float("nan"))
        for i, d in enumerate(labels):
            for j, name in enumerate(names):
                if name in d:
                    mat[i, j] = float(d[name])
        batch["labels"], batch["label_names"], batch["label_matrix"] = labels, names, mat
    for key in ("lesions", "meta"):
        if any(key in s for s in samples):
            batch[key] = [s.get(key, {}) for s in samples]
    return batch


def build_dataset(
    cfg: DataConfig,
    split: str,
    with_text: bool = True,
    rank: int = 0,
    world_size: int = 1,
    fraction: float = 1.0,
) -> Dataset:
    """The preprocessed dataset of one split, with ``text`` per ``cfg.text_source`` when ``with_text``.

    ``fraction`` < 1 keeps a deterministic subset of the cases (:func:`label_subset` with
    ``cfg.label_seed``), chosen before anything is preprocessed. With ``cfg.cache_dir`` set, volumes are
    preprocessed once into ``medvl3d.data.cache`` shards (each rank writes its share, then all ranks wait
    for each other) and read back from there; otherwise preprocessing runs on the fly in the loader
    workers.
    """
    spec = cfg.preprocess
    base: Dataset = open_split(cfg.root, split, cfg.format)
    if fraction < 1:
        base = SubsetDataset(base, label_subset(len(base), fraction, cfg.label_seed))
    if cfg.cache_dir:
        from medvl3d.data.cache import CachedDataset, preprocess_dataset

        summary = preprocess_dataset(
            base,
            spec,
            cfg.cache_dir,
            shard=(rank, world_size),
            workers=max(1, cfg.num_workers),
            progress=rank == 0,
        )
        if world_size > 1:
            import torch.distributed as dist

            dist.barrier()
        ds: Dataset = CachedDataset(summary)
        if with_text:  # generated text is measured on the raw volumes, not the cached [0, 1] ones
            ds = TextSourceDataset(ds, cfg.text_source, cfg.summariser, cfg.generator, raw=base)
        return ds
    if with_text:  # text first: the generator needs raw intensities
        base = TextSourceDataset(base, cfg.text_source, cfg.summariser, cfg.generator)
    return PreprocessedDataset(base, spec)


def build_loader(
    dataset: Dataset,
    order: BatchOrder,
    start: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    keyed: bool = False,
) -> DataLoader:
    """An endless DataLoader over ``order`` beginning after ``start`` consumed batches.

    The loader draws its worker seeds from its own generator (seeded by the order's seed), never from the
    global RNG, whose state the training loop checkpoints for an exact resume.
    """
    return DataLoader(
        dataset,
        batch_sampler=ResumableBatchSampler(order, start, keyed),
        collate_fn=collate_samples,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(order.seed),
    )
