"""One forecast of every instance: the TFT where it can serve, the heuristic everywhere else.

`forecast(cleaned, ...)` takes the cleaner's dense windows and returns a `ForecastSet`: per
target quantity an (N, horizon, 3) array of p10/p50/p90, the method that produced each row,
which instances really have the quantity (a host without HTTP latency gets no latency
forecast: masked, never invented), the last value and trend, and the model's top drivers.

The model serves an instance when one is loaded, the instance has at least the model's minimum
encoder length (and the configured warm-up) of history, and the model knows the quantity;
anything else, and any row whose model output is not finite, gets the heuristic.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from exporter.snapshot import QUANTILES
from forecaster.clean import Cleaned
from forecaster.contract import Quantity
from forecaster.heuristic import clip_to_domain, heuristic_forecast
from forecaster.risk import trend_per_hour

log = logging.getLogger(__name__)
MAX_DRIVERS = 5
# Encoder inputs that are bookkeeping rather than drivers an operator can act on.
_NOT_DRIVERS = ("relative_time_idx", "encoder_length")


class Predictor(Protocol):
    """What the engine needs of `forecaster.model.fast.FastPredictor` (no torch import here)."""

    config: object

    @property
    def encoder_variables(self) -> list[str]: ...

    def predict_with_importance(self, batch: object) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class ForecastSet:
    """Forecasts of N instances from the window ending at `origin` (unix seconds)."""

    origin: int
    instances: tuple[str, ...]
    profiles: tuple[str, ...]
    lengths: NDArray[np.int64]
    forecasts: Mapping[str, NDArray[np.float64]]  # quantity -> (N, horizon, 3)
    methods: Mapping[str, NDArray[np.str_]]  # quantity -> (N,) "tft" | "heuristic"
    available: Mapping[str, NDArray[np.bool_]]  # quantity -> (N,) observed in the window
    current: Mapping[str, NDArray[np.float64]]  # quantity -> (N,) last observed value
    trend: Mapping[str, NDArray[np.float64]]  # quantity -> (N,) units per hour
    drivers: tuple[tuple[tuple[str, float], ...], ...]  # per instance, largest first
    events: Counter[str] = field(default_factory=Counter)  # e.g. model_nan rows


def forecast(
    cleaned: Cleaned,
    targets: Sequence[Quantity],
    profiles: Mapping[str, str],
    predictor: Predictor | None,
    *,
    min_steps: int,
    horizon: int = 96,
    step: int = 300,
    batch_factory: object = None,
) -> ForecastSet:
    """Forecast every instance of `cleaned` (see the module docstring)."""
    n = len(cleaned.instances)
    column = {name: i for i, name in enumerate(cleaned.quantities)}
    names = [q.name for q in targets]
    y = np.where(cleaned.observed, cleaned.values, np.nan)
    events: Counter[str] = Counter()
    out = {q: np.full((n, horizon, len(QUANTILES)), np.nan) for q in names}
    methods = {q: np.full(n, "heuristic", dtype="<U9") for q in names}
    instance_profiles = tuple(profiles.get(i, "generic") for i in cleaned.instances)
    drivers: list[tuple[tuple[str, float], ...]] = [() for _ in range(n)]
    if predictor is not None and n:
        served = _model_forecast(
            cleaned,
            names,
            profiles=instance_profiles,
            predictor=predictor,
            min_steps=min_steps,
            horizon=horizon,
            batch_factory=batch_factory,
        )
        if served is not None:
            rows, values, weights = served
            for name, value in values.items():
                good = np.isfinite(value).all(axis=(1, 2))
                events["model_nan"] += int(np.count_nonzero(~good))
                out[name][rows[good]] = value[good]
                methods[name][rows[good]] = "tft"
            for r, w in zip(rows, weights, strict=True):
                drivers[r] = w
    for quantity in targets:
        name = quantity.name
        todo = np.flatnonzero(methods[name] != "tft")
        if todo.size:
            series = y[todo, :, column[name]]
            out[name][todo] = heuristic_forecast(series, horizon, QUANTILES, domain=None)
        out[name] = np.sort(clip_to_domain(out[name], _domain(quantity)), axis=-1)
    available = {q: cleaned.observed[:, :, column[q]].any(axis=1) for q in names}
    current = {q: _last_observed(y[:, :, column[q]]) for q in names}
    trend = {
        q: trend_per_hour(y[:, :, column[q]], np.isfinite(y[:, :, column[q]]), step) for q in names
    }
    return ForecastSet(
        origin=int(cleaned.end.value // 1_000_000_000),
        instances=cleaned.instances,
        profiles=instance_profiles,
        lengths=cleaned.lengths,
        forecasts=out,
        methods=methods,
        available=available,
        current=current,
        trend=trend,
        drivers=tuple(drivers),
        events=events,
    )


def _model_forecast(
    cleaned: Cleaned,
    names: list[str],
    *,
    profiles: tuple[str, ...],
    predictor: Predictor,
    min_steps: int,
    horizon: int,
    batch_factory: object,
):
    """(rows served, quantity -> (n, horizon, 3), drivers per row) or None if unusable."""
    config = predictor.config
    model_targets = list(getattr(config, "targets", ()))
    model_covariates = list(getattr(config, "covariates", ()))
    column = {name: i for i, name in enumerate(cleaned.quantities)}
    missing = [q for q in (*model_targets, *model_covariates) if q not in column]
    if missing:
        log.debug("model needs quantities that are not fetched: %s", missing)
        return None
    encoder = int(getattr(config, "encoder_length", 288))
    minimum = max(int(getattr(config, "min_encoder_length", 1)), min_steps)
    lengths = np.minimum(cleaned.lengths, min(encoder, cleaned.values.shape[1]))
    rows = np.flatnonzero(lengths >= minimum)
    if rows.size == 0:
        return None
    width = min(encoder, cleaned.values.shape[1])
    window = cleaned.values[rows, -width:, :]
    if batch_factory is None:
        from forecaster.model.fast import Batch

        batch_factory = Batch
    batch = batch_factory(
        end=int(cleaned.end.value // 1_000_000_000),
        targets=window[:, :, [column[q] for q in model_targets]],
        covariates=window[:, :, [column[q] for q in model_covariates]],
        lengths=lengths[rows].astype(np.int64),
        profiles=tuple(profiles[r] for r in rows),
        hosts=tuple(_host(cleaned.instances[r]) for r in rows),
    )
    raw, importance = predictor.predict_with_importance(batch)
    quantiles = list(getattr(config, "quantiles", QUANTILES))
    pick = [quantiles.index(q) for q in QUANTILES]
    values = {
        name: raw[:, :horizon, model_targets.index(name), :][:, :, pick]
        for name in names
        if name in model_targets
    }
    if not values:
        return None
    weights = _drivers(importance, predictor.encoder_variables)
    return rows, values, weights


def _host(instance: str) -> str:
    from forecaster.features import host_id

    return host_id(instance)


def _drivers(importance: np.ndarray, variables: list[str]) -> list[tuple[tuple[str, float], ...]]:
    """Top variables per row: `<q>_center`/`<q>_scale` fold into `<q>`; bookkeeping dropped."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(variables):
        if name in _NOT_DRIVERS:
            continue
        base = name.removesuffix("_center").removesuffix("_scale")
        groups.setdefault(base, []).append(i)
    if not groups or importance.size == 0:
        return [() for _ in range(importance.shape[0])]
    labels = list(groups)
    summed = np.stack([importance[:, idx].sum(axis=1) for idx in groups.values()], axis=1)
    order = np.argsort(-summed, axis=1, kind="stable")[:, :MAX_DRIVERS]
    return [
        tuple((labels[j], round(float(summed[r, j]), 6)) for j in order[r])
        for r in range(summed.shape[0])
    ]


def _domain(quantity: Quantity) -> tuple[float, float]:
    low, high = quantity.domain
    return (-np.inf if low is None else low, np.inf if high is None else high)


def _last_observed(y: np.ndarray) -> np.ndarray:
    """The last finite value of each row (NaN for a row without any)."""
    finite = np.isfinite(y)
    index = np.where(finite.any(axis=1), y.shape[1] - 1 - np.argmax(finite[:, ::-1], axis=1), 0)
    last = y[np.arange(y.shape[0]), index] if y.shape[1] else np.full(y.shape[0], np.nan)
    return np.where(finite.any(axis=1), last, np.nan)
