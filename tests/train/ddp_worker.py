"""Run by test_distributed.py under `torchrun --nproc_per_node 2`: one DDP step's loss and gradients,
then a short run of the real training loop. Rank 0 writes the results into the folder given as argv[1].

With `nan` as argv[2], rank 1 alone produces a non-finite loss: every rank must raise, none may hang."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_standins import PairDataset  # noqa: E402

from medvl3d.config import config_from_dict  # noqa: E402
from medvl3d.models import create_model  # noqa: E402
from medvl3d.train.data import collate_samples  # noqa: E402
from medvl3d.train.distributed import all_reduce_mean, init_distributed  # noqa: E402
from medvl3d.train.loop import forward_backward, train  # noqa: E402
from medvl3d.train.tasks import build_task  # noqa: E402


def run_cfg(out: Path, batch_size: int) -> dict:
    return {
        "data": {"batch_size": batch_size},
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "train": {"steps": 3, "ckpt_every": 0, "progress": False, "device": "cpu"},
        "output": str(out),
    }


def nan_on_rank_one() -> None:
    info = init_distributed("cpu")
    model = create_model("test_vit_clip")
    # No gather: rank 1's NaN embeddings must not reach rank 0's loss, so only the all-reduced finite
    # flag can make rank 0 stop.
    task = torch.nn.parallel.DistributedDataParallel(build_task("clip", model, gather=False))
    batch = collate_samples([PairDataset(4)[i] for i in range(2)])
    if info.rank == 1:
        batch["image"] = batch["image"] * float("nan")
    try:
        forward_backward(task, [batch], info.device)
    except FloatingPointError:
        print(f"rank {info.rank}: FloatingPointError", flush=True)
        raise


def main() -> None:
    if sys.argv[2:] == ["nan"]:
        return nan_on_rank_one()
    out = Path(sys.argv[1])
    info = init_distributed("cpu")
    torch.manual_seed(0)
    model = create_model("test_vit_clip")
    task = build_task("clip", model)
    ds = PairDataset(4)
    shard = collate_samples([ds[i] for i in range(2 * info.rank, 2 * info.rank + 2)])
    ddp = torch.nn.parallel.DistributedDataParallel(task)
    parts = forward_backward(ddp, [shard], info.device)
    loss = float(all_reduce_mean(parts["loss"]))
    if info.is_main:
        grads = {n: p.grad.clone() for n, p in task.named_parameters() if p.grad is not None}
        torch.save({"loss": loss, "grads": grads, "world": info.world_size}, out / "step.pt")
    # the real loop: 3 steps of batch 2 per rank == 3 steps of batch 4 in one process
    torch.manual_seed(0)
    model = create_model("test_vit_clip")
    train(
        config_from_dict(run_cfg(out / "ddp_run", 2)),
        model=model,
        task=build_task("clip", model),
        dataset=PairDataset(8),
    )


if __name__ == "__main__":
    main()
