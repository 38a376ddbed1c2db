"""Baseline forecasters that the model must beat in the backtest.

Every baseline is a small frozen dataclass with a ``name`` and
``fit_predict(y, horizon, quantiles) -> (n_series, horizon, n_quantiles)``, ``y`` being the
``(n_series, n_steps)`` history on the 5-minute grid (NaN where unobserved, last column the
forecast origin). A series on which a baseline is undefined (too little history for it) gets
NaN, which the metrics score as NaN rather than hide.

* :class:`LastValue` and :class:`SeasonalNaive` (24 h): the point forecast plus empirical
  quantiles of the method's own past ``h``-step errors, by the residual machinery of
  :mod:`forecaster.heuristic`.
* :class:`PredictLinear`: PromQL's ``predict_linear(v[1h], h)`` (or ``[6h]``), the simple
  least-squares line of value on time over the range, extrapolated from the evaluation time;
  bands from its own past errors.
* :class:`AutoETS`: statsforecast's AutoETS, non-seasonal by default, with its
  normal-theory prediction intervals. ETS in statsforecast (as in R's ``forecast::ets``)
  supports seasonal periods up to 24 only: ``season_length=288`` silently drops the
  seasonal component yet took 2.7 s per fit instead of 0.01 s (576 points, measured), so the
  daily season is handled by :class:`MSTLAutoETS` instead: an MSTL decomposition with period
  288 whose deseasonalised part is forecast by AutoETS (0.1 s per fit on 576 points; needs at
  least two full days of history).

The p50 of every baseline is its point forecast exactly, so WAPE measures the method as an
operator would run it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import numpy as np

from forecaster.grid import SEASON_STEPS
from forecaster.heuristic import (
    forecast_with_residual_bands,
    last_value_point,
    linear_trend_point,
    seasonal_naive_point,
)


class _StatsforecastModel(Protocol):
    """The memory-efficient ``forecast`` method of statsforecast's models."""

    def forecast(self, y: np.ndarray, h: int, *, level: list[int] | None = None) -> Any: ...


class Baseline(Protocol):
    """What the backtest needs from a baseline."""

    @property
    def name(self) -> str:
        """Name used in reports."""
        ...

    def fit_predict(
        self, y: np.ndarray, horizon: int, quantiles: Sequence[float]
    ) -> np.ndarray: ...


@dataclass(frozen=True)
class LastValue:
    """Naive forecast: the last observed value, empirical error quantiles per horizon."""

    name: str = "naive"

    def fit_predict(self, y: np.ndarray, horizon: int, quantiles: Sequence[float]) -> np.ndarray:
        """Quantile forecasts ``(n_series, horizon, n_quantiles)``."""
        return forecast_with_residual_bands(y, last_value_point, horizon, quantiles)


@dataclass(frozen=True)
class SeasonalNaive:
    """Seasonal naive: the value one season (24 h) earlier.

    NaN for target steps whose value a season earlier precedes the first observation; its
    bands need ``MIN_ERRORS`` seasonal pairs, i.e. at least ``season + 24`` steps of history.
    """

    season: int = SEASON_STEPS
    name: str = "seasonal_naive_24h"

    def fit_predict(self, y: np.ndarray, horizon: int, quantiles: Sequence[float]) -> np.ndarray:
        """Quantile forecasts ``(n_series, horizon, n_quantiles)``."""
        point = partial(seasonal_naive_point, season=self.season)
        return forecast_with_residual_bands(y, point, horizon, quantiles)


@dataclass(frozen=True)
class PredictLinear:
    """PromQL ``predict_linear`` over the last ``window`` steps (12 = ``[1h]``, 72 = ``[6h]``).

    NaN for a series with fewer than two samples in the range, as PromQL returns nothing.
    """

    window: int = 12
    name: str = "predict_linear_1h"

    def fit_predict(self, y: np.ndarray, horizon: int, quantiles: Sequence[float]) -> np.ndarray:
        """Quantile forecasts ``(n_series, horizon, n_quantiles)``."""
        point = partial(linear_trend_point, window=self.window, by="time")
        return forecast_with_residual_bands(y, point, horizon, quantiles)


@dataclass(frozen=True)
class AutoETS:
    """statsforecast AutoETS per series on its observed span (gaps linearly interpolated).

    NaN for a series whose span from its first observation is under ``min_points`` steps.
    """

    season_length: int = 1
    min_points: int = 24
    name: str = "auto_ets"

    def fit_predict(self, y: np.ndarray, horizon: int, quantiles: Sequence[float]) -> np.ndarray:
        """Quantile forecasts ``(n_series, horizon, n_quantiles)``."""
        from statsforecast.models import AutoETS as _AutoETS

        model = _AutoETS(season_length=self.season_length)
        return _per_series(model, y, horizon, quantiles, self.min_points)


@dataclass(frozen=True)
class MSTLAutoETS:
    """MSTL decomposition (daily season) with AutoETS on the deseasonalised series.

    NaN for a series with fewer than two seasons of observed span.
    """

    season: int = SEASON_STEPS
    name: str = "mstl_auto_ets_24h"

    def fit_predict(self, y: np.ndarray, horizon: int, quantiles: Sequence[float]) -> np.ndarray:
        """Quantile forecasts ``(n_series, horizon, n_quantiles)``."""
        from statsforecast.models import MSTL
        from statsforecast.models import AutoETS as _AutoETS

        model = MSTL(season_length=self.season, trend_forecaster=_AutoETS(model="ZZN"))
        return _per_series(model, y, horizon, quantiles, 2 * self.season)


BASELINES: dict[str, Baseline] = {
    baseline.name: baseline
    for baseline in (
        LastValue(),
        SeasonalNaive(),
        PredictLinear(window=12, name="predict_linear_1h"),
        PredictLinear(window=72, name="predict_linear_6h"),
        AutoETS(),
        MSTLAutoETS(),
    )
}
"""The standard set, by name. The last two need the optional ``statsforecast`` package."""


def _per_series(
    model: _StatsforecastModel,
    y: np.ndarray,
    horizon: int,
    quantiles: Sequence[float],
    min_points: int,
) -> np.ndarray:
    """Run a statsforecast model's ``forecast`` on each series; quantiles from its intervals.

    A quantile ``q`` is the lower (``q < 0.5``) or upper bound of the
    ``100 * |2q - 1|`` % interval, 0.5 the mean (the intervals are symmetric normal ones).
    """
    probs = np.asarray(quantiles, dtype=float)
    levels = sorted({_level(q) for q in probs if q != 0.5})
    history = np.asarray(y, dtype=float)
    out = np.full((history.shape[0], horizon, probs.size), np.nan)
    for row, series in enumerate(history):
        clean = _observed_span(series)
        if clean.size < min_points:
            continue
        result = model.forecast(y=clean, h=horizon, level=levels or None)
        for k, q in enumerate(probs):
            key = "mean" if q == 0.5 else f"{'lo' if q < 0.5 else 'hi'}-{_level(q)}"
            out[row, :, k] = result[key]
    return np.sort(out, axis=-1)


def _level(q: float) -> int:
    """Central interval level (whole percent) whose bounds are quantiles ``q`` and ``1 - q``."""
    level = 100.0 * abs(2.0 * q - 1.0)
    if abs(level - round(level)) > 1e-9:
        raise ValueError(f"quantile {q} is not the bound of a whole-percent interval")
    return round(level)


def _observed_span(series: np.ndarray) -> np.ndarray:
    """Values from the first observation on, gaps interpolated, the last value held to the end."""
    finite = np.flatnonzero(np.isfinite(series))
    if finite.size == 0:
        return finite.astype(float)
    span = np.arange(finite[0], series.size)
    return np.interp(span, finite, series[finite])
