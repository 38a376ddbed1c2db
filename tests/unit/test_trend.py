"""The ramp outlook (`forecaster.trend.ramp_forecast`)."""

from __future__ import annotations

import numpy as np

from forecaster.heuristic import SEASON_STEPS
from forecaster.trend import MIN_SD, ramp_forecast

QUANTILES = (0.1, 0.5, 0.9)


def _daily(days: int, level: float = 0.5, swing: float = 0.1) -> np.ndarray:
    t = np.arange(days * SEASON_STEPS)
    return level + swing * np.sin(2 * np.pi * t / SEASON_STEPS)


def test_a_linear_ramp_is_extended_with_its_slope() -> None:
    y = 0.4 + 0.002 * np.arange(200)[None, :]
    out = ramp_forecast(y, 96, QUANTILES, window=72)
    expected = 0.4 + 0.002 * (199 + np.arange(1, 97))
    np.testing.assert_allclose(out[0, :, 1], expected, atol=1e-9)
    assert np.all(np.diff(out[0, :, 2] - out[0, :, 0]) >= -1e-12)  # the band never narrows
    assert out[0, 0, 2] - out[0, 0, 1] >= MIN_SD * 1.28  # the floor holds on a noiseless line


def test_the_usual_day_is_not_a_trend() -> None:
    """A daily swing seen on earlier days is followed, not extrapolated as a ramp."""
    y = _daily(3)[None, :]
    y = y[:, : 2 * SEASON_STEPS + 100]  # the window ends on the rising flank
    out = ramp_forecast(y, 96, QUANTILES, window=72)
    t = np.arange(y.shape[1], y.shape[1] + 96)
    usual = 0.5 + 0.1 * np.sin(2 * np.pi * t / SEASON_STEPS)
    np.testing.assert_allclose(out[0, :, 1], usual, atol=1e-6)


def test_a_leak_on_top_of_the_usual_day_is_projected() -> None:
    y = _daily(3)[None, : 2 * SEASON_STEPS + 100].copy()
    y[0, -60:] += 0.003 * np.arange(1, 61)  # 5 h of leak
    out = ramp_forecast(y, 96, QUANTILES, window=72)
    t = np.arange(y.shape[1], y.shape[1] + 96)
    usual = 0.5 + 0.1 * np.sin(2 * np.pi * t / SEASON_STEPS)
    excess = out[0, :, 1] - usual
    assert excess[-1] > excess[0] > 0.15  # still rising over the horizon


def test_too_little_history_or_no_rows_give_nan_not_errors() -> None:
    y = np.full((2, 50), np.nan)
    y[0, -10:] = 0.5  # 10 of 72 steps observed: under half
    assert np.isnan(ramp_forecast(y, 12, QUANTILES, window=72)).all()
    assert ramp_forecast(np.zeros((0, 50)), 12, QUANTILES, window=72).shape == (0, 12, 3)
    assert np.isnan(ramp_forecast(np.zeros((1, 2)), 12, QUANTILES, window=72)).all()
