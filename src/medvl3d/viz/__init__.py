"""medvl3d.viz: what a person looks at. Slice views with masks, plots, the visual report of a volume and
the evaluation pages, all as self-contained HTML (plots need the ``viz`` extra: matplotlib)."""

from __future__ import annotations

__all__ = ["build_report"]


def build_report(*args, **kwargs):  # noqa: ANN002, ANN003 - forwards to medvl3d.viz.report.build_report
    """See :func:`medvl3d.viz.report.build_report` (imported lazily: it loads torch models)."""
    from medvl3d.viz.report import build_report as build

    return build(*args, **kwargs)
