"""One forecast of every instance: the TFT where it can serve, the heuristic everywhere else.

`forecast(cleaned, ...)` takes the cleaner's dense windows and returns a `ForecastSet`: per
target quantity an (N, horizon, 3) array of p10/p50/p90, the method that produced each row,
which instances really have the quantity (a host without HTTP latency gets no latency
forecast: masked, never invented), the last value and trend, and the model's top drivers.

The model serves an instance when one is loaded, the instance has at least the model's minimum
encoder length (and the configured warm-up) of history, and the model knows the quantity;
anything else, and any row whose model output is not finite, gets the heuristic. The horizon
is the caller's (the contract's grid); a model forecasting further serves its first `horizon`
steps, one forecasting less does not serve at all. Capacity
quantities with a configured ramp outlook get its projection where it sees a breach sooner.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from exporter.snapshot import QUANTILES
from forecaster.clean import Cleaned
from forecaster.contract import Quantity
from forecaster.grid import CONTEXT_STEPS, SEASON_STEPS
from forecaster.guard import Guard
from forecaster.heuristic import (
    clip_to_domain,
    heuristic_forecast,
    seasonal_mean_forecast,
    seasonal_naive_forecast,
)
from forecaster.risk import trend_per_hour
from forecaster.trend import RampRule, ramp_takeover

log = logging.getLogger(__name__)
MAX_DRIVERS = 5
PLAUSIBLE_SPAN = 2.0
"""How far above its window's maximum an unbounded quantity's band may reach, in ranges."""
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
    methods: Mapping[str, NDArray[np.str_]]  # quantity -> (N,) one of exporter.snapshot.METHODS
    available: Mapping[str, NDArray[np.bool_]]  # quantity -> (N,) observed in the window
    current: Mapping[str, NDArray[np.float64]]  # quantity -> (N,) last observed value
    trend: Mapping[str, NDArray[np.float64]]  # quantity -> (N,) units per hour
    drivers: tuple[tuple[tuple[str, float], ...], ...]  # per instance, largest first
    events: Counter[str] = field(default_factory=Counter)  # e.g. model_nan rows
    scores: Mapping[str, NDArray[np.float64]] = field(default_factory=dict)  # q -> (N, methods)
    # q -> method -> (N, horizon, 3): every candidate the guard weighed (empty without it)
    candidates: Mapping[str, Mapping[str, NDArray[np.float64]]] = field(default_factory=dict)


def forecast(
    cleaned: Cleaned,
    targets: Sequence[Quantity],
    profiles: Mapping[str, str],
    predictor: Predictor | None,
    *,
    min_steps: int,
    horizon: int,
    step: int,
    season: int = SEASON_STEPS,
    batch_factory: object = None,
    guard: Guard | None = None,
    ramps: Mapping[str, RampRule] | None = None,
) -> ForecastSet:
    """Forecast every instance of `cleaned` (see the module docstring), `horizon` steps of
    `step` seconds ahead, the seasonal methods repeating every `season` steps.

    Without a `guard` the TFT serves where it can and the heuristic everywhere else; with one,
    the guard picks per series among the candidates and recalibrates their bands
    (`forecaster.guard`), after scoring its earlier records against this window. Then, per
    quantity of `ramps`, the ramp outlook replaces the forecast where it sees a breach sooner
    (`forecaster.trend.ramp_takeover`; method "ramp").
    """
    n = len(cleaned.instances)
    names = [q.name for q in targets]
    instance_profiles = tuple(profiles.get(i, "generic") for i in cleaned.instances)
    context = _Context(
        targets, instance_profiles, predictor, min_steps, horizon, season, batch_factory
    )
    candidates, drivers, events = _candidates(cleaned, context, seasonal=guard is not None)
    out: dict[str, NDArray[np.float64]] = {}
    methods: dict[str, NDArray[np.str_]] = {}
    scores: dict[str, NDArray[np.float64]] = {}
    if guard is None:
        for name in names:
            heuristic = candidates[name]["heuristic"]
            tft = candidates[name].get("tft", heuristic)
            served = np.isfinite(tft).all(axis=(1, 2)) & ("tft" in candidates[name])
            out[name] = np.where(served[:, None, None], tft, heuristic)
            methods[name] = np.where(served, "tft", "heuristic").astype("<U14")
    else:
        _guard_cycle(guard, cleaned, context, candidates, step)
        for name in names:
            result = guard.serve(name, cleaned.instances, candidates[name])
            out[name], methods[name] = result.forecasts, result.methods.astype("<U14")
            scores[name] = result.scores
    column = {name: i for i, name in enumerate(cleaned.quantities)}
    y = np.where(cleaned.observed, cleaned.values, np.nan)
    for name, rule in (ramps or {}).items():
        if name in out and n:
            fan, take = ramp_takeover(y[:, :, column[name]], out[name], rule, QUANTILES, step)
            out[name] = np.where(take[:, None, None], fan, out[name])
            methods[name] = np.where(take, "ramp", methods[name]).astype("<U14")
    for quantity in targets:
        name = quantity.name
        bounded = clip_to_domain(out[name], _plausible(quantity, y[:, :, column[name]]))
        out[name] = np.sort(clip_to_domain(bounded, _domain(quantity)), axis=-1)
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
        scores=scores,
        candidates=candidates if guard is not None else {},
    )


@dataclass(frozen=True)
class _Context:
    """What every candidate forecast of one cycle shares."""

    targets: Sequence[Quantity]
    profiles: tuple[str, ...]
    predictor: Predictor | None
    min_steps: int
    horizon: int
    season: int
    batch_factory: object


def _candidates(
    cleaned: Cleaned, context: _Context, *, seasonal: bool
) -> tuple[dict[str, dict[str, np.ndarray]], list[tuple[tuple[str, float], ...]], Counter[str]]:
    """Per quantity, every candidate method's forecast (N, horizon, 3), NaN where it does not
    serve; the TFT's drivers per row and the events (model_nan rows).

    `seasonal` (the guard's set): seasonal naive on its own and the heuristic without its
    seasonal method; otherwise the heuristic as the fallback it always was.
    """
    n, horizon = len(cleaned.instances), context.horizon
    names = [q.name for q in context.targets]
    column = {name: i for i, name in enumerate(cleaned.quantities)}
    y = np.where(cleaned.observed, cleaned.values, np.nan)
    events: Counter[str] = Counter()
    drivers: list[tuple[tuple[str, float], ...]] = [() for _ in range(n)]
    candidates: dict[str, dict[str, np.ndarray]] = {name: {} for name in names}
    if context.predictor is not None and n:
        served = _model_forecast(
            cleaned,
            names,
            profiles=context.profiles,
            predictor=context.predictor,
            min_steps=context.min_steps,
            horizon=horizon,
            batch_factory=context.batch_factory,
        )
        if served is not None:
            rows, values, weights = served
            for name, value in values.items():
                good = np.isfinite(value).all(axis=(1, 2))
                events["model_nan"] += int(np.count_nonzero(~good))
                tft = np.full((n, horizon, len(QUANTILES)), np.nan)
                tft[rows[good]] = value[good]
                candidates[name]["tft"] = tft
            for r, w in zip(rows, weights, strict=True):
                drivers[r] = w
    for name in names:
        series = y[:, :, column[name]]
        if seasonal:
            candidates[name]["seasonal_naive"] = seasonal_naive_forecast(
                series, horizon, QUANTILES, season=context.season
            )
            candidates[name]["seasonal_mean"] = seasonal_mean_forecast(
                series, horizon, QUANTILES, season=context.season
            )
            candidates[name]["heuristic"] = heuristic_forecast(
                series, horizon, QUANTILES, season=None
            )
        else:
            todo = np.ones(n, dtype=bool)
            if "tft" in candidates[name]:
                todo = ~np.isfinite(candidates[name]["tft"]).all(axis=(1, 2))
            heuristic = np.full((n, horizon, len(QUANTILES)), np.nan)
            if todo.any():
                heuristic[todo] = heuristic_forecast(
                    series[todo], horizon, QUANTILES, season=context.season
                )
            candidates[name]["heuristic"] = heuristic
    return candidates, drivers, events


def _guard_cycle(
    guard: Guard,
    cleaned: Cleaned,
    context: _Context,
    candidates: Mapping[str, Mapping[str, np.ndarray]],
    step: int,
) -> None:
    """Backtest due past origins, score every record against this window, record this one."""
    end = int(cleaned.end.value // 1_000_000_000)
    usable = int(cleaned.lengths.max(initial=0))
    for origin in guard.bootstrap_due(end, usable):
        cut = (end - origin) // step
        if cut <= 0 or cut >= cleaned.values.shape[1]:
            continue
        past = replace(
            cleaned,
            end=cleaned.end - pd.Timedelta(seconds=cut * step),
            values=cleaned.values[:, :-cut],
            observed=cleaned.observed[:, :-cut],
            lengths=np.maximum(cleaned.lengths - cut, 0),
        )
        past_candidates, _, _ = _candidates(past, context, seasonal=True)
        guard.record(origin, cleaned.instances, past_candidates, online=False)
    column = {name: i for i, name in enumerate(cleaned.quantities)}
    for quantity in context.targets:
        i = column[quantity.name]
        guard.observe(
            quantity.name,
            cleaned.instances,
            end,
            cleaned.values[:, :, i],
            cleaned.observed[:, :, i],
        )
    if guard.record_due(end):
        guard.record(end, cleaned.instances, candidates)


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
    model_horizon = int(getattr(config, "horizon", horizon))
    if model_horizon < horizon:
        log.warning(
            "the model forecasts %d steps, fewer than the horizon of %d: it does not serve",
            model_horizon,
            horizon,
        )
        return None
    encoder = int(getattr(config, "encoder_length", CONTEXT_STEPS))
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


def _plausible(quantity: Quantity, y: np.ndarray) -> np.ndarray:
    """Per row, bounds a forecast may not leave: for a quantity without an upper domain bound,
    `PLAUSIBLE_SPAN` times the observed range above the window's maximum (an idle disk's band
    may not reach 1 GB/s); otherwise unbounded (ratios keep their whole domain for ramps)."""
    bounds = np.full((y.shape[0], 2), np.nan)
    if quantity.domain[1] is None and y.shape[1]:
        with np.errstate(all="ignore"):
            finite = np.isfinite(y).any(axis=1)
            high = np.nanmax(np.where(finite[:, None], y, 0.0), axis=1)
            low = np.nanmin(np.where(finite[:, None], y, 0.0), axis=1)
        span = np.maximum(high - low, np.abs(high) * 0.5)
        bounds[:, 1] = np.where(finite, high + PLAUSIBLE_SPAN * span, np.nan)
    return bounds


def _domain(quantity: Quantity) -> tuple[float, float]:
    low, high = quantity.domain
    return (-np.inf if low is None else low, np.inf if high is None else high)


def _last_observed(y: np.ndarray) -> np.ndarray:
    """The last finite value of each row (NaN for a row without any)."""
    finite = np.isfinite(y)
    index = np.where(finite.any(axis=1), y.shape[1] - 1 - np.argmax(finite[:, ::-1], axis=1), 0)
    last = y[np.arange(y.shape[0]), index] if y.shape[1] else np.full(y.shape[0], np.nan)
    return np.where(finite.any(axis=1), last, np.nan)
