"""Segmentation speed on this machine: training throughput of our network beside MONAI's UNet and
SwinUNETR (same patch, batch, loss and optimiser, one run), and the time to segment a 512x512x133 chest
CT end to end (read, preprocess, sliding window, map back, write).

    python benchmarks/bench_segmentation.py                       # defaults: 2 threads, 64^3 patches
    python benchmarks/bench_segmentation.py --checkpoint runs/organs_3mm   # time a trained model

The CT is the CT-like 512x512x133 volume at 0.7x0.7x2.5 mm of `bench_io_resample.py` (the same size as the
real chest CTs users bring; no real one of that size ships with the tests). Without `--checkpoint`, an
untrained `cpu_resenc_seg_wide` on a 3 mm grid with 16 classes is timed: the work per voxel is the same
as a trained one's. Results go to `benchmarks/results/bench_segmentation_<time>.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_record import git_commit  # noqa: E402

MODELS = {
    "ours (cpu_resenc_seg_wide)": ("cpu_resenc_seg_wide", {}),
    "MONAI UNet": ("monai_unet", {}),
    "MONAI SwinUNETR": ("monai_swinunetr", {}),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--patch", type=int, nargs=3, default=[64, 64, 64])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="timed steps per model (after 2 warm-up steps)")
    p.add_argument("--classes", type=int, default=16)
    p.add_argument("--checkpoint", default=None, help="segmentation checkpoint to time on the CT")
    p.add_argument("--skip-training", action="store_true")
    return p.parse_args(argv)


def train_throughput(args: argparse.Namespace) -> dict:
    """Samples per second of a full training step (forward, DiceCE loss, backward, AdamW) per model."""
    from monai.losses import DiceCELoss

    from medvl3d.models import create_model

    torch.manual_seed(0)
    x = torch.rand(args.batch, 1, *args.patch)
    y = torch.randint(0, args.classes, (args.batch, 1, *args.patch))
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    out = {}
    for label, (name, overrides) in MODELS.items():
        model = create_model(name, n_classes=args.classes, **overrides).train()
        opt = torch.optim.AdamW(model.parameters(), 1e-3)
        times = []
        for i in range(args.steps + 2):
            t0 = time.perf_counter()
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i >= 2:
                times.append(time.perf_counter() - t0)
        step = sorted(times)[len(times) // 2]
        out[label] = {
            "model": name,
            "params": sum(p.numel() for p in model.parameters()),
            "median_step_s": round(step, 3),
            "samples_per_s": round(args.batch / step, 3),
        }
        print(f"{label}: {out[label]}", flush=True)
    ours = next(iter(out.values()))["samples_per_s"]
    for v in out.values():
        v["speed_vs_ours"] = round(v["samples_per_s"] / ours, 3)
    return out


def _untrained_checkpoint(folder: Path, classes: int) -> Path:
    from medvl3d.models import create_model
    from medvl3d.models.checkpoint import save_checkpoint

    model = create_model("cpu_resenc_seg_wide", n_classes=classes)
    info = {
        "model": {"name": "cpu_resenc_seg_wide", "family": "seg", "config": model.config.to_dict()},
        "preprocess": {"spacing": [3.0, 3.0, 3.0], "intensity": {"ct_window": [-1000.0, 1000.0]}},
        "modality": "CT",
        "label_names": {str(i): f"class_{i}" for i in range(classes)},
        "inference": {"patch_size": [96, 96, 64], "overlap": 0.25},
    }
    return save_checkpoint(folder, 0, model, info)


def segment_ct(args: argparse.Namespace, work: Path) -> dict:
    """Wall-clock seconds of each stage of segmenting the 512x512x133 CT, and in all."""
    from bench_io_resample import make_volume

    from medvl3d.data.io import read_volume
    from medvl3d.infer import Predictor

    ct = make_volume(work / "ct.nii.gz")
    ckpt = args.checkpoint or _untrained_checkpoint(work / "ckpt", args.classes)
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    t0 = time.perf_counter()
    volume = read_volume(ct)
    t1 = time.perf_counter()
    predictor.set_volume(volume)
    t2 = time.perf_counter()
    result = predictor.segment()
    result.save(work / "mask.nii.gz", work / "mask.json")
    t3 = time.perf_counter()
    stages = {"read": t1 - t0, "preprocess_and_sliding_window": t2 - t1, "map_back_and_write": t3 - t2}
    out = {k: round(v, 2) for k, v in stages.items()}
    out.update(
        total_s=round(t3 - t0, 2),
        checkpoint=str(ckpt) if args.checkpoint else "untrained cpu_resenc_seg_wide, 3 mm, 16 classes",
        window=json.loads(json.dumps(predictor.info.get("inference"))),
        preprocessed_shape=list(predictor.probabilities_map.shape[1:]),
    )
    print(f"segment 512x512x133 CT: {out}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    record = {
        "benchmark": "bench_segmentation",
        "commit": git_commit(),
        "command": " ".join(["bench_segmentation.py", *(argv if argv is not None else sys.argv[1:])]),
        "threads": args.threads,
        "patch": args.patch,
        "batch": args.batch,
    }
    if not args.skip_training:
        record["train_throughput"] = train_throughput(args)
    with tempfile.TemporaryDirectory() as tmp:
        record["segment_512x512x133"] = segment_ct(args, Path(tmp))
    out = REPO / "benchmarks" / "results" / f"bench_segmentation_{time.strftime('%Y%m%d_%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
