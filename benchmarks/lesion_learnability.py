"""Can a supervised network learn SynthCT-VL's lesions at 2 mm on 2 CPU cores, and from how many cases?

The calibration under Malenia's zero-shot table (issue 11): before asking which lesion type a model can
segment from its attributes, check that a plain MONAI UNet trained on every lesion (one foreground class,
`dataset_lesions.json`) finds lesions in held-out whole volumes. Generates SynthCT-VL whole-body volumes
(`--n-train`, 2.5 x 2 x 2 mm), trains on 48^3 patches at 2 mm (soft-tissue window) that hold a lesion
voxel in 70% of the draws, anywhere in their central 3/4 (`--centre-jitter 0`: on it, the fault of the
first runs, `lesion_learnability_n120_s2000.json`), then
scores Dice on whole volumes of the train and valid splits, as they come and restricted to the
lesion-bearing organs of the reference organ map (an oracle gate: it tells false positives outside the
organs apart from missed lesions). One JSON per run under `benchmarks/results/malenia/`.

    python benchmarks/lesion_learnability.py --n-train 16 --steps 2000          # ~40 min on 2 busy cores
    python benchmarks/lesion_learnability.py --n-train 120 --steps 2000 --tag n120
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_record import git_commit  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "malenia"
LESION_ORGANS = (1, 2, 3, 4, 5, 6, 7, 10)  # SynthCT-VL organ ids that carry lesions


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/lesion_learnability", help="work folder (data, cache, runs)")
    p.add_argument("--n-train", type=int, default=16)
    p.add_argument("--n-test", type=int, default=4)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-cases", type=int, default=4, help="cases scored per split")
    p.add_argument(
        "--centre-jitter", type=float, default=0.375, help="task.params.centre_jitter (0: centred patches)"
    )
    p.add_argument("--tag", default=None, help="result file suffix (default n<n-train>_s<steps>)")
    return p.parse_args(argv)


def dice(pred, truth) -> float:
    return 2 * float((pred & truth).sum()) / max(1, int(pred.sum()) + int(truth.sum()))


def score(run: Path, data: Path, split: str, n: int) -> list[dict]:
    """Whole-volume Dice of the run's lesion masks on the first `n` cases of `split`, as predicted and
    within the (dilated) lesion-bearing organs of the reference organ map."""
    import nibabel as nib
    import numpy as np
    from scipy import ndimage

    from medvl3d.data.datasets import MSDDataset
    from medvl3d.infer import Predictor

    predictor = Predictor.from_checkpoint(run, device="cpu")
    rows = []
    for sample in list(MSDDataset(data / "dataset_lesions.json", split=split))[:n]:
        pred = predictor.set_volume(sample["meta"]["path"]).segment().mask > 0
        truth = np.asarray(nib.load(sample["meta"]["label_path"]).dataobj) > 0
        organs = np.asarray(nib.load(sample["meta"]["path"].replace(".nii.gz", "_organs.nii.gz")).dataobj)
        gate = ndimage.binary_dilation(np.isin(organs, LESION_ORGANS), iterations=2)
        rows.append(
            {
                "case": sample["meta"]["case_id"],
                "truth_voxels": int(truth.sum()),
                "predicted_voxels": int(pred.sum()),
                "dice": dice(pred, truth) if truth.any() else None,
                "dice_in_lesion_organs": dice(pred & gate, truth) if truth.any() else None,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    import statistics

    import torch
    from malenia_zero_shot import supervised_lesion_overrides  # the same settings as the table's bounds

    from medvl3d.atomic import atomic_write_text
    from medvl3d.data.synth import generate
    from medvl3d.train.finetune import finetune

    args = parse_args(argv)
    # The commit the run starts from: one made while it trains is not its code.
    commit = git_commit()
    torch.set_num_threads(1)
    out = Path(args.out)
    data = out / f"data_n{args.n_train}"
    if not (data / "dataset_lesions.json").is_file():
        generate(data, n_train=args.n_train, n_test=args.n_test, size=(128, 176, 176),
                 spacing=(2.5, 2.0, 2.0), seed=0, workers=1, progress=False)  # fmt: skip
    tag = args.tag or f"n{args.n_train}_s{args.steps}"
    overrides = supervised_lesion_overrides(args.steps, args.seed, out / "cache" / data.name)
    overrides.append(f"task.params.centre_jitter={args.centre_jitter}")
    t0 = time.time()
    run = finetune(
        config=REPO / "configs" / "seg_synth_tiny.yaml",
        from_scratch=True,
        data=data / "dataset_lesions.json",
        out=out / f"unet_{tag}",
        overrides=overrides,
    )
    train_s = time.time() - t0
    scores = {split: score(run, data, split, args.eval_cases) for split in ("train", "valid")}
    summary = {
        split: {
            key: statistics.fmean([r[key] for r in rows if r[key] is not None] or [0.0])
            for key in ("dice", "dice_in_lesion_organs")
        }
        for split, rows in scores.items()
    }
    record = {
        "benchmark": "lesion_learnability",
        "commit": commit.strip(),
        "command": " ".join(
            ["benchmarks/lesion_learnability.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "seed": args.seed,
        "data": f"generate(n_train={args.n_train}, n_test={args.n_test}, size=(128,176,176), "
        "spacing=(2.5,2.0,2.0), seed=0)",
        "model": "monai_unet, every lesion as one class, 48^3 patches at 2 mm, fg_fraction 0.7, batch 2, "
        f"centre_jitter {args.centre_jitter}",
        "steps": args.steps,
        "train_seconds": round(train_s, 1),
        "summary": summary,
        "cases": scores,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"lesion_learnability_{tag}.json"
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    print(json.dumps(summary), "->", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
