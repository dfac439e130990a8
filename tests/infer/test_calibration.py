"""Calibrators and calibration metrics: fitted values against known ones, no extrapolation, Laplace steps,
round trips, hand-computed ECE / Brier, cross-fitting that never sees the case it scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medvl3d.eval.calibration import (
    calibration_metrics,
    cross_fitted_probabilities,
    expected_calibration_error,
    fit_calibration,
    reliability_bins,
)
from medvl3d.infer.calibration import Calibration, LabelCalibrator, fit_calibrator, sigmoid


def test_platt_and_temperature_recover_the_generating_logistic():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 20000)
    y = rng.random(z.size) < sigmoid(0.5 * z - 1.0)
    platt = fit_calibrator(z, y, "platt")
    assert platt.params["a"] == pytest.approx(0.5, abs=0.03)
    assert platt.params["b"] == pytest.approx(-1.0, abs=0.05)
    z_t = rng.normal(0, 6, 20000)
    y_t = rng.random(z.size) < sigmoid(z_t / 3.0)  # a pure temperature of 3
    assert fit_calibrator(z_t, y_t, "temperature").params["t"] == pytest.approx(3.0, rel=0.05)


def test_isotonic_steps_are_laplace_estimates_and_never_extrapolate():
    cal = fit_calibrator([0.0, 1.0, 2.0, 3.0], [0, 0, 1, 1], "isotonic")
    # two steps of two cases: (0 + 1) / (2 + 2) and (2 + 1) / (2 + 2), not the 0 and 1 seen
    assert cal([0.0, 1.0, 2.0, 3.0]).tolist() == pytest.approx([0.25, 0.25, 0.75, 0.75])
    assert float(cal(1.5)) == pytest.approx(0.5)  # linear between knots
    assert float(cal(100.0)) == pytest.approx(0.75) and float(cal(-100.0)) == pytest.approx(0.25)
    assert cal.max_probability == pytest.approx(0.75) and (cal.n, cal.n_pos) == (4, 2)
    # twelve cases at the top, all positive: 13/14, not 1
    top = fit_calibrator(np.r_[np.zeros(12), np.ones(12)], np.r_[np.zeros(12), np.ones(12)], "isotonic")
    assert top.max_probability == pytest.approx(13 / 14)
    one_value = fit_calibrator([2.0, 2.0, 2.0], [1, 0, 1], "isotonic")
    assert float(one_value(5.0)) == pytest.approx(3 / 5)


@pytest.mark.parametrize("method", ["temperature", "platt", "isotonic"])
def test_outputs_stay_within_what_the_calibration_data_support(method):
    rng = np.random.default_rng(1)
    z = rng.uniform(-1, 1, 200)
    cal = fit_calibrator(z, rng.random(200) < sigmoid(3 * z), method)
    assert cal.logit_range == (float(z.min()), float(z.max()))
    assert float(cal(1e6)) == pytest.approx(cal.max_probability) == pytest.approx(float(cal(z.max())))
    assert 0.0 < float(cal(-1e6)) <= float(cal(0.0)) <= cal.max_probability < 1.0  # monotone, never 0 or 1
    again = LabelCalibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    np.testing.assert_allclose(again(z), cal(z))


def test_calibration_lookup_round_trip_and_errors():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(40, 2))
    truth = (rng.random((40, 2)) < 0.3).astype(int)
    cal = fit_calibration(logits, truth, ["Emphysema", "Cardiomegaly"], "platt", prompts={}, fitted_on={})
    assert cal.find("emphysema")[1] == "label" and cal.find(" CARDIOMEGALY ")[1] == "label"
    assert cal.find("hiatal hernia") == (cal.pooled, "pooled")
    assert cal.fitted_on["n_cases"] == 40 and "date" in cal.fitted_on
    again = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    np.testing.assert_allclose(again.labels["Emphysema"](logits[:, 0]), cal.labels["Emphysema"](logits[:, 0]))
    assert Calibration("isotonic", {}).find("x") == (None, "none")
    with pytest.raises(ValueError, match="unknown calibration method 'beta'"):
        fit_calibrator([0, 1], [0, 1], "beta")
    with pytest.raises(ValueError, match="as many logits as labels"):
        fit_calibrator([0, 1, 2], [0, 1], "platt")
    with pytest.raises(ValueError, match="NaN"):
        fit_calibrator([0, np.nan], [0, 1], "platt")
    with pytest.raises(ValueError, match="ckpt: malformed calibration entry"):
        Calibration.from_dict({"method": "platt", "labels": {"x": {"method": "platt"}}}, "ckpt")


def test_ece_brier_and_bins_hand_computed():
    truth = np.array([0, 1, 1, 1])
    probs = np.array([0.1, 0.1, 0.9, 0.9])
    # bin [0.1, 0.2): mean 0.1, frequency 0.5; bin [0.9, 1.0]: mean 0.9, frequency 1.0
    bins = reliability_bins(truth, probs)
    assert [(b["n"], b["frequency"]) for b in bins] == [(2, 0.5), (2, 1.0)]
    assert expected_calibration_error(truth, probs) == pytest.approx((2 * 0.4 + 2 * 0.1) / 4)
    m = calibration_metrics(truth, probs)
    assert m["brier"] == pytest.approx((0.01 + 0.81 + 0.01 + 0.01) / 4)
    assert m["max_probability"] == pytest.approx(0.9)
    assert m["log_loss"] == pytest.approx(-(np.log(0.9) + np.log(0.1) + 2 * np.log(0.9)) / 4)


def test_cross_fitting_never_scores_a_case_with_its_own_label():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(30, 1))
    truth = (rng.random((30, 1)) < sigmoid(2 * logits)).astype(int)
    out = cross_fitted_probabilities(logits, truth, "isotonic", folds=5, seed=0)
    for i in (0, 7, 29):
        flipped = truth.copy()
        flipped[i, 0] = 1 - flipped[i, 0]
        again = cross_fitted_probabilities(logits, flipped, "isotonic", folds=5, seed=0)
        assert again[i, 0] == pytest.approx(out[i, 0])  # its own label never reached its calibrator
