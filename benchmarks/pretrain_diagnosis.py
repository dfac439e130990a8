"""Zero-shot diagnosis on SynthCT-VL: CLIP vs BrgSA vs GTGM over several seeds, one markdown table.

Generates SynthCT-VL (default splits: seen / underrepresented / unseen abnormalities), pretrains each
method with its tiny CPU config (``configs/<method>_synth_tiny.yaml``) for every seed, evaluates
zero-shot diagnosis on the ``valid`` split and prints macro AUROC per abnormality group and the modality
gap (before / after the knowledge bank) as mean ± std over seeds.

Besides the three methods, ``clip_summary`` is plain CLIP trained on the same summarised reports as
BrgSA: BrgSA differs from CLIP in two ways (summaries and the knowledge bank), and this row tells them
apart.

    python benchmarks/pretrain_diagnosis.py                     # defaults: ~50 min on 2 CPU cores
    python benchmarks/pretrain_diagnosis.py --steps 60 --seeds 0   # a quick look
    python benchmarks/pretrain_diagnosis.py --evaluate-only --prompts configs/prompts/ct_clip.yaml

Every run folder, each evaluation JSON and ``results.json`` are kept under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Row name -> (config under configs/, extra overrides).
METHODS = {
    "clip": ("clip_synth_tiny.yaml", []),
    "clip_summary": ("clip_synth_tiny.yaml", ["data.text_source=summary"]),
    "brgsa": ("brgsa_synth_tiny.yaml", []),
    "gtgm": ("gtgm_synth_tiny.yaml", []),
}
COLUMNS = (
    ("seen", "AUROC seen"),
    ("underrepresented", "AUROC underrepresented"),
    ("unseen", "AUROC unseen"),
    ("macro", "AUROC all"),
    ("gap_before", "gap"),
    ("gap_after", "gap after bank"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench_pretrain_diagnosis", help="output folder")
    p.add_argument(
        "--data", default=None, help="SynthCT-VL folder (default: OUT/synthct; generated if absent)"
    )
    p.add_argument("--n-train", type=int, default=600)
    p.add_argument("--n-test", type=int, default=150)
    p.add_argument("--size", type=int, default=32, help="cubic volume size (must match the tiny configs)")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=400, help="optimiser steps per run")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples per evaluation")
    p.add_argument("--workers", type=int, default=2, help="processes for data generation")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="extra config overrides")
    p.add_argument(
        "--evaluate-only",
        action="store_true",
        help="re-evaluate the run folders already under --out instead of training (e.g. with --prompts)",
    )
    p.add_argument("--prompts", default=None, help="prompt YAML to score with instead of each checkpoint's")
    return p.parse_args(argv)


def ensure_data(args: argparse.Namespace, out: Path) -> Path:
    """Generate SynthCT-VL once (reused when its splits.json exists)."""
    from medvl3d.data.synth import generate

    data = Path(args.data) if args.data else out / "synthct"
    if (data / "splits.json").is_file():
        return data
    # The tiny configs expect volumes on their 32^3 model grid; keep the default field of view.
    s = args.size
    spacing = (320.0 / s, 352.0 / s, 352.0 / s)
    t0 = time.time()
    generate(
        data,
        n_train=args.n_train,
        n_test=args.n_test,
        size=(s, s, s),
        spacing=spacing,
        seed=args.data_seed,
        workers=args.workers,
    )
    print(f"generated SynthCT-VL in {time.time() - t0:.0f} s -> {data}", file=sys.stderr)
    return data


def _suffix(args: argparse.Namespace) -> str:
    """Output-name suffix: a re-evaluation never overwrites the training run's own results."""
    if not args.evaluate_only:
        return ""
    return "_rescored" if args.prompts is None else f"_rescored_{Path(args.prompts).stem}"


def run_one(method: str, seed: int, data: Path, out: Path, args: argparse.Namespace) -> dict:
    """Train one method/seed and evaluate it; returns the table's numbers."""
    from medvl3d.eval.diagnosis import evaluate_diagnosis
    from medvl3d.train import train

    run_dir = out / f"{method}_seed{seed}"
    config, extra = METHODS[method]
    overrides = [
        *extra,
        f"data.root={data}",
        f"data.batch_size={args.batch_size}",
        f"output={run_dir}",
        f"train.seed={seed}",
        f"train.steps={args.steps}",
        f"train.ckpt_every={args.steps}",
        *args.overrides,
    ]
    t0 = time.time()
    t_train = None
    if args.evaluate_only:
        if not (run_dir / "checkpoints").is_dir():
            raise SystemExit(f"--evaluate-only: {run_dir} has no checkpoints (train it first)")
    else:
        train(REPO / "configs" / config, overrides)
        t_train = time.time() - t0
    report = evaluate_diagnosis(
        run_dir,
        data,
        split="valid",
        bootstrap=args.bootstrap,
        seed=seed,
        progress=False,
        prompts=args.prompts,
    )
    report.to_json(run_dir / f"diagnosis{_suffix(args)}.json")
    res = {
        "method": method,
        "seed": seed,
        "macro": report.macro["auroc"],
        **{g: report.groups.get(g, {}).get("auroc") for g in ("seen", "underrepresented", "unseen")},
        "gap_before": report.modality_gap.get("before_bank"),
        "gap_after": report.modality_gap.get("after_bank"),
        "per_label": {name: m.auroc for name, m in report.per_label.items() if m.auroc is not None},
        "train_s": t_train,
        "total_s": time.time() - t0,
    }
    print(
        f"{method} seed {seed}: macro AUROC {res['macro']:.3f}, "
        + ("" if t_train is None else f"train {t_train:.0f} s, ")
        + f"total {res['total_s']:.0f} s",
        file=sys.stderr,
    )
    return res


def _mean_std(values: list[float | None]) -> str:
    v = [x for x in values if x is not None]
    if not v:
        return "n/a"
    if len(v) == 1:
        return f"{v[0]:.3f}"
    return f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}"


def table(results: list[dict], methods: list[str], seeds: list[int]) -> str:
    """One markdown table: rows = methods, columns = group AUROCs and gaps, mean ± std over seeds."""
    head = "| method | " + " | ".join(title for _, title in COLUMNS) + " |"
    lines = [
        f"Zero-shot diagnosis on SynthCT-VL (valid split), mean ± std over seeds {seeds}",
        "",
        head,
        "|" + "---|" * (len(COLUMNS) + 1),
    ]
    for m in methods:
        rows = [r for r in results if r["method"] == m]
        lines.append(f"| {m} | " + " | ".join(_mean_std([r[key] for r in rows]) for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def label_table(results: list[dict], methods: list[str]) -> str:
    """Per-label AUROC (mean over seeds): which findings each method learned at all."""
    labels = list(dict.fromkeys(name for r in results for name in r["per_label"]))
    lines = ["| abnormality | " + " | ".join(methods) + " |", "|" + "---|" * (len(methods) + 1)]
    for name in labels:
        cells = []
        for m in methods:
            values = [r["per_label"][name] for r in results if r["method"] == m and name in r["per_label"]]
            cells.append(f"{statistics.mean(values):.3f}" if values else "n/a")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    data = ensure_data(args, out)
    results = [run_one(m, s, data, out, args) for s in args.seeds for m in args.methods]
    record = json.dumps({"args": vars(args), "results": results}, indent=2)
    (out / f"results{_suffix(args)}.json").write_text(record, encoding="utf-8")
    print(table(results, args.methods, args.seeds))
    print("\nPer-label AUROC, mean over seeds\n")
    print(label_table(results, args.methods))
    print(f"\n(total {time.time() - t0:.0f} s; per-run JSON under {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
