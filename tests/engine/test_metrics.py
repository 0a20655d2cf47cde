"""Metrics against hand-computed values: ties, monotone non-linear relations, the logistic fit, summaries."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dpiqa.engine.metrics import compute_metrics, fit_logistic, logistic4, summarize


def test_monotone_nonlinear_relation():
    # pred x = 1..4, mos = x^2. By hand: dx = (-1.5, -.5, .5, 1.5), dy = (-6.5, -3.5, 1.5, 8.5),
    # sum dx dy = 25, sum dx^2 = 5, sum dy^2 = 129 -> PLCC = 25 / sqrt(645);
    # errors x - x^2 = (0, -2, -6, -12) -> RMSE = sqrt((0 + 4 + 36 + 144) / 4) = sqrt(46).
    m = compute_metrics([1, 2, 3, 4], [1, 4, 9, 16])
    assert m["srcc"] == pytest.approx(1.0) and m["krcc"] == pytest.approx(1.0)
    assert m["plcc"] == pytest.approx(25 / math.sqrt(645))
    assert m["rmse"] == pytest.approx(math.sqrt(46))
    assert m["plcc_logistic"] > m["plcc"]
    assert m["n"] == 4


def test_ties_by_hand():
    # x = (1, 2, 2, 3), y = (1, 3, 2, 3). Pairs: 4 concordant, 0 discordant, 1 tied in x only, 1 tied in
    # y only: tau-b = 4 / sqrt((6 - 1) (6 - 1)) = 0.8. Average ranks (1, 2.5, 2.5, 4) and (1, 3.5, 2, 3.5):
    # centred (-1.5, 0, 0, 1.5) and (-1.5, 1, -.5, 1): SRCC = 3.75 / sqrt(4.5 * 4.5) = 5/6.
    m = compute_metrics([1, 2, 2, 3], [1, 3, 2, 3])
    assert m["krcc"] == pytest.approx(0.8)
    assert m["srcc"] == pytest.approx(5 / 6)


def test_logistic_fit_recovers_a_logistic_relation():
    x = np.linspace(-3, 3, 25)
    mos = logistic4(x, 80.0, 10.0, 0.5, 0.7)
    m = compute_metrics(x, mos)
    assert m["srcc"] == pytest.approx(1.0)
    assert m["plcc"] < 0.98  # raw: the S-curve is not a line
    assert m["plcc_logistic"] == pytest.approx(1.0, abs=1e-6)
    assert m["rmse_logistic"] == pytest.approx(0.0, abs=1e-3)
    assert m["fit"] == "logistic"
    b1, b2, b3, b4 = fit_logistic(x, mos).params
    assert (b1, b2, b3, abs(b4)) == pytest.approx((80.0, 10.0, 0.5, 0.7), rel=1e-3)


def test_decreasing_predictions_are_fitted_too():
    x = np.linspace(-3, 3, 25)
    mos = logistic4(x, 80.0, 10.0, 0.0, 1.0)
    m = compute_metrics(-x, mos)  # e.g. BRISQUE: lower means better
    assert m["srcc"] == pytest.approx(-1.0) and m["krcc"] == pytest.approx(-1.0)
    assert m["plcc_logistic"] == pytest.approx(1.0, abs=1e-6)


def test_failed_fit_falls_back_to_a_line():
    x = np.linspace(-3, 3, 25)
    mos = logistic4(x, 80.0, 10.0, 0.5, 0.7)
    mapping = fit_logistic(x, mos, maxfev=1)  # curve_fit gives up: RuntimeError
    assert mapping.method == "linear"
    slope, intercept = np.polyfit(x, mos, 1)
    assert mapping.params == pytest.approx((slope, intercept))
    assert np.corrcoef(mapping(x), mos)[0, 1] == pytest.approx(np.corrcoef(x, mos)[0, 1])


def test_three_images_get_a_line_not_an_error():
    """A validation part of 3 images (tiny datasets, tests) is too small for a 4-parameter curve."""
    pred, mos = [1.0, 2.0, 4.0], [10.0, 30.0, 50.0]
    m = compute_metrics(pred, mos)
    assert m["fit"] == "linear" and m["n"] == 3
    assert m["srcc"] == pytest.approx(1.0)
    slope, intercept = np.polyfit(pred, mos, 1)  # by hand: residuals of the least-squares line
    resid = np.array(mos) - (slope * np.array(pred) + intercept)
    assert m["rmse_logistic"] == pytest.approx(math.sqrt(np.mean(resid**2)))


def test_constant_predictions_give_nan_correlations_not_an_error():
    m = compute_metrics([50.0, 50.0, 50.0, 50.0], [10.0, 20.0, 30.0, 40.0])
    assert math.isnan(m["srcc"]) and math.isnan(m["plcc"]) and math.isnan(m["plcc_logistic"])
    assert m["fit"] == "constant"
    assert m["rmse"] == pytest.approx(math.sqrt((1600 + 900 + 400 + 100) / 4))
    assert m["rmse_logistic"] == pytest.approx(math.sqrt((225 + 25 + 25 + 225) / 4))


def test_bad_inputs():
    with pytest.raises(ValueError, match="3 predictions for 4 MOS"):
        compute_metrics([1, 2, 3], [1, 2, 3, 4])
    with pytest.raises(ValueError, match="at least 3"):
        compute_metrics([1, 2], [1, 2])
    with pytest.raises(ValueError, match="1 non-finite"):
        compute_metrics([1, 2, float("nan")], [1, 2, 3])


def test_summarize_median_and_spread():
    results = [
        {"srcc": 0.1, "plcc": 0.2, "fit": "logistic", "n": 10},
        {"srcc": 0.5, "plcc": 0.4, "fit": "linear", "n": 10},
        {"srcc": 0.3, "plcc": 0.9, "fit": "logistic", "n": 10},
    ]
    s = summarize(results)
    assert set(s) == {"srcc", "plcc", "n"}
    assert s["srcc"] == pytest.approx({"median": 0.3, "mean": 0.3, "std": 0.2, "min": 0.1, "max": 0.5, "n": 3})
    assert s["plcc"]["median"] == pytest.approx(0.4) and s["plcc"]["max"] == pytest.approx(0.9)
    assert summarize(results[:1])["srcc"]["std"] == 0.0
    assert math.isnan(summarize([*results, {"srcc": float("nan"), "plcc": 0.5, "n": 10}])["srcc"]["median"])
    with pytest.raises(ValueError, match="no results"):
        summarize([])


def test_parity_with_scipy_on_random_data():
    """SRCC, KRCC (tau-b) and PLCC equal scipy.stats' on random data with ties (rounded values)."""
    from scipy import stats

    rng = np.random.default_rng(11)
    for _ in range(5):
        pred = np.round(rng.normal(size=200), 1)
        mos = np.round(pred * 0.7 + rng.normal(scale=0.8, size=200), 1)
        m = compute_metrics(pred, mos)
        assert m["srcc"] == pytest.approx(stats.spearmanr(pred, mos).statistic, abs=1e-12)
        assert m["krcc"] == pytest.approx(stats.kendalltau(pred, mos).statistic, abs=1e-12)
        assert m["plcc"] == pytest.approx(stats.pearsonr(pred, mos).statistic, abs=1e-12)
        assert m["rmse"] == pytest.approx(float(np.sqrt(np.mean((pred - mos) ** 2))), abs=1e-12)
