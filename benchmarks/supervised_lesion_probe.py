"""What a supervised lesion-type network (the bounds of `malenia_zero_shot.py`) predicts on whole valid
volumes: foreground voxels, classes, overlap with the lesions and its largest foreground probability.

Usage:
    python benchmarks/supervised_lesion_probe.py --run runs/bench_malenia/runs/supervised_seen_seed1 \
        --data runs/bench_malenia/data [--cases 3] [-o probe.json]

Printed, and with `-o` written as JSON (commit, command, per case numbers).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from medvl3d.atomic import atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_record import git_commit  # noqa: E402


def main() -> None:
    from medvl3d.data.datasets import open_split
    from medvl3d.data.preprocess import preprocess_sample
    from medvl3d.infer import Predictor
    from medvl3d.infer.sliding_window import sliding_window_probabilities

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a supervised run or checkpoint")
    ap.add_argument("--data", type=Path, required=True, help="the SynthCT-VL folder (its valid split)")
    ap.add_argument("--cases", type=int, default=3, help="valid cases with lesions to probe")
    ap.add_argument("-o", "--out", type=Path, default=None, help="JSON record (default: print only)")
    args = ap.parse_args()
    commit = git_commit()
    predictor = Predictor.from_checkpoint(args.run)
    dataset = open_split(args.data, "valid")
    rows: list[dict] = []
    for i in range(len(dataset)):
        if len(rows) >= args.cases:
            break
        sample = dataset[i]
        if not sample.get("lesions"):
            continue
        prepared = preprocess_sample(sample, predictor.spec)
        lesions = torch.as_tensor(prepared["label"])[0].numpy() > 0
        probs = sliding_window_probabilities(
            predictor.model, prepared["image"], predictor.window, predictor.device
        )
        classes = probs.argmax(0).numpy()
        fg = classes > 0
        names = sorted({les["type"] for les in sample["lesions"].values()})
        row = {
            "case": sample["meta"].get("case_id", i), "types": names,
            "predicted_voxels": int(fg.sum()), "classes": np.unique(classes[fg]).tolist(),
            "lesion_voxels": int(lesions.sum()), "both": int((fg & lesions).sum()),
            "max_foreground_probability": float(probs[1:].max()),
        }  # fmt: skip
        print(
            f"{row['case']} ({', '.join(names)}): {row['predicted_voxels']} foreground voxels predicted "
            f"(classes {row['classes']}), {row['lesion_voxels']} lesion voxels, {row['both']} in both; "
            f"largest foreground probability {row['max_foreground_probability']:.2g}"
        )
        rows.append(row)
    if args.out:
        record = {
            "benchmark": "supervised_lesion_probe", "commit": commit,
            "command": " ".join(["benchmarks/supervised_lesion_probe.py", *sys.argv[1:]]),
            "run": str(args.run), "cases": rows,
        }  # fmt: skip
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
