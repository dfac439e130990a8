"""The training loop on stand-in modules: accumulation equivalence, exact resume, logging, data order."""

from __future__ import annotations

import json

import pytest
import torch
from train_standins import ClipTask, RegressTask, ToyDataset, ToyVL

from medvl3d.config import ExperimentConfig, config_from_dict
from medvl3d.models import checkpoint as ckpt
from medvl3d.train.data import BatchOrder, collate_samples
from medvl3d.train.loop import forward_backward, train


def _cfg(tmp_path, name="run", batch_size=4, **train_kw) -> ExperimentConfig:
    t = {"steps": 6, "accum_steps": 1, "log_every": 1, "ckpt_every": 3, "grad_clip": 1.0, "progress": False}
    t.update(train_kw)
    return config_from_dict(
        {
            "data": {"batch_size": batch_size},
            "optim": {"lr": 1e-2, "warmup_steps": 2},
            "train": t,
            "output": str(tmp_path / name),
        }
    )


def _run(cfg, task_cls=RegressTask, dataset=None, callbacks=(), seed=0):
    torch.manual_seed(seed)
    model = ToyVL()
    return train(
        cfg, model=model, task=task_cls(model), dataset=dataset or ToyDataset(16), callbacks=callbacks
    )


def _weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(ckpt.latest_checkpoint(run_dir / "checkpoints") / ckpt.WEIGHTS_NAME))


def test_batch_order_is_deterministic_sharded_and_covers_each_epoch():
    order = BatchOrder(10, 2, seed=3, rank=0, world_size=2)
    other = BatchOrder(10, 2, seed=3, rank=1, world_size=2)
    assert order.batches_per_epoch == 2  # 10 // (2 x 2), the incomplete rest is dropped
    epoch0 = [i for b in range(2) for o in (order, other) for i in o.indices(0, b)]
    assert len(set(epoch0)) == 8  # disjoint shards, no repeats within an epoch
    assert order.indices(1, 0) != order.indices(0, 0) or order.indices(1, 1) != order.indices(0, 1)
    assert BatchOrder(10, 2, seed=3, rank=0, world_size=2).indices(0, 1) == order.indices(0, 1)
    single = BatchOrder(10, 4, seed=3)  # one process on the combined batch sees the same samples
    assert single.indices(0, 0) == order.indices(0, 0) + other.indices(0, 0)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        BatchOrder(3, 2, world_size=2)


def test_grad_accumulation_matches_the_combined_batch():
    torch.manual_seed(0)
    model = ToyVL()
    model.config.dropout = 0.0
    model.drop.p = 0.0
    task = RegressTask(model)
    ds = ToyDataset(4)
    full = collate_samples([ds[i] for i in range(4)])
    halves = [collate_samples([ds[0], ds[1]]), collate_samples([ds[2], ds[3]])]
    dev = torch.device("cpu")
    out_full = forward_backward(task, [full], dev)
    g_full = {n: p.grad.clone() for n, p in task.named_parameters() if p.grad is not None}
    assert "model.conv.weight" in g_full
    task.zero_grad()
    out_acc = forward_backward(task, halves, dev)
    for n, p in task.named_parameters():
        if n not in g_full:
            continue
        torch.testing.assert_close(p.grad, g_full[n], rtol=1e-5, atol=1e-6)
    assert float(out_acc["loss"]) == pytest.approx(float(out_full["loss"]), rel=1e-5)


def test_accumulation_run_equals_large_batch_run(tmp_path):
    # accum 2 x batch 2 == batch 4 over whole optimiser steps (dropout off: its draws differ by split)
    a2 = _cfg(tmp_path, "acc", batch_size=2, steps=3, accum_steps=2)
    b2 = _cfg(tmp_path, "big", batch_size=4, steps=3)

    def run_nodrop(cfg):
        torch.manual_seed(0)
        model = ToyVL()
        model.drop.p = 0.0
        return train(cfg, model=model, task=RegressTask(model), dataset=ToyDataset(16))

    wa, wb = _weights(run_nodrop(a2)), _weights(run_nodrop(b2))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)


def test_loss_falls_and_logs_are_written(tmp_path):
    cfg = _cfg(tmp_path, steps=30, ckpt_every=10)
    cfg.optim.lr = 3e-2
    run = _run(cfg, task_cls=ClipTask)
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["step"] for r in recs] == list(range(1, 31))
    assert {"loss", "lr", "grad_norm", "samples_per_s"} <= set(recs[0])
    first, last = sum(r["loss"] for r in recs[:3]) / 3, sum(r["loss"] for r in recs[-3:]) / 3
    assert last < 0.7 * first, (first, last)
    assert (run / "config.yaml").is_file() and any((run / "tb").iterdir())
    kept = sorted(p.name for p in (run / "checkpoints").glob("step-*"))
    assert kept == ["step-00000020", "step-00000030"]  # keep=2 newest
    info = json.loads(
        (ckpt.latest_checkpoint(run / "checkpoints") / "config.json").read_text(encoding="utf-8")
    )
    assert info["step"] == 30 and info["modality"] == "CT" and info["labels"] == ["Lesion"]
    assert info["model"]["config"] == ToyVL().config.to_dict()
    assert "prompts" not in info  # a stand-in task adds nothing: the prompts are the VL tasks' entry


class _Crash(RuntimeError):
    pass


def test_killed_run_resumes_exactly(tmp_path):
    straight = _run(_cfg(tmp_path, "straight", steps=6, ckpt_every=3))

    def crash(step, metrics):
        if step == 4:  # after the step-3 checkpoint, mid-way to the next one
            raise _Crash

    cfg = _cfg(tmp_path, "resumed", steps=6, ckpt_every=3)
    with pytest.raises(_Crash):
        _run(cfg, callbacks=[crash])
    assert ckpt.latest_checkpoint(tmp_path / "resumed" / "checkpoints").name == "step-00000003"
    resumed = _run(cfg, seed=123)  # a different init seed: everything must come from the checkpoint
    ws, wr = _weights(straight), _weights(resumed)
    for k in ws:  # same weights, optimiser moments, data order and dropout stream
        torch.testing.assert_close(wr[k], ws[k], rtol=0, atol=1e-6)
    steps = [
        json.loads(line)["step"]
        for line in (resumed / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert steps == [1, 2, 3, 4, 5, 6]  # the logged step 4 of the crashed run was dropped, then re-done
    s1 = torch.load(ckpt.latest_checkpoint(straight / "checkpoints") / ckpt.STATE_NAME, weights_only=False)
    s2 = torch.load(ckpt.latest_checkpoint(resumed / "checkpoints") / ckpt.STATE_NAME, weights_only=False)
    assert s1["consumed"] == s2["consumed"] == 6
    for a, b in zip(s1["optimizer"]["state"].values(), s2["optimizer"]["state"].values()):
        torch.testing.assert_close(a["exp_avg_sq"], b["exp_avg_sq"], rtol=1e-5, atol=1e-9)


def test_resume_with_another_batch_size_is_refused(tmp_path):
    cfg = _cfg(tmp_path, steps=3, ckpt_every=3)
    _run(cfg)
    cfg.train.steps, cfg.data.batch_size = 6, 2
    with pytest.raises(ValueError, match="would change the data order"):
        _run(cfg)


class _NaNTask(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch):
        loss = self.model.conv.weight.sum() * float("nan")
        return {"loss": loss, "part": torch.tensor(1.0)}


def test_non_finite_loss_raises():
    model = ToyVL()
    batch = collate_samples([ToyDataset(2)[i] for i in range(2)])
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        forward_backward(_NaNTask(model), [batch], torch.device("cpu"))
    parts = forward_backward(RegressTask(model), [batch], torch.device("cpu"))
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in parts.values())


def test_gtgm_view_generator_resumes_exactly(tmp_path):
    """GTGM draws its views from a private generator when seeded; a resumed run must draw the same views."""
    from train_standins import PairDataset

    from medvl3d.models import create_model
    from medvl3d.train.tasks import build_task

    def run(name, callbacks=(), seed=0):
        torch.manual_seed(seed)
        model = create_model("test_vit_clip")
        task = build_task("gtgm", model, seed=7)
        cfg = _cfg(tmp_path, name, batch_size=4, steps=4, ckpt_every=2)
        return train(cfg, model=model, task=task, dataset=PairDataset(8), callbacks=callbacks)

    def crash(step, metrics):
        if step == 3:
            raise _Crash

    straight = run("straight")
    with pytest.raises(_Crash):
        run("resumed", callbacks=[crash])
    resumed = run("resumed", seed=123)
    ws, wr = _weights(straight), _weights(resumed)
    for k in ws:
        torch.testing.assert_close(wr[k], ws[k], rtol=0, atol=1e-6, msg=k)


def test_bad_arguments():
    with pytest.raises(ValueError, match="pass both model and task"):
        train(ExperimentConfig(), model=ToyVL())


def test_bf16_autocast_computes_in_bf16_and_tracks_fp32():
    """train.amp=bf16: the projection runs in bfloat16, the weights and their grads stay float32, and the
    loss stays within bf16 rounding of the float32 loss."""
    torch.manual_seed(0)
    model = ToyVL()
    model.drop.p = 0.0
    task = RegressTask(model)
    ds = ToyDataset(4)
    batch = collate_samples([ds[i] for i in range(4)])
    dev = torch.device("cpu")
    seen = []
    hook = model.proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    ref = float(forward_backward(task, [batch], dev, "none")["loss"])
    g_ref = model.proj.weight.grad.clone()
    task.zero_grad()
    low = float(forward_backward(task, [batch], dev, "bf16")["loss"])
    hook.remove()
    assert seen == [torch.float32, torch.bfloat16]
    assert model.proj.weight.dtype == model.proj.weight.grad.dtype == torch.float32
    assert low == pytest.approx(ref, rel=2e-2) and low != ref  # bf16 really ran, and stayed close
    torch.testing.assert_close(model.proj.weight.grad, g_ref, rtol=0.1, atol=2e-3)


def test_bf16_training_run_learns(tmp_path):
    cfg = _cfg(tmp_path, steps=30, ckpt_every=30, amp="bf16")
    cfg.optim.lr = 3e-2
    run = _run(cfg)
    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3]), losses


@pytest.mark.slow
def test_compiled_run_matches_eager(tmp_path):
    """train.compile=true (torch.compile, inductor on CPU) gives the eager run's weights."""
    pytest.importorskip("torch._inductor")

    def nodrop(cfg):
        torch.manual_seed(0)
        model = ToyVL()
        model.drop.p = 0.0
        return train(cfg, model=model, task=RegressTask(model), dataset=ToyDataset(16))

    from torch._dynamo.utils import counters

    eager = _weights(nodrop(_cfg(tmp_path, "eager", steps=3)))
    counters.clear()
    compiled = _weights(nodrop(_cfg(tmp_path, "compiled", steps=3, compile=True)))
    assert counters["stats"]["unique_graphs"] > 0  # dynamo really captured graphs
    assert eager.keys() == compiled.keys()
    for k in eager:
        torch.testing.assert_close(compiled[k], eager[k], rtol=1e-4, atol=1e-5)
