"""Diagnosis metrics against hand-computed cases, and a bootstrap that really resamples."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medvl3d.eval.metrics import (
    _auroc_rows,
    binary_metrics,
    bootstrap_label_metrics,
    percentile_interval,
    youden_threshold,
)


def test_hand_computed_case():
    y = [0, 0, 1, 1, 0, 1]
    s = [0.1, 0.4, 0.35, 0.8, 0.2, 0.9]
    # pairs (pos, neg): 0.35 beats 0.1, 0.2 but not 0.4 -> 2/3; 0.8 and 0.9 beat all -> AUROC = 8/9
    m = binary_metrics(y, s)
    assert m.auroc == pytest.approx(8 / 9)
    # Youden's J: threshold 0.35 -> TPR 1, FPR 1/3 (J = 2/3), the best on this curve
    assert m.threshold == pytest.approx(0.35)
    # predictions at >= 0.35: [0, 1, 1, 1, 0, 1] -> TP 3, FP 1, FN 0, TN 2
    assert m.precision == pytest.approx(3 / 4)
    assert m.f1 == pytest.approx(2 * 3 / (2 * 3 + 1 + 0))
    assert m.accuracy == pytest.approx(5 / 6)
    assert (m.n, m.n_pos, m.defined) == (6, 3, True)


def test_fixed_threshold_and_perfect_and_inverted_scores():
    m = binary_metrics([0, 1, 0, 1], [0.2, 0.6, 0.4, 0.9], threshold=0.5)
    assert (m.auroc, m.accuracy, m.precision, m.f1) == (1.0, 1.0, 1.0, 1.0)
    inv = binary_metrics([0, 1, 0, 1], [0.9, 0.1, 0.8, 0.2])
    assert inv.auroc == 0.0 and np.isfinite(inv.threshold)


def test_single_class_label_is_undefined():
    m = binary_metrics([0, 0, 0], [0.1, 0.5, 0.9])
    assert not m.defined and m.auroc is None and m.f1 is None and m.threshold is None
    assert m.to_dict()["defined"] is False


def test_bad_inputs_are_clear():
    with pytest.raises(ValueError, match="shape"):
        binary_metrics([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="0/1"):
        binary_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        youden_threshold([0, 1], [0.1, float("nan")])


def test_vectorised_auroc_equals_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(20, 30))
    s = rng.integers(0, 5, size=(20, 30)).astype(float)  # many ties
    ours = _auroc_rows(y, s)
    for b in range(20):
        if 0 < y[b].sum() < 30:
            assert ours[b] == pytest.approx(roc_auc_score(y[b], s[b]))
        else:
            assert np.isnan(ours[b])


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=(n, 2))
    s = y + rng.normal(0, 0.8, size=(n, 2))  # informative but noisy scores
    return y, s


def test_bootstrap_resamples_cases_and_intervals_behave():
    y, s = _data(400)
    thr = [youden_threshold(y[:, j], s[:, j]) for j in range(2)]
    boot = bootstrap_label_metrics(y, s, thr, n_boot=500, seed=1)
    assert boot["auroc"].shape == (500, 2)
    assert np.nanstd(boot["auroc"][:, 0]) > 0  # really resampled: the statistic varies
    point = binary_metrics(y[:, 0], s[:, 0])
    lo, hi = percentile_interval(boot["auroc"][:, 0])
    assert lo < point.auroc < hi
    lo_f1, hi_f1 = percentile_interval(boot["f1"][:, 0])
    assert lo_f1 < point.f1 < hi_f1
    # fewer cases -> wider interval (same generating process)
    y_small, s_small = y[:40], s[:40]
    thr_small = [youden_threshold(y_small[:, j], s_small[:, j]) for j in range(2)]
    small = bootstrap_label_metrics(y_small, s_small, thr_small, n_boot=500, seed=1)
    lo_s, hi_s = percentile_interval(small["auroc"][:, 0])
    assert hi_s - lo_s > 1.5 * (hi - lo)
    # the same seed gives the same resamples; another seed does not
    again = bootstrap_label_metrics(y, s, thr, n_boot=500, seed=1)
    assert np.array_equal(again["auroc"], boot["auroc"], equal_nan=True)
    other = bootstrap_label_metrics(y, s, thr, n_boot=500, seed=2)
    assert not np.array_equal(other["auroc"], boot["auroc"], equal_nan=True)


def test_bootstrap_marks_one_class_resamples_undefined():
    y = np.array([[1], [0], [0], [0], [0]])
    s = np.array([[0.9], [0.1], [0.2], [0.3], [0.4]])
    boot = bootstrap_label_metrics(y, s, [0.5], n_boot=300, seed=0)
    has_pos = ~np.isnan(boot["auroc"][:, 0])
    assert 0 < has_pos.sum() < 300  # some resamples miss the only positive case
    assert np.isnan(boot["f1"][~has_pos, 0]).all()
    assert np.all(boot["auroc"][has_pos, 0] == 1.0)
    assert percentile_interval(np.array([np.nan, np.nan])) is None
