"""Baselines: PromQL predict_linear semantics, seasonal and last-value naive, AutoETS."""

from __future__ import annotations

import numpy as np
import pytest

from training.baselines import (
    BASELINES,
    AutoETS,
    LastValue,
    MSTLAutoETS,
    PredictLinear,
    SeasonalNaive,
)

Q = (0.1, 0.5, 0.9)
H = np.arange(1, 97)


def test_standard_set_is_named():
    assert list(BASELINES) == [
        "naive",
        "seasonal_naive_24h",
        "predict_linear_1h",
        "predict_linear_6h",
        "auto_ets",
        "mstl_auto_ets_24h",
    ]
    assert BASELINES["predict_linear_6h"] == PredictLinear(72, "predict_linear_6h")


def test_predict_linear_on_an_exact_line_is_the_line():
    y = 3.0 + 0.5 * np.arange(100.0)[None, :]
    forecast = PredictLinear().fit_predict(y, 96, Q)[0]
    np.testing.assert_allclose(forecast[:, 1], 3.0 + 0.5 * (99 + H), rtol=1e-12)
    assert np.ptp(forecast, axis=-1).max() < 1e-9


def test_predict_linear_reads_only_its_range():
    y = np.zeros((1, 100))
    y[0, 88:] = 0.2 * np.arange(12)  # the last hour is a line, the hours before flat
    one_hour = PredictLinear(12).fit_predict(y, 96, Q)[0, :, 1]
    six_hours = PredictLinear(72, "predict_linear_6h").fit_predict(y, 96, Q)[0, :, 1]
    np.testing.assert_allclose(one_hour, 0.2 * (11 + H), rtol=1e-12)
    assert np.all(six_hours < one_hour)


def test_predict_linear_regresses_the_samples_present_in_the_range():
    y = np.full((2, 20), np.nan)
    y[:, 2] = 100.0  # outside the [1h] range of the last step: ignored
    y[0, 9], y[0, 19] = 1.0, 3.0  # two samples in range: slope 0.2 per step
    y[1, 19] = 3.0  # one sample in range: PromQL returns nothing
    forecast = PredictLinear().fit_predict(y, 96, Q)
    np.testing.assert_allclose(forecast[0, :, 1], 3.0 + 0.2 * H, rtol=1e-12)
    assert np.isnan(forecast[1]).all()


def test_seasonal_naive_on_a_periodic_series_repeats_yesterday_exactly():
    t = np.arange(700)
    y = (0.5 + 0.3 * np.cos(2 * np.pi * (t % 288) / 288))[None, :]
    forecast = SeasonalNaive().fit_predict(y, 96, Q)[0]
    for k in range(3):
        np.testing.assert_array_equal(forecast[:, k], y[0, 700 - 288 : 700 - 288 + 96])


def test_seasonal_naive_is_nan_where_yesterday_precedes_the_history():
    y = np.full((1, 300), np.nan)
    y[0, 100:] = 1.0
    forecast = SeasonalNaive().fit_predict(y, 96, Q)[0]
    # step h reads column 299 + h - 288 = 11 + h, observed from h = 89 on
    assert np.isnan(forecast[:88]).all()
    assert np.all(forecast[88:] == 1.0)


def test_last_value_bands_are_its_empirical_error_quantiles():
    # Zigzag 0, 1, 0, 1 ... ending on 1: one-step errors are +1 or -1, two-step errors 0;
    # the band is last value -1 .. +1 at every step since bands never narrow.
    y = np.tile([0.0, 1.0], 144)[None, :]
    forecast = LastValue().fit_predict(y, 96, Q)[0]
    np.testing.assert_array_equal(forecast[:, 0], 0.0)
    np.testing.assert_array_equal(forecast[:, 1], 1.0)
    np.testing.assert_array_equal(forecast[:, 2], 2.0)


def test_last_value_holds_the_last_observation_through_trailing_gaps():
    y = np.array([[1.0, 2.0, 5.0, np.nan, np.nan]])
    assert np.all(LastValue().fit_predict(y, 8, Q)[0, :, 1] == 5.0)


def test_baselines_without_history_give_nan():
    empty = np.empty((2, 0))
    for name in ("naive", "seasonal_naive_24h", "predict_linear_1h"):
        assert np.isnan(BASELINES[name].fit_predict(empty, 4, Q)).all(), name


@pytest.mark.slow
def test_auto_ets_gives_sorted_symmetric_quantiles_and_nan_for_short_series():
    pytest.importorskip("statsforecast")
    rng = np.random.default_rng(0)
    y = 0.5 + 0.05 * rng.standard_normal((3, 288))
    y[1, 100:110] = np.nan
    y[2, :-10] = np.nan  # 10 points, below min_points
    forecast = AutoETS().fit_predict(y, 96, Q)
    assert np.isnan(forecast[2]).all()
    good = forecast[:2]
    assert np.all(np.diff(good, axis=-1) > 0)
    np.testing.assert_allclose(good[..., 1] - good[..., 0], good[..., 2] - good[..., 1])
    assert np.abs(good[..., 1] - 0.5).max() < 0.05


@pytest.mark.slow
def test_mstl_auto_ets_follows_the_daily_shape_with_two_days():
    pytest.importorskip("statsforecast")
    rng = np.random.default_rng(1)
    t = np.arange(576 + 96)
    series = 0.5 + 0.2 * np.sin(2 * np.pi * t / 288) + 0.01 * rng.standard_normal(t.size)
    y = np.vstack([series[:576], np.r_[np.full(300, np.nan), series[300:576]]])
    forecast = MSTLAutoETS().fit_predict(y, 96, Q)
    assert np.abs(forecast[0, :, 1] - series[576:]).mean() < 0.03
    assert np.isnan(forecast[1]).all()
