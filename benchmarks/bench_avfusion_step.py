"""Training-step time of the "avfusion" model against MONAI's UNet, measured in one process.

A step is what the training loop does per batch: the task's forward (model + Dice/CE loss), backward and an
AdamW update, on a random batch of `--batch` patches of `--patch`^3 voxels with labels of the model's
classes. Models are timed in turns (one step of each, `--rounds` times) so that a machine whose load
changes during the run slows every model alike; the medians and their ratio to the reference are
printed and written to `benchmarks/results/avfusion/step_time_<tag>.json` with the commit and command.

With `--data DATASET.json` (an MSD set such as the label-efficiency benchmark's `dataset_av.json`) it also
times the data path of one batch as training runs it without a cache: reading and preprocessing the
cases (`data.preprocess` of `configs/avfusion_synth_lungs.yaml`), then the task's patch sampling and
augmentation.

    python benchmarks/bench_avfusion_step.py --tag cpu1              # 1 thread, batch 2, 64^3
    python benchmarks/bench_avfusion_step.py --tag head16 --set full_res_width=16 --rounds 3
    python benchmarks/bench_avfusion_step.py --tag data --data runs/bench_avfusion/data/dataset_av.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_timing import record_header, step_arguments, summarise, training_step, write_record  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "avfusion"
REFERENCE = "monai_unet"
# Model -> task, as the label-efficiency benchmark trains them.
TASKS = {"avfusion": "avfusion", "monai": "segmentation", "seg": "segmentation"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = step_arguments(
        __doc__, ["cpu_avfusion", REFERENCE], 64, "an MSD dataset.json: also time the data path", RESULTS
    )
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON", help="avfusion config overrides")
    p.add_argument("--channels-last", action="store_true", help="models and images in torch.channels_last_3d")
    return p.parse_args(argv)


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=JSON, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def build(name: str, overrides: dict, patch: int, channels_last: bool = False):
    """(task, optimiser) for one model; avfusion's class text embeddings are set to fixed unit vectors
    (training embeds them once, before the first step, so they take no part in a step's time)."""
    import torch
    import torch.nn.functional as F

    from medvl3d.models import create_model, model_config
    from medvl3d.train.tasks.base import build_task

    family = type(model_config(name)).family
    kwargs = dict(overrides) if family == "avfusion" else {}
    if family == "monai":
        kwargs["n_classes"] = 3  # background, artery, vein
    torch.manual_seed(0)
    model = create_model(name, **kwargs)
    if getattr(model.config, "conditioning", None) == "text":
        with torch.no_grad():
            model.text_embeddings.copy_(F.normalize(torch.randn_like(model.text_embeddings), dim=1))
    task = build_task(TASKS[family], model, patch_size=[patch] * 3)
    task.train()
    if channels_last:
        task.to(memory_format=torch.channels_last_3d)
    optimiser = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-3)
    return task, optimiser


def time_models(args: argparse.Namespace) -> dict[str, list[float]]:
    import torch

    gen = torch.Generator().manual_seed(0)
    shape = (args.batch, 1, args.patch, args.patch, args.patch)
    batch = {"image": torch.rand(shape, generator=gen), "label": torch.randint(0, 3, shape, generator=gen)}
    overrides = _overrides(args.set)
    if args.channels_last:
        batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last_3d)
    runs = {name: build(name, overrides, args.patch, args.channels_last) for name in args.models}
    for task, opt in runs.values():
        training_step(task, opt, batch)  # warm-up: allocator, oneDNN kernels
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (task, opt) in runs.items():
            times[name].append(training_step(task, opt, batch))
    return times


def time_data(args: argparse.Namespace, n_batches: int = 4) -> dict:
    """ms per batch of reading + preprocessing (as without `data.cache_dir`) and of patch sampling."""
    import yaml

    from medvl3d.data.datasets import MSDDataset
    from medvl3d.data.preprocess import PreprocessSpec, preprocess_sample
    from medvl3d.train.tasks.avfusion import ClassRemapSampler
    from medvl3d.train.tasks.segmentation import SegAugmentConfig
    from medvl3d.typed import build_dataclass

    cfg = yaml.safe_load((REPO / "configs" / "avfusion_synth_lungs.yaml").read_text(encoding="utf-8"))
    spec = build_dataclass(PreprocessSpec, cfg["data"]["preprocess"], "data.preprocess", TypeError)
    params = cfg["task"]["params"]
    sampler = ClassRemapSampler(
        ("pulmonary_artery", "pulmonary_vein"),
        (args.patch,) * 3,
        params.get("fg_fraction", 0.67),
        SegAugmentConfig(),
        pad_to_patch=True,
    )
    data = MSDDataset(args.data, split="train")
    load, sample = [], []
    for i in range(n_batches * args.batch):
        t0 = time.perf_counter()
        case = preprocess_sample(data[i % len(data)], spec)
        t1 = time.perf_counter()
        sampler(case, seed=i)
        t2 = time.perf_counter()
        load.append(t1 - t0)
        sample.append(t2 - t1)
    shape = list(case["image"].shape)
    return {
        "case_shape": shape,
        "read_preprocess_ms_per_batch": round(1000 * args.batch * statistics.median(load), 1),
        "sample_augment_ms_per_batch": round(1000 * args.batch * statistics.median(sample), 1),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    times = time_models(args)
    timing = summarise(times, REFERENCE)
    record = {
        **record_header("bench_avfusion_step", "bench_avfusion_step.py", args.threads),
        "channels_last": args.channels_last,
        "patch": [args.patch] * 3,
        "batch": args.batch,
        "rounds": args.rounds,
        "overrides": _overrides(args.set),
        **timing,
    }
    if args.data:
        record["data"] = time_data(args)
        print(f"data path: {record['data']}")
    write_record(record, args.results, args.tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
