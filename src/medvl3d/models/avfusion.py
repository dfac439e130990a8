"""Language-guided artery/vein segmentation (DESIGN.md, method C; arXiv 2501.03722): family "avfusion".

A pretrained image encoder (any vision-language checkpoint's tower, `create_model(..., encoder_from=PATH)`)
is kept frozen; bottleneck **adapters** after each of its blocks learn the task through a gate that starts
near zero, so training starts from the pretrained features. A U-Net decoder reads the encoder's pyramid
and its own strided view of the image up to the finest encoder map, and a pointwise head brings that to
the input resolution (`FullResolutionHead`: no 3x3x3 convolution runs there, which keeps a CPU training
step within about twice MONAI's UNet's, `benchmarks/bench_avfusion_step.py`). At the coarsest
`fusion_levels` points (the bottleneck, then decoder levels) the class tokens (the text embeddings of
"pulmonary artery", "pulmonary vein" and richer descriptions, projected) and the image features attend to
each other in **both directions**, and a learned per-level pair of **modality weights** decides how much
of each level's output comes from the image features and how much from what they read in the class
tokens. Each class token then becomes a mask: its dot product with the final per-voxel features
(one logit map per class, plus a learned background token), trained with Dice + cross-entropy
(`medvl3d.train.tasks.avfusion`).

The text embeddings are stored in the model as a buffer, so a checkpoint segments without a text
encoder; `embed_class_texts()` fills them from the sentence encoder named in the config (the task does
this once, before training). Two ablations are options of the same config:

- `conditioning="queries"`: learned class tokens instead of text (the same model without language);
- `adapters=False, freeze_encoder=False`: the encoder fine-tuned fully, without adapters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from medvl3d.models.clip import build_image_encoder
from medvl3d.models.common import EncoderHost, check_volume_batch
from medvl3d.models.config import ResEncConfig, VisionConfig, ViTConfig
from medvl3d.models.registry import Family, model_config, register_family, register_model
from medvl3d.models.segmentation import encoder_pyramid
from medvl3d.models.unet_decoder import UNetDecoder, fit_to_size
from medvl3d.typed import to_plain

__all__ = [
    "AvFusionConfig",
    "AvFusionModel",
    "BottleneckAdapter",
    "CrossModalFusion",
    "DEFAULT_CLASSES",
    "DEFAULT_CLASS_TEXTS",
]

DEFAULT_CLASSES: tuple[str, ...] = ("pulmonary_artery", "pulmonary_vein")
#: Per class, the texts whose mean (normalised) embedding is the class's text embedding.
DEFAULT_CLASS_TEXTS: tuple[tuple[str, ...], ...] = (
    (
        "pulmonary artery",
        "a pulmonary artery branch running beside a bronchus in the centre of a lung segment",
        "pulmonary arteries carry blood from the right ventricle through the hilum into the lungs",
    ),
    (
        "pulmonary vein",
        "a pulmonary vein branch running between lung segments, away from the bronchi",
        "pulmonary veins drain the lungs through the hilum into the left atrium",
    ),
)


@dataclass
class AvFusionConfig:
    """The language-guided fusion segmentation model (family "avfusion").

    Attributes:
        encoder: image encoder config (a VL checkpoint's tower when built with `encoder_from=`).
        classes: class names, in label order 1..K (background is 0); the training data's label names.
        class_texts: per class, one or more descriptions; the class's text embedding is their normalised
            mean (a prompt ensemble).
        conditioning: "text" (class tokens from the text embeddings) or "queries" (learned class tokens:
            the no-language ablation).
        text_encoder: the sentence encoder that embeds `class_texts` ("all-MiniLM-L6-v2", "test-tiny" or
            a local folder); only used by `embed_class_texts`, never at inference.
        text_dim: its embedding width (384 for MiniLM, 32 for "test-tiny").
        adapters: insert gated bottleneck adapters after every encoder block.
        adapter_reduction: adapter bottleneck = block width / this.
        adapter_gate_init: initial value of each adapter's learnable gate (near zero: the pretrained
            features are unchanged at the start).
        freeze_encoder: keep the encoder's weights and normalisation statistics fixed.
        fusion_dim: width of the class tokens.
        fusion_heads: attention heads of the cross-attention (must divide `fusion_dim` and the widths of
            the fused levels).
        fusion_levels: how many of the coarsest points are fused (the bottleneck counts as one).
        decoder_widths: decoder width per level, finest first, one per encoder feature map but the coarsest
            (None: the encoder maps' widths).
        full_res_width: channels of the per-voxel features at the input resolution, in which the masks are
            dot products. Made by `FullResolutionHead` from the finest decoder level and the image with
            pointwise operations only: a 3x3x3 convolution at full resolution costs more than the whole
            rest of a CPU-size training step.
        vit_levels: ViT only: token grids taken by the UNETR neck.
    """

    family: ClassVar[str] = "avfusion"

    encoder: VisionConfig = field(default_factory=ResEncConfig)
    classes: tuple[str, ...] = DEFAULT_CLASSES
    class_texts: tuple[tuple[str, ...], ...] = DEFAULT_CLASS_TEXTS
    conditioning: Literal["text", "queries"] = "text"
    text_encoder: str = "all-MiniLM-L6-v2"
    text_dim: int = 384
    adapters: bool = True
    adapter_reduction: int = 4
    adapter_gate_init: float = 1e-3
    freeze_encoder: bool = True
    fusion_dim: int = 64
    fusion_heads: int = 2
    fusion_levels: int = 3
    decoder_widths: tuple[int, ...] | None = None
    full_res_width: int = 16
    vit_levels: int = 4

    def __post_init__(self) -> None:
        where = "AvFusionConfig"
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"{where}.classes must be distinct non-empty names, got {self.classes}")
        if len(self.class_texts) != len(self.classes) or not all(self.class_texts):
            raise ValueError(
                f"{where}.class_texts needs one non-empty list of descriptions per class "
                f"({len(self.classes)}: {list(self.classes)}), got {len(self.class_texts)}"
            )
        if any(not t.strip() for texts in self.class_texts for t in texts):
            raise ValueError(f"{where}.class_texts holds an empty description")
        for key in (
            "text_dim",
            "adapter_reduction",
            "fusion_dim",
            "fusion_heads",
            "full_res_width",
            "vit_levels",
        ):
            if getattr(self, key) < 1:
                raise ValueError(f"{where}.{key} must be >= 1, got {getattr(self, key)}")
        if self.fusion_levels < 0:
            raise ValueError(f"{where}.fusion_levels must be >= 0, got {self.fusion_levels}")
        if self.fusion_dim % self.fusion_heads:
            raise ValueError(
                f"{where}.fusion_dim {self.fusion_dim} is not divisible by fusion_heads {self.fusion_heads}"
            )

    @property
    def n_classes(self) -> int:
        """Output channels: background + one per class."""
        return 1 + len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


class BottleneckAdapter(nn.Module):
    """`x + gate * up(GELU(down(x)))`: a residual bottleneck MLP whose learnable gate starts near zero.

    On CNN feature maps `[B, C, X, Y, Z]` the projections are 1x1x1 convolutions, on ViT tokens
    `[B, N, C]` linear layers. Attached to an encoder block as a forward hook (`hook`), so the encoder's
    own modules and state-dict keys stay those of the pretrained tower.
    """

    def __init__(self, dim: int, reduction: int, gate_init: float, spatial: bool) -> None:
        super().__init__()
        hidden = max(4, dim // reduction)
        layer = (lambda a, b: nn.Conv3d(a, b, 1)) if spatial else nn.Linear
        self.down, self.up = layer(dim, hidden), layer(hidden, dim)
        self.gate = nn.Parameter(torch.tensor(float(gate_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gate * self.up(F.gelu(self.down(x)))

    def hook(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        """Forward hook of the block it adapts: replaces the block's output with the adapted one."""
        return self(output)


class CrossModalFusion(nn.Module):
    """Bidirectional cross-attention between image features and class tokens, with modality weights.

    The class tokens first read the image (text <- image), then every voxel reads the updated tokens
    (image <- text). The level's output is `w_image * x + w_text * attended`, where the two weights are
    a softmax over two learned logits (equal at the start): the self-adaptive share of each modality.
    """

    def __init__(self, channels: int, dim: int, heads: int) -> None:
        super().__init__()
        self.image_norm = nn.LayerNorm(channels)
        self.text_norm = nn.LayerNorm(dim)
        self.text_from_image = nn.MultiheadAttention(
            dim, heads, kdim=channels, vdim=channels, batch_first=True
        )
        self.text_mlp = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)
        )
        self.image_from_text = nn.MultiheadAttention(channels, heads, kdim=dim, vdim=dim, batch_first=True)
        self.modality_logits = nn.Parameter(torch.zeros(2))

    def modality_weights(self) -> torch.Tensor:
        """(image, text) shares of the level's output, summing to 1."""
        return torch.softmax(self.modality_logits, dim=0)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`x` `[B, C, X, Y, Z]`, `tokens` `[B, K, dim]` -> fused `x` (same shape), updated tokens."""
        b, c = x.shape[:2]
        flat = x.flatten(2).transpose(1, 2)  # [B, N, C]
        img = self.image_norm(flat)
        tokens = tokens + self.text_from_image(self.text_norm(tokens), img, img, need_weights=False)[0]
        tokens = tokens + self.text_mlp(tokens)
        attended = self.image_from_text(img, tokens, tokens, need_weights=False)[0]  # [B, N, C]
        w = self.modality_weights()
        fused = w[0] * flat + w[1] * attended
        return fused.transpose(1, 2).reshape(b, c, *x.shape[2:]), tokens


class FusionDecoder(UNetDecoder):
    """A `UNetDecoder` over the encoder's maps only, ending in features at the finest map's stride (masks
    come from class tokens, not a fixed head); it hands the bottleneck and every level's output to a
    callback (the fusion) on the way up.

    The strides are taken relative to the finest map, so no convolution block runs at the input
    resolution: `FullResolutionHead` takes the features from there.
    """

    def __init__(self, in_channels: Sequence[int], strides: Sequence[tuple[int, int, int]], **kwargs: Any):
        finest = strides[0]
        relative = [tuple(a // b for a, b in zip(s, finest)) for s in strides]
        super().__init__(in_channels, relative, n_classes=1, **kwargs)
        self.finest_stride: tuple[int, int, int] = tuple(finest)  # type: ignore[assignment]
        self.heads = None  # type: ignore[assignment]

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise TypeError("FusionDecoder ends in features, not logits: call features(features, visit)")

    def point_channels(self) -> list[int]:
        """Channels at the fusion points, coarsest first: the bottleneck, then each level upwards."""
        return [self.in_channels[-1]] + [self.widths[i] for i in reversed(range(len(self.stages)))]

    def features(
        self, features: Sequence[torch.Tensor], visit: Callable[[int, torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """Decoder features `[B, widths[0], *features[0].shape[2:]]`; `visit(point, x)` may change each
        map."""
        self._check_inputs(features, None)
        skips = list(features[:-1])
        x = visit(0, features[-1])
        for point, level in enumerate(reversed(range(len(self.stages))), start=1):
            x = visit(point, self.stages[level](x, skips[level]))
        return x


class FullResolutionHead(nn.Module):
    """Per-voxel features at the input resolution from the finest decoder level and the image.

    A transposed convolution (kernel = stride) brings the decoder features to the input grid; a pointwise
    projection of each voxel's own intensity is added (the same as a pointwise convolution over both
    concatenated, whose feature half would fold into the transposed one), then instance norm and
    LeakyReLU, so a vessel one voxel wide is seen at its own voxel. Pointwise only: a 3x3x3 convolution at
    full resolution with a handful of channels costs more on a CPU (mostly its backward pass) than the
    rest of the network.
    """

    def __init__(self, cin: int, cout: int, factor: tuple[int, int, int], in_chans: int) -> None:
        super().__init__()
        self.up = (
            nn.ConvTranspose3d(cin, cout, factor, stride=factor)
            if factor != (1, 1, 1)
            else nn.Conv3d(cin, cout, 1)
        )
        self.image_proj = nn.Conv3d(in_chans, cout, 1, bias=False)
        # Conv-norm-activation like the decoder's blocks: unit-scale features give the mask dot products
        # a useful range from the first step.
        self.norm = nn.InstanceNorm3d(cout, affine=True)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """`[B, cin, *coarse]` and the image `[B, in_chans, X, Y, Z]` -> `[B, cout, X, Y, Z]`."""
        up = fit_to_size(self.up(x), image.shape[2:])
        return F.leaky_relu(self.norm(up + self.image_proj(image)), 0.01)


def _image_stem(in_chans: int, width: int, stride: tuple[int, int, int]) -> nn.Module | None:
    """The decoder's own view of the image at the finest encoder map's stride (None at stride 1): a
    strided conv block (MONAI's `UnetBasicBlock`) whose output joins that map's skip connection, the role
    of UNETR's full-resolution "encoder1", one stride coarser (as MONAI's UNet starts)."""
    if tuple(stride) == (1, 1, 1):
        return None
    from monai.networks.blocks import UnetBasicBlock

    kernel = [3 if s <= 2 else s + 1 for s in stride]  # padding 1 keeps ceil(size / stride), as the encoder
    return UnetBasicBlock(
        3, in_chans, width, kernel_size=kernel, stride=stride, norm_name=("instance", {"affine": True})
    )


class AvFusionModel(EncoderHost):
    """Frozen encoder + gated adapters + U-Net decoder with text-image fusion -> `[B, 1 + K, X, Y, Z]`."""

    def __init__(self, config: AvFusionConfig) -> None:
        super().__init__()
        self.config = config
        enc = config.encoder
        self.encoder = build_image_encoder(enc)
        self.neck, self._blocks, channels, strides = encoder_pyramid(enc, config.vit_levels)
        self.adapters = nn.ModuleList()
        if config.adapters:
            self._attach_adapters()
        self.image_stem = _image_stem(enc.in_chans, channels[0], strides[0])
        skip_channels = [channels[0] + (channels[0] if self.image_stem is not None else 0), *channels[1:]]
        widths = config.decoder_widths or channels[:-1]  # the stem widens the finest skip, not its level
        self.decoder = FusionDecoder(
            skip_channels, strides, in_chans=enc.in_chans, widths=widths, norm="instance"
        )
        self.full_res = FullResolutionHead(
            self.decoder.widths[0], config.full_res_width, self.decoder.finest_stride, enc.in_chans
        )
        points = self.decoder.point_channels()
        if config.fusion_levels > len(points):
            raise ValueError(
                f"AvFusionConfig.fusion_levels={config.fusion_levels}, but this encoder's decoder has only "
                f"{len(points)} points to fuse (bottleneck + {len(points) - 1} levels)"
            )
        bad = [c for c in points[: config.fusion_levels] if c % config.fusion_heads]
        if bad:
            raise ValueError(
                f"AvFusionConfig.fusion_heads={config.fusion_heads} must divide the fused widths {bad}"
            )
        dim, k = config.fusion_dim, len(config.classes)
        self.fusions = nn.ModuleList(
            CrossModalFusion(c, dim, config.fusion_heads) for c in points[: config.fusion_levels]
        )
        self.background = nn.Parameter(torch.randn(1, dim) * 0.02)
        if config.conditioning == "text":
            self.register_buffer("text_embeddings", torch.zeros(k, config.text_dim))
            self.text_proj = nn.Linear(config.text_dim, dim)
        else:
            self.class_queries = nn.Parameter(torch.randn(k, dim) * 0.02)
        # Mask vectors live in the full-resolution features' space: a pointwise projection of those
        # features (Mask2Former's mask features) would be linear, so it folds into the token side, where
        # it costs 1 + K vectors instead of a full-resolution map.
        self.mask_embed = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, config.full_res_width))
        self.mask_bias = nn.Parameter(torch.zeros(1 + k))
        if config.freeze_encoder:
            self.encoder.requires_grad_(False)

    # -- encoder and adapters ------------------------------------------------------------------------
    def _attach_adapters(self) -> None:
        cfg = self.config
        if isinstance(cfg.encoder, ResEncConfig):
            blocks = [
                (block, width)
                for stage, width in zip(self.encoder.stages, self.encoder.widths)
                for block in stage
            ]
            spatial = True
        else:
            assert isinstance(cfg.encoder, ViTConfig)
            blocks = [(block, cfg.encoder.width) for block in self.encoder.blocks]
            spatial = False
        for block, width in blocks:
            adapter = BottleneckAdapter(width, cfg.adapter_reduction, cfg.adapter_gate_init, spatial)
            self.adapters.append(adapter)
            block.register_forward_hook(adapter.hook)

    # -- class tokens ------------------------------------------------------------------------------------
    @property
    def text_ready(self) -> bool:
        """Whether the class text embeddings are set (always True for learned queries)."""
        return self.config.conditioning != "text" or bool(self.text_embeddings.abs().sum() > 0)

    @torch.no_grad()
    def embed_class_texts(self, encoder: Any = None) -> torch.Tensor:
        """Fill the stored text embeddings: per class, the normalised mean of its descriptions' normalised
        embeddings. `encoder` defaults to the config's `text_encoder` (built frozen, used once)."""
        cfg = self.config
        if cfg.conditioning != "text":
            raise ValueError("embed_class_texts: this model uses learned class queries, not text")
        if encoder is None:
            from medvl3d.text.encoders import build_text_encoder

            encoder = build_text_encoder(cfg.text_encoder)
        if encoder.dim != cfg.text_dim:
            raise ValueError(
                f"AvFusionConfig.text_dim is {cfg.text_dim} but text encoder {cfg.text_encoder!r} gives "
                f"{encoder.dim}-d embeddings; set model.overrides.text_dim={encoder.dim}"
            )
        rows = [
            F.normalize(encoder.encode(list(texts), normalize=True).float().mean(0), dim=0)
            for texts in cfg.class_texts
        ]
        self.text_embeddings.copy_(torch.stack(rows).to(self.text_embeddings))
        return self.text_embeddings

    def class_tokens(self, batch: int) -> torch.Tensor:
        """Background + class tokens `[B, 1 + K, fusion_dim]` before fusion."""
        if self.config.conditioning == "text":
            if not self.text_ready:
                raise ValueError(
                    "AvFusionModel: the class text embeddings are not set; call model.embed_class_texts() "
                    "(the avfusion task does this before training)"
                )
            classes = self.text_proj(self.text_embeddings)
        else:
            classes = self.class_queries
        return torch.cat([self.background, classes]).unsqueeze(0).expand(batch, -1, -1)

    # -- forward ---------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits `[B, 1 + K, X, Y, Z]` (background first, then `config.classes` in order)."""
        check_volume_batch(x, self.config.encoder.in_chans, type(self).__name__)
        feats = self.encoder.forward_intermediates(x, self._blocks)
        if self.neck is not None:
            feats = self.neck(feats)
        if self.image_stem is not None:
            own = fit_to_size(self.image_stem(x), feats[0].shape[2:])
            feats = [torch.cat([feats[0], own], dim=1), *feats[1:]]
        tokens = self.class_tokens(x.shape[0])

        def visit(point: int, fmap: torch.Tensor) -> torch.Tensor:
            nonlocal tokens
            if point < len(self.fusions):
                fmap, tokens = self.fusions[point](fmap, tokens)
            return fmap

        pixels = self.full_res(self.decoder.features(feats, visit), x)  # [B, full_res_width, X, Y, Z]
        masks = self.mask_embed(tokens)  # [B, 1 + K, full_res_width]
        # A plain dot product: the pixel features are instance-normalised, and scaling by 1/sqrt(d) left
        # the logits too flat to leave the all-background start in the first tens of steps.
        logits = torch.einsum("bkd,bdxyz->bkxyz", masks, pixels)
        return logits + self.mask_bias.view(1, -1, 1, 1, 1)

    # -- reporting -------------------------------------------------------------------------------------
    def modality_weights(self) -> list[dict[str, float]]:
        """Per fused point (coarsest first): the learned (image, text) shares."""
        out = []
        for f in self.fusions:
            w = f.modality_weights().tolist()
            out.append({"image": round(w[0], 4), "text": round(w[1], 4)})
        return out

    def parameter_counts(self) -> dict[str, int]:
        """Trainable and total parameters, and the parameters of each part (encoder, adapters, fusion,
        decoder with the mask head)."""
        parts = {
            "encoder": [self.encoder] + ([self.neck] if self.neck is not None else []),
            "adapters": [self.adapters],
            "fusion": [self.fusions],
        }
        seen = {id(p) for mods in parts.values() for m in mods for p in m.parameters()}
        counts = {name: sum(p.numel() for m in mods for p in m.parameters()) for name, mods in parts.items()}
        counts["decoder"] = sum(p.numel() for p in self.parameters() if id(p) not in seen)
        counts["trainable"] = sum(p.numel() for p in self.parameters() if p.requires_grad)
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts


def _build(cfg: AvFusionConfig) -> nn.Module:
    return AvFusionModel(cfg)


register_family(Family("avfusion", AvFusionConfig, _build, outputs="logits", takes_encoder=True))


# ---------------------------------------------------------------------------------------------------
# Registered models. The CPU ones take the `cpu_resenc_clip` image tower, so its pretrained weights load.


@register_model
def test_avfusion() -> AvFusionConfig:
    """Tiny fusion model for unit tests: the `test_resenc_clip` tower, the tiny text encoder (32-d)."""
    return AvFusionConfig(
        encoder=model_config("test_resenc_clip").vision, text_encoder="test-tiny", text_dim=32, fusion_dim=16
    )


@register_model
def test_avfusion_queries() -> AvFusionConfig:
    """`test_avfusion` with learned class queries instead of text (the no-language ablation)."""
    return AvFusionConfig(
        encoder=model_config("test_resenc_clip").vision,
        conditioning="queries",
        text_encoder="test-tiny",
        text_dim=32,
        fusion_dim=16,
    )


@register_model
def cpu_avfusion() -> AvFusionConfig:
    """CPU size: the `cpu_resenc_clip` tower (frozen, adapters), MiniLM class texts, 3 fused points."""
    return AvFusionConfig(encoder=model_config("cpu_resenc_clip").vision)


@register_model
def cpu_avfusion_queries() -> AvFusionConfig:
    """`cpu_avfusion` with learned class queries instead of text: the same model without language."""
    return AvFusionConfig(encoder=model_config("cpu_resenc_clip").vision, conditioning="queries")


@register_model
def cpu_avfusion_full_finetune() -> AvFusionConfig:
    """`cpu_avfusion` with the encoder fine-tuned fully and no adapters."""
    return AvFusionConfig(
        encoder=model_config("cpu_resenc_clip").vision, adapters=False, freeze_encoder=False
    )
