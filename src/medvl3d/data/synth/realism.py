"""Compare SynthCT-VL organ intensities with a real CT (TotalSegmentator's example case).

`compare_with_totalseg` draws a non-contrast phantom on the real case's 3 mm grid, measures the mean
and spread of HU per organ in both (TotalSegmentator labels mapped to ours), and writes a side-by-side
axial PNG with the same window. docs/synthct.md shows its output; rerun with
`python -m medvl3d.data.synth.realism ../shared/data/real docs/img`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from .case import reconstruct
from .geometry import Grid
from .phantom import ORGAN_IDS, build_anatomy
from .vessels import build_trees, paint_trees

#: Our organ -> TotalSegmentator `total` label names that make it up.
TOTALSEG_MAP: dict[str, tuple[str, ...]] = {
    "liver": ("liver",),
    "spleen": ("spleen",),
    "kidney_right": ("kidney_right",),
    "kidney_left": ("kidney_left",),
    "pancreas": ("pancreas",),
    "stomach": ("stomach",),
    "colon": ("colon",),
    "aorta": ("aorta",),
    "vertebrae": tuple(f"vertebrae_{v}" for v in ("L3", "L2", "L1", "T12", "T11", "T10")),
    "ribs": tuple(f"rib_{s}_{i}" for s in ("left", "right") for i in range(1, 13)),
    "skeletal_muscle": ("autochthon_left", "autochthon_right", "iliopsoas_left", "iliopsoas_right"),
    "lung_right": ("lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"),
    "lung_left": ("lung_upper_lobe_left", "lung_lower_lobe_left"),
}


def organ_hu_stats(
    ct: np.ndarray, labels: np.ndarray, groups: dict[str, tuple[int, ...]]
) -> dict[str, tuple]:
    """(mean, std, voxel count) of `ct` inside each named group of label ids (None when absent)."""
    out = {}
    for name, ids in groups.items():
        m = np.isin(labels, ids)
        n = int(m.sum())
        out[name] = (float(ct[m].mean()), float(ct[m].std()), n) if n else None
    return out


def _axial(a: np.ndarray, k: int) -> np.ndarray:
    return np.flip(a[:, :, k].T, (0, 1))  # radiological display: patient right on the left


def compare_with_totalseg(real_dir: str | Path, png_dir: str | Path, *, seed: int = 0) -> str:
    """Write `synthct_vs_real.png` into `png_dir` and return a markdown table of organ HU.

    Raises:
        FileNotFoundError: when the TotalSegmentator example files are missing from `real_dir`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = Path(real_dir) / "totalseg"
    paths = [ts / "example_ct_sm.nii.gz", ts / "example_seg.nii.gz", ts / "ts_class_map.json"]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"real CT comparison needs {p}")
    real = nib.as_closest_canonical(nib.load(paths[0]))
    real_ct = np.asarray(real.dataobj).astype(np.float32)
    real_seg = np.asarray(nib.as_closest_canonical(nib.load(paths[1])).dataobj).astype(np.int32)
    names = {v: int(k) for k, v in json.loads(paths[2].read_text(encoding="utf-8"))["total"].items()}
    real_groups = {o: tuple(names[n] for n in ns if n in names) for o, ns in TOTALSEG_MAP.items()}

    # A non-contrast phantom at the real case's 3 mm spacing over a whole-torso field of view.
    grid = Grid.centred((120, 96, 110), (3.0, 3.0, 3.0), (0.0, 0.0, -10.0))
    rng = np.random.default_rng([seed, 0])
    anat = build_anatomy(grid, rng, "non-contrast")
    vessels = np.zeros(grid.shape, np.uint8)
    paint_trees(anat, build_trees(anat, rng), vessels)
    syn_ct = reconstruct(anat.ct, grid, rng).astype(np.float32)
    syn_groups = {o: (ORGAN_IDS[o],) for o in TOTALSEG_MAP}

    real_stats = organ_hu_stats(real_ct, real_seg, real_groups)
    syn_stats = organ_hu_stats(syn_ct, anat.organs, syn_groups)

    # Slices through liver, spleen and both kidneys (and a vertebral body, not a disc) in each volume.
    def level(seg, ids):
        # The slice where the smallest of these organs is largest: all of them well in view.
        return int(np.argmax(np.stack([(seg == i).sum((0, 1)) for i in ids]).min(0)))

    k_real = level(real_seg, [names["liver"], names["spleen"], names["kidney_right"], names["kidney_left"]])
    k_syn = level(
        anat.organs, [ORGAN_IDS[o] for o in ("liver", "spleen", "kidney_right", "kidney_left", "vertebrae")]
    )
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, img, title in (
        (axes[0], _axial(syn_ct, k_syn), f"SynthCT-VL (non-contrast), z={k_syn}"),
        (axes[1], _axial(real_ct, k_real), f"real CT (TotalSegmentator example), z={k_real}"),
    ):
        ax.imshow(img, cmap="gray", vmin=-160, vmax=240)  # W400 / L40 for both
        ax.set_title(title + "\nW400 / L40, 3 mm voxels", fontsize=9)
        ax.axis("off")
    png_dir = Path(png_dir)
    png_dir.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(png_dir / "synthct_vs_real.png", dpi=90)
    plt.close(fig)

    def fmt(s):
        return "-" if s is None else f"{s[0]:.0f} ± {s[1]:.0f}"

    lines = ["| organ | SynthCT-VL non-contrast (mean ± sd HU) | real CT (mean ± sd HU) |", "|---|---|---|"]
    lines += [f"| {o} | {fmt(syn_stats[o])} | {fmt(real_stats[o])} |" for o in TOTALSEG_MAP]
    return "\n".join(lines)


if __name__ == "__main__":
    print(compare_with_totalseg(sys.argv[1], sys.argv[2]))
