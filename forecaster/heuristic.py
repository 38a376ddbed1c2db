"""Deterministic fallback forecaster: simple point methods with bands from their own past errors.

Used during warm-up and whenever no model is loaded. Every series gets one method, chosen from
how much history it has (:func:`choose_methods`):

* ``"seasonal_naive"``: at least one full season (24 h) plus ``MIN_ERRORS`` seasonal pairs; the
  forecast for ``h`` steps ahead is the value one season earlier.
* ``"linear_trend"``: three or more observations; the slope of the least-squares line over
  the last ``trend_window`` observed steps (1 h), damped: ``h`` steps ahead the last value
  plus ``slope * (phi + phi^2 + ... + phi^h)``. ``phi`` is chosen per series from ``DAMPING``
  by the mean absolute error of its own rolling-origin forecasts, a trend (``phi > 0``) only
  when that error times ``1 + TREND_MARGIN`` stays below the flat forecast's (``phi = 0``). The
  seed's heuristic carried the 1 h slope undamped over 8 h: on a simulated fleet (20 nodes,
  5 quantities, 24 h context) its 8 h quantile loss was 1.4 against 0.26 for the last
  value; this method scored 0.26 there and still follows a sustained ramp.
* ``"last_value"``: one or two observations; the last observed value.
* ``"none"``: no observation at all; the forecast is NaN.

Quantiles are the point forecast plus empirical quantiles of the method's own ``h``-step-ahead
errors (actual minus forecast), measured from every origin inside the series' history
(rolling origins, no look-ahead), on a grid of horizons (1, 2, 3, 4, 6, 8, 12, ... steps)
interpolated linearly in ``sqrt(h)`` in between. Offsets of quantiles below 0.5 are capped at
zero and those above 0.5 floored at zero, so the band always holds the point forecast, which
is the p50. A horizon with fewer than ``MIN_ERRORS`` errors borrows the offsets of the longest
shorter horizon that has enough, scaled by ``sqrt(h / h_known)``. A series without any such
horizon (short history) gets the normal band ``z_q * sigma * sqrt(h)``, ``sigma`` the root
mean square of all its errors scaled to one step (``e / sqrt(h)``); zero width when it has no
error at all (a single observation). Bands never narrow as ``h`` grows, quantiles never cross
and values are clipped to the series' domain. No randomness: the same input gives a
bit-identical output.

Arrays: history ``y`` is ``(n_series, n_steps)`` on the 5-minute grid, last column the latest
step, NaN (or any non-finite value) where unobserved; forecasts are
``(n_series, horizon, n_quantiles)``. The point and band functions are public so that
``training.baselines`` can reuse them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from statistics import NormalDist
from typing import Literal

import numpy as np

from forecaster.grid import HORIZON_STEPS, SEASON_STEPS

METHODS = ("seasonal_naive", "linear_trend", "last_value", "none")
MIN_ERRORS = 24
"""Errors needed at a horizon before its empirical quantiles are trusted (2 h of origins)."""
DAMPING = (0.0, 0.8, 0.9)
"""Candidate trend damping factors; 0.9 carries the slope at most 9 steps (45 min) ahead."""
TREND_MARGIN = 0.1
"""Handicap on a damped trend's rolling-origin MAE when it competes with the flat forecast."""

PointForecaster = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""``point(y, origins, steps) -> (n_series, n_steps, n_origins)``: the forecast made at column
``origins[j]`` (using columns up to and including it) for ``steps[k]`` steps ahead; NaN where
the method is undefined. Origins last keeps the long axis contiguous."""

Domain = tuple[float, float] | np.ndarray | None
Quantiles = Sequence[float] | np.ndarray


def choose_methods(y: np.ndarray, season: int | None = SEASON_STEPS) -> np.ndarray:
    """Method name per series (see the module docstring), as an array of ``str``."""
    y = _as_history(y)
    mask = np.isfinite(y)
    n_obs = mask.sum(axis=1)
    pairs = np.zeros_like(n_obs)
    if season and y.shape[1] > season:
        pairs = (mask[:, season:] & mask[:, :-season]).sum(axis=1)
    return np.select(
        [n_obs == 0, n_obs <= 2, pairs >= MIN_ERRORS],
        ["none", "last_value", "seasonal_naive"],
        default="linear_trend",
    )


def heuristic_forecast(
    y: np.ndarray,
    horizon: int = HORIZON_STEPS,
    quantiles: Quantiles = (0.1, 0.5, 0.9),
    *,
    season: int | None = SEASON_STEPS,
    trend_window: int = 12,
    domain: Domain = None,
) -> np.ndarray:
    """Quantile forecasts ``(n_series, horizon, n_quantiles)`` by the method of each series.

    ``domain`` is ``(low, high)`` for every series or an ``(n_series, 2)`` array; NaN or an
    infinite bound means unbounded on that side. Series without any observation get NaN.
    """
    y = _as_history(y)
    probs = _as_quantiles(quantiles)
    methods = choose_methods(y, season)
    out = np.full((y.shape[0], horizon, probs.size), np.nan)
    for name in METHODS[:-1]:
        rows = methods == name
        if rows.any():
            point = _method_point(name, y[rows], horizon, season or 1, trend_window)
            out[rows] = forecast_with_residual_bands(y[rows], point, horizon, probs)
    return clip_to_domain(out, domain)


def seasonal_naive_forecast(
    y: np.ndarray,
    horizon: int = HORIZON_STEPS,
    quantiles: Quantiles = (0.1, 0.5, 0.9),
    *,
    season: int = SEASON_STEPS,
) -> np.ndarray:
    """Seasonal naive with bands from its own past errors, NaN for a series without a season
    plus ``MIN_ERRORS`` seasonal pairs of history (the guard's seasonal candidate)."""
    y = _as_history(y)
    probs = _as_quantiles(quantiles)
    out = np.full((y.shape[0], horizon, probs.size), np.nan)
    rows = choose_methods(y, season) == "seasonal_naive"
    if rows.any():
        point = partial(seasonal_naive_point, season=season)
        out[rows] = forecast_with_residual_bands(y[rows], point, horizon, probs)
    return out


def seasonal_mean_forecast(
    y: np.ndarray,
    horizon: int = HORIZON_STEPS,
    quantiles: Quantiles = (0.1, 0.5, 0.9),
    *,
    season: int = SEASON_STEPS,
    seasons: int = 3,
) -> np.ndarray:
    """The mean of the same time of day over the last `seasons` seasons, banded by its own
    past errors; NaN for a series without two seasons plus ``MIN_ERRORS`` pairs of history."""
    y = _as_history(y)
    probs = _as_quantiles(quantiles)
    out = np.full((y.shape[0], horizon, probs.size), np.nan)
    rows = choose_methods(y, 2 * season) == "seasonal_naive"
    if rows.any():
        point = partial(seasonal_mean_point, season=season, seasons=seasons)
        out[rows] = forecast_with_residual_bands(y[rows], point, horizon, probs)
    return out


def seasonal_mean_point(
    y: np.ndarray,
    origins: np.ndarray,
    steps: np.ndarray,
    season: int = SEASON_STEPS,
    seasons: int = 3,
) -> np.ndarray:
    """Mean over k = 1..`seasons` of the value k seasons before the target, of those that
    lie inside the history (gaps forward-filled); NaN where fewer than two do."""
    total = np.zeros((y.shape[0], steps.size, origins.size))
    count = np.zeros_like(total)
    filled = np.concatenate([np.full((y.shape[0], 1), np.nan), forward_fill(y)], axis=1)
    base = (season * ((steps - 1) // season + 1))[:, None]
    for k in range(seasons):
        source = (steps[:, None] - base - k * season) + origins[None, :]
        value = filled[:, np.where(source >= 0, source + 1, 0)]
        good = np.isfinite(value)
        total += np.where(good, value, 0.0)
        count += good
    return np.where(count >= 2, total / np.maximum(count, 1), np.nan)


def _method_point(
    name: str, y: np.ndarray, horizon: int, season: int, trend_window: int
) -> PointForecaster:
    """The point forecaster of method ``name``, its damping fitted to ``y`` for a trend."""
    if name == "seasonal_naive":
        return partial(seasonal_naive_point, season=season)
    if name == "linear_trend":
        damping = choose_damping(y, horizon_grid(horizon), trend_window)
        return partial(linear_trend_point, window=trend_window, anchor="last", damping=damping)
    return last_value_point


def forecast_with_residual_bands(
    y: np.ndarray, point: PointForecaster, horizon: int, quantiles: Quantiles
) -> np.ndarray:
    """``point``'s forecast from the last column, banded by the quantiles of its past errors.

    Quantile 0.5, when asked for, is the point forecast exactly. Sorted along the last axis.
    """
    y = _as_history(y)
    probs = _as_quantiles(quantiles)
    if y.shape[1] == 0:
        return np.full((y.shape[0], horizon, probs.size), np.nan)
    final = point(y, np.array([y.shape[1] - 1]), np.arange(1, horizon + 1))[..., 0]
    return np.sort(final[..., None] + residual_offsets(y, point, horizon, probs), axis=-1)


def residual_offsets(
    y: np.ndarray, point: PointForecaster, horizon: int, quantiles: np.ndarray
) -> np.ndarray:
    """Offsets ``(n_series, horizon, n_quantiles)`` to add to ``point``'s forecast."""
    grid = horizon_grid(horizon)
    offsets = _error_offsets(rolling_errors(y, point, grid), grid, quantiles)
    lower, upper = quantiles < 0.5, quantiles > 0.5
    offsets[..., lower] = np.minimum.accumulate(offsets[..., lower], axis=1)
    offsets[..., upper] = np.maximum.accumulate(offsets[..., upper], axis=1)
    return _interpolate_sqrt_h(offsets, grid, horizon)


def horizon_grid(horizon: int) -> np.ndarray:
    """Steps ahead at which errors are measured: 1, 2, 3, 4, 6, 8, 12, ... and ``horizon``."""
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    powers = 2 ** np.arange(int(np.log2(horizon)) + 1)
    grid = np.concatenate([powers, 3 * powers // 2, [horizon]])
    return np.unique(grid[(grid >= 1) & (grid <= horizon)])


def rolling_errors(y: np.ndarray, point: PointForecaster, steps: np.ndarray) -> np.ndarray:
    """Errors ``actual - forecast``, shape ``(n_series, n_steps, n_origins)``, NaN if unknown.

    Origins are every column but the last (at least one, so that the axis is never empty).
    """
    origins = _origins(y)
    return _actuals(y, origins, steps) - point(y, origins, steps)


def nan_quantiles(values: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantiles along the last axis ignoring NaN (numpy's "linear" rule), and the counts.

    Returns ``(quantiles of shape values.shape[:-1] + (len(probs),), counts)``; NaN where a
    row has no finite value. Vectorised replacement for ``np.nanquantile`` over many rows.
    """
    ordered = np.sort(values, axis=-1)
    count = np.isfinite(ordered).sum(axis=-1)
    last = np.maximum(count - 1, 0)[..., None]
    position = probs * last
    below = np.floor(position).astype(np.intp)
    low = np.take_along_axis(ordered, below, axis=-1)
    high = np.take_along_axis(ordered, np.minimum(below + 1, last), axis=-1)
    return low + (high - low) * (position - below), count


def last_value_point(y: np.ndarray, origins: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Last observed value at or before each origin, for every step ahead."""
    level = forward_fill(y)[:, None, origins]
    return np.broadcast_to(level, (y.shape[0], steps.size, origins.size))


def seasonal_naive_point(
    y: np.ndarray, origins: np.ndarray, steps: np.ndarray, season: int = SEASON_STEPS
) -> np.ndarray:
    """Value one season before the target (gaps forward-filled); NaN before the history."""
    lag = season * ((steps - 1) // season + 1)
    source = (steps - lag)[:, None] + origins[None, :]
    filled = np.concatenate([np.full((y.shape[0], 1), np.nan), forward_fill(y)], axis=1)
    return filled[:, np.where(source >= 0, source + 1, 0)]


def linear_trend_point(
    y: np.ndarray,
    origins: np.ndarray,
    steps: np.ndarray,
    *,
    window: int = 12,
    by: Literal["observed", "time"] = "observed",
    anchor: Literal["line", "last"] = "line",
    damping: float | np.ndarray = 1.0,
) -> np.ndarray:
    """Least-squares line of value on time over a window, extrapolated ``steps`` ahead.

    ``by="observed"``: the last ``window`` observed points up to the origin, wherever they
    lie. ``by="time"``: the observed points among the last ``window`` columns, as PromQL's
    ``predict_linear(v[window * step], h * step)`` evaluated at the origin (Prometheus 3
    ranges are left-open, so ``[1h]`` holds 12 samples of a 5-minute grid). The forecast
    starts from the line's value at the origin (``anchor="line"``, PromQL's intercept) or from
    the last observed value (``"last"``). ``damping`` (scalar or one per series) shrinks the
    slope's reach to ``phi + ... + phi^h`` steps; 1 extrapolates the line itself. NaN where
    the window holds fewer than 2 points (PromQL returns no sample then).
    """
    level, slope, count = trend_state(y, origins, window, by)
    if anchor == "last":
        level = forward_fill(y)[:, origins]
    forecast = level[:, None, :] + slope[:, None, :] * _damped_reach(damping, steps)
    return np.where((count >= 2)[:, None, :], forecast, np.nan)


def trend_state(
    y: np.ndarray,
    origins: np.ndarray,
    window: int = 12,
    by: Literal["observed", "time"] = "observed",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Line value at each origin, slope per step and points used, each ``(n_series, n_origins)``.

    Window sums come from cumulative sums, with times relative to the last column and values
    relative to the last observation, so a constant series gives exactly its value.
    """
    count, t_sum, tt_sum, v_sum, tv_sum = _window_sums(y, origins, window, by)
    safe = np.maximum(count, 1)
    t_mean = t_sum / safe
    sxx = tt_sum - t_sum * t_mean
    sxy = tv_sum - t_mean * v_sum
    slope = np.divide(sxy, sxx, out=np.zeros_like(sxy), where=sxx > 0)
    at_origin = origins[None, :] - (y.shape[1] - 1) - t_mean
    level = _last_observed(y)[:, None] + v_sum / safe + slope * at_origin
    return level, slope, count


def choose_damping(y: np.ndarray, steps: np.ndarray, window: int = 12) -> np.ndarray:
    """Per series, the ``DAMPING`` factor for ``linear_trend_point(anchor="last")``.

    The absolute error of the rolling-origin forecasts at ``steps``, summed over every origin
    and step (the same ones for every candidate), decides; candidates after the first have it
    inflated by ``TREND_MARGIN``; a series without any error gets the first candidate (flat).
    """
    origins = _origins(y)
    _, slope, count = trend_state(y, origins, window)
    residual = _actuals(y, origins, steps) - forward_fill(y)[:, None, origins]
    valid = np.isfinite(residual) & (count >= 2)[:, None, :]
    residual[~valid] = 0.0
    total = np.empty((y.shape[0], len(DAMPING)))
    error = np.empty_like(residual)
    for k, phi in enumerate(DAMPING):
        np.multiply(slope[:, None, :], _damped_reach(phi, steps), out=error)
        np.abs(np.subtract(residual, error, out=error), out=error)
        total[:, k] = np.sum(error, axis=(1, 2), where=valid) * (1 + TREND_MARGIN * (k > 0))
    total[~valid.any(axis=(1, 2))] = np.inf
    return np.asarray(DAMPING)[np.argmin(total, axis=1)]


def forward_fill(y: np.ndarray) -> np.ndarray:
    """Each column's last finite value at or before it, NaN before the first observation."""
    finite = np.isfinite(y)
    last = np.where(finite, np.arange(y.shape[1]), -1)
    np.maximum.accumulate(last, axis=1, out=last)
    filled = np.take_along_axis(y, np.maximum(last, 0), axis=1)
    return np.where(last >= 0, filled, np.nan)


def clip_to_domain(values: np.ndarray, domain: Domain) -> np.ndarray:
    """Clip ``(n_series, ...)`` values to ``(low, high)`` or per-series ``(n_series, 2)``."""
    if domain is None:
        return values
    bounds = np.asarray(domain, dtype=float)
    if bounds.shape[-1:] != (2,) or bounds.ndim > 2:
        raise ValueError(f"domain must be (low, high) or (n_series, 2), got {bounds.shape}")
    low = np.nan_to_num(bounds[..., 0], nan=-np.inf)
    high = np.nan_to_num(bounds[..., 1], nan=np.inf)
    if np.any(low > high):
        raise ValueError("domain low bound above high bound")
    shape = (-1,) + (1,) * (values.ndim - 1)
    return np.clip(values, low.reshape(shape), high.reshape(shape))


def _origins(y: np.ndarray) -> np.ndarray:
    """Rolling origins: every column but the last, at least one so no axis is empty."""
    return np.arange(max(y.shape[1] - 1, 1))


def _actuals(y: np.ndarray, origins: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Observed values ``steps`` after each origin, ``(n_series, n_steps, n_origins)``."""
    padded = np.concatenate([y, np.full((y.shape[0], int(steps.max())), np.nan)], axis=1)
    padded[~np.isfinite(padded)] = np.nan
    return padded[:, steps[:, None] + origins[None, :]]


def _damped_reach(damping: float | np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Slope reach ``phi + phi^2 + ... + phi^h`` per step ``h``.

    Shape ``(n_steps, 1)``, or ``(n_series, n_steps, 1)`` with one damping factor per series.
    """
    phi = np.asarray(damping, dtype=float)[..., None]
    reach = np.cumsum(phi ** np.arange(1, int(steps.max()) + 1), axis=-1)[..., steps - 1]
    return reach[..., None]


def _window_sums(
    y: np.ndarray, origins: np.ndarray, window: int, by: str
) -> tuple[np.ndarray, ...]:
    """Sums of 1, t, t^2, v, t*v over each origin's trend window, each ``(n_series, n_origins)``.

    ``t`` is the column minus the last column, ``v`` the value minus the series' last
    observation; unobserved columns count as zero.
    """
    if window < 2:
        raise ValueError(f"trend window must be >= 2, got {window}")
    finite = np.isfinite(y)
    t = np.broadcast_to(np.arange(y.shape[1]) - (y.shape[1] - 1.0), y.shape)
    v = np.where(finite, y - _last_observed(y)[:, None], 0.0)
    if by == "observed":
        order = np.argsort(~finite, axis=1, kind="stable")
        finite, t, v = (np.take_along_axis(a, order, axis=1) for a in (finite, t, v))
        end = np.cumsum(finite, axis=1)[:, origins]
    elif by == "time":
        end = np.broadcast_to(origins + 1, (y.shape[0], origins.size))
    else:
        raise ValueError(f"unknown trend window kind {by!r}")
    w = finite.astype(float)
    moments = np.stack([w, w * t, w * t * t, v, v * t])
    cumulative = np.concatenate([np.zeros((5, y.shape[0], 1)), moments.cumsum(axis=2)], axis=2)
    rows = np.arange(y.shape[0])[:, None]
    start = np.maximum(end - window, 0)
    return tuple(cumulative[:, rows, end] - cumulative[:, rows, start])


def _last_observed(y: np.ndarray) -> np.ndarray:
    """Each series' last finite value, 0 for a series without any."""
    return np.nan_to_num(forward_fill(y)[:, -1], nan=0.0) if y.shape[1] else np.zeros(len(y))


def _error_offsets(errors: np.ndarray, grid: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """Offsets from the error quantiles per grid horizon, ``(n_series, n_grid, n_q)``.

    Horizons with fewer than ``MIN_ERRORS`` errors borrow or fall back to the normal band as
    the module docstring says.
    """
    empirical, count = nan_quantiles(errors, quantiles)
    offsets = np.where(quantiles < 0.5, np.minimum(empirical, 0.0), np.maximum(empirical, 0.0))
    offsets[..., quantiles == 0.5] = 0.0
    known = np.where(count >= MIN_ERRORS, np.arange(grid.size), -1)
    source = np.maximum.accumulate(known, axis=1)
    borrowed = np.maximum(source, 0)
    scale = np.sqrt(grid / grid[borrowed])[..., None]
    offsets = np.take_along_axis(offsets, borrowed[..., None], axis=1) * scale
    per_step = errors / np.sqrt(grid)[None, :, None]
    n_errors = np.isfinite(per_step).sum(axis=(1, 2))
    rms = np.sqrt(np.nansum(per_step**2, axis=(1, 2)) / np.maximum(n_errors, 1))
    z = np.array([NormalDist().inv_cdf(q) for q in quantiles])
    normal = rms[:, None, None] * np.sqrt(grid)[None, :, None] * z
    return np.where((source < 0)[..., None], normal, offsets)


def _interpolate_sqrt_h(values: np.ndarray, grid: np.ndarray, horizon: int) -> np.ndarray:
    """Interpolate ``(n, len(grid), k)`` values to steps ``1..horizon``, linear in sqrt(h)."""
    if grid.size == 1:
        return values
    steps = np.arange(1, horizon + 1)
    upper = np.clip(np.searchsorted(grid, steps), 1, grid.size - 1)
    root = np.sqrt(grid)
    weight = (np.sqrt(steps) - root[upper - 1]) / (root[upper] - root[upper - 1])
    low, high = values[:, upper - 1], values[:, upper]
    return low + (high - low) * weight[None, :, None]


def _as_history(y: np.ndarray) -> np.ndarray:
    """``y`` as a float64 ``(n_series, n_steps)`` array."""
    history = np.asarray(y, dtype=np.float64)
    if history.ndim != 2:
        raise ValueError(f"history must be (n_series, n_steps), got shape {history.shape}")
    return history


def _as_quantiles(quantiles: Quantiles) -> np.ndarray:
    """Quantile levels as a strictly increasing array inside (0, 1)."""
    probs = np.asarray(quantiles, dtype=np.float64)
    if probs.ndim != 1 or probs.size == 0:
        raise ValueError("quantiles must be a non-empty sequence")
    if np.any((probs <= 0) | (probs >= 1)) or np.any(np.diff(probs) <= 0):
        raise ValueError(f"quantiles must increase strictly inside (0, 1), got {quantiles}")
    return probs
