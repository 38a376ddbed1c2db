"""Accuracy metrics on tiny arrays computed by hand, masking and zero-denominator rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.metrics import HORIZONS, coverage, nql, pinball, score, score_horizons, wape

Q = (0.1, 0.5, 0.9)
# y = [2, 4]; p10 = [1, 5], p50 = [2, 3], p90 = [4, 6]
Y = np.array([2.0, 4.0])
F = np.array([[1.0, 2.0, 4.0], [5.0, 3.0, 6.0]])


def test_pinball_by_hand():
    # u = y - f: q=0.1 -> [1, -1], q=0.5 -> [0, 1], q=0.9 -> [-2, -2]
    expected = np.array([[0.1, 0.0, 0.2], [0.9, 0.5, 0.2]])
    np.testing.assert_allclose(pinball(Y, F, Q), expected)


def test_nql_by_hand():
    # 2 * sum(pinball_q) / sum|y| = 2 * [1.0, 0.5, 0.4] / 6, mean over q = 19/90
    assert nql(Y, F, Q) == pytest.approx(19 / 90)


def test_nql_of_the_median_alone_is_wape():
    assert nql(Y, F[:, 1:2], (0.5,)) == pytest.approx(wape(Y, F[:, 1]))
    assert wape(Y, F[:, 1]) == pytest.approx(1 / 6)


def test_unobserved_actuals_are_masked():
    y = np.array([2.0, np.nan, 4.0, np.inf])
    f = np.array([F[0], [9.0, 9.0, 9.0], F[1], [0.0, 0.0, 0.0]])
    assert nql(y, f, Q) == pytest.approx(19 / 90)
    assert wape(y, f[:, 1]) == pytest.approx(1 / 6)
    assert np.isnan(pinball(y, f, Q)[1]).all()


def test_missing_forecast_for_an_observed_value_gives_nan():
    f = F.copy()
    f[1, 1] = np.nan
    assert math.isnan(nql(Y, f, Q))
    assert math.isnan(wape(Y, f[:, 1]))
    assert math.isnan(coverage(Y, f[:, 1], f[:, 2]))


def test_zero_denominators_give_nan():
    zeros, nothing = np.zeros(3), np.full(3, np.nan)
    forecast = np.ones((3, 3))
    assert math.isnan(nql(zeros, forecast, Q))
    assert math.isnan(nql(nothing, forecast, Q))
    assert math.isnan(wape(zeros, forecast[:, 1]))
    assert math.isnan(coverage(nothing, forecast[:, 0], forecast[:, 2]))
    assert coverage(zeros, forecast[:, 0] - 2, forecast[:, 2]) == 1.0


def test_coverage_counts_bounds_as_inside():
    y = np.array([1.0, 2.0, 3.0, 4.0, np.nan])
    lo = np.array([0.0, 2.5, 3.0, 0.0, 0.0])
    hi = np.array([2.0, 3.0, 3.0, 3.0, 0.0])
    assert coverage(y, lo, hi) == 0.5


def test_score_at_a_named_horizon_reads_its_step():
    y = np.ones((2, 96))
    forecast = np.ones((2, 96, 3))
    forecast[:, HORIZONS["30m"] - 1, 1] = 3.0  # p50 wrong at 30 m only, outside p10-p90
    at_30m = score(y, forecast, Q, "30m")
    assert at_30m.wape == pytest.approx(2.0)
    assert at_30m.coverage == 1.0
    # q = 0.1 and 0.9 lose nothing; q = 0.5: 2 * (0.5 * 2 + 0.5 * 2) / (1 + 1) = 2
    assert at_30m.nql == pytest.approx((0 + 2 + 0) / 3)
    assert at_30m.observed == 2
    assert score(y, forecast, Q, "2h").wape == 0.0
    assert score(y, forecast, Q, 6) == at_30m
    assert score(y, forecast, Q).wape == pytest.approx(2.0 * 2 / (2 * 96))


def test_score_horizons_lists_the_horizons_that_fit():
    y = np.ones((1, 24))
    forecast = np.ones((1, 24, 3))
    assert list(score_horizons(y, forecast, Q)) == ["30m", "2h", "all"]
    assert HORIZONS == {"30m": 6, "2h": 24, "8h": 96}


def test_shapes_and_horizons_are_checked():
    with pytest.raises(ValueError, match="does not match"):
        nql(np.ones((2, 5)), np.ones((2, 5, 2)), Q)
    with pytest.raises(ValueError, match="outside"):
        score(np.ones((1, 24)), np.ones((1, 24, 3)), Q, "8h")
    with pytest.raises(ValueError, match=r"quantile 0\.5"):
        score(np.ones((1, 4)), np.ones((1, 4, 2)), (0.1, 0.9))
