"""Malenia (family "malenia"): zero-shot lesion segmentation by mask-attribute alignment (arXiv 2410.15744).

An image encoder (any registered tower; `encoder_from=` a vision-language or segmentation checkpoint) and an
FPN-style pixel decoder give features at several scales. A Mask2Former-style transformer decoder lets
learnable mask tokens attend to the coarser scales in turn, each cross-attention restricted to the voxels
that the token's mask from the previous layer covers (masked attention). Every layer predicts, per token,
a mask (the dot product of a token embedding with the finest per-voxel features) and, per attribute of
:data:`medvl3d.schema.ATTRIBUTES`, its similarity to the text embeddings of that attribute's values and of
"no lesion" (deep supervision; alignment at every layer or, as an ablation, at the last one only).

Cross-Modal Knowledge Injection (CMKI): after the decoder, the tokens cross-attend to the attribute-value
text embeddings and the text embeddings attend back to the tokens. The enhanced tokens predict masks and
attributes; the enhanced text of a lesion description (its attribute values, one per attribute) predicts a
mask too. At inference the two branches are averaged (:mod:`medvl3d.infer.lesions`).

Ablations are config options: ``align="last"`` (alignment at the last layer only), ``cmki=False`` and
``query="name"`` (a SAT/VoxTell-style baseline whose tokens are matched to the embedding of the lesion
type's *name*, with no attributes).

Text embeddings come from a frozen encoder of :mod:`medvl3d.text.encoders` (named in the config, so a
checkpoint rebuilds the same ones); they are computed on demand and cached, not stored as weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from medvl3d.models.clip import build_image_encoder
from medvl3d.models.common import EncoderHost
from medvl3d.models.config import ResEncConfig, VisionConfig
from medvl3d.models.registry import Family, register_family, register_model
from medvl3d.models.segmentation import encoder_pyramid
from medvl3d.schema import ATTRIBUTES, LESION_ORGANS, attribute_values
from medvl3d.typed import to_plain

__all__ = [
    "NO_LESION",
    "NAME_ATTRIBUTE",
    "MaleniaConfig",
    "MaleniaModel",
    "Vocabulary",
    "attribute_vocabulary",
    "value_prompt",
]

#: The value every attribute takes for a token that covers no lesion.
NO_LESION = "no lesion"
#: The single "attribute" of the name-only baseline (its values are lesion type names).
NAME_ATTRIBUTE = "name"
QUERY_MODES = ("attributes", "name")
ALIGN_MODES = ("multiscale", "last")
#: What a Malenia config written before these options existed used (`models.checkpoint`).
LEGACY_MALENIA_OPTIONS = {"text_centre": False, "text_null": False}


@dataclass
class MaleniaConfig:
    """A Malenia model (family "malenia").

    Attributes:
        encoder: image encoder config (`ResEncConfig` or `ViTConfig`); `encoder_from=` loads a pretrained one.
        vit_levels: ViT only: token grids taken by the UNETR neck.
        hidden: width of the pixel decoder, the tokens and the mask embeddings.
        n_queries: mask tokens.
        dec_layers: transformer decoder layers (each attends to one scale, coarsest first, in turn).
        attn_scales: how many of the coarser pixel-decoder scales the tokens attend to (the finest is the
            mask feature map).
        heads: attention heads.
        n_organs: classes of the auxiliary organ head including background (SynthCT-VL: 15 organs + 1);
            0 = no organ head.
        text_encoder: frozen text encoder of the attribute-value embeddings ("all-MiniLM-L6-v2", or
            "test-tiny" for unit tests).
        query: "attributes" (Malenia) or "name" (the name-only baseline).
        align: "multiscale" (alignment loss at every decoder layer) or "last" (ablation).
        cmki: Cross-Modal Knowledge Injection (and the text branch's masks).
        temperature: of the token-text similarities.
        freeze_encoder: keep the encoder's weights and normalisation statistics fixed.
        text_centre: feed the projection the frozen text embeddings minus the mean of the schema's value
            prompts, at unit norm times sqrt(dim). Raw, the prompts differ in a small part of a shared
            direction and the projection's bias dominates: at initialisation two lesion descriptions with no
            value in common projected to cosine 0.9998 (0.94 with this), so neither the attribute alignment
            nor the text branch could tell values apart. Checkpoints written before it load with False.
        text_null: the text branch may also attend to a "nothing" token whose mask is empty (a learned
            key and a learned constant logit), so a description of a lesion type the image lacks can answer
            with no mask. With only the tokens to borrow from (unmatched tokens' masks are not supervised),
            it lit up the lesion present for any description. Checkpoints written before it load with False.
        attr_pool: each token's attributes also read the mean per-voxel feature under its own mask (mask
            pooling, as open-vocabulary segmenters classify masks; not in the Malenia paper, whose
            attributes come from the token alone). Off: the default and the paper's model.
        attr_from_token: with `attr_pool`, False reads the attributes from the pooled feature alone, so a
            token's attributes can only follow what it covers.
    """

    family: ClassVar[str] = "malenia"

    encoder: VisionConfig = field(default_factory=ResEncConfig)
    vit_levels: int = 3
    hidden: int = 32
    n_queries: int = 8
    dec_layers: int = 3
    attn_scales: int = 2
    heads: int = 4
    n_organs: int = 16
    text_encoder: str = "test-tiny"
    query: str = "attributes"
    align: str = "multiscale"
    cmki: bool = True
    temperature: float = 0.07
    freeze_encoder: bool = False
    text_centre: bool = True
    text_null: bool = True
    attr_pool: bool = False
    attr_from_token: bool = True

    def __post_init__(self) -> None:
        if self.query not in QUERY_MODES:
            raise ValueError(f"MaleniaConfig.query must be one of {QUERY_MODES}, got {self.query!r}")
        if self.align not in ALIGN_MODES:
            raise ValueError(f"MaleniaConfig.align must be one of {ALIGN_MODES}, got {self.align!r}")
        if min(self.hidden, self.n_queries, self.dec_layers, self.attn_scales, self.heads) < 1:
            raise ValueError(
                "MaleniaConfig: hidden, n_queries, dec_layers, attn_scales and heads must be >= 1"
            )
        if self.hidden % self.heads:
            raise ValueError(f"MaleniaConfig.hidden {self.hidden} is not divisible by heads {self.heads}")
        if self.n_organs == 1 or self.n_organs < 0:
            raise ValueError(f"MaleniaConfig.n_organs must be 0 (no organ head) or >= 2, got {self.n_organs}")
        if not (self.attr_from_token or self.attr_pool):
            raise ValueError(
                "MaleniaConfig.attr_from_token=False needs attr_pool=True (attributes from somewhere)"
            )
        if self.temperature <= 0:
            raise ValueError(f"MaleniaConfig.temperature must be > 0, got {self.temperature}")

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


# --- the text side: what tokens are aligned with ---------------------------------------------------------


def attribute_vocabulary() -> dict[str, tuple[str, ...]]:
    """Attribute -> every value it takes for any lesion organ (schema code order), then "no lesion"."""
    out = {}
    for attr in ATTRIBUTES:
        values = dict.fromkeys(v for organ in LESION_ORGANS for v in attribute_values(organ, attr))
        out[attr] = (*values, NO_LESION)
    return out


_ATTR_WORDS = {
    "contrast": "contrast phase",
    "location": "lesion location",
    "shape": "lesion shape",
    "density": "lesion density",
    "homogeneity": "lesion internal homogeneity",
    "margin": "lesion margin",
    "neighbor_relation": "relation to neighbouring organs",
    NAME_ATTRIBUTE: "lesion type",
}


def value_prompt(attribute: str, value: str) -> str:
    """The text embedded for one attribute value ("lesion density: hypodense")."""
    return NO_LESION if value == NO_LESION else f"{_ATTR_WORDS.get(attribute, attribute)}: {value}"


@dataclass(frozen=True)
class Vocabulary:
    """The values tokens are aligned with: attribute -> values, each ending with "no lesion"."""

    values: tuple[tuple[str, tuple[str, ...]], ...]

    @classmethod
    def of(cls, table: dict[str, tuple[str, ...] | list[str]]) -> Vocabulary:
        rows = []
        for attr, values in table.items():
            vals = tuple(v for v in values if v != NO_LESION) + (NO_LESION,)
            rows.append((attr, vals))
        return cls(tuple(rows))

    @classmethod
    def names(cls, type_names: list[str] | tuple[str, ...]) -> Vocabulary:
        """The name-only baseline's vocabulary: one attribute whose values are lesion type names."""
        return cls.of({NAME_ATTRIBUTE: tuple(n.replace("_", " ") for n in type_names)})

    @property
    def attributes(self) -> tuple[str, ...]:
        return tuple(a for a, _ in self.values)

    def table(self) -> dict[str, tuple[str, ...]]:
        return dict(self.values)

    def prompts(self) -> list[str]:
        return [value_prompt(a, v) for a, vals in self.values for v in vals]

    def offsets(self) -> dict[str, tuple[int, int]]:
        """Attribute -> (start, end) rows of its values in the flattened prompt list."""
        out, start = {}, 0
        for attr, vals in self.values:
            out[attr] = (start, start + len(vals))
            start += len(vals)
        return out

    def index(self, attribute: str, value: str) -> int:
        """Position of `value` among the attribute's values (ValueError naming both when unknown)."""
        vals = self.table().get(attribute)
        if vals is None:
            raise ValueError(f"unknown attribute {attribute!r}; known: {', '.join(self.attributes)}")
        key = value.replace("_", " ") if attribute == NAME_ATTRIBUTE else value
        if key not in vals:
            raise ValueError(f"{value!r} is not a value of {attribute!r}; values: {', '.join(vals)}")
        return vals.index(key)


# --- network parts ------------------------------------------------------------------------------------


def _norm3d(channels: int) -> nn.Module:
    return nn.GroupNorm(min(8, channels), channels)


class PixelDecoder(nn.Module):
    """FPN over the encoder maps: a 1x1 lateral per map, top-down nearest upsampling and a 3x3 conv per
    level. Returns `hidden`-channel maps, finest first, at the encoder maps' sizes.

    The finest level's 3x3 conv costs about a sixth of a CPU training step (mostly its backward pass), but a
    pointwise one there (the "avfusion" head's pattern) left the text branch unable to tell the two lesions
    of `tests/malenia`'s slow query test apart after 150 steps, so it stays.
    """

    def __init__(self, in_channels: list[int], hidden: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv3d(c, hidden, 1) for c in in_channels)
        self.out = nn.ModuleList(
            nn.Sequential(nn.Conv3d(hidden, hidden, 3, padding=1, bias=False), _norm3d(hidden), nn.GELU())
            for _ in in_channels
        )

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        outs: list[torch.Tensor] = [None] * len(feats)  # type: ignore[list-item]
        x = None
        for i in reversed(range(len(feats))):
            lat = self.lateral[i](feats[i])
            if x is not None:
                lat = lat + F.interpolate(x, size=lat.shape[2:], mode="nearest")  # FPN's (and Mask2Former's)
            x = self.out[i](lat)
            outs[i] = x
        return outs


def position_encoding(shape: tuple[int, int, int], dim: int, device: torch.device) -> torch.Tensor:
    """Sine/cosine encoding `[X*Y*Z, dim]` of normalised voxel coordinates (DETR's, in 3D)."""
    per_axis = max(1, dim // 6)
    freqs = torch.pi * 2.0 ** torch.arange(per_axis, device=device, dtype=torch.float32)
    axes = [torch.linspace(0, 1, n, device=device) for n in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    ang = grid[:, :, None] * freqs  # [L, 3, per_axis]
    enc = torch.cat([ang.sin(), ang.cos()], -1).reshape(grid.shape[0], -1)
    return F.pad(enc, (0, dim - enc.shape[1])) if enc.shape[1] < dim else enc[:, :dim]


class DecoderLayer(nn.Module):
    """Masked cross-attention to one scale, self-attention among tokens, FFN (Mask2Former's order)."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.cross = nn.MultiheadAttention(d, heads, batch_first=True)
        self.self_attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(3))

    def forward(
        self,
        q: torch.Tensor,
        pos_q: torch.Tensor,
        mem: torch.Tensor,
        pos_mem: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        attn_mask = mask.repeat_interleave(self.heads, 0)  # [B*heads, N, L], True = not attended
        q = self.norms[0](q + self.cross(q + pos_q, mem + pos_mem, mem, attn_mask=attn_mask)[0])
        q = self.norms[1](q + self.self_attn(q + pos_q, q + pos_q, q)[0])
        return self.norms[2](q + self.ffn(q))


class CMKI(nn.Module):
    """Cross-Modal Knowledge Injection: tokens attend to the text, the text attends back to the tokens."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.q_from_t = nn.MultiheadAttention(d, heads, batch_first=True)
        self.t_from_q = nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm_q, self.norm_t = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ffn_q = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.ffn_t = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, q: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`q [B, N, d]`, `text [V, d]` -> enhanced `q [B, N, d]` and image-conditioned `text [B, V, d]`."""
        t = text[None].expand(q.shape[0], -1, -1)
        q2 = self.norm_q(q + self.q_from_t(q, t, t)[0])
        # Pre-norm residual on the text side: each value keeps its own embedding (the descriptions it makes
        # up must stay apart), the tokens' knowledge is added to it.
        t2 = t + self.t_from_q(self.norm_t(t), q, q)[0]
        return q2 + self.ffn_q(q2), t2 + self.ffn_t(self.norm_t(t2))


def _mlp(d: int, out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, out))


class MaleniaModel(EncoderHost):
    """See the module docstring. `forward(x)` returns a dict:

    - ``layers``: per decoder stage (the learnable tokens before the first layer, then after each layer), a
      dict with ``masks`` `[B, N, x, y, z]` (logits at the mask-feature size) and ``attr`` (attribute ->
      `[B, N, V_a]` similarity logits);
    - ``masks``, ``attr``: the final token predictions (after CMKI when enabled);
    - ``mask_features`` `[B, hidden, x, y, z]`, ``text`` (`[B, V, hidden]` image-conditioned text with
      CMKI, else None) and ``tokens`` (the enhanced tokens): what :meth:`text_masks` needs;
    - ``organs``: auxiliary organ logits `[B, n_organs, x, y, z]` at the mask-feature size, as the masks
      (:meth:`upsample` brings either to the input size; absent without the head).
    """

    def __init__(self, config: MaleniaConfig, vocabulary: Vocabulary | None = None) -> None:
        super().__init__()
        self.config = config
        enc = config.encoder
        d = config.hidden
        self.encoder = build_image_encoder(enc)
        self.neck, self._blocks, channels, self._strides = encoder_pyramid(enc, config.vit_levels)
        if len(channels) < 2:
            raise ValueError("MaleniaModel: the encoder must give at least 2 feature maps")
        self.n_attn = min(config.attn_scales, len(channels) - 1)
        self.pixel_decoder = PixelDecoder(channels, d)
        self.mask_proj = nn.Conv3d(d, d, 1)  # linear per-voxel mask embeddings (the decoder's end in GELU)
        self.level_embed = nn.Parameter(torch.zeros(self.n_attn, d))
        self.query_feat = nn.Parameter(torch.randn(config.n_queries, d))  # N(0, 1), as nn.Embedding:
        self.query_pos = nn.Parameter(torch.randn(config.n_queries, d))  # distinct tokens from the start
        self.layers = nn.ModuleList(DecoderLayer(d, config.heads) for _ in range(config.dec_layers))
        self.out_norm = nn.LayerNorm(d)
        self.mask_embed = _mlp(d, d)
        self.vocabulary = vocabulary or self.default_vocabulary()
        self.attr_heads = nn.ModuleDict({a: nn.Linear(d, d) for a in self.vocabulary.attributes})
        self.attr_pool = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d)) if config.attr_pool else None
        self._text_cache: dict[tuple[str, ...], torch.Tensor] = {}
        self._text_encoder: list[Any] = []  # outside the module tree: frozen, never saved
        text_dim = self._encode_prompts(["lesion"]).shape[1]
        self.text_proj = nn.Sequential(nn.Linear(text_dim, d), nn.GELU(), nn.Linear(d, d))
        self.cmki = CMKI(d, config.heads) if config.cmki else None
        self.text_mask_embed = _mlp(d, d) if config.cmki else None
        self.text_key = nn.Linear(d, d) if config.cmki else None  # text -> token attention of the text masks
        if config.cmki and config.text_null:  # the "nothing" token: a key and its (empty) mask's logit
            self.null_key = nn.Parameter(torch.zeros(d))
            self.null_logit = nn.Parameter(torch.tensor(-10.0))
        self.organ_head = nn.Conv3d(d, config.n_organs, 1) if config.n_organs else None
        if config.freeze_encoder:
            self.encoder.requires_grad_(False)

    def default_vocabulary(self) -> Vocabulary:
        """The schema's attribute values (the name-only baseline gets its names from the training data)."""
        if self.config.query == "name":
            return Vocabulary.names(())
        return Vocabulary.of(attribute_vocabulary())

    # -- text -------------------------------------------------------------------------------------------
    def _encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        if not self._text_encoder:
            from medvl3d.text.encoders import build_text_encoder

            self._text_encoder.append(build_text_encoder(self.config.text_encoder))
        key = tuple(prompts)
        if key not in self._text_cache:
            self._text_cache[key] = self._text_encoder[0].encode(prompts, normalize=True).float().cpu()
        return self._text_cache[key]

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Projected text embeddings `[len(texts), hidden]` of arbitrary texts (the frozen encoder, centred
        when `text_centre`, + the learned projection); used for values and free-text queries alike."""
        weight = self.text_proj[0].weight
        raw = self._encode_prompts(list(texts))
        if self.config.text_centre:
            # The centre is the schema's value prompts (fixed, whatever the vocabulary): a name-only model
            # that meets a new name keeps every other embedding.
            centre = self._encode_prompts(Vocabulary.of(attribute_vocabulary()).prompts()).mean(0)
            raw = F.normalize(raw - centre, dim=-1) * raw.shape[1] ** 0.5
        return self.text_proj(raw.to(weight.device, weight.dtype))

    def set_vocabulary(self, vocabulary: Vocabulary) -> None:
        """Align with other values (the name-only baseline: the training data's lesion type names). The
        attribute heads must stay the same."""
        if vocabulary.attributes != self.vocabulary.attributes:
            raise ValueError(
                f"vocabulary attributes {vocabulary.attributes} differ from the model's "
                f"{self.vocabulary.attributes}"
            )
        self.vocabulary = vocabulary

    # -- forward ----------------------------------------------------------------------------------------
    def _predict(self, q: torch.Tensor, mask_feats: torch.Tensor, text: torch.Tensor) -> dict[str, Any]:
        """Mask logits and attribute logits of tokens `q [B, N, d]`; `text [V, d]` is the value table."""
        qn = self.out_norm(q)
        masks = torch.einsum("bnd,bdxyz->bnxyz", self.mask_embed(qn), mask_feats)
        qa = qn
        if self.attr_pool is not None:
            # The mean feature under the token's mask (its weights fixed: the masks learn from the mask
            # loss alone), so what a token covers, not only which token it is, sets its attributes.
            w = masks.detach().sigmoid().to(mask_feats.dtype)
            pooled = torch.einsum("bnxyz,bdxyz->bnd", w, mask_feats)
            pooled = self.attr_pool(pooled / w.flatten(2).sum(-1, keepdim=True).clamp_min(1.0))
            qa = qn + pooled if self.config.attr_from_token else pooled
        text_n = F.normalize(text, dim=-1)
        attr = {}
        for a, (s, e) in self.vocabulary.offsets().items():
            emb = F.normalize(self.attr_heads[a](qa), dim=-1)
            attr[a] = emb @ text_n[s:e].T / self.config.temperature
        return {"masks": masks, "attr": attr}

    def _attention_mask(self, masks: torch.Tensor, size: torch.Size) -> torch.Tensor:
        """Masked attention: a token attends only where its previous mask is > 0.5 (anywhere if nowhere)."""
        m = F.interpolate(masks.detach(), size=size, mode="trilinear", align_corners=False)
        blocked = (m.sigmoid() < 0.5).flatten(2)
        blocked[blocked.all(-1)] = False
        return blocked

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        feats = self.encoder.forward_intermediates(x, self._blocks)
        if self.neck is not None:
            feats = self.neck(feats)
        pyramid = self.pixel_decoder(list(feats))
        mask_feats = self.mask_proj(pyramid[0])
        scales = pyramid[1 : 1 + self.n_attn][::-1]  # coarsest first
        b, d = x.shape[0], self.config.hidden
        mems = [s.flatten(2).transpose(1, 2) for s in scales]
        pos = [
            position_encoding(tuple(s.shape[2:]), d, x.device) + self.level_embed[i]
            for i, s in enumerate(scales)
        ]
        text = self.encode_texts(self.vocabulary.prompts())
        q = self.query_feat[None].expand(b, -1, -1)
        pos_q = self.query_pos[None].expand(b, -1, -1)
        layers = [self._predict(q, mask_feats, text)]
        for i, layer in enumerate(self.layers):
            k = i % len(scales)
            blocked = self._attention_mask(layers[-1]["masks"], scales[k].shape[2:])
            q = layer(q, pos_q, mems[k], pos[k][None], blocked)
            layers.append(self._predict(q, mask_feats, text))
        out: dict[str, Any] = {"layers": layers, "mask_features": mask_feats, "text": None}
        final = layers[-1]
        if self.cmki is not None:
            q2, t2 = self.cmki(self.out_norm(q), text)
            final = self._predict(q2, mask_feats, text)
            out["text"], out["tokens"] = t2, q2
        out["masks"], out["attr"] = final["masks"], final["attr"]
        if self.organ_head is not None:
            # At the mask-feature size: upsampling 16 maps to the input size cost a quarter of a CPU step.
            out["organs"] = self.organ_head(mask_feats)
        return out

    def text_masks(self, out: dict[str, Any], descriptions: torch.Tensor) -> torch.Tensor:
        """The text branch: mask logits `[B, K, x, y, z]` of K lesion descriptions per image: the dot product
        of each description's enhanced text with the per-voxel features, plus the token masks weighted by the
        description's attention to the enhanced tokens.

        Args:
            out: this model's forward output (with CMKI).
            descriptions: `[B, K, V]` weights over the flattened values (e.g. 1/7 on each described value);
                each description's enhanced text is the weighted sum of the enhanced value embeddings.
        """
        if out.get("text") is None or self.text_mask_embed is None:
            raise ValueError("text_masks needs a model with CMKI (config cmki=True)")
        t = torch.einsum("bkv,bvd->bkd", descriptions.to(out["text"].dtype), out["text"])
        own = torch.einsum("bkd,bdxyz->bkxyz", self.text_mask_embed(t), out["mask_features"])
        # The description also attends back to the tokens and borrows their masks.
        key = self.text_key(t)
        attn = torch.einsum("bkd,bnd->bkn", key, out["tokens"]) / self.config.hidden**0.5
        if not self.config.text_null:
            return own + torch.einsum("bkn,bnxyz->bkxyz", attn.softmax(-1), out["masks"])
        null = (key @ self.null_key)[..., None] / self.config.hidden**0.5
        weights = torch.cat([attn, null], -1).softmax(-1)  # [B, K, N + 1]: the last is "nothing"
        borrowed = torch.einsum("bkn,bnxyz->bkxyz", weights[..., :-1], out["masks"])
        return own + borrowed + weights[..., -1, None, None, None] * self.null_logit

    def upsample(self, logits: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        """Mask logits `[B, K, x, y, z]` at the input size `size`."""
        if tuple(logits.shape[2:]) == tuple(size):
            return logits
        return F.interpolate(logits, size=size, mode="trilinear", align_corners=False)


def _build(cfg: MaleniaConfig) -> nn.Module:
    return MaleniaModel(cfg)


register_family(Family("malenia", MaleniaConfig, _build, outputs="lesions", takes_encoder=True))


def _resenc(
    img_size: tuple[int, int, int], width: int, blocks: tuple[int, ...], max_width: int
) -> ResEncConfig:
    return ResEncConfig(img_size=img_size, width=width, stage_blocks=blocks, max_width=max_width)


@register_model
def test_malenia() -> MaleniaConfig:
    """Tiny Malenia for unit tests: 3-stage CNN (widths 8/16/32) at 32^3, width 16, 4 tokens, test text."""
    return MaleniaConfig(
        encoder=_resenc((32, 32, 32), 8, (1, 1, 1), 32), hidden=16, n_queries=4, dec_layers=2
    )


@register_model
def cpu_malenia() -> MaleniaConfig:
    """CPU size: 3-stage CNN with a stride-2 stem (widths 16..64; masks at 24^3) for 48^3 organ-centred
    crops at 2 mm, width 32, 8 tokens, 3 decoder layers over 2 scales, frozen MiniLM text."""
    enc = ResEncConfig(img_size=(48, 48, 48), width=16, stage_blocks=(1, 2, 2), max_width=64, stem_stride=2)
    return MaleniaConfig(encoder=enc, text_encoder="all-MiniLM-L6-v2")


@register_model
def resenc3d_malenia() -> MaleniaConfig:
    """GPU size: the `resenc3d_clip` encoder (nnU-Net ResEnc-M, transfers from it), width 128, 16 tokens,
    9 decoder layers over 3 scales, frozen MiniLM text."""
    enc = ResEncConfig(img_size=(160, 160, 96), width=32, stage_blocks=(1, 3, 4, 6, 6, 6), max_width=320)
    return MaleniaConfig(
        encoder=enc, hidden=128, n_queries=16, dec_layers=9, attn_scales=3, heads=8,
        text_encoder="all-MiniLM-L6-v2",
    )  # fmt: skip
