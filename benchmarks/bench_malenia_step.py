"""Training-step time of the "malenia" model against MONAI's UNet, measured in one process.

A step is what the training loop does per batch: the task's forward (model, Hungarian matching, mask,
alignment, text-branch and organ losses; for the UNet, its Dice/CE segmentation loss), backward and an
AdamW update, on one fixed batch of `--batch` patches of `--patch`^3 voxels holding two lesions each (a
dark ball and a bright box with the attributes of a liver cyst and a renal cell carcinoma) in an organ map.
The text embeddings of the attribute values are computed before timing (training caches them after the
first step). Models are timed in turns (one step of each, `--rounds` times) so that a machine whose load
changes during the run slows every model alike; the medians, their ratio to the UNet and, with
`--breakdown`, where the malenia step goes are printed and written to
`benchmarks/results/malenia/step_time_<tag>.json` with the commit and command.

With `--data FOLDER` (a SynthCT-VL folder) it also times the data path of one batch as training runs it:
reading and preprocessing a case (`data.preprocess` of `configs/malenia_synth_cpu.yaml`, what the cache
saves), then the task's patch sampler (organ map, crop, intensity jitter).

    python benchmarks/bench_malenia_step.py --tag cpu1                 # 1 thread, batch 2, 48^3
    python benchmarks/bench_malenia_step.py --tag cpu1 --breakdown --data data/synthct-malenia
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_timing import record_header, step_arguments, summarise, training_step, write_record  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "malenia"
REFERENCE = "monai_unet"
CONFIG = REPO / "configs" / "malenia_synth_cpu.yaml"
CYST = {
    "type": "liver_cyst", "organ": "liver", "contrast": "contrast-enhanced", "location": "left lobe",
    "shape": "round-like", "density": "hypodense", "homogeneity": "homogeneous", "margin": "well-defined",
    "neighbor_relation": "separate from neighbouring organs",
}  # fmt: skip
TUMOUR = {
    "type": "renal_cell_carcinoma", "organ": "kidney", "contrast": "contrast-enhanced",
    "location": "right kidney", "shape": "irregular", "density": "hyperdense", "homogeneity": "heterogeneous",
    "margin": "ill-defined", "neighbor_relation": "invading neighbouring organs",
}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = step_arguments(
        __doc__, ["cpu_malenia", REFERENCE], 48, "a SynthCT-VL folder: also time the data path", RESULTS
    )
    p.add_argument("--breakdown", action="store_true", help="also time the parts of a malenia step")
    return p.parse_args(argv)


def lesion_batch(batch: int, size: int, seed: int = 0) -> dict:
    """`batch` images with a dark ball (lesion 1) and a bright box (lesion 2) in an organ map."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    images, labels = [], []
    grid = torch.stack(torch.meshgrid(*[torch.arange(size)] * 3, indexing="ij"))
    r = max(2, size // 8)
    for _ in range(batch):
        img = 0.5 + 0.03 * torch.randn(1, size, size, size, generator=gen)
        lab = torch.zeros(2, size, size, size, dtype=torch.long)
        lab[1] = 1
        c = torch.randint(r + 2, size // 2 - r, (3,), generator=gen)
        ball = ((grid - c[:, None, None, None]) ** 2).sum(0) < r * r
        img[0][ball], lab[0][ball], lab[1][ball] = 0.15, 1, 3
        lo = torch.randint(size // 2 + 1, size - 2 * r, (3,), generator=gen)
        box = tuple(slice(int(a), int(a) + 3 * r // 2) for a in lo)
        img[0][box], lab[0][box], lab[1][box] = 0.9, 2, 3
        images.append(img)
        labels.append(lab)
    lesions = [{1: dict(CYST), 2: dict(TUMOUR)} for _ in range(batch)]
    return {"image": torch.stack(images), "label": torch.stack(labels), "lesions": lesions}


def build(name: str, patch: int):
    """(task, optimiser, batch adapter) for one model."""
    import torch

    from medvl3d.models import create_model, model_config
    from medvl3d.train.tasks.base import build_task

    family = type(model_config(name)).family
    torch.manual_seed(0)
    if family == "malenia":
        model = create_model(name)
        model.encode_texts(model.vocabulary.prompts())  # the frozen text encoder runs once, then is cached
        task = build_task("malenia", model, patch_size=[patch] * 3)
        adapt = lambda b: b  # noqa: E731
    else:
        model = create_model(name, n_classes=2)
        task = build_task("segmentation", model, patch_size=[patch] * 3)
        adapt = lambda b: {"image": b["image"], "label": (b["label"][:, :1] > 0).long()}  # noqa: E731
    task.train()
    optimiser = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-3)
    return task, optimiser, adapt


def time_models(args: argparse.Namespace, batch: dict) -> dict[str, list[float]]:
    runs = {name: build(name, args.patch) for name in args.models}
    for task, opt, adapt in runs.values():
        training_step(task, opt, adapt(batch))  # warm-up: allocator, oneDNN kernels
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (task, opt, adapt) in runs.items():
            times[name].append(training_step(task, opt, adapt(batch)))
    return times


def breakdown(name: str, args: argparse.Namespace, batch: dict) -> dict[str, float]:
    """Median ms of a malenia step's parts: model forward, losses (with the matching), backward, update."""
    task, opt, _ = build(name, args.patch)
    model = task.model
    parts: dict[str, list[float]] = {"model_forward": [], "losses": [], "backward": [], "optimiser": []}
    for i in range(args.rounds + 1):
        t0 = time.perf_counter()
        out = model(batch["image"])
        t1 = time.perf_counter()
        model.forward = lambda x, out=out: out  # the task's forward reuses this output: losses only
        try:
            loss = task(batch)["loss"]
        finally:
            del model.forward
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        if i:  # the first is the warm-up
            for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                parts[k].append(v)
    return {k: round(1000 * statistics.median(v), 1) for k, v in parts.items()}


def time_data(args: argparse.Namespace, n_batches: int = 3) -> dict:
    """ms per batch of reading + preprocessing (what `data.cache_dir` saves) and of patch sampling."""
    import yaml

    from medvl3d.data.datasets import open_split
    from medvl3d.data.preprocess import PreprocessSpec, preprocess_sample
    from medvl3d.train.tasks.malenia import LesionPatchSampler
    from medvl3d.typed import build_dataclass

    cfg = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    spec = build_dataclass(PreprocessSpec, cfg["data"]["preprocess"], "data.preprocess", TypeError)
    data = open_split(args.data, "train", "auto")
    sampler = LesionPatchSampler((args.patch,) * 3, 0.7, str(args.data), 0.05)
    load, first, sample = [], [], []
    for i in range(n_batches * args.batch):
        t0 = time.perf_counter()
        case = preprocess_sample(data[i % len(data)], spec)
        t1 = time.perf_counter()
        sampler(case, seed=i)  # the first draw of a case also reads and resamples its organ map
        t2 = time.perf_counter()
        sampler(case, seed=i + 1000)
        t3 = time.perf_counter()
        load.append(t1 - t0)
        first.append(t2 - t1)
        sample.append(t3 - t2)
    return {
        "case_shape": list(case["image"].shape),
        "read_preprocess_ms_per_batch": round(1000 * args.batch * statistics.median(load), 1),
        "first_draw_ms_per_batch": round(1000 * args.batch * statistics.median(first), 1),
        "sample_ms_per_batch": round(1000 * args.batch * statistics.median(sample), 1),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    batch = lesion_batch(args.batch, args.patch)
    times = time_models(args, batch)
    timing = summarise(times, REFERENCE)
    record = {
        **record_header("bench_malenia_step", "bench_malenia_step.py", args.threads),
        "patch": [args.patch] * 3,
        "batch": args.batch,
        "rounds": args.rounds,
        **timing,
    }
    if args.breakdown:
        name = next(n for n in args.models if n != REFERENCE)
        record["breakdown_ms"] = {name: breakdown(name, args, batch)}
        print(f"{name} parts (ms): {record['breakdown_ms'][name]}")
    if args.data:
        record["data"] = time_data(args)
        print(f"data path: {record['data']}")
    write_record(record, args.results, args.tag)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
