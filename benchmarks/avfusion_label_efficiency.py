"""Label efficiency of language-guided artery/vein segmentation (DESIGN.md C) on SynthCT-VL lung crops.

1. Generates lung crops (field of view centred on the lungs and hila, `--spacing` mm) with artery/vein
   label maps (SynthCT-VL's vessel maps; the airways become background: `dataset_av.json`).
2. Trains, with 1, 5 and 20 labelled volumes and several seeds, all with the same steps, batch, patch and
   optimiser:
   - `fusion`: `cpu_avfusion` (frozen pretrained tower + adapters + text fusion),
   - `queries`: the same with learned class queries instead of text (no language),
   - `full_finetune`: the same text fusion with the encoder fine-tuned fully, no adapters,
   - `unet`, `swinunetr`: MONAI's networks from scratch (the `segmentation` task);
   and, at one budget, the fusion model on encoders pretrained with CLIP, BrgSA and GTGM, and random.
3. Scores each run on the held-out crops (Dice, clDice, A/V confusion; `medvl3d.eval.vessel_metrics`)
   and on the real CT angiogram of `shared/data/real/totalseg/pulmonary/` (artery Dice against its
   `pulmonary_artery` label, plus an overlay PNG for the fusion rows), writes one JSON per run under
   `benchmarks/results/avfusion/`, then the mean ± std tables.

    # the full table on 2 cores: two processes, one per core, each running its share of the cells
    python benchmarks/avfusion_label_efficiency.py --encoders runs/bench_transfer --shard 0/2 &
    python benchmarks/avfusion_label_efficiency.py --encoders runs/bench_transfer --shard 1/2
    python benchmarks/avfusion_label_efficiency.py --rows fusion queries --budgets 1 --seeds 0
    python benchmarks/avfusion_label_efficiency.py --table-only
    # a smoke run of every path in a minute (results kept out of benchmarks/results):
    python benchmarks/avfusion_label_efficiency.py --smoke --out /tmp/av_smoke

Cost (one thread per process, batch 2, 64^3 patches; `benchmarks/bench_avfusion_step.py`,
`benchmarks/results/avfusion/step_time_cpu1.json`, on a shared 2-core machine): a training step takes about
0.85-1.1 s for the avfusion rows (1.4-1.8x MONAI's UNet), 0.6 s for the UNet and 12.5 s for SwinUNETR
(20x the UNet: its full-resolution convolutions), plus about 0.2 s of reading, preprocessing and patch
sampling per batch. With the defaults (200 steps; 3 seeds, SwinUNETR 1 seed: 48 runs) that is
36 x 200 x 1.1 s + 9 x 200 x 0.8 s + 3 x 200 x 12.7 s = 4.7 h of one core, plus about half a minute of
scoring per run: about 2.5 hours with `--shard 0/2` and `--shard 1/2` side by side (the shards split the
cells by that cost), up to about 4 hours on a busier machine (an earlier measurement there was 1.7x
slower). 300 steps cost 1.5x that; SwinUNETR at 3 seeds adds 2 x 2.1 h of one core.

Encoders: `--encoders DIR` holds `pretrain_{clip,brgsa,gtgm}` runs of the `cpu_resenc_clip` tower (those of
`benchmarks/transfer_segmentation.py`); without them the pretrained rows are skipped with a note. The
table in the README used the BrgSA and GTGM towers of our first versions, now `pretrain_brgsa_v1` and
`pretrain_gtgm_v1` there (`--encoders` is read as `pretrain_<method>`: point it at a folder whose
`pretrain_brgsa` / `pretrain_gtgm` are those runs to repeat them).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_record import git_commit  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "avfusion"
#: A real CT pulmonary angiogram crop (1.5 mm, LPS) whose only vessel label is the pulmonary artery.
REAL = REPO.parent / "shared" / "data" / "real" / "totalseg" / "pulmonary"
CLASSES = ("pulmonary_artery", "pulmonary_vein")
# Row -> (registered model, task, model overrides, encoder: a pretraining method, None = random init)
ROWS = {
    "fusion": ("cpu_avfusion", "avfusion", {}, "brgsa"),
    "queries": ("cpu_avfusion_queries", "avfusion", {}, "brgsa"),
    "full_finetune": ("cpu_avfusion_full_finetune", "avfusion", {}, "brgsa"),
    "unet": ("monai_unet", "segmentation", {}, None),
    # Batch norm: at 32^3 (the smoke run) SwinUNETR's deepest map is one voxel; instance norm cannot use it.
    "swinunetr": ("monai_swinunetr", "segmentation", {"net": {"norm": "batch"}}, None),
    "fusion_clip": ("cpu_avfusion", "avfusion", {}, "clip"),
    "fusion_gtgm": ("cpu_avfusion", "avfusion", {}, "gtgm"),
    "fusion_random": ("cpu_avfusion", "avfusion", {}, None),
}
MAIN_ROWS = ("fusion", "queries", "full_finetune", "unet", "swinunetr")
#: Relative cost of a training step, for splitting cells between `--shard`s (bench_avfusion_step.py).
STEP_COST = {"unet": 0.8, "swinunetr": 12.7}  # seconds with the data path; the avfusion rows: 1.1
PRETRAIN_ROWS = ("fusion_clip", "fusion", "fusion_gtgm", "fusion_random")


def _triple(text: str) -> tuple[int, int, int]:
    vals = tuple(int(v) for v in text.lower().replace("x", ",").split(",") if v.strip())
    if len(vals) != 3:
        raise argparse.ArgumentTypeError(f"expected three integers like 64x96x128, got {text!r}")
    return vals  # type: ignore[return-value]


def _shard(text: str) -> tuple[int, int]:
    index, sep, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = -1, 0
    if not sep or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, like 0/2, got {text!r}")
    return i, n


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench_avfusion", help="work folder (data, runs)")
    p.add_argument("--results", default=str(RESULTS), help="folder of the per-run JSON records")
    p.add_argument("--encoders", default="runs/bench_transfer", help="folder of pretrain_<method> runs")
    p.add_argument("--budgets", type=int, nargs="+", default=[1, 5, 20], help="labelled training volumes")
    p.add_argument("--pretrain-budget", type=int, default=5, help="budget of the which-pretraining rows")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--swinunetr-seeds",
        type=int,
        nargs="+",
        default=[0],
        help="seeds of the swinunetr row (a step costs ~12x the others': one seed by default)",
    )
    p.add_argument("--shard", type=_shard, default=(0, 1), help="I/N: run share I of N (e.g. 0/2, 1/2)")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--n-valid", type=int, default=4)
    p.add_argument("--size", type=_triple, default=(64, 96, 128), help="crop DxHxW voxels (z, y, x)")
    p.add_argument("--spacing", type=float, default=1.5, help="isotropic voxel size in mm (<= 1.5)")
    p.add_argument("--patch", type=int, default=64, help="training patch edge (SwinUNETR: a multiple of 32)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--redo", action="store_true", help="rerun cells whose JSON already exists")
    p.add_argument("--smoke", action="store_true", help="a few steps on tiny crops, every row, one seed")
    args = p.parse_args(argv)
    if args.smoke:
        args.budgets, args.seeds, args.swinunetr_seeds, args.n_valid = [1], [0], [0], 1
        args.size, args.patch, args.steps, args.pretrain_budget = (32, 48, 64), 32, 3, 1
        if args.results == str(RESULTS):
            args.results = str(Path(args.out) / "results")
    return args


def prepare_data(args: argparse.Namespace) -> Path:
    """Lung crops (data seed 2) and `dataset_av.json`: the vessel maps with the airways as background."""
    import nibabel as nib
    import numpy as np

    from medvl3d.data.synth import generate
    from medvl3d.data.synth.generator import LUNG_CENTRE

    root = Path(args.out) / "data"
    target = root / "dataset_av.json"
    if args.shard[0] != 0:  # shard 0 writes the data; the others wait for it
        while not target.is_file():
            print(f"shard {args.shard[0]}: waiting for shard 0 to write {target}", file=sys.stderr)
            time.sleep(30)
    if target.is_file():
        return target
    n_train = max(args.budgets + [args.pretrain_budget])
    generate(
        root,
        n_train=n_train,
        n_test=args.n_valid,
        size=args.size,
        spacing=(args.spacing,) * 3,
        centre=LUNG_CENTRE,
        seed=2,
        workers=1,
        progress=False,
    )
    info = json.loads((root / "dataset_vessels.json").read_text(encoding="utf-8"))
    for entry in info["training"]:
        src = root / entry["label"]
        dst = src.with_name(src.name.replace("_vessels.nii.gz", "_av.nii.gz"))
        img = nib.load(src)
        lab = np.asarray(img.dataobj).astype(np.uint8)
        lab[lab > len(CLASSES)] = 0  # airway (3) -> background
        nib.save(nib.Nifti1Image(lab, img.affine, img.header), dst)
        entry["label"] = "./" + str(dst.relative_to(root))
    info["labels"] = {"0": "background", **{str(i): c for i, c in enumerate(CLASSES, start=1)}}
    partial = target.with_suffix(".json.partial")
    partial.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    partial.replace(target)  # atomic: a waiting shard never reads half a file
    return target


@functools.cache
def _commit() -> str:
    """The commit the run started from (`main` asks first: commits made while it trains are not its code)."""
    return git_commit()


def _encoder(method: str | None, args: argparse.Namespace) -> Path | None:
    if method is None:
        return None
    run = Path(args.encoders) / f"pretrain_{method}"
    return run if (run / "checkpoints" / "last").is_file() else None


def train_one(row: str, budget: int, seed: int, args: argparse.Namespace, data: Path) -> dict | None:
    """Train and score one cell; its record is written to `--results`."""
    from medvl3d.train.finetune import finetune

    model, task, overrides, method = ROWS[row]
    encoder = _encoder(method, args)
    if method is not None and encoder is None:
        print(f"{row}: no {args.encoders}/pretrain_{method} run; skipped", file=sys.stderr)
        return None
    n_train = max(args.budgets + [args.pretrain_budget])
    patch = [args.patch] * 3
    # centre_jitter 0: the table was measured with patches centred on a vessel voxel (vessels cross the
    # whole patch, so centring them teaches no position; small lesions are another matter).
    params = {
        "patch_size": patch,
        "overlap": 0.25,
        "pad_to_patch": True,
        "fg_fraction": 0.8,
        "centre_jitter": 0.0,
    }
    sets = [
        "data.format=msd",
        f"data.preprocess.spacing={json.dumps([args.spacing] * 3)}",
        "data.preprocess.intensity.ct_window=[-1000.0, 600.0]",
        f"model.name={model}",
        f"model.overrides={json.dumps(overrides)}",
        f"task.name={task}",
        f"task.params={json.dumps(params)}",
        f"train.steps={args.steps}",
        f"train.seed={seed}",
        f"data.label_seed={seed}",
        f"data.batch_size={args.batch_size}",
        f"optim.lr={args.lr}",
        "optim.warmup_steps=10",
        "train.progress=false",
        "train.ckpt_every=0",
    ]
    t0 = time.time()
    run = finetune(
        checkpoint=encoder,
        from_scratch=encoder is None,
        label_fraction=budget / n_train,
        data=data,
        out=Path(args.out) / f"{row}_n{budget}_s{seed}",
        overrides=sets,
    )
    seconds = time.time() - t0
    png = Path(args.results) / f"real_overlay_{row}_n{budget}_s{seed}.png" if task == "avfusion" else None
    scores = score(run, data, png)
    record = {
        "benchmark": "avfusion_label_efficiency",
        "commit": _commit(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "row": row,
        "model": model,
        "encoder": method,
        "labelled_volumes": budget,
        "seed": seed,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "patch": patch,
        "spacing_mm": args.spacing,
        "crop": list(args.size),
        "train_seconds": round(seconds, 1),
        **scores,
    }
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{row}_n{budget}_s{seed}.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def score(run: Path, data: Path, png: Path | None = None) -> dict:
    """Vessel metrics of a run on the valid crops (on their own grid) and on the real CT angiogram, with
    its parameter counts; `png`: where to write the real case's overlay."""
    import nibabel as nib
    import numpy as np

    from medvl3d.data.datasets import MSDDataset
    from medvl3d.eval.vessel_metrics import summarise_vessels, vessel_metrics
    from medvl3d.infer import Predictor

    predictor = Predictor.from_checkpoint(run, device="cpu")
    per_case = []
    for sample in MSDDataset(data, split="valid"):
        volume = sample["meta"]["path"]
        result = predictor.set_volume(volume).segment(targets=", ".join(CLASSES))
        ids = {n: i for i, n in result.label_names.items()}
        pred = np.zeros(result.mask.shape, np.uint8)
        for k, name in enumerate(CLASSES, start=1):
            pred[result.mask == ids[name]] = k
        truth = np.asarray(nib.load(sample["meta"]["label_path"]).dataobj).astype(np.uint8)
        spacing = result.volume.spacing
        per_case.append(vessel_metrics(pred, truth, spacing, CLASSES, hd95=False))
    info = predictor.info
    return {
        "metrics": summarise_vessels(per_case),
        "real_pulmonary_artery_dice": score_real(predictor, png),
        "n_valid": len(per_case),
        "parameters": info.get("parameters"),
        "modality_weights": info.get("modality_weights"),
    }


def score_real(predictor, png: Path | None) -> float | None:
    """Artery Dice on the real CT angiogram (None when absent), and its overlay PNG when `png` is given."""
    import numpy as np

    from medvl3d.data.io import read_volume

    if not (REAL / "ct_cropped.nii.gz").is_file():
        return None
    result = predictor.set_volume(REAL / "ct_cropped.nii.gz").segment(targets=", ".join(CLASSES))
    ids = {n: i for i, n in result.label_names.items()}
    truth = read_volume(REAL / "pulmonary_artery.nii.gz").array > 0
    pred = result.mask == ids[CLASSES[0]]
    dice = 2 * float((pred & truth).sum()) / max(int(pred.sum()) + int(truth.sum()), 1)
    if png is not None:
        from medvl3d.viz.slices import orthogonal_views

        centre = tuple(int(v) for v in np.argwhere(truth).mean(0))
        title = f"real CTPA: predicted artery / vein (artery Dice {dice:.3f} vs pulmonary_artery)"
        png.parent.mkdir(parents=True, exist_ok=True)
        png.write_bytes(orthogonal_views(result.volume, centre, result.mask, result.label_names, title=title))
    return dice


def _fmt(vals: list[float | None]) -> str:
    v = [x for x in vals if x is not None]
    if not v:
        return "n/a"
    if len(v) == 1:  # one seed: no spread to show (a "±0.000" would claim one)
        return f"{v[0]:.3f}"
    return f"{statistics.fmean(v):.3f}±{statistics.pstdev(v):.3f}"


def table(records: list[dict], rows: tuple[str, ...], budgets: list[int]) -> str:
    """Rows = models, columns per budget: Dice / clDice / A/V confusion on the synthetic valid crops and
    artery Dice on the real CT angiogram (mean ± std over seeds, n = seeds)."""
    head = ["model"] + [f"{b} vol: Dice / clDice / A-V conf. / real artery Dice (n)" for b in budgets]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row]
        for b in budgets:
            runs = [r for r in records if r["row"] == row and r["labelled_volumes"] == b]
            if not runs:
                cells.append("-")
                continue
            m = [r["metrics"] for r in runs]
            parts = [_fmt([x[k] for x in m]) for k in ("dice", "cldice", "av_confusion")]
            parts.append(_fmt([r.get("real_pulmonary_artery_dice") for r in runs]))
            cells.append(" / ".join(parts) + f" ({len(runs)})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def class_table(records: list[dict], rows: tuple[str, ...], budgets: list[int]) -> str:
    """Per class: artery Dice / vein Dice (mean ± std over seeds): whether a model tells the two apart or
    calls every vessel one class."""
    head = ["model"] + [f"{b} vol: artery / vein Dice" for b in budgets]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row]
        for b in budgets:
            m = [r["metrics"] for r in records if r["row"] == row and r["labelled_volumes"] == b]
            cells.append(" / ".join(_fmt([x[f"dice_{c}"] for x in m]) for c in CLASSES) if m else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plan(args: argparse.Namespace) -> list[tuple[str, int, int]]:
    """The (row, budget, seed) cells this `--shard` runs: all cells, dealt longest first to the shard
    with the least estimated work so far, so parallel shards finish together."""
    cells = [(r, b) for r in args.rows if r in MAIN_ROWS for b in args.budgets]
    cells += [(r, args.pretrain_budget) for r in args.rows if r in PRETRAIN_ROWS and r != "fusion"]
    if "fusion" in args.rows and args.pretrain_budget not in args.budgets:
        cells.append(("fusion", args.pretrain_budget))
    runs = [
        (row, budget, seed)
        for seed in sorted(set(args.seeds) | set(args.swinunetr_seeds))
        for row, budget in cells
        if seed in (args.swinunetr_seeds if row == "swinunetr" else args.seeds)
    ]
    index, count = args.shard
    load = [0.0] * count
    mine = []
    for run in sorted(runs, key=lambda r: -STEP_COST.get(r[0], 1.1)):  # stable: keeps the seed order
        k = load.index(min(load))
        load[k] += STEP_COST.get(run[0], 1.1)
        if k == index:
            mine.append(run)
    return sorted(mine, key=runs.index)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = Path(args.results)
    if not args.table_only:
        import torch

        _commit()
        torch.set_num_threads(1)
        data = prepare_data(args)
        for row, budget, seed in plan(args):
            if not args.redo and (results / f"{row}_n{budget}_s{seed}.json").is_file():
                continue
            rec = train_one(row, budget, seed, args, data)
            if rec is not None:
                m = rec["metrics"]
                print(f"{row} n={budget} s={seed}: Dice {m['dice']} clDice {m['cldice']}", flush=True)
    records = [json.loads(p.read_text()) for p in sorted(results.glob("*.json"))]
    records = [r for r in records if r.get("benchmark") == "avfusion_label_efficiency"]  # not step timings
    print("**Label efficiency**\n")
    print(table(records, MAIN_ROWS, sorted({b for b in args.budgets})))
    print("**Per class** (valid crops)\n")
    print(class_table(records, MAIN_ROWS, sorted({b for b in args.budgets})))
    print(f"**Which pretraining helps** ({args.pretrain_budget} labelled volumes)\n")
    print(table(records, PRETRAIN_ROWS, [args.pretrain_budget]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
