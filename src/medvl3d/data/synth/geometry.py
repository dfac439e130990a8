"""Voxel grid and fast shape rasterisation for the SynthCT-VL phantoms.

Everything here works in world millimetres (RAS: +x patient right, +y anterior, +z superior) and only
touches the voxels inside each shape's bounding box, so a whole torso of ~20 shapes and a few hundred
vessel segments costs tens of milliseconds per volume instead of seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

Index = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Grid:
    """A regular RAS voxel grid: array axes (x, y, z), shape (W, H, D), spacing in mm per axis."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    @classmethod
    def centred(cls, shape: tuple[int, int, int], spacing: tuple[float, float, float], centre) -> Grid:
        """A grid whose centre voxel sits at world point `centre` (mm)."""
        origin = tuple(float(c - (n - 1) / 2 * s) for n, s, c in zip(shape, spacing, centre))
        return cls(tuple(int(n) for n in shape), tuple(float(s) for s in spacing), origin)

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World coordinates of voxel centres along x, y and z (float32 1D arrays)."""
        return self._axes

    @cached_property
    def _axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(
            (o + s * np.arange(n)).astype(np.float32)
            for n, s, o in zip(self.shape, self.spacing, self.origin)
        )

    def affine(self) -> np.ndarray:
        """The 4x4 RAS affine: diag(+sx, +sy, +sz) with the grid origin as translation."""
        aff = np.diag([*self.spacing, 1.0])
        aff[:3, 3] = self.origin
        return aff

    def box(self, lo, hi) -> Index | None:
        """Index slices of the voxels whose centres lie in the world box [lo, hi]; None if empty."""
        out = []
        for a in range(3):
            i0 = int(np.ceil((lo[a] - self.origin[a]) / self.spacing[a]))
            i1 = int(np.floor((hi[a] - self.origin[a]) / self.spacing[a])) + 1
            i0, i1 = max(i0, 0), min(i1, self.shape[a])
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return tuple(out)

    def box_coords(self, sl: Index) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable world coordinates (x[:,None,None], y[None,:,None], z[None,None,:]) of a box."""
        xs, ys, zs = self.axes()
        return xs[sl[0], None, None], ys[None, sl[1], None], zs[None, None, sl[2]]

    def sub(self, box: Index) -> Grid:
        """The grid of the voxels inside `box` (same spacing, shifted origin)."""
        return Grid(
            tuple(s.stop - s.start for s in box),
            self.spacing,
            tuple(o + s.start * sp for o, s, sp in zip(self.origin, box, self.spacing)),
        )

    def index_of(self, p) -> tuple[int, int, int] | None:
        """Nearest voxel index of world point `p`, or None outside the grid."""
        idx = tuple(
            int(round((c - o) / sp)) for c, o, sp in zip(np.asarray(p).tolist(), self.origin, self.spacing)
        )
        if all(0 <= i < n for i, n in zip(idx, self.shape)):
            return idx
        return None


def smooth_field(rng: np.random.Generator, shape, n_freq: int = 3, amplitude: float = 1.0) -> np.ndarray:
    """A smooth random scalar field on a grid, as a separable low-frequency cosine series.

    A tensor product of 1D cosine bases with random coefficients (decaying with frequency) is a
    smooth random field that costs three small matrix products, much cheaper than upsampling a coarse
    random grid with `scipy.ndimage.zoom`.
    """
    coef = rng.standard_normal((n_freq,) * 3).astype(np.float32)
    k = np.arange(n_freq, dtype=np.float32)
    coef /= 1.0 + k[:, None, None] + k[None, :, None] + k[None, None, :]
    coef[0, 0, 0] = 0.0
    phase = rng.uniform(0, np.pi, size=3)
    bases = [
        np.cos(np.pi * k[None, :] * np.linspace(0, 1, n, dtype=np.float32)[:, None] + phase[a]).astype(
            np.float32
        )
        for a, n in enumerate(shape)
    ]
    f = np.tensordot(bases[0], coef, axes=(1, 0))  # (X, ky, kz)
    f = np.tensordot(f, bases[1], axes=(1, 1))  # (X, kz, Y)
    f = np.tensordot(f, bases[2], axes=(1, 1))  # (X, Y, Z)
    std = float(f.std()) or 1.0
    return (f * (amplitude / std)).astype(np.float32)


def ellipsoid_level(x, y, z, centre, radii) -> np.ndarray:
    """Normalised ellipsoid level ((x-cx)/rx)^2 + ...: < 1 inside, 1 on the surface."""
    return (
        ((x - centre[0]) / radii[0]) ** 2
        + ((y - centre[1]) / radii[1]) ** 2
        + ((z - centre[2]) / radii[2]) ** 2
    )


@dataclass
class Segment:
    """A cylinder (capsule) between two world points with radii tapering from r0 to r1 (mm)."""

    p0: np.ndarray
    p1: np.ndarray
    r0: float
    r1: float
    depth: int = 0

    @property
    def length(self) -> float:
        return float(np.linalg.norm(self.p1 - self.p0))

    @property
    def direction(self) -> np.ndarray:
        d = self.p1 - self.p0
        return d / (np.linalg.norm(d) + 1e-9)


def rasterise_segments(
    grid: Grid,
    segments: list[Segment],
    coverage: np.ndarray,
    mask: np.ndarray,
    scale: float = 1.0,
    wall: np.ndarray | None = None,
    wall_scale: float = 1.35,
) -> None:
    """Draw tubes into a partial-volume `coverage` map (max-combined) and a binary `mask`.

    Coverage ramps linearly over one in-plane voxel around the tube surface, so tubes thinner than a
    voxel still show up as faint partial-volume lines, as they do in real CT. The binary mask keeps
    voxels within max(r, 0.45 voxel) of the axis, so thin branches stay connected in the label map.
    With `wall`, a second coverage map of the same tubes widened by `wall_scale` is filled from the
    same distances (airway walls around their lumen) at no extra distance computation.
    Bounding boxes of all segments are computed at once; only the distance to each segment's axis is
    evaluated per segment, on its own box.
    """
    if not segments:
        return
    vox = min(grid.spacing)
    a, b = segment_arrays(segments)
    r0 = np.array([s.r0 for s in segments])
    r1 = np.array([s.r1 for s in segments])
    reach = np.maximum(r0, r1) * max(scale, wall_scale if wall is not None else 1.0) + vox
    org, sp = np.asarray(grid.origin), np.asarray(grid.spacing)
    i0 = np.maximum(np.ceil((np.minimum(a, b) - reach[:, None] - org) / sp).astype(int), 0)
    i1 = np.minimum(np.floor((np.maximum(a, b) + reach[:, None] - org) / sp).astype(int) + 1, grid.shape)
    xs, ys, zs = grid.axes()
    for k in np.flatnonzero((i1 > i0).all(1)):
        sl = (slice(i0[k, 0], i1[k, 0]), slice(i0[k, 1], i1[k, 1]), slice(i0[k, 2], i1[k, 2]))
        (ax, ay, az), (dx, dy, dz) = a[k].tolist(), (b[k] - a[k]).tolist()
        l2 = dx * dx + dy * dy + dz * dz + 1e-9
        rx, ry, rz = xs[sl[0], None, None] - ax, ys[None, sl[1], None] - ay, zs[None, None, sl[2]] - az
        t = np.clip((rx * dx + ry * dy + rz * dz) * (1.0 / l2), 0.0, 1.0)
        dist = np.sqrt((rx - t * dx) ** 2 + (ry - t * dy) ** 2 + (rz - t * dz) ** 2)
        r = float(r0[k]) + float(r1[k] - r0[k]) * t
        if wall is not None:
            np.maximum(wall[sl], np.clip((r * wall_scale + 0.5 * vox - dist) / vox, 0.0, 1.0), out=wall[sl])
        if scale != 1.0:
            r = r * scale
        np.maximum(coverage[sl], np.clip((r + 0.5 * vox - dist) / vox, 0.0, 1.0), out=coverage[sl])
        mask[sl] |= dist <= np.maximum(r, 0.45 * vox)


def segment_arrays(segments: list[Segment]) -> tuple[np.ndarray, np.ndarray]:
    """Start and end points of segments as two (M, 3) arrays (for repeated distance queries)."""
    return np.stack([s.p0 for s in segments]), np.stack([s.p1 for s in segments])


def tubes(
    grid: Grid, segments: list[Segment], *, scale: float = 1.0, wall_scale: float | None = None
) -> tuple[Index | None, np.ndarray, np.ndarray, np.ndarray | None]:
    """Rasterise tubes on the joint bounding box of `segments` only (see `rasterise_segments`).

    Returns:
        (box, coverage, mask, wall) with arrays shaped like `grid[box]` (wall None without
        `wall_scale`); box is None when the tubes miss the grid.
    """
    if not segments:
        return None, np.empty(0), np.empty(0), None
    ends = np.stack([p for s in segments for p in (s.p0, s.p1)])
    reach = max(max(s.r0, s.r1) for s in segments) * max(scale, wall_scale or 1.0) + 2 * min(grid.spacing)
    box = grid.box(ends.min(0) - reach, ends.max(0) + reach)
    if box is None:
        return None, np.empty(0), np.empty(0), None
    sub = grid.sub(box)
    cov = np.zeros(sub.shape, np.float32)
    mask = np.zeros(sub.shape, bool)
    wall = np.zeros(sub.shape, np.float32) if wall_scale else None
    rasterise_segments(sub, segments, cov, mask, scale=scale, wall=wall, wall_scale=wall_scale or 1.35)
    return box, cov, mask, wall


def point_segment_distance(points: np.ndarray, segments) -> np.ndarray:
    """Distance (mm) from each of N points to the nearest of M segment axes: (N,) array.

    `segments` is a list of `Segment` or the `(starts, ends)` pair from `segment_arrays`.
    """
    if len(segments) == 0:
        return np.full(len(points), np.inf)
    a, b = segment_arrays(segments) if isinstance(segments, list) else segments
    d = b - a
    l2 = (d**2).sum(1) + 1e-9
    rel = points[:, None, :] - a[None]
    t = np.clip((rel * d[None]).sum(-1) / l2[None], 0, 1)
    closest = a[None] + t[..., None] * d[None]
    return np.sqrt(((points[:, None, :] - closest) ** 2).sum(-1)).min(1)
