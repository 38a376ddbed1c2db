"""Per-horizon band calibration: fitted factors restore the nominal p10-p90 coverage."""

from __future__ import annotations

import numpy as np
import pytest

from forecaster.model.calibration import MAX_FACTOR, Calibration, fit


def narrow_forecasts(rng: np.random.Generator, samples: int = 4000, horizon: int = 12):
    """Actuals ~ N(0, sigma_h) with sigma growing in h; forecasts claim half that spread."""
    sigma = np.linspace(1.0, 3.0, horizon)
    y = rng.normal(0.0, sigma, size=(samples, horizon))[..., None]
    z = 1.2815515655446004  # the 0.9 quantile of N(0, 1)
    band = 0.5 * z * sigma
    forecasts = np.stack(
        [
            np.broadcast_to(-band, y.shape[:2]),
            np.zeros(y.shape[:2]),
            np.broadcast_to(band, y.shape[:2]),
        ],
        axis=-1,
    )[:, :, None, :]
    return y, forecasts


def coverage(y, forecasts):
    return float(((y >= forecasts[..., 0]) & (y <= forecasts[..., 2])).mean())


def test_fit_widens_an_overconfident_band_to_the_nominal_coverage():
    rng = np.random.default_rng(0)
    y, forecasts = narrow_forecasts(rng)
    assert coverage(y, forecasts) < 0.55
    calibration = fit(y, forecasts, ("cpu_utilisation",))
    assert np.all(calibration.upper > 1.6) and np.all(calibration.lower > 1.6)
    fresh_y, fresh = narrow_forecasts(np.random.default_rng(1))
    calibrated = calibration.apply(fresh, ("cpu_utilisation",))
    assert coverage(fresh_y, calibrated) == pytest.approx(0.8, abs=0.03)
    np.testing.assert_array_equal(calibrated[..., 1], fresh[..., 1])  # the p50 is kept
    assert (np.diff(calibrated, axis=-1) >= 0).all()


def test_unknown_targets_are_left_alone_and_factors_are_clipped():
    rng = np.random.default_rng(2)
    y, forecasts = narrow_forecasts(rng)
    calibration = fit(y * 100, forecasts, ("cpu_utilisation",))
    assert calibration.upper.max() == MAX_FACTOR
    both = np.concatenate([forecasts, forecasts], axis=2)
    out = calibration.apply(both, ("cpu_utilisation", "disk_io"))
    np.testing.assert_array_equal(out[:, :, 1], both[:, :, 1])


def test_too_few_samples_keep_factor_one():
    y = np.zeros((10, 4, 1))
    forecasts = np.stack([y[..., 0] - 1, y[..., 0], y[..., 0] + 1], axis=-1)[:, :, None, :]
    assert np.all(fit(y, forecasts, ("x",)).upper == 1.0)


def test_json_round_trip_and_refusals():
    calibration = Calibration(("a",), np.ones((1, 3)), np.full((1, 3), 1.5), {"level": 0.9})
    again = Calibration.from_json(calibration.to_json())
    np.testing.assert_array_equal(again.upper, calibration.upper)
    bad = calibration.to_json()
    bad["upper"] = [[1.0, float("nan"), 1.0]]
    with pytest.raises(ValueError, match="finite"):
        Calibration.from_json(bad)
    bad["upper"] = [[1.0, -1.0, 1.0]]
    with pytest.raises(ValueError, match="negative"):
        Calibration.from_json(bad)
    with pytest.raises(ValueError, match="format"):
        Calibration.from_json({**calibration.to_json(), "version": 2})
