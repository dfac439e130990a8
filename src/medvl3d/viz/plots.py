"""Charts for reports and evaluation pages, each returned as PNG bytes (matplotlib, the ``viz`` extra).

Probabilities as bars (calibrated, with the raw zero-shot score marked), ROC curves per label, reliability
diagrams, AUROC per label group with 95% intervals, and Dice box plots per class.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["dice_boxplots", "group_auroc", "probability_bars", "reliability_diagram", "roc_curves"]


def _pyplot() -> Any:
    from medvl3d.extras import require

    require("matplotlib", "viz", "report plots").use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any, dpi: int = 90) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def probability_bars(
    probabilities: dict[str, float],
    raw: dict[str, float] | None = None,
    max_supported: dict[str, float | None] | None = None,
    title: str = "",
    muted: bool = False,
) -> bytes:
    """Horizontal bars of each label's probability, most likely first; ``raw`` scores as black ticks and
    ``max_supported`` (the highest probability the calibration can give) as grey ticks. ``muted`` greys
    the bars (the volume is out of distribution)."""
    plt = _pyplot()
    order = sorted(probabilities, key=lambda k: -probabilities[k])
    n = len(order)
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * n + 1.1))
    y = np.arange(n)[::-1]
    values = [probabilities[k] for k in order]
    color = "#9aa4ae" if muted else "#2f81f7"
    ax.barh(y, values, color=color, height=0.62, hatch="//" if muted else None, edgecolor="white")
    for yi, k, v in zip(y, order, values):
        ax.text(min(v + 0.01, 0.93), yi, f"{v:.2f}", va="center", fontsize=8)
        if raw is not None and k in raw:
            ax.plot([raw[k]] * 2, [yi - 0.36, yi + 0.36], color="black", lw=1.6)
        cap = (max_supported or {}).get(k)
        if cap is not None:
            ax.plot([cap] * 2, [yi - 0.36, yi + 0.36], color="#6e7781", lw=1.0, ls=":")
    ax.set_yticks(y, order, fontsize=8.5)
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability")
    legend = ["calibrated" if raw is not None else "probability"]
    handles = [plt.Rectangle((0, 0), 1, 1, color=color)]
    if raw is not None:
        handles.append(plt.Line2D([], [], color="black", lw=1.6))
        legend.append("raw zero-shot score")
    if max_supported and any(v is not None for v in max_supported.values()):
        handles.append(plt.Line2D([], [], color="#6e7781", lw=1.0, ls=":"))
        legend.append("highest the calibration supports")
    ax.legend(handles, legend, fontsize=7.5, loc="lower right", framealpha=0.9)
    ax.grid(axis="x", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    return _png(fig)


def roc_curves(truth: np.ndarray, probs: np.ndarray, labels: Sequence[str], cols: int = 6) -> bytes:
    """Small multiples: the ROC curve and AUROC of each label with both classes present."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    defined = [j for j in range(len(labels)) if 0 < truth[:, j].sum() < len(truth)]
    if not defined:
        fig, ax = plt.subplots(figsize=(5, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, "no label has both classes in this set: no ROC curve", ha="center")
        return _png(fig)
    cols = min(cols, len(defined))
    rows = int(np.ceil(len(defined) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.35 * rows), squeeze=False)
    for ax in axes.ravel()[len(defined) :]:
        ax.axis("off")
    for ax, j in zip(axes.ravel(), defined):
        fpr, tpr, _ = roc_curve(truth[:, j], probs[:, j])
        ax.plot(fpr, tpr, color="#2f81f7", lw=1.4)
        ax.plot([0, 1], [0, 1], color="#8c959f", lw=0.8, ls="--")
        auc = roc_auc_score(truth[:, j], probs[:, j])
        ax.set_title(f"{labels[j]}\nAUROC {auc:.3f} ({int(truth[:, j].sum())}+)", fontsize=7.5)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=6)
        ax.set_aspect("equal")
    fig.supxlabel("false positive rate", fontsize=8)
    fig.supylabel("true positive rate", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def reliability_diagram(bins_by_kind: dict[str, list[dict[str, float]]], titles: dict[str, str]) -> bytes:
    """Observed frequency against mean predicted probability per bin, one line per kind of probability."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], color="#8c959f", lw=0.8, ls="--", label="perfect calibration")
    for kind, bins in bins_by_kind.items():
        if not bins:
            continue
        x = [b["mean_probability"] for b in bins]
        y = [b["frequency"] for b in bins]
        size = [10 + 60 * b["n"] / max(c["n"] for c in bins) for b in bins]
        (line,) = ax.plot(x, y, lw=1.3, label=titles.get(kind, kind))
        ax.scatter(x, y, s=size, color=line.get_color(), alpha=0.7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean predicted probability (10 bins)")
    ax.set_ylabel("observed frequency")
    ax.legend(fontsize=7.5, loc="upper left")
    ax.set_aspect("equal")
    return _png(fig)


def group_auroc(groups: dict[str, dict[str, Any]], macro: dict[str, Any]) -> bytes:
    """Macro AUROC per label group (seen / underrepresented / unseen) and over all, with 95% intervals."""
    plt = _pyplot()
    rows = [("all", macro)] + list(groups.items())
    rows = [(name, info) for name, info in rows if info.get("auroc") is not None]
    fig, ax = plt.subplots(figsize=(5.2, 0.5 * max(len(rows), 1) + 1.0))
    for y, (name, info) in enumerate(rows[::-1]):
        ci = (info.get("ci") or {}).get("auroc")
        err = None if not ci else [[info["auroc"] - ci[0]], [ci[1] - info["auroc"]]]
        ax.barh(
            y,
            info["auroc"],
            xerr=err,
            color="#2f81f7" if name != "all" else "#1f6feb",
            height=0.55,
            capsize=3,
            ecolor="black",
        )
        ax.text(
            0.02,
            y,
            f"{name} ({info['n_defined']} labels): {info['auroc']:.3f}",
            va="center",
            fontsize=8,
            color="white",
            weight="bold",
        )
    ax.axvline(0.5, color="#cf222e", lw=1, ls="--", label="chance")
    ax.set_yticks([])
    ax.set_xlim(0, 1)
    ax.set_xlabel("macro AUROC (95% bootstrap interval)")
    ax.legend(fontsize=7.5, loc="lower right")
    return _png(fig)


def dice_boxplots(dice: dict[str, list[float]], title: str = "") -> bytes:
    """A box plot of per-case Dice for each class (cases where Dice is undefined are left out)."""
    plt = _pyplot()
    names = [k for k, v in dice.items() if v]
    fig, ax = plt.subplots(figsize=(max(4.5, 0.55 * len(names) + 1.5), 3.8))
    if names:
        ax.boxplot([dice[k] for k in names], showmeans=True, meanprops={"marker": "^", "markersize": 5})
        for i, k in enumerate(names, start=1):
            jitter = np.random.default_rng(i).uniform(-0.12, 0.12, len(dice[k]))
            ax.scatter(i + jitter, dice[k], s=8, color="#2f81f7", alpha=0.5, zorder=3)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice per case")
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    return _png(fig)
