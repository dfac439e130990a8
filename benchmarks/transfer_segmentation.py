"""Transfer of pretrained encoders to organ segmentation (GTGM's protocol) on SynthCT-VL, one table.

1. Pretrains the tiny CPU image tower (`cpu_resenc_clip`) with CLIP, BrgSA and GTGM as their authors
   built them (GTGM on text generated from each volume, no reports) and with our first BrgSA and GTGM
   (`brgsa_v1`, `gtgm_v1`: `first_version_overrides`), on a SynthCT-VL pretraining set (data seed 0, the
   zero-shot benchmark's draw), once per method.
2. Fine-tunes on a *separate* labelled SynthCT-VL draw (data seed 1, organ label maps, MSD layout) with
   1%, 10% and 100% of the training labels, for several seeds, the same segmentation network from
   scratch, from each pretrained encoder, and MONAI's UNet and SwinUNETR from scratch, all with the same
   steps, batch, patch and optimiser.
3. Scores each run on the held-out split (Dice and NSD per organ, averaged per organ group) and writes
   one JSON per run under `benchmarks/results/transfer/`, then the mean ± std table over seeds.

    python benchmarks/transfer_segmentation.py                        # ~5 h on one core
    python benchmarks/transfer_segmentation.py --seeds 1 2 --models scratch unet   # a share of it
    python benchmarks/transfer_segmentation.py --models gtgm --fractions 0.01      # one row at 1% labels
    python benchmarks/transfer_segmentation.py --table-only           # the table from saved JSONs

Both datasets are 32^3 volumes at ~1 cm (the grid the tiny pretrained towers were trained on).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from medvl3d.train.tasks.vl import first_version_overrides

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_record import git_commit  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "transfer"
# Pretraining -> (config under configs/, overrides): each method as its authors built it (the defaults),
# and `_v1`, our first versions of BrgSA and GTGM (GTGM on the paired reports; issue 13).
PRETRAIN = {
    "clip": ("clip_synth_tiny.yaml", []),
    "brgsa": ("brgsa_synth_tiny.yaml", []),
    "gtgm": ("gtgm_synth_tiny.yaml", []),
    "brgsa_v1": ("brgsa_synth_tiny.yaml", first_version_overrides("brgsa")),
    "gtgm_v1": ("gtgm_synth_tiny.yaml", first_version_overrides("gtgm")),
}
# Row -> (registered model, model overrides, pretraining or None)
MODELS = {
    "scratch": ("cpu_resenc_seg", {}, None),
    "clip": ("cpu_resenc_seg", {}, "clip"),
    "brgsa": ("cpu_resenc_seg", {}, "brgsa"),
    "gtgm": ("cpu_resenc_seg", {}, "gtgm"),
    "brgsa_v1": ("cpu_resenc_seg", {}, "brgsa_v1"),
    "gtgm_v1": ("cpu_resenc_seg", {}, "gtgm_v1"),
    "unet": ("monai_unet", {}, None),
    # Batch norm: at 32^3 SwinUNETR's deepest map is a single voxel, which instance norm cannot train on.
    "swinunetr": ("monai_swinunetr", {"net": {"norm": "batch"}}, None),
}
GROUPS = {
    "solid organs": ("liver", "spleen", "kidney_right", "kidney_left", "pancreas"),
    "thorax": ("lung_right", "lung_left", "heart", "aorta"),
    "bowel": ("stomach", "colon"),
    "body wall + bone": ("vertebrae", "ribs", "skeletal_muscle", "subcutaneous_fat"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench_transfer", help="work folder (data, runs)")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--n-train", type=int, default=200, help="labelled training cases at 100%%")
    p.add_argument("--n-valid", type=int, default=40)
    # 400 steps: at 200 (lr 5e-3) or 100 (2e-3) the small organs had not been learned yet (mean Dice 0.30
    # and 0.24 at 100% labels, against 0.80 at 400; measured while sizing this benchmark).
    p.add_argument("--steps", type=int, default=400, help="fine-tuning steps (every model and fraction)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=5e-3, help="AdamW learning rate (every model)")
    p.add_argument("--pretrain-steps", type=int, default=400)
    p.add_argument("--nsd-tolerance", type=float, default=11.0, help="mm (one voxel of the 32^3 grid)")
    p.add_argument("--table-only", action="store_true", help="print the table from the saved JSONs")
    p.add_argument("--redo", action="store_true", help="rerun cells whose result JSON already exists")
    p.add_argument(
        "--prepare-only",
        action="store_true",
        help="generate both data sets and pretrain the encoders, then stop (run this before parallel shares)",
    )
    return p.parse_args(argv)


def _generate(path: Path, n_train: int, n_test: int, seed: int) -> Path:
    from medvl3d.data.synth import generate

    if not (path / "splits.json").is_file():
        generate(
            path,
            n_train=n_train,
            n_test=n_test,
            size=(32, 32, 32),
            spacing=(10.0, 11.0, 11.0),
            seed=seed,
            workers=1,
            progress=False,
        )
    return path


def pretrain(method: str, out: Path, steps: int) -> Path:
    """One pretraining run per `PRETRAIN` entry (seed 0) on the zero-shot benchmark's draw; an earlier
    run under `out` is reused (resumed when shorter) when its settings agree, refused when not."""
    from medvl3d.config import config_to_dict, load_config
    from medvl3d.models.checkpoint import latest_checkpoint
    from medvl3d.train import train

    run = out / f"pretrain_{method}"
    data = out / "pretrain_data"
    config, extra = PRETRAIN[method]
    sets = [*extra, f"data.root={data}", f"train.steps={steps}", "train.progress=false", f"output={run}"]
    done = latest_checkpoint(run / "checkpoints") if (run / "checkpoints").is_dir() else None
    if done is not None:
        info = json.loads((done / "config.json").read_text())
        want, have = config_to_dict(load_config(REPO / "configs" / config, sets)), info["train"]
        # A setting given both then and now must agree (one left out then was that day's default: the
        # first-version runs were trained when their settings were the defaults).
        pairs = [("model", "overrides"), ("task", "params"), ("optim", None)]
        differs = [
            f"{sec}.{name}"
            for sec, key in pairs
            for name, value in (want[sec][key] if key else want[sec]).items()
            if name in (have[sec][key] if key else have[sec])
            and (have[sec][key] if key else have[sec])[name] != value
        ]
        differs += [f"{sec}.name" for sec in ("model", "task") if have[sec]["name"] != want[sec]["name"]]
        if differs:
            raise SystemExit(
                f"{run}: an earlier pretraining run whose {', '.join(differs)} differ from {config} "
                f"{' '.join(extra)}; move it away or use another --out"
            )
        if info["step"] >= steps:
            return run  # trained earlier with these settings
    _generate(data, 600, 150, seed=0)
    return train(REPO / "configs" / config, sets)


def finetune_data(args: argparse.Namespace, out: Path) -> Path:
    """The labelled fine-tuning draw (data seed 1), separate from the pretraining volumes."""
    return _generate(out / "finetune_data", args.n_train, args.n_valid, seed=1)


def finetune_one(row: str, fraction: float, seed: int, args: argparse.Namespace, out: Path) -> dict:
    """Fine-tune and evaluate one cell; the record is also written to benchmarks/results/transfer/."""
    from medvl3d.eval.segmentation import evaluate_segmentation
    from medvl3d.train.finetune import finetune

    model, overrides, method = MODELS[row]
    data = finetune_data(args, out)
    encoder = pretrain(method, out, args.pretrain_steps) if method else None
    run = out / f"{row}_f{fraction:g}_s{seed}"
    sets = [
        f"model.name={model}",
        f"model.overrides={json.dumps(overrides)}",
        f"train.steps={args.steps}",
        f"train.seed={seed}",
        f"data.label_seed={seed}",
        f"data.batch_size={args.batch_size}",
        f"optim.lr={args.lr}",
        "task.params.centre_jitter=0.0",  # the table was measured with centred patches
        "train.progress=false",
        "train.ckpt_every=0",
    ]
    t0 = time.time()
    run = finetune(
        checkpoint=encoder,
        from_scratch=encoder is None,
        label_fraction=fraction,
        data=data,
        out=run,
        overrides=sets,
    )
    seconds = time.time() - t0
    report = evaluate_segmentation(run, data, nsd_tolerance_mm=args.nsd_tolerance, progress=False)
    organs = {n: {m: report.summary[n][m]["mean"] for m in ("dice", "nsd")} for n in report.classes.values()}
    record = {
        "benchmark": "transfer_segmentation",
        "commit": git_commit(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "row": row,
        "model": model,
        "pretrained": method,
        "label_fraction": fraction,
        "n_train_cases": max(1, round(fraction * args.n_train)),
        "seed": seed,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "train_seconds": round(seconds, 1),
        "nsd_tolerance_mm": args.nsd_tolerance,
        "organs": organs,
        "groups": {g: _group_mean(organs, names) for g, names in GROUPS.items()},
        "mean": {m: report.summary["mean"][m]["mean"] for m in ("dice", "nsd")},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{row}_f{fraction:g}_s{seed}.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _group_mean(organs: dict, names: tuple[str, ...]) -> dict:
    return {
        m: statistics.fmean(organs[n][m] for n in names if organs[n][m] is not None) for m in ("dice", "nsd")
    }


def table(records: list[dict]) -> str:
    """One table per label fraction: rows = model, columns = Dice / NSD per organ group and over all
    organs, mean ± std over seeds (n = seeds measured)."""
    out = []
    for f in sorted({r["label_fraction"] for r in records}):
        cases = {r["n_train_cases"] for r in records if r["label_fraction"] == f}
        out.append(f"**{f:.0%} of the labels** ({'/'.join(map(str, sorted(cases)))} training cases)\n")
        head = ["model", *GROUPS, "all organs", "n"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in MODELS:
            runs = [r for r in records if r["row"] == row and r["label_fraction"] == f]
            if not runs:
                continue
            cells = [row]
            for g in (*GROUPS, None):
                pick = (lambda r, m: r["mean"][m]) if g is None else (lambda r, m, g=g: r["groups"][g][m])
                cells.append(" / ".join(_fmt([pick(r, m) for r in runs]) for m in ("dice", "nsd")))
            cells.append(str(len(runs)))
            lines.append("| " + " | ".join(cells) + " |")
        out.append("\n".join(lines) + "\n")
    return "\n".join(out)


def _fmt(vals: list[float]) -> str:
    sd = statistics.pstdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.fmean(vals):.2f}±{sd:.2f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if not args.table_only:
        import torch

        torch.set_num_threads(1)  # one run per core: two processes fill a 2-core machine
        finetune_data(args, out)
        for method in sorted({MODELS[r][2] for r in args.models} - {None}):
            pretrain(method, out, args.pretrain_steps)
        if args.prepare_only:
            return 0
        for seed in args.seeds:
            for fraction in args.fractions:
                for row in args.models:
                    if not args.redo and (RESULTS / f"{row}_f{fraction:g}_s{seed}.json").is_file():
                        continue  # a cell measured earlier (the table is assembled across sessions)
                    rec = finetune_one(row, fraction, seed, args, out)
                    print(f"{row} f={fraction:g} s={seed}: Dice {rec['mean']['dice']:.3f}", flush=True)
    records = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
