"""What the step-time benchmarks (`bench_avfusion_step.py`, `bench_malenia_step.py`) share: one timed
training step, the git state of the measured code, the ms/step summary against a reference model and the
result JSON."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

from bench_record import git_commit

REPO = Path(__file__).resolve().parents[1]


def step_arguments(
    doc: str, models: list[str], patch: int, data_help: str, results: Path
) -> argparse.ArgumentParser:
    """The options every step-time benchmark takes (each script adds its own before parsing)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--models", nargs="+", default=models)
    p.add_argument("--patch", type=int, default=patch, help="patch edge in voxels")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5, help="timed steps per model (after one warm-up)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", default=None, help=data_help)
    p.add_argument("--tag", default="cpu1", help="name of the JSON record")
    p.add_argument("--results", default=str(results))
    return p


def training_step(task, optimiser, batch: dict) -> float:
    """Seconds of one training step (task forward with its loss, backward, optimiser step)."""
    t0 = time.perf_counter()
    loss = task(batch)["loss"]
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    return time.perf_counter() - t0


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.rstrip()


def record_header(benchmark: str, script: str, threads: int) -> dict:
    """The fields every step-time record starts with: what, at which commit (and which measured files
    differed from it), the command, torch and threads."""
    import sys

    import torch

    return {
        "benchmark": benchmark,
        "commit": git_commit(),
        # Files of the measured code that differ from that commit (the step was timed on them as they were).
        "uncommitted": git("status", "--porcelain", "--", "src", f"benchmarks/{script}").splitlines(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "torch": torch.__version__,
        "threads": threads,
    }


def summarise(times: dict[str, list[float]], reference: str) -> dict:
    """Median ms/step per model, printed with its ratio to ``reference``; the record's timing fields."""
    ms = {name: round(1000 * statistics.median(t), 1) for name, t in times.items()}
    ref = ms.get(reference)
    for name, value in ms.items():
        ratio = f"  ({value / ref:.2f}x {reference})" if ref else ""
        print(f"{name}: {value:.0f} ms/step{ratio}")
    return {
        "ms_per_step": ms,
        "ms_per_step_all": {n: [round(1000 * v, 1) for v in t] for n, t in times.items()},
        "ratio_to_" + reference: {n: round(v / ref, 2) for n, v in ms.items()} if ref else None,
    }


def write_record(record: dict, results: str, tag: str) -> Path:
    out = Path(results)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"step_time_{tag}.json"
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")
    return path
