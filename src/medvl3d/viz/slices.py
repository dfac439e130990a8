"""Axial, coronal and sagittal views through a point of a volume, with a label map overlaid.

Views follow the radiological convention every CT viewer uses: axial and coronal with the patient's right
on the viewer's left, axial with anterior up, coronal and sagittal with superior up, sagittal with
anterior on the left; pixels keep their physical size (a 3 mm slice is drawn three times as tall as a 1 mm
one). The volume is brought to RAS by exact flips and permutations first, so any input orientation gives
the same picture.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from medvl3d.data.io import Volume, reorient_array, spacing_from_affine

__all__ = ["display_window", "finding_point", "label_colors", "orthogonal_views", "to_ras"]

#: Soft-tissue window (W400 / L40) for CT; MR is shown between its 1st and 99th percentiles.
CT_WINDOW = (-160.0, 240.0)


def to_ras(
    volume: Volume, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """``(array, mask, affine)`` of a volume (and a mask on its grid) reoriented to RAS."""
    array, affine = np.asarray(volume.array), volume.affine
    if volume.axcodes == "RAS":
        return array, mask, affine
    out, new_affine = reorient_array(array, affine, "RAS")
    if mask is not None:
        mask, _ = reorient_array(np.asarray(mask), affine, "RAS")
    return out, mask, new_affine


def display_window(volume: Volume, window: Sequence[float] | None = None) -> tuple[float, float]:
    """The grey-level window: ``window`` if given, else the CT soft-tissue window or MR percentiles."""
    if window is not None:
        lo, hi = (float(w) for w in window)
        if not lo < hi:
            raise ValueError(f"display window: need low < high, got {lo}, {hi}")
        return lo, hi
    if str(volume.modality).upper() == "CT":
        return CT_WINDOW
    lo, hi = np.percentile(np.asarray(volume.array)[::2, ::2, ::2], [1, 99])
    return float(lo), float(max(hi, lo + 1e-3))


def label_colors(ids: Sequence[int]) -> dict[int, tuple[float, float, float]]:
    """A distinct RGB colour per label id (matplotlib's tab20, in id order)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return {int(i): tuple(float(c) for c in cmap(n % 20)[:3]) for n, i in enumerate(sorted(ids))}


def finding_point(mask: np.ndarray, label: int) -> tuple[int, int, int] | None:
    """A voxel of ``label`` near its centroid (the centroid itself when inside): where to cut the views."""
    where = np.argwhere(mask == label)
    if where.size == 0:
        return None
    centre = where.mean(axis=0)
    nearest = where[np.argmin(((where - centre) ** 2).sum(axis=1))]
    return tuple(int(v) for v in nearest)  # type: ignore[return-value]


def _planes(a: np.ndarray, p: tuple[int, int, int]) -> list[np.ndarray]:
    """Axial, coronal and sagittal display arrays (rows top to bottom, columns left to right)."""
    i, j, k = p
    return [
        np.flip(a[:, :, k].T, (0, 1)),  # rows A->P, columns R->L
        np.flip(a[:, j, :].T, (0, 1)),  # rows S->I, columns R->L
        np.flip(a[i, :, :].T, (0, 1)),  # rows S->I, columns A->P
    ]


def _overlay(mask2d: np.ndarray, colors: dict[int, tuple[float, float, float]], alpha: float) -> np.ndarray:
    rgba = np.zeros((*mask2d.shape, 4), dtype=np.float32)
    for label, rgb in colors.items():
        on = mask2d == label
        if on.any():
            rgba[on] = (*rgb, alpha)
    return rgba


def orthogonal_views(
    volume: Volume,
    point: tuple[int, int, int] | None = None,
    mask: np.ndarray | None = None,
    label_names: dict[int, str] | None = None,
    focus: int | None = None,
    window: Sequence[float] | None = None,
    title: str = "",
    dpi: int = 90,
) -> bytes:
    """A PNG of the three views through ``point`` (RAS voxel indices; default: the centre).

    Args:
        volume: the image (any orientation; shown in RAS).
        point: voxel of the RAS-reoriented array the three planes pass through.
        mask: integer label map on the volume's grid, overlaid in colour (0 is background).
        label_names: id -> name for the legend.
        focus: a label drawn with a bright outline (the finding the views are about).
        window: grey-level window (default: :func:`display_window`).
        title: the figure's title.
        dpi: resolution of the PNG.
    """
    from medvl3d.extras import require

    require("matplotlib", "viz", "report images").use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    array, mask, affine = to_ras(volume, mask)
    shape = array.shape
    p = tuple(int(np.clip(v, 0, n - 1)) for v, n in zip(point or [n // 2 for n in shape], shape))
    sx, sy, sz = spacing_from_affine(affine)
    lo, hi = display_window(volume, window)
    names = label_names or {}
    present = sorted(int(v) for v in np.unique(mask) if v != 0) if mask is not None else []
    colors = label_colors(present)
    extents = [(shape[0] * sx, shape[1] * sy), (shape[0] * sx, shape[2] * sz), (shape[1] * sy, shape[2] * sz)]
    cross = [
        ((shape[0] - 1 - p[0] + 0.5) * sx, (p[1] + 0.5) * sy),
        ((shape[0] - 1 - p[0] + 0.5) * sx, (p[2] + 0.5) * sz),
        ((shape[1] - 1 - p[1] + 0.5) * sy, (p[2] + 0.5) * sz),
    ]
    edges = [("R", "L", "A", "P"), ("R", "L", "S", "I"), ("A", "P", "S", "I")]
    titles = [f"axial (z={p[2]})", f"coronal (y={p[1]})", f"sagittal (x={p[0]})"]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.9), gridspec_kw={"width_ratios": [w for w, _ in extents]})
    mask_planes = _planes(mask, p) if mask is not None else [None] * 3
    for ax, img, m, (w, h), (cx, cy), edge, name in zip(
        axes, _planes(array, p), mask_planes, extents, cross, edges, titles
    ):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, extent=(0, w, 0, h), interpolation="nearest")
        if m is not None and present:
            ax.imshow(_overlay(m, colors, 0.38), extent=(0, w, 0, h), interpolation="nearest")
            if focus is not None and (m == focus).any():
                ax.contour(
                    np.flipud(m == focus).astype(float),
                    levels=[0.5],
                    colors=["#ffe600"],
                    linewidths=1.3,
                    extent=(0, w, 0, h),
                )
        ax.axvline(cx, color="#00d0ff", lw=0.6, alpha=0.6)
        ax.axhline(cy, color="#00d0ff", lw=0.6, alpha=0.6)
        for text, xy, ha, va in zip(
            edge,
            [(0.01, 0.5), (0.99, 0.5), (0.5, 0.99), (0.5, 0.01)],
            ["left", "right", "center", "center"],
            ["center", "center", "top", "bottom"],
        ):
            ax.text(
                *xy, text, transform=ax.transAxes, color="#ffd24d", fontsize=9, ha=ha, va=va, weight="bold"
            )
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if present:
        handles = [Patch(color=colors[i], label=names.get(i, str(i))) for i in present]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.08 if present else 0, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()
