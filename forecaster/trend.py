"""The ramp outlook: a local linear trend of a series' deviation from its usual day, projected.

Leaks and fills are ramps that the TFT, trained mostly on healthy windows, smooths back
towards normal (docs/EVALUATION.md). `ramp_forecast` extrapolates them instead:

* the usual day is the median of the same time of day over the last `seasons` days that the
  window holds (1 to `seasons` of them; gaps forward-filled). Where the window holds no
  earlier day for every step needed, the usual level is 0: a plain linear trend on the value;
* the deviation from it over the last `window` steps is fitted by least squares;
* the forecast at step k is the usual day at k plus the fitted line extended to k, with the
  least-squares prediction interval: sd_k = s * sqrt(1 + 1/n + (x_k - mean x)^2 / Sxx), s the
  residual standard deviation (at least `min_sd`), so the band widens with the distance from
  the fitted window and with the slope's own uncertainty.

A series with fewer than half its window observed gets NaN (no ramp outlook). The projection
is not served as the forecast, and not yet used by the service's alerts: measured alone as an
alert (`training.ramp_study`, docs/RAMP-study.md) it is no better than predict_linear yet.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

from forecaster.heuristic import SEASON_STEPS, forward_fill

MIN_SD = 1e-3
"""Floor of the residual standard deviation, in base units (a ratio: 0.1 percentage point)."""


def ramp_forecast(
    y: np.ndarray,
    horizon: int,
    quantiles: Sequence[float],
    *,
    window: int,
    season: int = SEASON_STEPS,
    seasons: int = 3,
    min_sd: float = MIN_SD,
) -> np.ndarray:
    """(N, horizon, len(quantiles)) ramp projections of the (N, L) histories `y` (oldest
    first, NaN where not observed); see the module docstring."""
    y = np.asarray(y, dtype=np.float64)
    n, length = y.shape
    out = np.full((n, horizon, len(quantiles)), np.nan)
    width = min(window, length)
    if n == 0 or width < 3:
        return out
    usual = _usual_day(y, horizon, season, seasons)  # (N, L + horizon), NaN where unknown
    tail = slice(length - width, length + horizon)
    known = np.isfinite(usual[:, tail]).all(axis=1)
    usual = np.where(known[:, None], usual, 0.0)
    x = np.arange(width, dtype=np.float64)
    deviation = y[:, length - width :] - usual[:, length - width : length]
    seen = np.isfinite(deviation)
    count = seen.sum(axis=1).astype(np.float64)
    safe = np.maximum(count, 1.0)
    d = np.where(seen, deviation, 0.0)
    x_mean = (seen * x).sum(axis=1) / safe
    d_mean = d.sum(axis=1) / safe
    dx = np.where(seen, x[None, :] - x_mean[:, None], 0.0)
    sxx = (dx * dx).sum(axis=1)
    slope = np.divide((dx * (d - d_mean[:, None])).sum(axis=1), sxx, out=np.zeros(n), where=sxx > 0)
    fitted = d_mean[:, None] + slope[:, None] * dx
    residual = np.where(seen, d - fitted, 0.0)
    dof = np.maximum(count - 2.0, 1.0)
    sd = np.maximum(np.sqrt((residual * residual).sum(axis=1) / dof), min_sd)
    future = width - 1 + np.arange(1, horizon + 1, dtype=np.float64)
    lever = (future[None, :] - x_mean[:, None]) ** 2 / np.maximum(sxx, 1e-12)[:, None]
    spread = sd[:, None] * np.sqrt(1.0 + 1.0 / safe[:, None] + lever)
    centre = usual[:, length:] + d_mean[:, None] + slope[:, None] * (future - x_mean[:, None])
    z = np.array([NormalDist().inv_cdf(q) for q in quantiles])
    values = centre[:, :, None] + spread[:, :, None] * z[None, None, :]
    good = (count >= max(3, width // 2)) & (sxx > 0)
    out[good] = values[good]
    return out


def _usual_day(y: np.ndarray, horizon: int, season: int, seasons: int) -> np.ndarray:
    """(N, L + horizon): the median of the values 1..`seasons` seasons earlier, NaN where none
    lies inside the history."""
    n, length = y.shape
    filled = forward_fill(y)
    targets = np.arange(length + horizon)
    earlier = np.full((seasons, n, length + horizon), np.nan)
    for k in range(1, seasons + 1):
        source = targets - k * season
        inside = (source >= 0) & (source < length)
        earlier[k - 1][:, inside] = filled[:, source[inside]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: NaN, no warning
        return np.nanmedian(earlier, axis=0)
