"""What a supervised lesion-type network (the bounds of `malenia_zero_shot.py`) predicts on whole valid
volumes: foreground voxels, classes, overlap with the lesions and its largest foreground probability.

Usage:
    python benchmarks/supervised_lesion_probe.py --run runs/bench_malenia/runs/supervised_seen_seed1 \
        --data runs/bench_malenia/data [--cases 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    from medvl3d.data.datasets import open_split
    from medvl3d.data.preprocess import preprocess_sample
    from medvl3d.infer import Predictor
    from medvl3d.infer.sliding_window import sliding_window_probabilities

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a supervised run or checkpoint")
    ap.add_argument("--data", type=Path, required=True, help="the SynthCT-VL folder (its valid split)")
    ap.add_argument("--cases", type=int, default=3, help="valid cases with lesions to probe")
    args = ap.parse_args()
    predictor = Predictor.from_checkpoint(args.run)
    dataset = open_split(args.data, "valid")
    done = 0
    for i in range(len(dataset)):
        if done >= args.cases:
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
        top = float(probs[1:].max())
        print(
            f"{sample['meta'].get('case_id', i)} ({', '.join(names)}): {int(fg.sum())} foreground voxels "
            f"predicted (classes {np.unique(classes[fg]).tolist()}), {int(lesions.sum())} lesion voxels, "
            f"{int((fg & lesions).sum())} in both; largest foreground probability {top:.2g}"
        )
        done += 1


if __name__ == "__main__":
    main()
