"""One training loop for every objective: the task module turns a batch into ``{"loss": ..., parts}``,
the loop does the rest once (AMP, accumulation, clipping, schedule, DDP, compile, checkpoints, resume,
logging).

Resume is exact: a checkpoint stores the model and task weights, the optimiser and scheduler, the number
of batches consumed (the data order is a pure function of it, see :mod:`medvl3d.train.data`) and the
torch/numpy/python RNG states, so a run killed after step k and restarted continues as if it had never
stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

import medvl3d
from medvl3d.atomic import atomic_write_text
from medvl3d.config import ExperimentConfig, config_to_dict, load_config
from medvl3d.models import checkpoint as ckpt
from medvl3d.train.data import BatchOrder, DrawnDataset, build_dataset, build_loader
from medvl3d.train.distributed import DistInfo, all_reduce_mean, cleanup_distributed, init_distributed
from medvl3d.train.optim import build_optimizer, build_scheduler
from medvl3d.train.run_folder import RunFolder
from medvl3d.train.tasks.base import DataFacts, Task, TaskContext, build_task, task_class

__all__ = ["train", "forward_backward", "make_info", "Callback"]

#: Called on every rank after each optimiser step (and after any checkpoint of that step) with
#: ``(step, metrics)``; raising from it stops training (tests use this to simulate a crash).
Callback = Callable[[int, dict], None]


def _rng_state(task: nn.Module) -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if hasattr(task, "rng_state"):  # a task's private generator (GTGM's views)
        state["task"] = task.rng_state()
    return state


def _set_rng_state(state: dict, task: nn.Module) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if state.get("task") is not None and hasattr(task, "set_rng_state"):
        task.set_rng_state(state["task"])


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _to_device(batch: dict, device: torch.device) -> dict:
    non_blocking = device.type == "cuda"
    return {
        k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


def _autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    if amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _check_finite(finite: torch.Tensor) -> None:
    """Raise on every rank when the loss was non-finite on any rank (raising on one rank alone would
    leave the others waiting in the next collective until the process-group timeout)."""
    flag = finite.float()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    if not bool(flag):  # the one host sync of a training step
        raise FloatingPointError("non-finite loss (lower optim.lr or check the data)")


def forward_backward(
    task: nn.Module, batches: Sequence[dict], device: torch.device, amp: str = "none"
) -> dict[str, torch.Tensor]:
    """Forward and backward over ``len(batches)`` micro-batches, accumulating gradients.

    Each micro-batch loss is divided by the number of micro-batches, so the accumulated gradient is that
    of the mean loss over the combined batch. Under DDP, gradient all-reduce only happens on the last
    micro-batch (``no_sync`` before it). The step waits for the device once, to check that the loss is
    finite on every rank; the parts stay on the device until they are logged.

    Returns:
        The mean of each scalar output (``loss`` and named parts) over the micro-batches, on this rank,
        as 0-dim float tensors.
    """
    n = len(batches)
    sums: dict[str, torch.Tensor] = {}
    finite = torch.ones((), dtype=torch.bool, device=device)
    ddp = getattr(task, "_orig_mod", task)  # torch.compile wraps the DDP module
    for i, batch in enumerate(batches):
        sync = i == n - 1 or not isinstance(ddp, nn.parallel.DistributedDataParallel)
        with contextlib.nullcontext() if sync else ddp.no_sync():
            with _autocast(device, amp):
                out = task(_to_device(batch, device))
            if not isinstance(out, dict) or "loss" not in out:
                raise ValueError(
                    f"task {type(task).__name__} must return a dict with 'loss', got {type(out)}"
                )
            loss = out["loss"]
            finite &= torch.isfinite(loss.detach()).all()
            (loss.float() / n).backward()
        for k, v in out.items():
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                v = v.detach().float().reshape(()).to(device)
            elif isinstance(v, (int, float)):
                v = torch.tensor(float(v), device=device)
            else:
                continue
            sums[k] = sums[k] + v if k in sums else v
    _check_finite(finite)
    return {k: v / n for k, v in sums.items()}


def _reduce_metrics(parts: dict[str, torch.Tensor]) -> dict[str, float]:
    """Rank means of a step's 0-dim tensors as floats: one collective and one device-to-host copy."""
    if not parts:
        return {}
    return dict(zip(parts, all_reduce_mean(torch.stack(list(parts.values()))).tolist()))


def make_info(cfg: ExperimentConfig, model: nn.Module, task: nn.Module, ctx: TaskContext) -> dict:
    """The checkpoint's ``config.json``: everything needed to rebuild and use the model.

    The model section records the family, so a checkpoint of any family is rebuilt by
    ``medvl3d.load``; the task adds what using the model needs (prompts, class names, inference windows).
    """
    model = ckpt.unwrap_model(model)
    model_cfg = model.config.to_dict() if hasattr(model.config, "to_dict") else dict(model.config)
    info = {
        "model": {
            "name": cfg.model.name,
            "family": getattr(type(model.config), "family", None),
            "config": model_cfg,
            "encoder_from": cfg.model.encoder_from,
        },
        "preprocess": cfg.data.preprocess.to_dict(),
        "task": cfg.task.name,
        "modality": ctx.facts.modality,
        "labels": list(ctx.facts.labels),  # abnormality names of the training data (may be empty)
        "medvl3d_version": medvl3d.__version__,
        "train": config_to_dict(cfg),
    }
    checkpoint_info = getattr(task, "checkpoint_info", None)
    if checkpoint_info is not None:
        info.update(checkpoint_info(ctx))
    return info


def _extra_task_state(task: nn.Module, model: nn.Module) -> dict[str, torch.Tensor]:
    """Task tensors that are not part of the model (projectors, loss buffers) for the train state."""
    model_ids = {id(t) for t in model.state_dict(keep_vars=True).values()}
    return {
        k: v.detach().clone() for k, v in task.state_dict(keep_vars=True).items() if id(v) not in model_ids
    }


def _dataset_facts(dataset: Dataset) -> DataFacts:
    """Modality, abnormality label names and label-map class names, read from the first sample."""
    try:
        first = dataset[0]
    except Exception as exc:
        raise ValueError(f"cannot read the first training sample: {exc}") from exc
    meta = first.get("meta", {}) or {}
    names = meta.get("label_names")
    label_names = {int(k): str(v) for k, v in names.items()} if isinstance(names, dict) and names else None
    return DataFacts(
        modality=str(meta.get("modality", "CT")),
        labels=sorted((first.get("labels") or {}).keys()),
        label_names=label_names,
    )


class _MetricsLog:
    """``metrics.jsonl`` plus TensorBoard (when importable), on rank 0 only."""

    def __init__(self, run_dir: Path, resume_step: int):
        self.path = run_dir / "metrics.jsonl"
        if self.path.exists():  # drop records of steps after the checkpoint we resume from
            kept = [
                line
                for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        self.file = open(self.path, "a", encoding="utf-8")
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step + 1)
        except ImportError:
            print(
                "medvl3d train: tensorboard is not installed; logging to metrics.jsonl only", file=sys.stderr
            )

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def _build_model_and_task(cfg: ExperimentConfig, facts: DataFacts) -> tuple[nn.Module, nn.Module]:
    """The model (with the fields its task takes from the data, unless the config sets them) and task."""
    from medvl3d.models import create_model

    task_cls = task_class(cfg.task.name)
    overrides = {**task_cls.model_overrides(facts), **cfg.model.overrides}
    model = create_model(cfg.model.name, encoder_from=cfg.model.encoder_from, **overrides)
    return model, build_task(cfg.task.name, model, **cfg.task.params)


def _check_same_model_config(last: Path, model: nn.Module) -> None:
    """A vision-language run resumes only with the knowledge-bank options its checkpoint was trained with:
    their defaults changed (BrgSA as its authors built it), and a run started before would otherwise
    continue as a different model with the same weights. (Changes of the experiment config itself are
    checked by `RunFolder.check_resume`.)"""
    from medvl3d.models.config import LEGACY_BANK_OPTIONS

    saved = ckpt.read_info(last)["model"]  # migrated: a pre-option checkpoint reads as what it used
    config = getattr(ckpt.unwrap_model(model), "config", None)
    if saved.get("family") != "vl" or not getattr(config, "bank_size", 0):
        return  # without a bank the options change nothing
    now = config.to_dict()
    diff = [k for k in LEGACY_BANK_OPTIONS if now.get(k) != saved["config"].get(k)]
    if diff:
        listed = "; ".join(f"{k}: {saved['config'].get(k)!r} -> {now.get(k)!r}" for k in diff)
        keys = [f"model.overrides.{k}" for k in diff]
        settings = " ".join(f"--set {key}={saved['config'].get(k)}" for key, k in zip(keys, diff))
        settings += " " + " ".join(f"--allow-change {key}" for key in keys)
        raise ValueError(
            f"{last}: resuming would change the model it was trained as ({listed}); resume with {settings}, "
            "or train into a new output folder"
        )


def _batches(it: Iterator[dict], n: int) -> list[dict]:
    return [next(it) for _ in range(n)]


def train(
    cfg: ExperimentConfig | str | os.PathLike,
    overrides: Sequence[str] = (),
    *,
    model: nn.Module | None = None,
    task: nn.Module | None = None,
    dataset: Dataset | None = None,
    callbacks: Sequence[Callback] = (),
    allow_changes: Sequence[str] = (),
) -> Path:
    """Train (or resume) the experiment described by ``cfg``; return its run folder.

    Args:
        cfg: an :class:`ExperimentConfig` or a YAML path.
        overrides: dotted ``section.key=value`` overrides applied to ``cfg``.
        model, task: pre-built model and task module (default: ``create_model`` / ``build_task`` from cfg).
            Given a ``model``, ``task`` must be given too.
        dataset: the training dataset of dict samples (default: ``cfg.data``'s train split, preprocessed,
            with ``text``).
        callbacks: called as ``cb(step, metrics)`` after every optimiser step.
        allow_changes: dotted config keys (or sections) a resume may change although they alter what is
            trained, e.g. ``["train.steps", "optim.lr"]``; the changes are recorded in the run folder.

    Launch on several processes or nodes with ``torchrun`` (see :mod:`medvl3d.train.distributed`);
    the run folder gets ``config.yaml``, ``metrics.jsonl``, ``tb/`` and ``checkpoints/``. One process
    trains into a folder at a time, and a resume with a config that changes what the run trains is
    refused before anything is written (see :mod:`medvl3d.train.run_folder`).
    """
    if not isinstance(cfg, ExperimentConfig):
        cfg = load_config(cfg, overrides)
    elif overrides:
        cfg = load_config(config_to_dict(cfg), overrides)
    if (model is None) != (task is None):
        raise ValueError("pass both model and task, or neither")
    tc = cfg.train
    if tc.steps < 1 or tc.accum_steps < 1:
        raise ValueError(f"train.steps and train.accum_steps must be >= 1, got {tc.steps}, {tc.accum_steps}")
    sections = {f.name for f in dataclasses.fields(ExperimentConfig)}
    unknown = [k for k in allow_changes if k.split(".")[0] not in sections]
    if unknown:
        raise ValueError(
            f"allow_changes (--allow-change): {unknown} name no config section ({sorted(sections)})"
        )
    info = init_distributed(tc.device, tc.dist_timeout_min)
    run = RunFolder(cfg.output, main=info.is_main)
    try:
        run.lock()  # before anything else: a second process into the same folder stops here
        try:
            out = _run(cfg, info, model, task, dataset, callbacks, run, allow_changes)
        except BaseException:
            run.release(failed=True)
            raise
        run.release()
        return out
    finally:
        cleanup_distributed()


def _run(
    cfg: ExperimentConfig,
    dinfo: DistInfo,
    model: nn.Module | None,
    task: nn.Module | None,
    dataset: Dataset | None,
    callbacks: Sequence[Callback],
    run: RunFolder,
    allow_changes: Sequence[str],
) -> Path:
    tc, device = cfg.train, dinfo.device
    run_dir = Path(cfg.output)
    ckpt_dir = run_dir / "checkpoints"
    if dinfo.is_main and ckpt_dir.exists():
        ckpt.latest_checkpoint(ckpt_dir, repair=True)  # rank 0 alone undoes a killed re-save
    if dinfo.distributed:
        dist.barrier()
    last = ckpt.latest_checkpoint(ckpt_dir) if ckpt_dir.exists() else None
    # Every rank compares (and so fails alike) before anything is built or written.
    changes = run.check_resume(cfg, last, allow_changes)

    task_cls: Any = type(task) if task is not None else task_class(cfg.task.name)
    if dataset is None:  # first: bad data paths fail before any model is built
        dataset = build_dataset(
            cfg.data,
            cfg.data.train_split,
            with_text=getattr(task_cls, "needs_text", True),
            rank=dinfo.rank,
            world_size=dinfo.world_size,
            fraction=cfg.data.label_fraction,
        )
    ctx = TaskContext(cfg, _dataset_facts(dataset))
    keys = getattr(task_cls, "validation_keys", Task.validation_keys)
    valid = _validation_data(cfg, dinfo, keys) if tc.eval_every > 0 else None
    _seed_all(tc.seed)  # same initial weights on every rank
    if model is None:
        model, task = _build_model_and_task(cfg, ctx.facts)
    assert task is not None
    task.to(device)
    optimizer = build_optimizer(task, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, tc.steps)
    transform = task.sample_transform(cfg.data) if hasattr(task, "sample_transform") else None
    # A task drawing random patches may revisit a case within a batch (a 1%-label run has 2 cases).
    order = BatchOrder(
        len(dataset), cfg.data.batch_size, tc.seed, dinfo.rank, dinfo.world_size, repeat=transform is not None
    )
    if transform is not None:  # patch sampling / augmentation in the loader workers, seeded per draw
        dataset = DrawnDataset(dataset, transform, tc.seed)

    step, consumed = 0, 0
    if last is not None:
        state = ckpt.load_train_state(last)
        from safetensors.torch import load_file

        _check_same_model_config(last, model)
        ckpt.load_state_strict(model, load_file(str(last / ckpt.WEIGHTS_NAME)), str(last))
        task.load_state_dict({**task.state_dict(), **state["task_extra"]})
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, consumed = int(state["step"]), int(state["consumed"])
        if state.get("world_size", 1) != dinfo.world_size or state.get("batch_size") != cfg.data.batch_size:
            raise ValueError(
                f"{last}: saved with world_size={state.get('world_size')}, "
                f"batch_size={state.get('batch_size')}; resuming with {dinfo.world_size}, "
                f"{cfg.data.batch_size} would change the data order"
            )
        _set_rng_state(state["rng"][min(dinfo.rank, len(state["rng"]) - 1)], task)
        if dinfo.is_main:
            print(f"medvl3d train: resuming from {last} (step {step})", file=sys.stderr)
    else:
        _seed_all(tc.seed + 1000 * dinfo.rank)  # distinct augmentation streams per rank

    runner: nn.Module = task
    if dinfo.distributed:
        ids = [device.index] if device.type == "cuda" else None
        if device.type == "cuda":
            # Batch statistics over the global batch, as the contrastive loss sees it (SimCLR's global
            # BN); the converted layers keep the same parameters, so the optimiser is unaffected.
            # torch implements SyncBatchNorm for GPUs only; on CPU each rank normalises its own batch.
            task = nn.SyncBatchNorm.convert_sync_batchnorm(task)
        runner = nn.parallel.DistributedDataParallel(task, device_ids=ids)
    if tc.compile:
        runner = torch.compile(runner)

    run.record_start(cfg, changes, step)  # config.yaml of a new run, or the accepted changes of a resume
    if step >= tc.steps:
        return run_dir
    loader = build_loader(
        dataset,
        order,
        start=consumed,
        num_workers=cfg.data.num_workers,
        pin_memory=device.type == "cuda",
        keyed=transform is not None,
    )
    it = iter(loader)
    log = _MetricsLog(run_dir, step) if dinfo.is_main else None
    bar = None
    if dinfo.is_main and tc.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=tc.steps, initial=step, desc="train", dynamic_ncols=True)
    task.train()
    samples_per_step = cfg.data.batch_size * tc.accum_steps * dinfo.world_size
    t_last, step_last = time.perf_counter(), step
    try:
        while step < tc.steps:
            parts = forward_backward(runner, _batches(it, tc.accum_steps), device, tc.amp)
            consumed += tc.accum_steps
            if tc.grad_clip > 0:
                parts["grad_norm"] = torch.nn.utils.clip_grad_norm_(task.parameters(), tc.grad_clip).float()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if bar is not None:
                bar.update(1)
            # Metrics leave the device only on logged steps (the same steps on every rank).
            log_step = step % max(tc.log_every, 1) == 0 or step == tc.steps or step == 1
            metrics: dict = {}
            if log_step or callbacks:
                metrics = _reduce_metrics(parts)
                metrics["lr"] = optimizer.param_groups[0]["lr"]
                now = time.perf_counter()
                metrics["samples_per_s"] = samples_per_step * (step - step_last) / max(now - t_last, 1e-9)
                t_last, step_last = now, step
            if log is not None and log_step:
                log.write({"step": step, **metrics})
            if bar is not None and log_step:
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}")
            if tc.eval_every > 0 and (step % tc.eval_every == 0 or step == tc.steps):
                if log is not None and hasattr(task, "validate"):
                    log.write({"step": step, **task.validate(ckpt.unwrap_model(model), valid, ctx)})
                    task.train()
                if dinfo.distributed:
                    # Rank 0 evaluates alone; the others wait here (at most train.dist_timeout_min) rather
                    # than inside the next step's collectives.
                    dist.barrier()
                t_last, step_last = time.perf_counter(), step  # the throughput leaves out the evaluation
            if (tc.ckpt_every > 0 and step % tc.ckpt_every == 0) or step == tc.steps:
                _checkpoint(cfg, dinfo, ckpt_dir, step, consumed, model, task, optimizer, scheduler, ctx)
                t_last, step_last = time.perf_counter(), step  # nor the checkpoint write
            for cb in callbacks:
                cb(step, metrics)
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
    return run_dir


def _validation_data(cfg: ExperimentConfig, dinfo: DistInfo, keep: Sequence[str]) -> Dataset | list[dict]:
    """The preprocessed validation split for ``train.eval_every``, built once before training.

    It goes through the training data's machinery (``data.format``, ``data.preprocess``, ``data.cache_dir``):
    with a cache every rank preprocesses its share into it; without one, rank 0 (the one that evaluates)
    keeps the preprocessed cases in memory, only the sample keys ``keep`` the task's validation reads. A
    missing or empty split fails here, not hours into the run.
    """
    d = cfg.data
    where = (
        f"validation split {d.valid_split!r} of data.root {d.root} (train.eval_every={cfg.train.eval_every})"
    )
    try:
        valid = build_dataset(d, d.valid_split, with_text=False, rank=dinfo.rank, world_size=dinfo.world_size)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the {where}: {exc}") from exc
    if len(valid) == 0:
        raise ValueError(f"the {where} has no cases")
    if d.cache_dir or not dinfo.is_main:
        return valid
    size = d.preprocess.spatial_size
    if size is not None and len(valid) * int(np.prod(size)) * 4 > _VALID_IN_MEMORY_WARN:
        warnings.warn(
            f"the {where} takes ~{len(valid) * int(np.prod(size)) * 4 / 2**30:.1f} GiB of rank 0's memory "
            "once preprocessed; set data.cache_dir to keep it on disk",
            stacklevel=3,
        )
    # Preprocessed by the loader workers (data.num_workers), like the training data.
    loader = torch.utils.data.DataLoader(
        valid, batch_size=None, num_workers=d.num_workers, collate_fn=_identity
    )
    return [{k: v for k, v in sample.items() if k in keep} for sample in loader]


_VALID_IN_MEMORY_WARN = 8 * 2**30  # bytes of preprocessed validation volumes held by rank 0


def _identity(sample: dict) -> dict:
    return sample


def _checkpoint(
    cfg: ExperimentConfig,
    dinfo: DistInfo,
    ckpt_dir: Path,
    step: int,
    consumed: int,
    model: nn.Module,
    task: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    ctx: TaskContext,
) -> None:
    rng = _rng_state(task)
    if dinfo.distributed:  # every rank's RNG, so each augmentation stream resumes where it was
        gathered: list[Any] = [None] * dinfo.world_size
        dist.all_gather_object(gathered, rng)
    else:
        gathered = [rng]
    if dinfo.is_main:
        state = {
            "step": step,
            "consumed": consumed,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "task_extra": _extra_task_state(task, model),
            "rng": gathered,
            "world_size": dinfo.world_size,
            "batch_size": cfg.data.batch_size,
        }
        ckpt.save_checkpoint(ckpt_dir, step, model, make_info(cfg, model, task, ctx), state)
    if dinfo.distributed:
        dist.barrier()
