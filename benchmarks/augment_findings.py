"""Does GTGM's view augmentation keep what the findings are made of? One markdown table.

SynthCT-VL's learnable findings are intensity levels and sizes: pleural and pericardial effusion add fluid
(-50..50 HU), emphysema darkens the lungs (< -950 HU), cardiomegaly enlarges the heart. For each such
finding this picks, on the clean model inputs of the train split (CT window [-1000, 600] HU -> [0, 1],
32^3), the feature that separates positives from negatives best: a fraction of voxels in an HU band, an
intensity quantile, or the projection on the finding's mean difference image (positives minus
negatives, a matched filter). It then measures that feature's AUROC on the valid split, clean and as
augmented views. A view that keeps the finding keeps the AUROC; one that erases it drops it towards 0.5.
Each augmented setting is drawn ``--draws`` times with different seeds (mean over draws).

    python benchmarks/augment_findings.py --data runs/bench_pretrain_diagnosis/synthct
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from medvl3d.data.datasets import open_split
from medvl3d.data.preprocess import PreprocessSpec, preprocess_sample
from medvl3d.train.augment import LEGACY_AUGMENT, AugmentConfig, augment_config, random_view

WINDOW = (-1000.0, 600.0)
FINDINGS = ("Pleural effusion", "Pericardial effusion", "Cardiomegaly", "Emphysema")


def _hu(lo: float, hi: float) -> tuple[float, float]:
    span = WINDOW[1] - WINDOW[0]
    return (lo - WINDOW[0]) / span, (hi - WINDOW[0]) / span


# Fractions of voxels in HU bands, on the windowed [0, 1] input.
BANDS = {
    "fluid (-50..50 HU)": _hu(-50, 50),
    "soft tissue (20..80 HU)": _hu(20, 80),
    "dark lung (< -950 HU)": _hu(-2000, -950),
    "lung (-950..-500 HU)": _hu(-950, -500),
}
NO_INTENSITY = {"intensity_scale": 0.0, "intensity_shift": 0.0, "noise_std": 0.0}
NO_GEOMETRY = {"crop_scale": (1.0, 1.0), "flip_prob": 0.0, "rotate_deg": 0.0, "blur_prob": 0.0}
DEFAULTS = AugmentConfig()
SETTINGS = {
    "clean input": None,
    "intensity only, first version (scale/shift 0.1, noise 0.02)": {**NO_GEOMETRY, **LEGACY_AUGMENT},
    "intensity only, default "
    f"(scale/shift {DEFAULTS.intensity_scale}, noise {DEFAULTS.noise_std})": NO_GEOMETRY,
    "intensity only, scale/shift 0.02, noise 0.01": {
        **NO_GEOMETRY,
        "intensity_scale": 0.02,
        "intensity_shift": 0.02,
    },
    "geometry only (crop, flip, rotation, blur)": NO_INTENSITY,
    "first version views (all)": dict(LEGACY_AUGMENT),
    "default views (all)": {},
}


QUANTILES = (0.02, 0.1, 0.5, 0.9)


def feature_names() -> list[str]:
    return [*BANDS, *(f"quantile {q}" for q in QUANTILES), "matched filter"]


def features(x: torch.Tensor, template: torch.Tensor, mean: torch.Tensor) -> np.ndarray:
    """`[N, F]`: fractions of voxels per band, intensity quantiles, projection on `template`."""
    flat = x.flatten(1)
    bands = [((flat >= lo) & (flat < hi)).float().mean(1) for lo, hi in BANDS.values()]
    quantiles = list(torch.quantile(flat, torch.tensor(QUANTILES), dim=1))
    matched = ((flat - mean) * template).sum(1)
    return torch.stack([*bands, *quantiles, matched], 1).numpy()


def load(root: str, split: str, spec: PreprocessSpec) -> tuple[torch.Tensor, np.ndarray]:
    ds = open_split(root, split)
    images, labels = [], []
    for i in range(len(ds)):
        sample = preprocess_sample(ds[i], spec)
        images.append(torch.as_tensor(np.asarray(sample["image"])).float())
        labels.append([int(sample["labels"].get(name, 0)) for name in FINDINGS])
    return torch.stack(images), np.array(labels)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="SynthCT-VL folder at 32^3 (e.g. the zero-shot benchmark's)")
    p.add_argument("--split", default="valid")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--draws", type=int, default=3)
    args = p.parse_args(argv)
    t0 = time.time()
    spec = PreprocessSpec.from_dict(
        {"spacing": None, "spatial_size": [args.size] * 3, "intensity": {"ct_window": list(WINDOW)}}
    )
    x_tr, y_tr = load(args.data, "train", spec)
    x, y = load(args.data, args.split, spec)
    findings = [f for j, f in enumerate(FINDINGS) if 0 < y[:, j].sum() < len(y) and 0 < y_tr[:, j].sum()]
    names = feature_names()
    mean = x_tr.flatten(1).mean(0)
    templates, best_global = {}, {}
    for f in findings:  # per finding: its matched filter, and the best global feature on the train inputs
        j = FINDINGS.index(f)
        pos = torch.as_tensor(y_tr[:, j] == 1)
        templates[f] = x_tr[pos].flatten(1).mean(0) - x_tr[~pos].flatten(1).mean(0)
        train_feats = features(x_tr, templates[f], mean)
        aucs = [roc_auc_score(y_tr[:, j], train_feats[:, k]) for k in range(len(names) - 1)]
        k = int(np.argmax([max(a, 1 - a) for a in aucs]))
        best_global[f] = (k, 1.0 if aucs[k] >= 0.5 else -1.0)
    # AUROC per (setting, finding, feature kind), mean over draws
    results: dict[tuple[str, str, str], list[float]] = {}
    for title, params in SETTINGS.items():
        for draw in range(1 if params is None else args.draws):
            views = x
            if params is not None:
                g = torch.Generator().manual_seed(draw)
                cfg = augment_config(params)
                views = torch.cat([random_view(x[i : i + 16], cfg, g) for i in range(0, len(x), 16)])
            for f in findings:
                feats = features(views, templates[f], mean)
                truth = y[:, FINDINGS.index(f)]
                k, sign = best_global[f]
                results.setdefault((title, f, "global"), []).append(roc_auc_score(truth, sign * feats[:, k]))
                results.setdefault((title, f, "matched"), []).append(roc_auc_score(truth, feats[:, -1]))
    print(f"{len(x)} {args.split} cases of {args.data} at {args.size}^3, {args.draws} draws per setting\n")
    for kind, what in (
        ("matched", "matched filter (spatially rigid: geometry moves it by design)"),
        ("global", "best global feature (band fraction or quantile)"),
    ):
        print(f"AUROC of the {what}\n")
        heads = [f if kind == "matched" else f"{f} ({names[best_global[f][0]]})" for f in findings]
        print("| views | " + " | ".join(heads) + " |")
        print("|" + "---|" * (len(findings) + 1))
        for title in SETTINGS:
            cells = [f"{np.mean(results[(title, f, kind)]):.3f}" for f in findings]
            print(f"| {title} | " + " | ".join(cells) + " |")
        print()
    positives = ", ".join(
        f"{f} {int(y_tr[:, FINDINGS.index(f)].sum())}/{int(y[:, FINDINGS.index(f)].sum())}" for f in findings
    )
    print(f"\n(positives train/{args.split}: {positives}; {time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
