"""Zero-shot lesion segmentation with a Malenia checkpoint: queries, merged masks and the lesion list.

A lesion type is asked for by attribute values (``parse_attribute_query("organ=liver,density=hypodense")``)
or by a free-text description that the attribute parser maps to values (``query_from_description``). In
every sliding window the model's tokens are scored against the query: a token is kept when it covers a
lesion (its "no lesion" probability is below one half) and its predicted values of the queried attributes
have a mean probability of at least one half; the kept tokens' masks are merged (voxel-wise maximum).
With CMKI the text branch's mask of the query's own enhanced text is averaged in (the paper's ensemble;
an organ alone selects tokens only). Without a query every
lesion token counts. Besides the lesion probability, each window gives per-voxel probabilities of every
attribute value (token predictions weighted by their masks), so each connected lesion found is reported
with its attributes, the nearest known type of the checkpoint's training data (by attribute combination)
and its volume in mL, in the input's geometry.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medvl3d.data.lesion_knowledge import nearest_type, organ_of_location
from medvl3d.infer.sliding_window import SlidingWindowConfig
from medvl3d.models.malenia import NAME_ATTRIBUTE, NO_LESION, MaleniaModel, Vocabulary
from medvl3d.schema import ATTRIBUTES, LESION_ORGANS

__all__ = [
    "LesionQuery",
    "parse_attribute_query",
    "query_value_probs",
    "query_from_description",
    "window_maps",
    "window_query_maps",
    "lesion_maps",
    "query_maps",
    "find_lesions",
    "LesionSegmenter",
]


@dataclass
class LesionQuery:
    """What to segment: attribute values (``organ`` may stand for all locations of an organ) and, for
    name-only models, a lesion type name. ``text`` is the description it came from, for reports."""

    attributes: dict[str, str] = field(default_factory=dict)
    name: str | None = None
    text: str | None = None

    def label(self) -> str:
        if self.text:
            return self.text
        if self.name:
            return self.name
        return ", ".join(f"{k}={v}" for k, v in self.attributes.items())


def parse_attribute_query(spec: str | Mapping[str, str]) -> LesionQuery:
    """``"organ=liver,density=hypodense"`` (or a dict) -> a checked :class:`LesionQuery`.

    Raises:
        ValueError: an entry without ``=``, an unknown attribute or a value no organ has, naming it.
    """
    from medvl3d.models.malenia import attribute_vocabulary

    if isinstance(spec, str):
        items = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            if "=" not in part:
                raise ValueError(f"--attributes: {part!r} is not attribute=value (e.g. density=hypodense)")
            key, value = (s.strip() for s in part.split("=", 1))
            items[key] = value
    else:
        items = {str(k): str(v) for k, v in spec.items()}
    if not items:
        raise ValueError("--attributes: no attribute=value pairs given")
    vocab = attribute_vocabulary()
    for key, value in items.items():
        if key == "organ":
            if value not in LESION_ORGANS:
                raise ValueError(f"--attributes: unknown organ {value!r}; known: {', '.join(LESION_ORGANS)}")
            continue
        if key not in vocab:
            raise ValueError(
                f"--attributes: unknown attribute {key!r}; known: organ, {', '.join(ATTRIBUTES)}"
            )
        if value not in vocab[key] or value == NO_LESION:
            known = ", ".join(v for v in vocab[key] if v != NO_LESION)
            raise ValueError(f"--attributes: {value!r} is not a value of {key!r}; values: {known}")
    return LesionQuery(attributes=items)


def query_from_description(text: str) -> LesionQuery:
    """A free-text description -> the attribute values the parser reads in it (only what it states, no
    defaults) plus the organ it names.

    Raises:
        ValueError: a description from which no attribute can be read.
    """
    from medvl3d.text.attributes import AttributeParser

    parser = AttributeParser(defaults=False)
    organ = parser.infer_organ(text)
    values = {a: v for a, v in parser.parse(text, organ).items() if v is not None}
    values.pop("contrast", None)  # the phase describes the scan, not the lesion sought
    if organ is not None and "location" not in values:
        values["organ"] = organ
    if not values:
        raise ValueError(f"--describe: no lesion attribute could be read from {text[:80]!r}")
    return LesionQuery(attributes=values, text=text)


# --- per-window maps -------------------------------------------------------------------------------------


def _value_probs(model: MaleniaModel, attr_logits: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """`p_lesion [B, N]` and attribute -> `[B, N, V_a - 1]` value probabilities given a lesion."""
    no_lesion, given = [], {}
    for attr, logits in attr_logits.items():
        p = logits.float().softmax(-1)
        no_lesion.append(p[..., -1])
        given[attr] = p[..., :-1] / p[..., :-1].sum(-1, keepdim=True).clamp_min(1e-8)
    return 1 - torch.stack(no_lesion, 0).mean(0), given


def query_value_probs(model: MaleniaModel, given: dict[str, torch.Tensor], query: LesionQuery) -> dict:
    """Queried attribute (``organ``, ``name``) -> `[B, N]` each token's probability of the queried value
    (an organ's: the sum over its locations), from the value probabilities given a lesion."""
    vocab = model.vocabulary.table()
    scores = {}
    for key, value in query.attributes.items():
        if key == "organ":
            locs = [i for i, v in enumerate(vocab["location"][:-1]) if organ_of_location(v) == value]
            if not locs:  # else the organ would score 0 and quietly sink the query
                raise ValueError(f"organ {value!r}: none of this model's locations lies in it")
            scores[key] = given["location"][..., locs].sum(-1)
        elif key in given:
            scores[key] = given[key][..., model.vocabulary.index(key, value)]
    if query.name is not None:
        scores["name"] = given[NAME_ATTRIBUTE][..., model.vocabulary.index(NAME_ATTRIBUTE, query.name)]
    return scores


def _match(model: MaleniaModel, given: dict[str, torch.Tensor], query: LesionQuery) -> torch.Tensor:
    """`[B, N]` mean probability of the queried values among each token's predictions."""
    scores = query_value_probs(model, given, query)
    if not scores:
        raise ValueError(f"query {query.label()!r} names no attribute this model predicts")
    return torch.stack(list(scores.values()), 0).mean(0)


def _description_weights(model: MaleniaModel, query: LesionQuery) -> torch.Tensor | None:
    """Weights `[V]` over the flattened values: the query's values, or None when it names none.

    An organ is not a value the text branch has learned (it is the union of its locations), so it only
    selects tokens: a query of an organ alone is answered by the token branch."""
    offsets = model.vocabulary.offsets()
    w = torch.zeros(sum(e - s for s, e in offsets.values()))
    for key, value in query.attributes.items():
        if key in offsets:
            w[offsets[key][0] + model.vocabulary.index(key, value)] = 1.0
    if query.name is not None:
        w[offsets[NAME_ATTRIBUTE][0] + model.vocabulary.index(NAME_ATTRIBUTE, query.name)] = 1.0
    return w / w.sum() if w.sum() > 0 else None


def _forward(model: MaleniaModel, x: torch.Tensor) -> tuple:
    """The model's output on a window, its token masks `[B, N, X, Y, Z]` (probabilities on the window's
    grid), `p_lesion [B, N]` and the attribute value probabilities given a lesion."""
    out = model(x)
    masks = model.upsample(out["masks"], tuple(x.shape[2:])).float().sigmoid()
    p_lesion, given = _value_probs(model, out["attr"])
    return out, masks, p_lesion, given


def _query_prob(model: MaleniaModel, forward: tuple, query: LesionQuery | None) -> torch.Tensor:
    """`[B, 1, X, Y, Z]`: the lesion probability (no query) or that of `query`'s lesions: the kept tokens'
    masks, averaged with the text branch's mask of the query's values."""
    out, masks, p_lesion, given = forward
    keep = p_lesion >= 0.5
    if query is not None:
        keep = keep & (_match(model, given, query) >= 0.5)
    kept = masks * keep[..., None, None, None]
    prob = kept.max(1, keepdim=True).values if masks.shape[1] else masks.sum(1, keepdim=True)
    w = _description_weights(model, query) if query is not None and out.get("text") is not None else None
    if w is not None:
        w = w.to(masks.device)[None, None].expand(masks.shape[0], 1, -1)
        text_prob = model.upsample(model.text_masks(out, w), tuple(masks.shape[2:])).float().sigmoid()
        prob = 0.5 * (prob + text_prob)
    return prob


@torch.no_grad()
def window_maps(model: MaleniaModel, x: torch.Tensor, query: LesionQuery | None = None) -> torch.Tensor:
    """`[B, 1 + sum_a (V_a - 1), X, Y, Z]`: the lesion (or query) probability, then per attribute the
    probability of each value (token predictions weighted by their masks)."""
    forward = _forward(model, x)
    _, masks, p_lesion, given = forward
    weight = masks * p_lesion[..., None, None, None]
    denom = weight.sum(1).clamp_min(1e-6)  # [B, X, Y, Z]
    channels = [_query_prob(model, forward, query)]
    for attr in model.vocabulary.attributes:
        channels.append(torch.einsum("bnv,bnxyz->bvxyz", given[attr], weight) / denom[:, None])
    return torch.cat(channels, 1)


@torch.no_grad()
def window_query_maps(model: MaleniaModel, x: torch.Tensor, queries: Sequence[LesionQuery]) -> torch.Tensor:
    """`[B, Q, X, Y, Z]`: the probability of each query's lesions, from one forward pass."""
    forward = _forward(model, x)
    return torch.cat([_query_prob(model, forward, q) for q in queries], 1)


def _stitch(
    model: MaleniaModel,
    image: torch.Tensor,
    window: SlidingWindowConfig,
    predictor: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device | str,
) -> torch.Tensor:
    """`predictor`'s window outputs stitched over a preprocessed `[C, X, Y, Z]` volume (MONAI's sliding
    window, CPU output), the model in eval mode meanwhile."""
    from monai.inferers import sliding_window_inference

    if image.ndim != 4:
        raise ValueError(f"lesion maps need a [C, X, Y, Z] image, got {tuple(image.shape)}")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            maps = sliding_window_inference(
                image[None].float(),
                roi_size=window.patch_size,
                sw_batch_size=window.batch_size,
                predictor=predictor,
                overlap=window.overlap,
                mode=window.mode,
                sw_device=torch.device(device),
                device=torch.device("cpu"),
            )
    finally:
        model.train(was_training)
    return (maps.as_tensor() if hasattr(maps, "as_tensor") else maps)[0]


def lesion_maps(
    model: MaleniaModel,
    image: torch.Tensor,
    window: SlidingWindowConfig,
    query: LesionQuery | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """`window_maps` stitched over a preprocessed `[C, X, Y, Z]` volume (MONAI's sliding window, CPU
    output)."""
    return _stitch(model, image, window, lambda x: window_maps(model, x, query), device)


def query_maps(
    model: MaleniaModel,
    image: torch.Tensor,
    window: SlidingWindowConfig,
    queries: Sequence[LesionQuery],
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """`[Q, X, Y, Z]`: each query's lesion probability over a preprocessed volume in one sliding window (the
    same values as `lesion_maps(...)[0]` query by query, without its attribute channels: scoring many
    types of a case costs one pass, not one per type)."""
    if not queries:
        raise ValueError("query_maps needs at least one query")
    return _stitch(model, image, window, lambda x: window_query_maps(model, x, queries), device)


def find_lesions(
    model: MaleniaModel, maps: torch.Tensor, min_voxels: int = 3, threshold: float = 0.5
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Connected lesions of `maps[0] >= threshold`: an instance map (ids 1..n, largest first) and per lesion
    its voxel count, mean probability and predicted attributes (the value of highest mean probability
    within it; location decides the organ)."""
    from scipy import ndimage

    fg = (maps[0] >= threshold).numpy()
    comps, n = ndimage.label(fg)
    sizes = np.bincount(comps.ravel(), minlength=n + 1)
    order = [i for i in np.argsort(-sizes[1:]) + 1 if sizes[i] >= min_voxels]
    out = np.zeros(comps.shape, np.int32)
    found = []
    offsets, start = {}, 1
    for attr, vals in model.vocabulary.values:
        offsets[attr] = (start, start + len(vals) - 1)
        start += len(vals) - 1
    for new_id, old in enumerate(order, start=1):
        region = comps == old
        out[region] = new_id
        sel = torch.from_numpy(region)
        attrs = {}
        for attr, (s, e) in offsets.items():
            mean = maps[s:e][:, sel].mean(1)
            attrs[attr] = model.vocabulary.table()[attr][int(mean.argmax())]
        organ = organ_of_location(attrs.get("location"))
        found.append(
            {"id": new_id, "voxels": int(sizes[old]), "score": float(maps[0][sel].mean()), "organ": organ,
             "attributes": attrs}
        )  # fmt: skip
    return out, found


class LesionSegmenter:
    """A Malenia model with what its checkpoint says: preprocessing, sliding window, known lesion types.

    ``segment(volume, query)`` returns a :class:`medvl3d.infer.segmentation.SegmentationResult` whose mask
    (lesion ids) lies on the input's grid and whose ``lesions`` carry attributes, nearest type and volume.
    """

    def __init__(self, model: MaleniaModel, info: dict, device: str | torch.device = "cpu") -> None:
        from medvl3d.data.preprocess import PreprocessSpec
        from medvl3d.typed import build_dataclass

        if not isinstance(model, MaleniaModel):
            raise ValueError(f"LesionSegmenter needs a 'malenia' model, got {type(model).__name__}")
        self.model, self.info, self.device = model.to(device).eval(), info, torch.device(device)
        self.spec = PreprocessSpec.from_dict(info.get("preprocess") or {})
        self.window = build_dataclass(SlidingWindowConfig, dict(info.get("inference") or {}), "window")
        self.knowledge = dict(info.get("lesion_types") or {})
        names = info.get("type_names")
        if model.config.query == "name" and names:
            model.set_vocabulary(Vocabulary.names(list(names)))

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "cpu") -> LesionSegmenter:
        from medvl3d.models.checkpoint import check_family, load_model, read_info

        check_family(read_info(path), ("malenia",), "zero-shot lesion segmentation")
        model, info = load_model(path)
        return cls(model, info, device)

    def prepare_query(self, query: LesionQuery | None) -> LesionQuery | None:
        """Name-only models learn names: a query's name joins the vocabulary (zero-shot: any name)."""
        if query is None or self.model.config.query != "name":
            return query
        name = query.name or query.text
        if not name:
            raise ValueError("a name-only model segments by lesion type name: give describe=<name>")
        names = [v for v in self.model.vocabulary.table()[NAME_ATTRIBUTE][:-1]]
        if name.replace("_", " ") not in names:
            self.model.set_vocabulary(Vocabulary.names([*names, name]))
        return LesionQuery(name=name, text=query.text)

    def maps(self, image: torch.Tensor, query: LesionQuery | None = None) -> torch.Tensor:
        """Lesion/attribute maps of a preprocessed `[1, X, Y, Z]` image."""
        return lesion_maps(self.model, image, self.window, self.prepare_query(query), self.device)

    def query_maps(self, image: torch.Tensor, queries: Sequence[LesionQuery]) -> torch.Tensor:
        """`[Q, X, Y, Z]`: each query's lesion probability on a preprocessed `[1, X, Y, Z]` image, one pass.

        A name-only model's vocabulary takes every query's name before the pass (`prepare_query`)."""
        prepared = [self.prepare_query(q) for q in queries]
        return query_maps(self.model, image, self.window, prepared, self.device)

    def segment(self, volume: Any, query: LesionQuery | None = None, min_voxels: int = 3) -> Any:
        """Segment a volume (path, DICOM folder or ``Volume``) for ``query`` (None: every lesion)."""
        from medvl3d.data.io import Volume, read_volume
        from medvl3d.data.preprocess import preprocess_sample

        vol = volume if isinstance(volume, Volume) else read_volume(Path(volume))
        source = str(vol.path) if vol.path is not None else "array"
        array = np.asarray(vol.array, dtype=np.float32)
        if not np.isfinite(array).all():
            raise ValueError(f"{source}: the volume contains NaN or inf values")
        sample = {
            "image": torch.from_numpy(np.ascontiguousarray(array))[None],
            "meta": {"affine": vol.affine.tolist(), "modality": vol.modality, "path": source},
        }
        prepared = preprocess_sample(sample, self.spec)
        return self.segment_prepared(prepared["image"], prepared["meta"], vol, query, min_voxels)

    def segment_prepared(
        self, image: torch.Tensor, meta: dict, vol: Any, query: LesionQuery | None = None, min_voxels: int = 3
    ) -> Any:
        """Like :meth:`segment` for a volume already preprocessed with this checkpoint's spec (`image`
        `[1, X, Y, Z]` and the `meta` of `preprocess_sample`; `vol` the input ``Volume``): the hook a
        Predictor that has prepared the volume once uses for each description."""
        from medvl3d.data.preprocess import resample_to_grid
        from medvl3d.infer.segmentation import Lesion, SegmentationResult

        maps = self.maps(image, query)
        ids, found = find_lesions(self.model, maps, min_voxels=min_voxels)
        raw_shape = tuple(int(s) for s in meta["raw_shape"])
        mask = resample_to_grid(
            torch.from_numpy(ids)[None], np.asarray(meta["affine"]), raw_shape, np.asarray(meta["raw_affine"])
        )[0].numpy()
        result = SegmentationResult(
            mask.astype(np.uint16 if len(found) > 255 else np.uint8), {0: "background"}, vol
        )
        counts = np.bincount(result.mask.ravel(), minlength=len(found) + 1)
        # A lesion found on the model's grid can cover no voxel of a coarser input grid: it cannot be drawn
        # on the input, so it is not listed (the list and the written mask hold the same lesions).
        drawn = [les for les in found if counts[les["id"]] > 0]
        if len(drawn) < len(found):
            from medvl3d.data.io import spacing_from_affine

            spacing = spacing_from_affine(np.asarray(meta["raw_affine"]))
            warnings.warn(
                f"{len(found) - len(drawn)} of {len(found)} lesions found on the model's grid cover no "
                f"voxel of the input grid (voxels of {' x '.join(f'{v:.3g}' for v in spacing)} mm) and are "
                "left out",
                stacklevel=2,
            )
        for les in drawn:
            attrs = dict(les["attributes"])
            if les["organ"]:
                attrs["organ"] = les["organ"]
            kind, _ = nearest_type(attrs, self.knowledge)
            name = query.label() if query is not None else (kind or "lesion")
            result.label_names[les["id"]] = name
            lesion = Lesion(les["id"], name, float(counts[les["id"]]) * result.voxel_ml, attrs, les["score"])
            if kind is not None:
                lesion.attributes["nearest_type"] = kind
            result.lesions.append(lesion)
        return result


def segment_lesions(
    checkpoint: str | os.PathLike,
    volume: str | os.PathLike,
    *,
    out: str | os.PathLike,
    describe: str | None = None,
    attributes: str | Mapping[str, str] | None = None,
    json_out: str | os.PathLike | None = None,
    device: str = "cpu",
) -> Any:
    """`medvl3d segment` for Malenia checkpoints: the merged mask of the lesions matching a description or
    attribute values (every lesion without either) written in the input's geometry, and the lesion list
    (attributes, nearest known type, volume in mL) as JSON beside it (``json_out``, default
    ``<out without .nii.gz>.json``).

    Raises:
        ValueError: both ``describe`` and ``attributes``, a bad query, or a checkpoint of another family.
    """
    if describe is not None and attributes is not None:
        raise ValueError("give --describe or --attributes, not both")
    segmenter = LesionSegmenter.from_checkpoint(checkpoint, device)
    query = None
    if attributes is not None:
        query = parse_attribute_query(attributes)
    elif describe is not None and segmenter.model.config.query == "name":
        query = LesionQuery(name=describe, text=describe)  # the name-only baseline is asked by name
    elif describe is not None:
        query = query_from_description(describe)
    out = Path(out)
    if json_out is None:
        json_out = out.with_name(out.name.removesuffix(".gz").removesuffix(".nii") + ".json")
    result = segmenter.segment(volume, query)
    result.save(out, json_out)
    return result
