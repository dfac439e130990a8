"""Synth-to-real probe: train an organ U-Net on SynthCT-VL only, score it on real CTs.

Generates a SynthCT-VL set (`--variation standard|wide`), reads it through `medvl3d.data.datasets`,
preprocesses it with `medvl3d.data.preprocess` (isotropic spacing, CT window), trains MONAI's UNet with
DiceCELoss on class-balanced random patches with MONAI dictionary augmentations, then segments the real
TotalSegmentator CTs (`shared/data/real/totalseg/`: the 3 mm abdominal crop and the DICOM series) by
sliding-window inference, maps the probabilities back onto each real grid (`resample_to_grid`) and
scores Dice per organ against the TotalSegmentator labels mapped to ours (`realism.TOTALSEG_MAP`).

Writes one JSON per run to `benchmarks/results/synth_to_real/` with the git commit, command, seed, the
settings and the numbers. Training is bounded by wall time (`--minutes`) because the CPU is shared;
the number of steps reached is recorded. Run on one thread, e.g.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/synth_to_real_probe.py \
        --variation wide --n-train 120 --minutes 14 --tag wide_v1

It deliberately imports nothing from `medvl3d.models`, `medvl3d.train` or `medvl3d.config`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from medvl3d.data.datasets import open_dataset
from medvl3d.data.io import read_volume
from medvl3d.data.preprocess import IntensitySpec, PreprocessSpec, preprocess_sample, resample_to_grid
from medvl3d.data.synth import generate
from medvl3d.data.synth.phantom import ORGAN_LABELS
from medvl3d.data.synth.realism import TOTALSEG_MAP

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_record import git_commit  # noqa: E402

REAL = REPO.parent / "shared" / "data" / "real" / "totalseg"
RESULTS = REPO / "benchmarks" / "results" / "synth_to_real"
N_CLASSES = len(ORGAN_LABELS) + 1
#: Patch-centre class weights (RandCropByLabelClassesd ratios): oversample the small target organs.
CROP_RATIOS = {0: 1.0, "liver": 2.0, "spleen": 2.0, "kidney_right": 2.0, "kidney_left": 2.0, "pancreas": 1.0}
REPORT_ORGANS = list(TOTALSEG_MAP)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variation", default="standard", help="SynthCT-VL variation (standard, wide)")
    p.add_argument("--n-train", type=int, default=100)
    p.add_argument("--gen-size", default="110x128x128", help="generation DxHxW (wide: the largest FOV)")
    p.add_argument("--gen-spacing", default="3,3,3", help="generation z,y,x spacing (mm)")
    p.add_argument("--data", default=None, help="data folder (default /tmp/synth_probe_<variation>_<seed>)")
    p.add_argument("--reuse-data", action="store_true", help="skip generation if the folder has a set")
    p.add_argument("--spacing", type=float, default=4.0, help="isotropic training spacing (mm)")
    p.add_argument("--window", default="-250,350", help="CT window (HU) mapped to [0, 1]")
    p.add_argument("--patch", default="64,64,32", help="patch size (x,y,z voxels)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--channels", default="16,32,64,128")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--minutes", type=float, default=14.0, help="wall-time budget of the training loop")
    p.add_argument("--max-steps", type=int, default=100000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default=None, help="name of the result JSON (default: variation_seed)")
    p.add_argument("--overlay-dir", default=None, help="also write overlay PNGs of the real cases here")
    return p.parse_args(argv)


def synth_source_hash() -> str:
    """sha256 of the generator sources: identifies uncommitted generator versions between probe runs."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted((REPO / "src" / "medvl3d" / "data" / "synth").glob("*.py")):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def antialias(hu: np.ndarray, spacing, target: float) -> np.ndarray:
    """Gaussian pre-filter before downsampling to `target` mm (what a thicker reconstruction averages)."""
    sig = [0.4 * np.sqrt(max((target / s) ** 2 - 1.0, 0.0)) for s in spacing]
    if max(sig) < 0.3:
        return hu
    return ndimage.gaussian_filter(hu.astype(np.float32), sigma=sig, truncate=2.5)


def load_training_set(data: Path, spec: PreprocessSpec, patch) -> list[dict]:
    """Preprocessed (image float16 [1,X,Y,Z], label uint8 [1,X,Y,Z]) of every training case."""
    ds = open_dataset(data)  # dataset.json: the organ label maps
    cases = []
    for i in range(len(ds)):
        s = ds.load_sample(i)
        s["image"] = torch.from_numpy(
            antialias(s["image"][0].numpy(), s["meta"]["spacing"], spec.spacing[0])
        )[None]
        s = preprocess_sample(s, spec)
        img, lab = s["image"].numpy(), s["label"].to(torch.uint8).numpy()
        # Pad to at least one patch (0 = below the window, as sliding-window inference pads).
        pad = [(0, 0)] + [
            ((max(p - n, 0)) // 2, max(p - n, 0) - (max(p - n, 0)) // 2) for n, p in zip(lab.shape[1:], patch)
        ]
        img, lab = np.pad(img, pad), np.pad(lab, pad)
        # Candidate patch centres per class, subsampled (MONAI's indices_key input): cheap crops later.
        flat = lab[0].ravel()
        rng = np.random.default_rng(i)
        idx = []
        for c in range(N_CLASSES):
            w = np.flatnonzero(flat == c)
            idx.append(rng.choice(w, size=min(len(w), 3000), replace=False) if len(w) else w)
        cases.append({"image": img.astype(np.float16), "label": lab, "idx": idx})
    return cases


def build_transforms(patch, ratios):
    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandAffined,
        RandCropByLabelClassesd,
        RandGaussianNoised,
        RandGaussianSmoothd,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    keys = ["image", "label"]
    return Compose(
        [
            RandCropByLabelClassesd(
                keys,
                label_key="label",
                spatial_size=patch,
                ratios=ratios,
                num_classes=N_CLASSES,
                num_samples=1,
                indices_key="idx",
                allow_smaller=True,
            ),
            RandAffined(
                keys,
                prob=0.7,
                rotate_range=(0.08, 0.08, 0.25),
                scale_range=(0.15, 0.15, 0.15),
                shear_range=(0.05, 0.05, 0.05),
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            RandGaussianSmoothd(
                ["image"], prob=0.3, sigma_x=(0.3, 1.0), sigma_y=(0.3, 1.0), sigma_z=(0.3, 1.0)
            ),
            RandScaleIntensityd(["image"], factors=0.12, prob=0.5),
            RandShiftIntensityd(["image"], offsets=0.05, prob=0.5),
            RandAdjustContrastd(["image"], prob=0.3, gamma=(0.8, 1.25)),
            RandGaussianNoised(["image"], prob=0.4, std=0.03),
        ]
    )


def train(cases, args, patch) -> tuple[torch.nn.Module, dict]:
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    ratios = [CROP_RATIOS.get(ORGAN_LABELS.get(c, 0) if c else 0, 0.5) for c in range(N_CLASSES)]
    tr = build_transforms(patch, ratios)
    tr.set_random_state(seed=args.seed)
    channels = tuple(int(c) for c in args.channels.split(","))
    torch.manual_seed(args.seed)
    net = UNet(3, 1, N_CLASSES, channels, (2,) * (len(channels) - 1), num_res_units=1)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    rng = np.random.default_rng(args.seed)
    budget = args.minutes * 60.0
    t0 = time.perf_counter()
    step, losses = 0, []
    net.train()
    while step < args.max_steps:
        frac = (time.perf_counter() - t0) / budget
        if frac >= 1.0:
            break
        lr = args.lr * (
            min(1.0, (step + 1) / 50) * 0.5 * (1 + np.cos(np.pi * frac))
        )  # warmup + cosine in time
        for g in opt.param_groups:
            g["lr"] = lr
        xs, ys = [], []
        for k in rng.integers(len(cases), size=args.batch):
            c = cases[int(k)]
            d = tr(
                {
                    "image": torch.from_numpy(c["image"].astype(np.float32)),
                    "label": torch.from_numpy(c["label"]),
                    "idx": c["idx"],
                }
            )[0]
            xs.append(torch.as_tensor(d["image"]).float())
            ys.append(torch.as_tensor(d["label"]).long())
        x, y = torch.stack(xs), torch.stack(ys)
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % 100 == 0:
            elapsed = time.perf_counter() - t0
            print(f"step {step} loss {np.mean(losses[-100:]):.3f} lr {lr:.2e} t {elapsed:.0f}s", flush=True)
    return net, {
        "steps": step,
        "seconds": time.perf_counter() - t0,
        "loss_last100": float(np.mean(losses[-100:])) if losses else None,
    }


def predict(net, vol, spec: PreprocessSpec, patch) -> np.ndarray:
    """Label map of a real volume on its own (RAS) grid."""
    from monai.inferers import sliding_window_inference

    hu = antialias(np.asarray(vol.array, np.float32), vol.spacing, spec.spacing[0])
    s = preprocess_sample(
        {"image": torch.from_numpy(hu)[None], "meta": {"affine": vol.affine.tolist(), "modality": "CT"}}, spec
    )
    net.eval()
    with torch.no_grad():
        logits = sliding_window_inference(s["image"][None], patch, 2, net, overlap=0.5, mode="gaussian")[0]
    prob = torch.softmax(logits, 0)
    prob = resample_to_grid(
        prob, np.asarray(s["meta"]["affine"]), vol.array.shape, vol.affine, mode="trilinear"
    )
    return prob.argmax(0).numpy().astype(np.uint8)


def largest_components(pred: np.ndarray) -> np.ndarray:
    """Keep the largest connected component of each organ (a standard post-processing step)."""
    out = np.zeros_like(pred)
    for c in np.unique(pred):
        if c == 0:
            continue
        lab, n = ndimage.label(pred == c)
        if n:
            sizes = ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
            out[lab == 1 + int(np.argmax(sizes))] = c
    return out


def score(pred: np.ndarray, ref: np.ndarray, ts_names: dict[str, int]) -> dict:
    """Dice per mapped organ, plus where each real organ's voxels went and where false positives lie."""
    ids = {v: k for k, v in ORGAN_LABELS.items()}
    real_masks = {
        o: np.isin(ref, [ts_names[n] for n in ns if n in ts_names]) for o, ns in TOTALSEG_MAP.items()
    }
    out = {}
    for o in REPORT_ORGANS:
        r, p = real_masks[o], pred == ids[o]
        entry = {"real_voxels": int(r.sum()), "pred_voxels": int(p.sum())}
        if r.sum():
            entry["dice"] = round(float(2 * (r & p).sum() / (r.sum() + p.sum())), 4)
            got = np.bincount(pred[r], minlength=N_CLASSES) / r.sum()
            entry["real_predicted_as"] = {
                (ORGAN_LABELS.get(int(c), "background")): round(float(got[c]), 3)
                for c in np.argsort(-got)[:3]
                if got[c] > 0.01
            }
        fp = p & ~r
        if fp.sum():
            where = {}
            for o2, m2 in real_masks.items():
                if o2 != o and (fp & m2).sum():
                    where[o2] = int((fp & m2).sum())
            where["other/unmapped"] = int(fp.sum() - sum(where.values()))
            entry["false_positive_in"] = dict(sorted(where.items(), key=lambda kv: -kv[1])[:4])
        out[o] = entry
    return out


def overlay(path: Path, vol, ref, pred, ts_names) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = {v: k for k, v in ORGAN_LABELS.items()}
    colours = {"liver": "r", "spleen": "b", "kidney_right": "g", "kidney_left": "y", "pancreas": "m"}
    d = vol.array.shape[2]
    ks = np.linspace(0, d - 1, 4).astype(int)
    fig, axes = plt.subplots(2, 4, figsize=(16, 8))
    for row, (lab, title) in enumerate(((ref, "reference"), (pred, "predicted"))):
        for a, k in zip(axes[row], ks):
            a.imshow(np.flip(vol.array[:, :, k].T, (0, 1)), cmap="gray", vmin=-160, vmax=240)
            for o, col in colours.items():
                if title == "reference":
                    m = np.isin(lab[:, :, k], [ts_names[n] for n in TOTALSEG_MAP[o] if n in ts_names])
                else:
                    m = lab[:, :, k] == ids[o]
                if m.any():
                    a.contour(np.flip(m.T, (0, 1)), [0.5], colors=col, linewidths=0.8)
            a.set_title(f"{title} z={k}", fontsize=8)
            a.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=55)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    # Slabs without some organs: MONAI then zeroes that class's crop ratio and warns every time.
    warnings.filterwarnings("ignore", message="no available indices of class")
    torch.set_num_threads(1)
    np.random.seed(args.seed)
    t_start = time.perf_counter()
    source_hash = synth_source_hash()  # before generating: the code that makes this run's data
    patch = tuple(int(v) for v in args.patch.split(","))
    lo, hi = (float(v) for v in args.window.split(","))
    spec = PreprocessSpec(spacing=(args.spacing,) * 3, intensity=IntensitySpec(ct_window=(lo, hi)))
    data = Path(args.data or f"/tmp/synth_probe_{args.variation}_{args.seed}")
    size = tuple(int(v) for v in args.gen_size.lower().split("x"))
    spacing = tuple(float(v) for v in args.gen_spacing.split(","))
    t = time.perf_counter()
    if not (args.reuse_data and (data / "dataset.json").is_file()):
        kw = {} if args.variation == "standard" else {"variation": args.variation}
        generate(
            data,
            n_train=args.n_train,
            n_test=0,
            size=size,
            spacing=spacing,
            seed=args.seed,
            workers=1,
            progress=False,
            **kw,
        )
    t_gen = time.perf_counter() - t
    t = time.perf_counter()
    cases = load_training_set(data, spec, patch)
    t_load = time.perf_counter() - t
    print(f"generated in {t_gen:.0f}s, loaded {len(cases)} cases in {t_load:.0f}s", flush=True)
    net, train_info = train(cases, args, patch)

    ts_names = {v: int(k) for k, v in json.loads((REAL / "ts_class_map.json").read_text())["total"].items()}
    results = {}
    for name, img, seg in (
        ("example_ct_sm", REAL / "example_ct_sm.nii.gz", REAL / "example_seg.nii.gz"),
        ("dicom_series", REAL / "dicom_series", REAL / "example_seg_dicom.nii.gz"),
    ):
        vol = read_volume(img, modality="CT")
        ref_vol = read_volume(seg)
        if ref_vol.array.shape != vol.array.shape or not np.allclose(ref_vol.affine, vol.affine, atol=1e-3):
            raise ValueError(f"{seg}: label grid differs from {img}")
        ref = np.asarray(ref_vol.array).astype(np.int32)
        raw = predict(net, vol, spec, patch)
        post = largest_components(raw)
        results[name] = {"largest_component": score(post, ref, ts_names), "raw": score(raw, ref, ts_names)}
        if args.overlay_dir:
            overlay(
                Path(args.overlay_dir) / f"{args.tag or args.variation}_{name}.png", vol, ref, post, ts_names
            )
        summary = {o: results[name]["largest_component"][o].get("dice") for o in REPORT_ORGANS}
        print(name, json.dumps(summary), flush=True)

    doc = {
        "commit": git_commit(),
        "synth_source_sha256": source_hash,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "seed": args.seed,
        "args": vars(args),
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "train": {**train_info, "n_cases": len(cases), "generate_seconds": t_gen, "load_seconds": t_load},
        "total_seconds": time.perf_counter() - t_start,
        "dice_note": "largest_component: largest connected component kept per organ; raw: argmax as is",
        "results": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{args.tag or f'{args.variation}_{args.seed}'}.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
