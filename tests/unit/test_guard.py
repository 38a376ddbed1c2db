"""The forecast guard: scores per series, weights, per-series conformal bands, the switch away
from a model that extrapolates a noisy series badly."""

from __future__ import annotations

import numpy as np
import pytest

from forecaster.guard import METHODS, SCORE_STEPS, Guard, band_of, default_params
from forecaster.heuristic import heuristic_forecast, seasonal_naive_forecast

STEP = 300
H = 96
DAY = 288


def noisy_series(n_steps: int, rows: int = 3, seed: int = 0) -> np.ndarray:
    """Real-shaped: a diurnal cycle, heavy-tailed noise and bursts, a level shift."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_steps)
    base = 0.3 + 0.1 * np.sin(2 * np.pi * t / DAY)
    noise = 0.02 * rng.standard_t(3, size=(rows, n_steps))
    bursts = (rng.random((rows, n_steps)) < 0.02) * rng.exponential(0.1, (rows, n_steps))
    shift = np.where(t > n_steps // 2, 0.03, 0.0)
    return np.clip(base + noise + bursts + shift, 0.0, 1.0)


def bad_model(y: np.ndarray) -> np.ndarray:
    """A model that carries the last hour's slope 8 h ahead with a narrow band."""
    last = y[:, -1]
    slope = (y[:, -1] - y[:, -13]) / 12.0
    p50 = last[:, None] + slope[:, None] * np.arange(1, H + 1)
    width = 0.005
    return np.stack([p50 - width, p50, p50 + width], axis=-1)


def candidates(y: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "tft": bad_model(y),
        "seasonal_naive": seasonal_naive_forecast(y, H),
        "heuristic": heuristic_forecast(y, H, season=None),
    }


def run(guard: Guard, y: np.ndarray, first: int, last: int, every: int = 12):
    """Cycles from column `first` to `last` every `every` steps; what was served and when."""
    names = [f"host{i}" for i in range(y.shape[0])]
    served = []
    for end in range(first, last, every):
        window = y[:, max(0, end - 3 * DAY + 1) : end + 1]
        seconds = end * STEP
        guard.observe("cpu", names, seconds, window, np.isfinite(window))
        options = candidates(window)
        if guard.record_due(seconds):
            guard.record(seconds, names, {"cpu": options})
        result = guard.serve("cpu", names, options)
        served.append((end, result, options))
    return served


def coverage_after(y: np.ndarray, served, start: int, method: str | None = None) -> float:
    """p10-p90 coverage at every step ahead of the forecasts made from column `start` on."""
    inside = []
    for end, result, options in served:
        if end < start or end + H >= y.shape[1]:
            continue
        band = result.forecasts if method is None else options[method]
        actual = y[:, end + 1 : end + 1 + H]
        inside.append((band[..., 0] <= actual) & (actual <= band[..., 2]))
    return float(np.mean(inside))


def test_bands_of_the_score_steps_follow_the_exported_horizons():
    assert band_of(SCORE_STEPS).tolist() == [0, 1, 1, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


def test_guard_switches_away_from_a_model_that_extrapolates_noise_and_coverage_recovers():
    y = noisy_series(8 * DAY)
    guard = Guard(default_params(STEP), STEP)
    served = run(guard, y, first=3 * DAY, last=8 * DAY - H)
    early = served[0][1]
    assert set(early.methods) == {"tft"}  # no scores yet: the model is preferred
    late = served[-1][1]
    assert "tft" not in set(late.methods), late.methods
    tft = METHODS.index("tft")
    assert (late.scores[:, tft] > np.nanmin(np.delete(late.scores, tft, axis=1), axis=1)).all()
    backtest_done = 5 * DAY  # two days of hourly records, all scored
    assert coverage_after(y, served, backtest_done, "tft") < 0.3
    assert coverage_after(y, served, backtest_done) == pytest.approx(0.8, abs=0.07)


def test_a_good_model_keeps_most_of_the_weight():
    y = noisy_series(7 * DAY, seed=1)
    truth_like = {}

    def oracle(window: np.ndarray, end: int) -> np.ndarray:
        future = y[:, end + 1 : end + 1 + H]
        if future.shape[1] < H:
            future = np.pad(future, ((0, 0), (0, H - future.shape[1])), mode="edge")
        return np.stack([future - 0.03, future, future + 0.03], axis=-1)

    names = [f"host{i}" for i in range(y.shape[0])]
    guard = Guard(default_params(STEP), STEP)
    for end in range(3 * DAY, 6 * DAY, 12):
        window = y[:, end - 3 * DAY + 1 : end + 1]
        guard.observe("cpu", names, end * STEP, window, np.ones_like(window, bool))
        options = candidates(window) | {"tft": oracle(window, end)}
        if guard.record_due(end * STEP):
            guard.record(end * STEP, names, {"cpu": options})
        truth_like = guard.serve("cpu", names, options)
    assert set(truth_like.methods) == {"tft"}
    p50 = truth_like.forecasts[..., 1]
    oracle_p50 = options["tft"][..., 1]
    baseline = options["seasonal_naive"][..., 1]
    assert np.abs(p50 - oracle_p50).mean() < 0.25 * np.abs(baseline - oracle_p50).mean()


def test_without_scores_the_first_available_method_serves_unchanged():
    guard = Guard(default_params(STEP), STEP)
    y = noisy_series(2 * DAY)
    options = candidates(y)
    options["tft"][1] = np.nan  # the model does not serve row 1
    result = guard.serve("cpu", ["a", "b", "c"], options)
    assert result.methods.tolist() == ["tft", "seasonal_naive", "tft"]
    np.testing.assert_allclose(result.forecasts[0], np.sort(options["tft"][0], axis=-1))
    np.testing.assert_allclose(result.forecasts[1], options["seasonal_naive"][1])
    assert np.isnan(result.scores).all()


def test_a_series_seen_by_no_method_gets_no_forecast():
    guard = Guard(default_params(STEP), STEP)
    nothing = {m: np.full((1, H, 3), np.nan) for m in ("tft", "heuristic")}
    result = guard.serve("cpu", ["a"], nothing)
    assert np.isnan(result.forecasts).all()


def test_bootstrap_origins_are_queued_once_and_handed_out_in_bounded_batches():
    guard = Guard(default_params(STEP, bootstrap_origins=10, bootstrap_per_cycle=4), STEP)
    end = 100 * DAY * STEP
    first = guard.bootstrap_due(end, usable_steps=3 * DAY)
    assert first == [end - k * 12 * STEP for k in range(1, 5)]
    assert len(guard.bootstrap_due(end, 3 * DAY)) == 4
    assert len(guard.bootstrap_due(end, 3 * DAY)) == 2
    assert guard.bootstrap_due(end, 3 * DAY) == []
    short = Guard(default_params(STEP, bootstrap_origins=10), STEP)
    assert len(short.bootstrap_due(end, usable_steps=30)) == 2  # only what the history allows
