"""The fallback forecaster: method choice, point forecasts, empirical bands, edge cases."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from forecaster.heuristic import (
    choose_damping,
    choose_methods,
    heuristic_forecast,
    horizon_grid,
    linear_trend_point,
    nan_quantiles,
)

Q = (0.1, 0.5, 0.9)
Z90 = NormalDist().inv_cdf(0.9)


def padded(values: list[float], length: int = 288) -> np.ndarray:
    """One series whose history is `values`, ending at the latest step, NaN before."""
    row = np.full(length, np.nan)
    row[length - len(values) :] = values
    return row[None, :]


def test_methods_follow_the_amount_of_history():
    y = np.full((5, 300), np.nan)
    y[0, -1:] = 1.0
    y[1, -2:] = 1.0
    y[2, -3:] = 1.0
    y[3, :] = 1.0  # 300 steps: one season plus 12 pairs, fewer than MIN_ERRORS
    assert choose_methods(y).tolist() == [
        "last_value",
        "last_value",
        "linear_trend",
        "linear_trend",
        "none",
    ]
    assert choose_methods(np.ones((1, 312))).tolist() == ["seasonal_naive"]
    assert choose_methods(np.ones((1, 312)), season=None).tolist() == ["linear_trend"]


def test_single_observation_is_held_flat_with_zero_width():
    forecast = heuristic_forecast(padded([0.42]))
    assert forecast.shape == (1, 96, 3)
    assert np.all(forecast == 0.42)


def test_two_points_give_last_value_with_a_sqrt_h_normal_band():
    # One one-step error (1.0) is all the evidence: sigma = 1, band z_q * sqrt(h).
    forecast = heuristic_forecast(padded([0.0, 1.0]))[0]
    h = np.arange(1, 97)
    np.testing.assert_array_equal(forecast[:, 1], 1.0)
    np.testing.assert_allclose(forecast[:, 2] - 1.0, Z90 * np.sqrt(h), rtol=1e-12)
    np.testing.assert_allclose(1.0 - forecast[:, 0], Z90 * np.sqrt(h), rtol=1e-12)


@pytest.mark.fault("B5")
def test_constant_series_forecasts_exactly_its_value():
    forecast = heuristic_forecast(np.full((2, 288), 0.1))
    assert np.all(forecast == 0.1)


def test_periodic_series_repeats_yesterday_with_zero_width():
    t = np.arange(600)
    y = np.sin(2 * np.pi * (t % 288) / 288)[None, :]
    forecast = heuristic_forecast(y)
    assert choose_methods(y).tolist() == ["seasonal_naive"]
    expected = y[0, 600 - 288 : 600 - 288 + 96]
    for k in range(3):
        np.testing.assert_array_equal(forecast[0, :, k], expected)


def test_sustained_ramp_is_followed_by_a_damped_trend():
    y = 0.01 * np.arange(288.0)[None, :]
    assert choose_damping(y, horizon_grid(96)).tolist() == [0.9]
    forecast = heuristic_forecast(y)[0]
    h = np.arange(1, 97)
    expected = 2.87 + 0.01 * 0.9 * (1 - 0.9**h) / (1 - 0.9)
    np.testing.assert_allclose(forecast[:, 1], expected, rtol=1e-9)
    # Its own past errors say it falls short of a ramp: the band opens upwards only.
    np.testing.assert_allclose(forecast[:, 0], forecast[:, 1], rtol=1e-12)
    assert forecast[-1, 2] > forecast[-1, 1] + 0.5


def test_flat_noise_prefers_the_flat_forecast_on_ties():
    y = np.tile([0.0, 1.0], 144)[None, :]  # the 12-point slope is zero at every origin
    assert choose_damping(y, horizon_grid(96)).tolist() == [0.0]


def test_white_noise_bands_cover_about_eighty_percent():
    rng = np.random.default_rng(7)
    series = rng.standard_normal((200, 288 + 96))
    forecast = heuristic_forecast(series[:, :288])
    future = series[:, 288:]
    inside = (forecast[..., 0] <= future) & (future <= forecast[..., 2])
    assert 0.75 <= inside.mean() <= 0.9
    assert np.all(forecast[..., 1] == series[:, 287:288])


def test_bands_widen_with_horizon_and_never_cross_on_gappy_random_walks():
    rng = np.random.default_rng(3)
    y = np.cumsum(rng.standard_normal((50, 288)), axis=1)
    y[rng.random(y.shape) < 0.2] = np.nan
    forecast = heuristic_forecast(y)
    assert np.all(np.diff(forecast, axis=-1) >= 0)
    assert np.all(np.diff(forecast[..., 2] - forecast[..., 1], axis=1) >= -1e-12)
    assert np.all(np.diff(forecast[..., 1] - forecast[..., 0], axis=1) >= -1e-12)


def test_same_input_gives_bit_identical_output():
    rng = np.random.default_rng(11)
    y = rng.normal(0.5, 0.1, (20, 600))
    y[rng.random(y.shape) < 0.1] = np.nan
    y[:5, :400] = np.nan
    first = heuristic_forecast(y, domain=(0, 1))
    second = heuristic_forecast(y.copy(), domain=(0, 1))
    assert first.tobytes() == second.tobytes()


def test_values_are_clipped_to_a_shared_or_per_series_domain():
    ramp = np.linspace(0.5, 0.99, 288)
    y = np.stack([ramp, ramp])
    shared = heuristic_forecast(y, domain=(0.0, 1.0))
    assert shared.max() <= 1.0
    assert shared.max() == 1.0
    per_series = heuristic_forecast(y, domain=np.array([[0.0, 1.0], [np.nan, np.nan]]))
    assert per_series[0].max() == 1.0
    assert per_series[1].max() > 1.0


def test_infinite_values_count_as_unobserved():
    rng = np.random.default_rng(5)
    y = rng.normal(size=(3, 100))
    with_nan, with_inf = y.copy(), y.copy()
    with_nan[:, ::7] = np.nan
    with_inf[:, ::7] = np.inf
    np.testing.assert_array_equal(heuristic_forecast(with_inf), heuristic_forecast(with_nan))


def test_empty_history_gives_nan_and_no_series_gives_an_empty_forecast():
    forecast = heuristic_forecast(np.empty((2, 0)), horizon=4)
    assert forecast.shape == (2, 4, 3)
    assert np.isnan(forecast).all()
    assert choose_methods(np.empty((2, 0))).tolist() == ["none", "none"]
    assert heuristic_forecast(np.empty((0, 288))).shape == (0, 96, 3)
    mixed = heuristic_forecast(np.vstack([np.full(288, np.nan), np.ones(288)]))
    assert np.isnan(mixed[0]).all()
    assert not np.isnan(mixed[1]).any()


def test_observed_window_spans_gaps_and_recovers_a_line():
    y = np.full((1, 100), np.nan)
    y[0, ::3] = 2.0 - 0.5 * np.arange(0, 100, 3)
    point = linear_trend_point(y, np.array([99]), np.array([1, 10]), window=12)
    np.testing.assert_allclose(point[0, :, 0], 2.0 - 0.5 * np.array([100, 109]))


def test_nan_quantiles_agree_with_numpy():
    rng = np.random.default_rng(2)
    values = rng.normal(size=(4, 5, 30))
    values[rng.random(values.shape) < 0.3] = np.nan
    probs = np.array([0.05, 0.1, 0.5, 0.9])
    result, count = nan_quantiles(values, probs)
    expected = np.moveaxis(np.nanquantile(values, probs, axis=-1), 0, -1)
    np.testing.assert_allclose(result, expected, rtol=1e-12)
    np.testing.assert_array_equal(count, np.isfinite(values).sum(axis=-1))


def test_horizon_grid_holds_the_scored_horizons():
    assert horizon_grid(96).tolist() == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96]
    assert horizon_grid(1).tolist() == [1]
    assert horizon_grid(5).tolist() == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("quantiles", [(0.5, 0.1), (0.0, 0.5), (0.5, 1.0), ()])
def test_invalid_quantiles_are_refused(quantiles):
    with pytest.raises(ValueError, match="quantiles"):
        heuristic_forecast(np.ones((1, 10)), quantiles=quantiles)


def test_one_dimensional_history_is_refused():
    with pytest.raises(ValueError, match="n_series, n_steps"):
        heuristic_forecast(np.ones(10))


@st.composite
def histories(draw) -> np.ndarray:
    """Small histories with NaN gaps, constant runs and repeated values."""
    shape = (draw(st.integers(1, 3)), draw(st.integers(0, 40)))
    values = draw(hnp.arrays(np.float64, shape, elements=st.floats(-1e6, 1e6)))
    missing = draw(hnp.arrays(np.bool_, shape))
    return np.where(missing, np.nan, values)


@settings(max_examples=200, deadline=None)
@given(
    y=histories(),
    horizon=st.sampled_from([1, 7, 96]),
    season=st.sampled_from([None, 4, 288]),
    trend_window=st.sampled_from([2, 12]),
)
@pytest.mark.fault("B5", "C7")
def test_forecasts_never_cross_and_are_finite_where_observed(y, horizon, season, trend_window):
    forecast = heuristic_forecast(y, horizon, Q, season=season, trend_window=trend_window)
    observed = np.isfinite(y).any(axis=1)
    assert forecast.shape == (y.shape[0], horizon, 3)
    assert np.isfinite(forecast[observed]).all()
    assert np.isnan(forecast[~observed]).all()
    assert np.all(np.diff(forecast[observed], axis=-1) >= 0)
