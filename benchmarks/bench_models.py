"""Training throughput of the registered image towers: forward + backward volumes/s.

For each model, precision (fp32, bf16 autocast) and gradient checkpointing setting, it times training
steps of the image path (`encode_image` -> loss -> backward) on random volumes of the model's configured
size and prints one table (plus peak GPU memory on CUDA). The text tower is left out: its cost does not
depend on the volume and is the text encoder's benchmark.

    python benchmarks/bench_models.py                      # CPU: test_* and cpu_vit_clip
    python benchmarks/bench_models.py --device cuda        # GPU: every registered model
    python benchmarks/bench_models.py --models vit3d_small_clip --batch-size 4 --steps 20
"""

from __future__ import annotations

import argparse
import time

import torch

from medvl3d.models import create_model, list_models


def bench_one(
    name: str, device: torch.device, batch_size: int, bf16: bool, checkpointing: bool, steps: int, warmup: int
) -> dict:
    """Time `steps` training steps of model `name`'s image tower; returns volumes/s and peak memory."""
    model = create_model(name).to(device).train()
    model.set_grad_checkpointing(checkpointing)
    x = torch.randn(batch_size, 1, *model.config.vision.img_size, device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model.encode_image(x).float().square().sum()
        loss.backward()
        for p in params:
            p.grad = None

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"vol_per_s": steps * batch_size / seconds, "step_ms": 1000 * seconds / steps, "mem_gib": mem}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="*", help="model names (default: all on GPU, small ones on CPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="volumes per step (default 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10 GPU, 3 CPU)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-bf16", action="store_true", help="fp32 only")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    # The vision-language towers (benchmarks/bench_segmentation.py times the segmentation networks).
    names = args.models or (
        list_models(family="vl") if gpu else list_models("test_*", family="vl") + ["cpu_vit_clip"]
    )
    batch_size = args.batch_size or 2
    steps = args.steps or (10 if gpu else 3)
    precisions = [False] if args.no_bf16 else [False, True]
    print(
        f"device: {torch.cuda.get_device_name(device) if gpu else 'cpu'}; torch {torch.__version__}; "
        f"batch {batch_size}; {steps} timed steps after {args.warmup} warm-up"
    )
    cols = ("input (X,Y,Z)", 16), ("prec", 5), ("ckpt", 5), ("vol/s", 9), ("ms/step", 9), ("GiB", 6)
    header = f"{'model':26s} " + " ".join(f"{c:>{w}s}" for c, w in cols)
    print(header)
    print("-" * len(header))
    for name in names:
        size = "x".join(str(s) for s in create_model(name).config.vision.img_size)
        for bf16 in precisions:
            for ckpt in (False, True):
                try:
                    r = bench_one(name, device, batch_size, bf16, ckpt, steps, args.warmup)
                except ValueError as exc:  # e.g. batch norm refuses gradient checkpointing
                    prec = "bf16" if bf16 else "fp32"
                    print(f"{name:26s} {size:>16s} {prec:>5s} {str(ckpt):>5s} n/a: {exc}")
                    continue
                except torch.OutOfMemoryError:
                    print(
                        f"{name:26s} {size:>16s} {'bf16' if bf16 else 'fp32':>5s} {str(ckpt):>5s} {'OOM':>9s}"
                    )
                    torch.cuda.empty_cache()
                    continue
                print(
                    f"{name:26s} {size:>16s} {'bf16' if bf16 else 'fp32':>5s} {str(ckpt):>5s} "
                    f"{r['vol_per_s']:9.2f} {r['step_ms']:9.1f} {r['mem_gib']:6.2f}"
                )


if __name__ == "__main__":
    main()
