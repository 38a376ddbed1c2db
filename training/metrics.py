"""Forecast accuracy metrics: pinball loss, normalised quantile loss (q-risk), WAPE, coverage.

Shapes: actual values ``y`` are ``(..., horizon)``; quantile forecasts are
``(..., horizon, n_quantiles)`` with ``quantiles`` naming the last axis. Index ``h - 1`` of the
horizon axis is the forecast ``h`` steps ahead, so :data:`HORIZONS` maps a horizon's name to
its steps ahead (``"30m"`` -> 6 -> index 5 on the 5-minute grid).

Rules shared by every metric:

* An unobserved actual (NaN or infinite ``y``) is masked: it counts in neither numerator nor
  denominator.
* A missing forecast (NaN) where the actual was observed is not masked: the result is NaN, so
  a model that fails to forecast never scores better for it.
* A zero denominator (nothing observed, or ``sum |y| == 0`` for the normalised losses) gives
  NaN. No metric raises on data; only inconsistent shapes raise ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from exporter.snapshot import HORIZONS as EXPORTED

Quantiles = Sequence[float] | np.ndarray

HORIZONS: Mapping[str, int] = MappingProxyType({h: EXPORTED[h] for h in ("30m", "2h", "8h")})
"""Scored horizons, of the exported ones: name -> steps ahead on the 5-minute grid (horizon
index = steps - 1)."""


@dataclass(frozen=True)
class Score:
    """Accuracy of quantile forecasts over one horizon slice (or all of them)."""

    nql: float
    wape: float
    coverage: float
    observed: int


def pinball(y: np.ndarray, q_forecast: np.ndarray, quantiles: Quantiles) -> np.ndarray:
    """Element-wise pinball loss ``max(q * u, (q - 1) * u)``, ``u = y - forecast``.

    Returns ``(..., horizon, n_quantiles)``; NaN where ``y`` is unobserved.
    """
    actual, forecast, probs = _aligned(y, q_forecast, quantiles)
    error = actual[..., None] - forecast
    return np.maximum(probs * error, (probs - 1.0) * error)


def nql(y: np.ndarray, forecast: np.ndarray, quantiles: Quantiles) -> float:
    """Normalised quantile loss, the q-risk of the TFT paper averaged over quantiles.

    For each quantile ``q``: ``QL_q = 2 * sum(pinball_q) / sum(|y|)`` over the observed
    elements, then the mean of ``QL_q`` over the quantiles. With the single quantile 0.5 it
    equals :func:`wape` of that forecast. NaN when ``sum(|y|) == 0``.
    """
    loss = pinball(y, forecast, quantiles)
    observed = _observed(y)
    numerator = np.where(observed[..., None], loss, 0.0)
    numerator = numerator.reshape(-1, loss.shape[-1]).sum(axis=0)
    q_risk = _ratio(2.0 * numerator, _abs_sum(y))
    return float(np.mean(q_risk))


def wape(y: np.ndarray, p50: np.ndarray) -> float:
    """Weighted absolute percentage error ``sum |y - p50| / sum |y|`` over observed ``y``."""
    actual, point = np.broadcast_arrays(np.asarray(y, dtype=float), np.asarray(p50, dtype=float))
    error = np.where(_observed(actual), np.abs(actual - point), 0.0)
    return float(_ratio(error.sum(), _abs_sum(actual)))


def coverage(y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """Share of observed ``y`` inside ``[lo, hi]`` (nominal 0.8 for p10-p90); NaN if none."""
    actual, low, high = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (y, lo, hi)))
    observed = _observed(actual)
    if np.isnan(low[observed]).any() or np.isnan(high[observed]).any():
        return float("nan")
    inside = observed & (low <= actual) & (actual <= high)
    return float(_ratio(inside.sum(), observed.sum()))


def score(
    y: np.ndarray,
    forecast: np.ndarray,
    quantiles: Quantiles,
    horizon: str | int | None = None,
    band: tuple[float, float] = (0.1, 0.9),
) -> Score:
    """NQL, WAPE of the p50 and ``band`` coverage at one horizon, or over all when ``None``.

    ``horizon`` is a name from :data:`HORIZONS` or a number of steps ahead (1-based).
    ``quantiles`` must hold 0.5 and both ends of ``band``.
    """
    actual, predicted, probs = _aligned(y, forecast, quantiles)
    if horizon is not None:
        steps = HORIZONS[horizon] if isinstance(horizon, str) else int(horizon)
        if not 1 <= steps <= actual.shape[-1]:
            raise ValueError(f"horizon {horizon!r} outside 1..{actual.shape[-1]} steps")
        actual, predicted = actual[..., steps - 1 : steps], predicted[..., steps - 1 : steps, :]
    median, low, high = (_quantile_index(probs, q) for q in (0.5, *band))
    return Score(
        nql=nql(actual, predicted, probs),
        wape=wape(actual, predicted[..., median]),
        coverage=coverage(actual, predicted[..., low], predicted[..., high]),
        observed=int(_observed(actual).sum()),
    )


def score_horizons(
    y: np.ndarray,
    forecast: np.ndarray,
    quantiles: Quantiles,
    horizons: Mapping[str, int] = HORIZONS,
) -> dict[str, Score]:
    """:func:`score` at each named horizon that fits the forecast, plus ``"all"``."""
    length = np.shape(y)[-1]
    scores = {
        name: score(y, forecast, quantiles, steps)
        for name, steps in horizons.items()
        if steps <= length
    }
    scores["all"] = score(y, forecast, quantiles)
    return scores


def _aligned(
    y: np.ndarray, forecast: np.ndarray, quantiles: Quantiles
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float arrays, unobserved ``y`` as NaN, shapes checked."""
    actual = np.asarray(y, dtype=float)
    predicted = np.asarray(forecast, dtype=float)
    probs = np.asarray(quantiles, dtype=float)
    if probs.ndim != 1 or predicted.shape != (*actual.shape, probs.size):
        raise ValueError(
            f"forecast shape {predicted.shape} does not match y {actual.shape} "
            f"and {probs.size} quantiles"
        )
    return np.where(np.isfinite(actual), actual, np.nan), predicted, probs


def _observed(y: np.ndarray) -> np.ndarray:
    """Mask of observed (finite) actual values."""
    return np.isfinite(np.asarray(y, dtype=float))


def _abs_sum(y: np.ndarray) -> float:
    """``sum |y|`` over observed values."""
    actual = np.asarray(y, dtype=float)
    return float(np.abs(actual[_observed(actual)]).sum())


def _ratio(numerator: np.ndarray | float, denominator: float) -> np.ndarray:
    """``numerator / denominator``, NaN when the denominator is zero."""
    numerator = np.asarray(numerator, dtype=float)
    if denominator == 0:
        return np.full_like(numerator, np.nan)
    return numerator / denominator


def _quantile_index(probs: np.ndarray, q: float) -> int:
    """Position of quantile level ``q`` in ``probs``."""
    matches = np.flatnonzero(np.isclose(probs, q))
    if matches.size == 0:
        raise ValueError(f"quantile {q} not among {probs.tolist()}")
    return int(matches[0])
