"""Supervised ceiling for zero-shot diagnosis on SynthCT-VL: what the image side can learn at all.

Zero-shot diagnosis cannot beat what a supervised classifier on the same volumes, model and
preprocessing reaches. This trains the image encoder of a registered model with a linear head and
binary cross-entropy on the 18 CT-RATE labels of the `train` split, then prints per-label AUROC on the
`valid` split (and its macro per abnormality group of `splits.json`), next to the AUROC of one hand-made
intensity feature per label computed on the raw HU (so a chance-level ceiling can be told apart from
labels that are invisible in the data).

    python benchmarks/supervised_ceiling.py --data runs/bench_pretrain_diagnosis/synthct
    python benchmarks/supervised_ceiling.py --data runs/bench_pretrain_diagnosis/synthct --norm instance
    python benchmarks/supervised_ceiling.py --data runs/bench_pretrain_diagnosis/synthct --model test_vit_clip
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from medvl3d.data.datasets import open_split
from medvl3d.data.preprocess import PreprocessSpec, preprocess_sample
from medvl3d.eval.diagnosis import load_label_groups
from medvl3d.models import create_model
from medvl3d.schema import CTRATE_LABELS

# One raw-HU feature per label that a radiologist would expect to move with it.
FEATURES = {
    "max HU": lambda a: float(a.max()),
    "fraction > 150 HU": lambda a: float((a > 150).mean()),
    "fraction of fluid (-50..50 HU)": lambda a: float(((a > -50) & (a < 50)).mean()),
    "fraction < -950 HU": lambda a: float((a < -950).mean()),
}


def load_split(root: str, split: str, spec: PreprocessSpec) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Preprocessed images, 0/1 labels and raw-HU features of one split."""
    ds = open_split(root, split)
    images, labels, feats = [], [], []
    for i in range(len(ds)):
        sample = ds[i]
        raw = np.asarray(sample["image"], dtype=np.float32)
        feats.append([f(raw) for f in FEATURES.values()])
        sample = preprocess_sample(sample, spec)
        images.append(torch.as_tensor(np.asarray(sample["image"])).float())
        labels.append([int(sample["labels"].get(name, 0)) for name in CTRATE_LABELS])
    return torch.stack(images), np.array(labels), np.array(feats)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="SynthCT-VL folder")
    p.add_argument("--size", type=int, default=32, help="cubic model input size")
    p.add_argument("--model", default="cpu_resenc_clip", help="registered model (its image tower)")
    p.add_argument("--norm", choices=("batch", "instance", "group"), help="CNN normalisation override")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--window", type=float, nargs=2, default=(-1000.0, 600.0), help="CT window in HU")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def ceiling(args: argparse.Namespace) -> dict:
    """Train the supervised classifier and score the valid split.

    Returns:
        ``per_label``: label -> (positives, n, supervised AUROC, best raw-HU feature AUROC, its name);
        ``groups``: group of ``splits.json`` -> macro supervised AUROC over its labels; ``macro``;
        ``n_train``, ``n_valid``.
    """
    torch.manual_seed(args.seed)
    spec = PreprocessSpec.from_dict(
        {"spacing": None, "spatial_size": [args.size] * 3, "intensity": {"ct_window": list(args.window)}}
    )
    x_tr, y_tr, _ = load_split(args.data, "train", spec)
    x_va, y_va, f_va = load_split(args.data, "valid", spec)
    vision = {"img_size": [args.size] * 3, **({"norm": args.norm} if args.norm else {})}
    model = create_model(args.model, text={"name": "test-tiny"}, vision=vision)
    encoder = model.visual
    head = torch.nn.Linear(encoder.num_features, len(CTRATE_LABELS))
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.05)
    targets = torch.as_tensor(y_tr, dtype=torch.float32)
    for _ in range(args.steps):
        idx = torch.randint(0, len(x_tr), (args.batch_size,))
        loss = F.binary_cross_entropy_with_logits(head(encoder(x_tr[idx])), targets[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    encoder.eval()
    with torch.no_grad():
        probs = torch.cat([torch.sigmoid(head(encoder(x_va[i : i + 32]))) for i in range(0, len(x_va), 32)])

    names = list(FEATURES)
    per_label = {}
    for j, label in enumerate(CTRATE_LABELS):
        y = y_va[:, j]
        if not 0 < y.sum() < len(y):
            continue
        auc = roc_auc_score(y, probs[:, j].numpy())
        # A feature may move either way with a finding: report max(AUROC, 1 - AUROC) and its name.
        feat = [max(a, 1 - a) for a in (roc_auc_score(y, f_va[:, k]) for k in range(len(names)))]
        k = int(np.argmax(feat))
        per_label[label] = (int(y.sum()), len(y), float(auc), float(feat[k]), names[k])
    groups = {}
    for group, members in load_label_groups(args.data).items():
        values = [per_label[m][2] for m in members if m in per_label]
        if values:
            groups[group] = float(np.mean(values))
    macro = float(np.mean([v[2] for v in per_label.values()]))
    return {
        "per_label": per_label,
        "groups": groups,
        "macro": macro,
        "n_train": len(x_tr),
        "n_valid": len(x_va),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.time()
    res = ceiling(args)
    print(
        f"{res['n_train']} train / {res['n_valid']} valid cases, {args.model} at {args.size}^3, "
        f"{args.steps} steps" + (f", norm={args.norm}" if args.norm else "")
    )
    print("| label | positives | supervised AUROC | best raw-HU feature AUROC |\n|---|---|---|---|")
    for label, (n_pos, n, auc, feat, name) in res["per_label"].items():
        print(f"| {label} | {n_pos}/{n} | {auc:.3f} | {feat:.3f} ({name}) |")
    print(f"| **macro** | | {res['macro']:.3f} | |")
    for group, auc in res["groups"].items():
        print(f"| *{group}* (macro) | | {auc:.3f} | |")
    print(f"\n({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
