"""Image-text alignment on the text a model trained on: modality gap, centroid and paired cosines, and
whether a BrgSA knowledge bank bridges the two modalities.

The zero-shot report's modality gap (:mod:`medvl3d.eval.diagnosis`) pairs each volume with its full
report. A model trained on summaries (BrgSA) or generated text (GTGM) never saw full reports, so its gap
is measured here against the text of its own ``data.text_source``: the training loop's validation logs
these numbers (``val_<stat>_<source>``) and ``benchmarks/pretrain_diagnosis.py`` tabulates them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from medvl3d.losses import alignment_stats

__all__ = ["training_texts", "alignment_report"]


def training_texts(
    samples: Sequence[dict],
    source: str,
    summariser_cfg: Any = None,
    generate: Callable[[dict], str] | None = None,
) -> list[str | None]:
    """The text each case is paired with under ``text_source`` ``source`` (None where there is none).

    Args:
        samples: cases with ``report`` (and, for generated text, the raw volume ``generate`` reads).
        source: "report", "summary", "generated" or "auto" (see ``medvl3d.train.data.TextSourceDataset``).
        summariser_cfg: the ``data.summariser`` config (for "summary").
        generate: a text generator for "generated" / "auto" (it measures *raw* volumes: None for
            preprocessed cases, whose generated text is then left out).
    """
    if source not in ("report", "summary", "generated", "auto"):
        raise ValueError(f"unknown text_source {source!r}; use report, summary, generated or auto")
    summarise = backend = None
    if source == "summary":
        from medvl3d.text.summariser import build_summariser, summariser_config

        typed = summariser_config(summariser_cfg)
        summarise, backend = build_summariser(typed).summarise, typed.backend
    out: list[str | None] = []
    for sample in samples:
        report = (sample.get("report") or "").strip()
        if source == "report" or (source == "auto" and report):
            out.append(report or None)
        elif source == "summary":
            from medvl3d.text.summariser import summary_problem

            out.append(summarise(report) if summary_problem(report, backend) is None else None)
        else:
            out.append(generate(sample) if generate is not None else None)
    return out


@torch.no_grad()
def alignment_report(
    model: Any, image_emb: torch.Tensor, texts: Sequence[str | None], batch_size: int = 32
) -> dict[str, float]:
    """Alignment of image embeddings with their paired texts (cases whose text is None are left out).

    Returns (empty without a single text):
        ``gap``, ``centroid_cos``, ``paired_cos`` of the originals (:func:`medvl3d.losses.alignment_stats`);
        for models with a knowledge bank also ``gap_rec``, ``centroid_cos_rec``, ``paired_cos_rec`` of the
        reconstructions, ``paired_cos_image_rec`` (cos(v_rec, t): what BrgSA's score adds) and the bank
        usage (``bank_shared``, ``bank_overlap``, ``bank_entropy_image``, ``bank_entropy_text``).
    """
    keep = [i for i, t in enumerate(texts) if t]
    if not keep:
        return {}
    words = [texts[i] for i in keep]
    img = image_emb[keep].float()
    txt = torch.cat(
        [model.encode_text(list(words[i : i + batch_size])).float() for i in range(0, len(words), batch_size)]
    ).to(img.device)
    out = {k: float(v) for k, v in alignment_stats(img, txt).items()}
    bank = getattr(model, "bank", None)
    if bank is not None:
        img_rec, txt_rec = bank.reconstruct(img), bank.reconstruct(txt)
        out.update({f"{k}_rec": float(v) for k, v in alignment_stats(img_rec, txt_rec).items()})
        out["paired_cos_image_rec"] = float(
            (img_rec * torch.nn.functional.normalize(txt, dim=-1)).sum(-1).mean()
        )
        out.update({k: float(v) for k, v in bank.usage(img, txt).items()})
    return out
