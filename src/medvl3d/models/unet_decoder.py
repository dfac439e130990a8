"""Segmentation decoder blocks: a U-Net decoder over an encoder's multi-scale feature maps, and UNETR's
neck that turns ViT token grids into such a pyramid.

Both encoders' `forward_intermediates(x)` plug in directly:

    feats = resenc.forward_intermediates(x)  # stage i at stride stem_stride * 2**i, finest first
    strides = [(resenc.cfg.stem_stride * 2**i,) * 3 for i in range(len(feats))]
    decoder = UNetDecoder(resenc.widths, strides, n_classes=3)
    logits = decoder(feats, x)

    neck = UNETRNeck(vit.num_features, vit.patch_size, n_inputs=4, out_channels=[16, 32, 64, 128])
    decoder = UNetDecoder(neck.out_channels, neck.strides, n_classes=3)
    logits = decoder(neck(vit.forward_intermediates(x)), x)

The convolution blocks are MONAI's (`UnetBasicBlock`, `UnetResBlock`, `UnetOutBlock`, and its
`get_conv_layer` for the other convolutions); where MONAI's composite up-blocks cannot do what is
needed, the reason is given beside the replacement. MONAI is imported where the blocks are built, as
elsewhere in medvl3d: `import monai` loads all of its networks and takes seconds.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medvl3d.models.common import check_volume_batch

NORMS = ("instance", "batch", "group")

Stride = tuple[int, int, int]


def _norm_name(norm: str, channels: int) -> tuple[str, dict]:
    """MONAI norm spec for a block of `channels` outputs.

    Instance norm is affine as in nnU-Net (MONAI's default is not); group norm uses up to 8 groups, as
    many as divide `channels`.
    """
    if norm == "instance":
        return ("instance", {"affine": True})
    if norm == "batch":
        return ("batch", {})
    return ("group", {"num_groups": math.gcd(8, channels)})


def _conv_block(cin: int, cout: int, norm: str, res_block: bool) -> nn.Module:
    """Two 3x3x3 conv-norm-LeakyReLU (nnU-Net), or MONAI's residual variant of it."""
    from monai.networks.blocks import UnetBasicBlock, UnetResBlock

    block = UnetResBlock if res_block else UnetBasicBlock
    return block(3, cin, cout, kernel_size=3, stride=1, norm_name=_norm_name(norm, cout))


def _transposed(cin: int, cout: int, factor: Stride) -> nn.Module:
    """Transposed convolution upsampling by `factor` per axis (kernel = stride, as in MONAI's up-blocks)."""
    from monai.networks.blocks.dynunet_block import get_conv_layer

    return get_conv_layer(3, cin, cout, kernel_size=factor, stride=factor, conv_only=True, is_transposed=True)


def _pointwise(cin: int, cout: int) -> nn.Module:
    """MONAI's `UnetOutBlock`, a 1x1x1 convolution with bias: a logits head or a projection."""
    from monai.networks.blocks import UnetOutBlock

    return UnetOutBlock(3, cin, cout)


def fit_to_size(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Crop or zero-pad the far end of each spatial axis of `x` (`[B, C, *spatial]`) to `size`.

    Why the far end: a padded stride-s convolution and a kernel-s transposed convolution both keep
    voxel 0 on voxel 0, so a size mismatch from rounding odd sizes up (or down) sits at the far end.
    """
    if len(size) != x.ndim - 2:
        raise ValueError(
            f"fit_to_size: size {tuple(size)} does not match the spatial dims of {tuple(x.shape)}"
        )
    x = x[(..., *(slice(0, s) for s in size))]
    pad: list[int] = []
    for have, want in zip(reversed(x.shape[2:]), reversed(size)):
        pad += [0, want - have]  # F.pad lists the last axis first
    return F.pad(x, pad) if any(pad) else x


def _is_pos_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1


def _positive_ints(values: Sequence[int], what: str) -> list[int]:
    out = list(values)
    if not out or not all(_is_pos_int(v) for v in out):
        raise ValueError(f"{what} must be a non-empty list of ints >= 1, got {values!r}")
    return [int(v) for v in out]


def _check_strides(strides: Sequence[Sequence[int]], where: str) -> list[Stride]:
    """Per-axis strides, finest first: three ints >= 1 each, each a whole multiple of the one before."""
    out: list[Stride] = []
    for i, s in enumerate(strides):
        t = tuple(s) if isinstance(s, Sequence) else (s,)
        if len(t) != 3 or not all(_is_pos_int(v) for v in t):
            raise ValueError(f"{where}: strides[{i}]={s!r} must be three ints >= 1 (X, Y, Z)")
        out.append((int(t[0]), int(t[1]), int(t[2])))
    for i in range(1, len(out)):
        if any(b % a for a, b in zip(out[i - 1], out[i])):
            raise ValueError(
                f"{where}: strides[{i}]={out[i]} is not a whole multiple per axis of strides[{i - 1}]="
                f"{out[i - 1]}; strides go finest first, each 1, 2, 4 ... times the one before"
            )
    return out


def _ratio(coarse: Stride, fine: Stride) -> Stride:
    return (coarse[0] // fine[0], coarse[1] // fine[1], coarse[2] // fine[2])


class UpStage(nn.Module):
    """One decoder level: upsample the coarser map, fit it to the skip's size, concatenate, conv block.

    MONAI's `UnetUpBlock`/`UnetrUpBlock` do the same but concatenate straight after the transposed
    convolution, so they fail on odd input sizes (the upsampled map is one voxel larger than the skip)
    and force the skip to have as many channels as the output; hence this composition of their parts.
    """

    def __init__(
        self, cin: int, skip_channels: int, cout: int, factor: Stride, norm: str, res_block: bool
    ) -> None:
        super().__init__()
        self.up = _transposed(cin, cout, factor)
        self.block = _conv_block(cout + skip_channels, cout, norm, res_block)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """`[B, cin, *coarse]` and `[B, skip_channels, *fine]` -> `[B, cout, *fine]`."""
        x = fit_to_size(self.up(x), skip.shape[2:])
        return self.block(torch.cat([x, skip], dim=1))


class UNetDecoder(nn.Module):
    """U-Net decoder producing logits at the input resolution from encoder feature maps.

    Decoder levels, finest first, are a full-resolution level when `strides[0]` is not (1, 1, 1) (a conv
    block on the image itself, UNETR's "encoder1"), then one level per feature map except the coarsest,
    which is the bottleneck the decoder starts from. Each level upsamples the level below by the per-axis
    stride ratio, concatenates its skip and applies a conv block.

    Args:
        in_channels: channels of encoder feature map i, finest first.
        strides: per-axis stride of feature map i relative to the input volume, finest first; each a whole
            multiple (1, 2, 4 ...) of the one before.
        n_classes: output channels (logits).
        in_chans: image channels (for the full-resolution level).
        widths: one width per decoder level, finest first (`len(decoder.level_strides)` of them). Default:
            each level's skip channels, with the full-resolution level as wide as feature map 0 (as in
            UNETR, whose two finest levels share `feature_size`).
        deep_supervision: in training mode also return logits at each coarser decoder level.
        norm: "instance" (affine), "batch" or "group".
        res_block: use MONAI's residual conv block instead of the plain nnU-Net one.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        strides: Sequence[tuple[int, int, int]],
        n_classes: int,
        in_chans: int = 1,
        widths: Sequence[int] | None = None,
        deep_supervision: bool = False,
        norm: str = "instance",
        res_block: bool = False,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.in_channels = _positive_ints(in_channels, f"{name}: in_channels")
        self.strides = _check_strides(strides, name)
        self._check_args(n_classes, in_chans, norm)
        has_stem = self.strides[0] != (1, 1, 1)
        if not has_stem and len(self.in_channels) == 1:
            raise ValueError(f"{name}: a single full-resolution feature map leaves nothing to decode")
        self.in_chans = in_chans
        self.deep_supervision = deep_supervision
        self.level_strides: list[Stride] = ([(1, 1, 1)] if has_stem else []) + self.strides[:-1]
        self.widths = self._resolve_widths(widths, has_stem)
        skip_channels = ([self.widths[0]] if has_stem else []) + self.in_channels[:-1]
        below_channels = self.widths[1:] + self.in_channels[-1:]
        below_strides = self.level_strides[1:] + self.strides[-1:]
        self.stem = _conv_block(in_chans, self.widths[0], norm, res_block) if has_stem else None
        self.stages = nn.ModuleList(
            UpStage(cb, cs, w, _ratio(sb, s), norm, res_block)
            for cb, cs, w, sb, s in zip(
                below_channels, skip_channels, self.widths, below_strides, self.level_strides
            )
        )
        n_heads = len(self.widths) if deep_supervision else 1
        self.heads = nn.ModuleList(_pointwise(w, n_classes) for w in self.widths[:n_heads])

    def _check_args(self, n_classes: int, in_chans: int, norm: str) -> None:
        name = type(self).__name__
        if len(self.strides) != len(self.in_channels):
            raise ValueError(
                f"{name}: {len(self.in_channels)} in_channels but {len(self.strides)} strides; "
                "give one stride per feature map"
            )
        if norm not in NORMS:
            raise ValueError(f"{name}: norm must be one of {NORMS}, got {norm!r}")
        if n_classes < 1 or in_chans < 1:
            raise ValueError(f"{name}: n_classes and in_chans must be >= 1, got {n_classes}, {in_chans}")

    def _resolve_widths(self, widths: Sequence[int] | None, has_stem: bool) -> list[int]:
        n_levels = len(self.level_strides)
        if widths is None:
            return ([self.in_channels[0]] if has_stem else []) + self.in_channels[:-1]
        out = _positive_ints(widths, f"{type(self).__name__}: widths")
        if len(out) != n_levels:
            raise ValueError(
                f"{type(self).__name__}: widths needs one entry per decoder level ({n_levels}: strides "
                f"{self.level_strides}), got {len(out)}"
            )
        return out

    def _check_inputs(self, features: Sequence[torch.Tensor], image: torch.Tensor | None) -> None:
        """Clear errors for a wrong number, order, width or size of feature maps, or a missing image."""
        name = type(self).__name__
        if len(features) != len(self.in_channels):
            raise ValueError(
                f"{name} expects {len(self.in_channels)} feature maps (finest first), got {len(features)}"
            )
        if image is None:
            if self.stem is not None:
                raise ValueError(
                    f"{name}: the finest feature map has stride {self.strides[0]}, so the full-resolution "
                    "level needs the input image"
                )
            ref = features[0]
        else:
            check_volume_batch(image, self.in_chans, name)
            ref = image
        for i, (f, c, s) in enumerate(zip(features, self.in_channels, self.strides)):
            if f.ndim != 5 or f.shape[0] != ref.shape[0] or f.shape[1] != c:
                raise ValueError(
                    f"{name}: features[{i}] should be [{ref.shape[0]}, {c}, X, Y, Z], got {tuple(f.shape)}"
                )
            # Encoders round sizes up (padded strided convs) or down (patches); accept either.
            lo = [r // st for r, st in zip(ref.shape[2:], s)]
            hi = [-(-r // st) for r, st in zip(ref.shape[2:], s)]
            if not all(a <= v <= b for a, v, b in zip(lo, f.shape[2:], hi)):
                raise ValueError(
                    f"{name}: features[{i}] has size {tuple(f.shape[2:])}, expected {tuple(hi)} for input "
                    f"{tuple(ref.shape[2:])} at stride {s}; are the maps finest first?"
                )

    def forward(
        self, features: Sequence[torch.Tensor], image: torch.Tensor | None = None
    ) -> torch.Tensor | list[torch.Tensor]:
        """Logits `[B, n_classes, X, Y, Z]` at the size of `image` (or of `features[0]` at stride 1).

        Args:
            features: encoder feature maps, finest first, as `forward_intermediates` returns them.
            image: the input volume `[B, in_chans, X, Y, Z]`; required when `strides[0]` is not 1.

        Returns:
            The full-resolution logits; with deep supervision in training mode, a list of logits at every
            decoder level, finest first (what `monai.losses.DeepSupervisionLoss` takes).
        """
        self._check_inputs(features, image)
        skips = list(features[:-1])
        if self.stem is not None:
            skips.insert(0, self.stem(image))
        supervise = self.deep_supervision and self.training
        x = features[-1]
        logits = []
        for level in reversed(range(len(self.stages))):
            x = self.stages[level](x, skips[level])
            if supervise:
                logits.append(self.heads[level](x))
        return logits[::-1] if supervise else self.heads[0](x)


def _check_patch(patch_size: Sequence[int], n: int, where: str) -> Stride:
    patch = tuple(patch_size) if isinstance(patch_size, Sequence) else (patch_size,)
    if len(patch) != 3 or not all(_is_pos_int(p) and p & (p - 1) == 0 for p in patch):
        raise ValueError(f"{where}: patch_size must be three powers of two (X, Y, Z), got {patch_size!r}")
    if not _is_pos_int(n):
        raise ValueError(f"{where}: needs n_inputs >= 1 token grids, got {n!r}")
    return (int(patch[0]), int(patch[1]), int(patch[2]))


def unetr_strides(patch_size: Sequence[int], n: int) -> list[Stride]:
    """Strides of `UNETRNeck`'s outputs, finest first: the deepest at `patch_size`, each shallower one
    halved per axis, never below 1 (so `unetr_strides((16, 16, 8), 5)[0] == (1, 1, 1)`)."""
    patch = _check_patch(patch_size, n, "unetr_strides")
    return [
        (max(1, patch[0] >> k), max(1, patch[1] >> k), max(1, patch[2] >> k)) for k in range(n - 1, -1, -1)
    ]


def _progressive_up(cin: int, cout: int, factors: list[Stride], norm: str) -> nn.Module:
    """UNETR's projection-upsampling branch: a 1x1x1 projection when `factors` is empty, else a transposed
    conv, then (transposed conv, residual block) per further factor.

    This is the layout of MONAI's `UnetrPrUpBlock(conv_block=True, res_block=True)`, which however
    upsamples by one factor at every step and so cannot stop an axis at stride 1 (anisotropic patches
    such as (16, 16, 8)); hence a factor per step here.
    """
    if not factors:
        return _pointwise(cin, cout)
    layers = [_transposed(cin, cout, factors[0])]
    for f in factors[1:]:
        layers += [_transposed(cout, cout, f), _conv_block(cout, cout, norm, res_block=True)]
    return nn.Sequential(*layers)


class UNETRNeck(nn.Module):
    """UNETR's progressive upsampling of ViT token grids into a feature pyramid for `UNetDecoder`.

    Of `n_inputs` token grids (shallow to deep, all at stride `patch_size`), the deepest is projected and
    stays at `patch_size`; the one before is upsampled once (stride halved per axis, never below 1), the
    one before that twice, and so on. Outputs go finest first, at `self.strides` (`unetr_strides`).

    Args:
        width: channels of the token grids (the ViT width).
        patch_size: ViT patch size (X, Y, Z), powers of two.
        n_inputs: number of token grids.
        out_channels: channels of each output, finest first (one per input).
        norm: norm of the residual blocks: "instance" (affine), "batch" or "group".
    """

    def __init__(
        self,
        width: int,
        patch_size: tuple[int, int, int],
        n_inputs: int,
        out_channels: Sequence[int],
        norm: str = "instance",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        patch = _check_patch(patch_size, n_inputs, name)
        self.strides = unetr_strides(patch, n_inputs)
        self.out_channels = _positive_ints(out_channels, f"{name}: out_channels")
        self.width = _positive_ints([width], f"{name}: width")[0]
        if len(self.out_channels) != n_inputs:
            raise ValueError(
                f"{name}: {n_inputs} inputs need {n_inputs} out_channels, got {self.out_channels}"
            )
        if norm not in NORMS:
            raise ValueError(f"{name}: norm must be one of {NORMS}, got {norm!r}")
        self.branches = nn.ModuleList()
        for j, c in enumerate(self.out_channels):
            path = self.strides[j:][::-1]  # patch_size down to this output's stride
            factors = [_ratio(a, b) for a, b in zip(path, path[1:])]
            self.branches.append(_progressive_up(self.width, c, factors, norm))

    def forward(self, grids: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Token grids `[B, width, x, y, z]`, shallow to deep -> feature maps finest first, map j of size
        `grid * patch_size / strides[j]` with `out_channels[j]` channels."""
        name = type(self).__name__
        if len(grids) != len(self.branches):
            raise ValueError(f"{name} expects {len(self.branches)} token grids, got {len(grids)}")
        for i, g in enumerate(grids):
            if g.ndim != 5 or g.shape[1] != self.width or g.shape != grids[0].shape:
                raise ValueError(
                    f"{name}: grids[{i}] should be [B, {self.width}, x, y, z] like grids[0] "
                    f"{tuple(grids[0].shape)}, got {tuple(g.shape)}"
                )
        return [branch(g) for branch, g in zip(self.branches, grids)]
