"""Preview PNGs of generated SynthCT-VL cases: CT slices with organ, lesion and vessel overlays."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np


def _axial(a: np.ndarray, k: int) -> np.ndarray:
    """Axial slice k of an (x, y, z) RAS array in radiological display (patient right on the left)."""
    return np.flip(a[:, :, k].T, (0, 1))


def _read_manifest(out_dir: Path) -> list[dict]:
    rows: list[dict] = []
    for split in ("valid", "train"):
        path = out_dir / f"manifest_{split}.jsonl"
        if path.is_file():
            rows += [
                json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
            ]
    if not rows:
        raise FileNotFoundError(
            f"no manifest_train.jsonl / manifest_valid.jsonl in {out_dir}; run generate() first"
        )
    return rows


def preview(out_dir: str | Path, n: int = 3, png_dir: str | Path | None = None) -> list[Path]:
    """Write one PNG per case for the first `n` cases (valid split first) and return their paths.

    Each PNG shows the axial slice through the case's largest lesion (or the volume centre) in a
    soft-tissue window with organ and lesion (yellow) contours, the slice with the most pulmonary
    vessels in a lung window with artery (red), vein (blue) and airway (green) contours, and the
    organ label map.
    """
    from medvl3d.extras import require

    require("matplotlib", "viz", "SynthCT-VL previews").use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    png_dir = Path(png_dir) if png_dir is not None else out_dir / "preview"
    png_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for row in _read_manifest(out_dir)[:n]:
        ct = np.asarray(nib.load(out_dir / row["image"]).dataobj)
        maps = {k: np.asarray(nib.load(out_dir / row[k]).dataobj) for k in ("organs", "label", "vessels")}
        les = maps["label"]
        k = int(np.argmax((les > 0).sum((0, 1)))) if les.any() else ct.shape[2] // 2
        kv = int(np.argmax((maps["vessels"] > 0).sum((0, 1))))  # lung slice with the most vessels
        fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
        aspect = 1.0
        for ax, kk, (title, lo, hi) in zip(
            axes[:2], (k, kv), (("soft tissue W400/L40", -160, 240), ("lung W1500/L-600", -1350, 150))
        ):
            ax.imshow(_axial(ct, kk), cmap="gray", vmin=lo, vmax=hi, aspect=aspect)
            ax.set_title(f"{title}, z={kk}", fontsize=9)
        axes[0].contour(_axial(maps["organs"], k), levels=np.arange(0.5, 16), cmap="tab20", linewidths=0.6)
        if les[:, :, k].any():
            axes[0].contour(_axial(les > 0, k), levels=[0.5], colors="yellow", linewidths=1.2)
        v = _axial(maps["vessels"], kv)
        for lab, col in ((1, "red"), (2, "deepskyblue"), (3, "lime")):
            if (v == lab).any():
                axes[1].contour(v == lab, levels=[0.5], colors=col, linewidths=0.6)
        axes[2].imshow(_axial(ct, k), cmap="gray", vmin=-160, vmax=240)
        axes[2].imshow(
            np.ma.masked_equal(_axial(maps["organs"], k), 0), cmap="tab20", alpha=0.45, vmin=0, vmax=20
        )
        axes[2].set_title(f"organ labels, z={k}", fontsize=9)
        for ax in axes:
            ax.axis("off")
        pos = [n for n, v in row["labels"].items() if v]
        lesions = "; ".join(f"{d['type']} ({d['location']})" for d in row["lesions"].values())
        fig.suptitle(
            f"{row['case_id']} [{row['phase']}]\n{', '.join(pos) or 'no abnormality'}"
            f"\nlesions: {lesions or 'none'}",
            fontsize=8,
        )
        path = png_dir / f"{row['case_id']}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written
