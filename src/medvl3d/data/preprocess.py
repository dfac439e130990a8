"""Preprocessing as data: a small spec that is saved with a checkpoint and reapplied exactly.

Order of operations (images and labels together, geometry tracked in the affine):
orient -> resample (images trilinear, labels nearest) -> intensity (CT window in HU -> [0, 1], MR
percentiles -> [0, 1]) -> optional foreground crop -> optional centre crop/pad to a fixed size.

Resampling uses ``torch.nn.functional.interpolate`` rather than MONAI's ``Spacing`` (grid_sample):
on a 512x512x133 int16 CT at 0.7x0.7x2.5 mm -> 1.5 mm, 2 CPU threads, interpolate took 0.35-0.53 s
against 2.4 s for ``Spacing`` (measured on a shared, loaded machine). The grid is chosen so that
interpolate's ``align_corners=False`` convention is exact: with a fixed scale factor s = old/new
spacing, output voxel j samples input coordinate (j + 0.5) / s - 0.5, so the new affine is the old
one times diag(1/s) plus a half-voxel shift (see :func:`resample`). Crops and pads reuse MONAI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from medvl3d.data.io import Volume, reorient_array, spacing_from_affine
from medvl3d.typed import build_dataclass, to_plain

_VALID_AXES = ({"L", "R"}, {"A", "P"}, {"S", "I"})

#: Largest grid a volume may be resampled to (2**31 voxels: 8 GiB as float32). A bigger one comes from a
#: wrong header (1000 mm voxels) or a wrong spacing option, and would fail deep inside torch.
MAX_RESAMPLED_VOXELS = 2**31


def _tuple(value: Any, n: int, name: str, kind: type = float) -> tuple | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        value = [value] * n
    value = tuple(kind(v) for v in value)
    if len(value) != n:
        raise ValueError(f"PreprocessSpec.{name}: expected {n} values, got {len(value)}")
    return value


@dataclass
class IntensitySpec:
    """Per-modality intensity mapping to [0, 1] (values clipped).

    Attributes:
        ct_window: (lo, hi) in HU for CT; CT stays in HU until this window.
        mr_percentiles: (p_lo, p_hi) percentiles for MR (robust to the arbitrary MR scale).
        unknown_as: "CT" or "MR": which rule applies to volumes of unknown modality.
    """

    ct_window: tuple[float, float] = (-1000.0, 1000.0)
    mr_percentiles: tuple[float, float] = (0.5, 99.5)
    unknown_as: str = "MR"

    def __post_init__(self) -> None:
        self.ct_window = _tuple(self.ct_window, 2, "intensity.ct_window")  # type: ignore[assignment]
        self.mr_percentiles = _tuple(self.mr_percentiles, 2, "intensity.mr_percentiles")  # type: ignore
        lo, hi = self.ct_window
        if not lo < hi:
            raise ValueError(f"PreprocessSpec.intensity.ct_window: need lo < hi, got {self.ct_window}")
        plo, phi = self.mr_percentiles
        if not 0 <= plo < phi <= 100:
            raise ValueError(
                f"PreprocessSpec.intensity.mr_percentiles: need 0 <= lo < hi <= 100, got {plo, phi}"
            )
        if self.unknown_as not in ("CT", "MR"):
            raise ValueError(
                f"PreprocessSpec.intensity.unknown_as: must be 'CT' or 'MR', got {self.unknown_as!r}"
            )


@dataclass
class PreprocessSpec:
    """What is done to every volume before the model sees it; saved beside checkpoints.

    Attributes:
        orientation: target axis code (e.g. "RAS"), reached by exact flips/permutations.
        spacing: target voxel size in mm per array axis, or None to keep the native grid.
        intensity: per-modality intensity mapping (:class:`IntensitySpec`).
        spatial_size: centre crop/pad to this (X, Y, Z) size, or None.
        foreground_crop: crop to the bounding box of voxels above ``foreground_threshold``
            (on the [0, 1] intensities), plus ``foreground_margin`` voxels.
        antialias: low-pass the image before downsampling it (a Gaussian of sigma
            ``0.4 * sqrt(f^2 - 1)`` voxels along an axis shrunk f-fold), as a thicker reconstruction
            averages: interpolating a fine grid alone keeps its noise, which then looks nothing like a
            scan acquired at the coarse spacing.
    """

    orientation: str = "RAS"
    spacing: tuple[float, float, float] | None = (1.5, 1.5, 1.5)
    intensity: IntensitySpec = field(default_factory=IntensitySpec)
    spatial_size: tuple[int, int, int] | None = None
    foreground_crop: bool = False
    foreground_threshold: float = 0.0
    foreground_margin: int = 0
    antialias: bool = False

    def __post_init__(self) -> None:
        code = str(self.orientation).upper()
        if len(code) != 3 or any(sum(c in axis for c in code) != 1 for axis in _VALID_AXES):
            raise ValueError(
                f"PreprocessSpec.orientation: {self.orientation!r} is not an axis code like 'RAS'"
            )
        self.orientation = code
        self.spacing = _tuple(self.spacing, 3, "spacing")  # type: ignore[assignment]
        if self.spacing is not None and min(self.spacing) <= 0:
            raise ValueError(f"PreprocessSpec.spacing: must be positive, got {self.spacing}")
        self.spatial_size = _tuple(self.spatial_size, 3, "spatial_size", int)  # type: ignore[assignment]
        if self.spatial_size is not None and min(self.spatial_size) <= 0:
            raise ValueError(f"PreprocessSpec.spatial_size: must be positive, got {self.spatial_size}")
        if isinstance(self.intensity, dict):
            self.intensity = build_dataclass(IntensitySpec, self.intensity, "PreprocessSpec.intensity")
        if self.foreground_margin < 0:
            raise ValueError(f"PreprocessSpec.foreground_margin: must be >= 0, got {self.foreground_margin}")

    def to_dict(self) -> dict:
        """JSON-safe dict (tuples become lists)."""
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessSpec:
        """Inverse of :meth:`to_dict`; unknown keys and wrongly typed values are errors naming them."""
        return build_dataclass(cls, data, "PreprocessSpec", ValueError)

    def __call__(self, sample: dict) -> dict:
        """Apply to a dataset sample, so a spec can be passed as a dataset ``transform``."""
        return preprocess_sample(sample, self)


def antialias(image: torch.Tensor, spacing: tuple[float, ...], target: tuple[float, ...]) -> torch.Tensor:
    """Gaussian low-pass of a ``[C, X, Y, Z]`` image along the axes that ``target`` spacing shrinks.

    sigma = 0.4 * sqrt(f^2 - 1) voxels for an f-fold downsampling (0 where f <= 1); scipy's separable
    filter, which is what this needs (MONAI's GaussianSmooth runs the same kernels through torch).
    """
    from scipy import ndimage

    sigma = [0.4 * float(np.sqrt(max((t / s) ** 2 - 1.0, 0.0))) for s, t in zip(spacing, target)]
    if max(sigma) < 0.3:  # under a third of a voxel: nothing to remove
        return image
    out = ndimage.gaussian_filter(image.float().numpy(), sigma=[0.0, *sigma], truncate=2.5)
    return torch.from_numpy(out)


def resample(
    image: torch.Tensor,
    affine: np.ndarray,
    spacing: tuple[float, float, float],
    *,
    label: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, np.ndarray]:
    """Resample ``[C, X, Y, Z]`` image (trilinear) and label (nearest) to ``spacing`` mm.

    The volume's extent is kept (align_corners=False convention). Returns the new image, label and the
    affine that maps the new voxel centres exactly.
    """
    old = np.asarray(spacing_from_affine(affine))
    scale = old / np.asarray(spacing, dtype=np.float64)  # > 1 upsamples
    if np.allclose(scale, 1.0, rtol=0, atol=1e-9):
        return image, label, np.asarray(affine, dtype=np.float64)
    img = image.float()
    # Interpolate in the tensor's memory order: a Fortran-ordered volume (as NIfTI stores it) is a
    # C-contiguous volume with reversed axes, which avoids a transposing copy of the full input.
    perm = sorted(range(3), key=lambda a: -img.stride(a + 1))
    view = img.permute(0, *[p + 1 for p in perm])
    if not view.is_contiguous():
        perm, view = [0, 1, 2], img.contiguous()
    out = F.interpolate(
        view[None],
        scale_factor=tuple(float(scale[p]) for p in perm),
        mode="trilinear",
        align_corners=False,
        recompute_scale_factor=False,
    )[0]
    out = out.permute(0, *[perm.index(a) + 1 for a in range(3)])
    # Output voxel j <- input coordinate (j + 0.5) / s - 0.5 along each axis.
    step = np.eye(4)
    step[:3, :3] = np.diag(1.0 / scale)
    step[:3, 3] = 0.5 / scale - 0.5
    new_affine = np.asarray(affine, dtype=np.float64) @ step
    new_label = None
    if label is not None:
        # Nearest by index gathering: exact for any integer dtype, same convention as "nearest-exact".
        idx = []
        for axis, (n_in, n_out) in enumerate(zip(label.shape[1:], out.shape[1:])):
            src = np.floor((np.arange(n_out) + 0.5) / scale[axis]).astype(np.int64)
            idx.append(torch.from_numpy(np.clip(src, 0, n_in - 1)))
        new_label = label[:, idx[0]][:, :, idx[1]][:, :, :, idx[2]]
    return out, new_label, new_affine


# Target voxels per grid_sample call. The sampling grid of a slab (3 float32 per voxel) and its float64
# scratch then take ~50 MB, so the memory beyond the output stays small for any target size.
_SLAB_VOXELS = 1 << 21


def _grid_terms(
    m: np.ndarray, size: tuple[int, ...], target_shape: tuple[int, ...]
) -> list[list[torch.Tensor]]:
    """``terms[c][a]``: 1-D float64 share of target axis ``a`` in normalised source coordinate ``c``.

    The grid_sample coordinate (align_corners=True) of source axis c is 2 * vox_c / (size_c - 1) - 1 with
    vox = m @ (i, j, k, 1); it is a sum of one term per target axis, so the full grid never exists.
    """
    terms = []
    for c in range(3):
        unit = 2.0 / max(size[c] - 1, 1)
        row = [torch.arange(n, dtype=torch.float64) * (m[c, a] * unit) for a, n in enumerate(target_shape)]
        row[2] += m[c, 3] * unit - 1.0
        terms.append(row)
    return terms


def resample_to_grid(
    array: torch.Tensor,
    affine: np.ndarray,
    target_shape: tuple[int, int, int],
    target_affine: np.ndarray,
    *,
    mode: str = "nearest",
) -> torch.Tensor:
    """Resample ``[C, X, Y, Z]`` data from one voxel grid onto another, via world coordinates.

    The inverse of preprocessing: e.g. a prediction on the preprocessed grid mapped back onto the raw
    RAS grid of the input, before :func:`medvl3d.data.io.write_like`. ``mode`` is "nearest" (labels) or
    "trilinear". Voxels outside the source grid get 0.

    The target is filled slab by slab along X from per-axis coordinate vectors (same values as the former
    whole-grid float64 meshgrid). 240x240x200 -> 512x512x300, 2 threads on a loaded machine: peak RSS grew
    by 0.34-0.42 GiB for the 0.29 GiB float32 output (0.67 GiB for a 0.59 GiB int64 label), against
    7.9 GiB before, in 5-6 s instead of 10-19 s.
    """
    if array.ndim != 4:
        raise ValueError(f"resample_to_grid: array must be [C, X, Y, Z], got shape {tuple(array.shape)}")
    if mode not in ("nearest", "trilinear"):
        raise ValueError(f"resample_to_grid: mode must be 'nearest' or 'trilinear', got {mode!r}")
    target_shape = tuple(int(n) for n in target_shape)
    # target voxel -> source voxel coordinates
    m = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ np.asarray(target_affine, dtype=np.float64)
    terms = _grid_terms(m, tuple(array.shape[1:]), target_shape)
    src = array[None].float()
    out = torch.empty(
        (array.shape[0], *target_shape), dtype=array.dtype if mode == "nearest" else torch.float32
    )
    nx, ny, nz = target_shape
    rows = max(1, _SLAB_VOXELS // max(ny * nz, 1))
    for x0 in range(0, nx, rows):
        x1 = min(x0 + rows, nx)
        grid = torch.empty((1, x1 - x0, ny, nz, 3), dtype=torch.float32)
        for c, (tx, ty, tz) in enumerate(terms):
            # grid_sample's last axis is (x=W, y=H, z=D) for input [N, C, D, H, W]; our array is
            # [C, X, Y, Z], so D=X, H=Y, W=Z and the coordinates go in reversed order.
            grid[0, ..., 2 - c] = (tx[x0:x1, None, None] + ty[None, :, None]) + tz
        out[:, x0:x1] = F.grid_sample(
            src, grid, mode="nearest" if mode == "nearest" else "bilinear", align_corners=True
        )[0]
    return out


def normalise_intensity(image: torch.Tensor, modality: str, spec: IntensitySpec) -> torch.Tensor:
    """Map intensities to [0, 1] (clipped): CT by the HU window, MR by percentiles."""
    rule = modality if modality in ("CT", "MR") else spec.unknown_as
    if rule == "CT":
        # Same result as MONAI's ScaleIntensityRange(lo, hi, 0, 1, clip=True), computed in place on one
        # new tensor: 0.13-0.15 s instead of 0.46-0.49 s on 239x239x221 voxels (loaded 2-core machine).
        lo, hi = spec.ct_window
        out = torch.sub(image.float(), lo)
        return out.mul_(1.0 / (hi - lo)).clamp_(0.0, 1.0)
    plo, phi = spec.mr_percentiles
    # MONAI is imported where used: importing it costs seconds, which every CLI call would pay.
    from monai.transforms import ScaleIntensityRangePercentiles

    tr = ScaleIntensityRangePercentiles(lower=plo, upper=phi, b_min=0.0, b_max=1.0, clip=True)
    return torch.as_tensor(tr(image.float())).float()


def _crop_pad(
    image: torch.Tensor,
    label: torch.Tensor | None,
    affine: np.ndarray,
    start: np.ndarray,
    size: tuple[int, ...],
) -> tuple[torch.Tensor, torch.Tensor | None, np.ndarray]:
    """Take the box [start, start + size) (may reach outside: zero padding); shift the affine to match."""
    shape = np.asarray(image.shape[1:])
    stop = start + np.asarray(size)
    src_lo, src_hi = np.maximum(start, 0), np.minimum(stop, shape)
    dst_lo = src_lo - start

    def take(x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros((x.shape[0], *size), dtype=x.dtype)
        if np.all(src_hi > src_lo):
            s = tuple(slice(a, b) for a, b in zip(src_lo, src_hi))
            d = tuple(slice(a, a + (b - c)) for a, b, c in zip(dst_lo, src_hi, src_lo))
            out[(slice(None), *d)] = x[(slice(None), *s)]
        return out

    shift = np.eye(4)
    shift[:3, 3] = start
    return take(image), (take(label) if label is not None else None), np.asarray(affine) @ shift


def _check_resampled_size(
    shape: tuple[int, ...], affine: np.ndarray, spacing: tuple[float, ...], where: str
) -> None:
    """Refuse a resampling whose output grid (``floor(n * old / new)`` per axis) would not fit in memory."""
    old = np.asarray(spacing_from_affine(affine))
    out = np.floor(np.asarray(shape) * old / np.asarray(spacing, dtype=np.float64))
    if float(np.prod(out)) > MAX_RESAMPLED_VOXELS:
        size, new = " x ".join(f"{v:g}" for v in old), " x ".join(f"{v:g}" for v in spacing)
        raise ValueError(
            f"{where}: resampling {'x'.join(map(str, shape))} voxels of {size} mm to {new} mm would make "
            f"{'x'.join(f'{v:.0f}' for v in out)} voxels ({float(np.prod(out)) * 4 / 2**40:.3g} TiB as "
            f"float32), over the limit of {MAX_RESAMPLED_VOXELS} voxels; check the file's voxel size or the "
            "preprocessing spacing"
        )


def preprocess_sample(sample: dict, spec: PreprocessSpec) -> dict:
    """Apply ``spec`` to a dataset sample (``image`` [C, X, Y, Z] in HU/a.u., optional ``label``).

    Returns a new sample; ``meta`` gains the new ``affine``, ``spacing`` and ``shape`` and keeps the
    raw grid as ``raw_affine``/``raw_shape`` so predictions can be mapped back
    (:func:`resample_to_grid`, then :func:`medvl3d.data.io.write_like`).
    """
    meta = dict(sample.get("meta", {}))
    if "affine" not in meta:
        raise ValueError(f"{meta.get('path', 'sample')}: sample meta has no 'affine'; cannot preprocess")
    affine = np.asarray(meta["affine"], dtype=np.float64)
    image = torch.as_tensor(sample["image"])
    label = sample.get("label")
    label = torch.as_tensor(label) if label is not None else None
    if image.ndim != 4:
        raise ValueError(
            f"{meta.get('path', 'sample')}: image must be [C, X, Y, Z], got shape {tuple(image.shape)}"
        )
    if label is not None and label.shape[1:] != image.shape[1:]:
        raise ValueError(
            f"{meta.get('path', 'sample')}: label shape {tuple(label.shape)} differs from "
            f"image shape {tuple(image.shape)}"
        )
    raw_affine, raw_shape = affine.copy(), list(image.shape[1:])

    if "".join(nib.aff2axcodes(affine)) != spec.orientation:
        img_np, new_affine = reorient_array(np.moveaxis(image.numpy(), 0, -1), affine, spec.orientation)
        image = torch.from_numpy(np.ascontiguousarray(np.moveaxis(img_np, -1, 0)))
        if label is not None:
            lab_np, _ = reorient_array(np.moveaxis(label.numpy(), 0, -1), affine, spec.orientation)
            label = torch.from_numpy(np.ascontiguousarray(np.moveaxis(lab_np, -1, 0)))
        affine = new_affine

    if spec.spacing is not None:
        _check_resampled_size(tuple(image.shape[1:]), affine, spec.spacing, str(meta.get("path", "sample")))
        if spec.antialias:
            image = antialias(image, spacing_from_affine(affine), spec.spacing)
        image, label, affine = resample(image, affine, spec.spacing, label=label)
    image = normalise_intensity(image, str(meta.get("modality", "unknown")), spec.intensity)

    if spec.foreground_crop:
        from monai.transforms.utils import generate_spatial_bounding_box

        lo, hi = generate_spatial_bounding_box(
            image,
            select_fn=lambda x: x > spec.foreground_threshold,
            margin=spec.foreground_margin,
            allow_smaller=True,
        )
        if all(b > a for a, b in zip(lo, hi)):
            size = tuple(int(b - a) for a, b in zip(lo, hi))
            image, label, affine = _crop_pad(image, label, affine, np.asarray(lo), size)
    if spec.spatial_size is not None:
        # Centre crop/pad with MONAI's ResizeWithPadOrCrop convention (CenterSpatialCrop: start =
        # shape//2 - size//2; SpatialPad: (size - shape)//2 before, the odd voxel after).
        shape = np.asarray(image.shape[1:])
        size = np.asarray(spec.spatial_size)
        start = np.where(shape > size, shape // 2 - size // 2, -((size - shape) // 2))
        image, label, affine = _crop_pad(image, label, affine, start, spec.spatial_size)

    meta.update(
        affine=affine.tolist(),
        spacing=list(spacing_from_affine(affine)),
        shape=list(image.shape[1:]),
        raw_affine=raw_affine.tolist(),
        raw_shape=raw_shape,
    )
    out = dict(sample)
    out["image"] = image.float().contiguous()
    if label is not None:
        out["label"] = label.contiguous()
    out["meta"] = meta
    return out


def preprocess_volume(volume: Volume, spec: PreprocessSpec) -> np.ndarray:
    """Preprocess one :class:`Volume` into a ``[1, X, Y, Z]`` float32 array (as :func:`preprocess_sample`)."""
    sample = {
        "image": torch.from_numpy(np.asarray(volume.array))[None],
        "meta": {"affine": volume.affine.tolist(), "modality": volume.modality, "path": str(volume.path)},
    }
    return preprocess_sample(sample, spec)["image"].numpy()
