"""Replay a history file through the forecaster's own path, one 5-minute origin at a time.

At every origin t the WIDE frame of the history the service holds ending at t (24 h; 3 days
where a ramp outlook is configured, which reads the days before) goes through what `Service`
runs each cycle with the guard off (`forecaster.service.Service._forecast_and_build` and
`_build`): `clean` with the service's `CleanConfig`, `engine.forecast` with the loaded model
and the configured ramp outlooks, the forecasts masked where a quantity is absent, and
`risk.breach_outlook` against each quantity's critical threshold: the values the service
exports as `forecaster_breach_probability{quantity, window}`. `service_check` runs the real
`Service.run_cycle` on a source that answers `query_range` from the same history at a few
origins (as many cycles as the service takes to backfill what it holds) and reports the
largest difference.

Besides the probabilities the replay keeps what the report needs and no more: per quantity and
horizon, how often the actual value fell below p10, p50 and p90 (calibration), and the full
forecasts of a few (instance, quantity) pairs around chosen incidents (fan charts).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from exporter.snapshot import WINDOWS
from forecaster.clean import CleanConfig, clean
from forecaster.config import Config
from forecaster.contract import Quantity
from forecaster.engine import forecast
from forecaster.grid import CONTEXT_STEPS, HORIZON_STEPS, SEASON_STEPS, STEP_SECONDS
from forecaster.risk import breach_outlook
from forecaster.source import RangeResult
from forecaster.trend import RampRule, ramp_rules
from forecaster.window import held_steps
from training.metrics import HORIZONS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FanRequest:
    """Keep the forecasts of `quantity` on `instance` at origins in [first, last]."""

    key: str
    instance: str
    quantity: str
    first: int
    last: int


@dataclass
class Replay:
    """Breach probabilities per (quantity, window): (instances, origins) arrays, NaN where the
    instance was not forecast; calibration counts; stored fan-chart forecasts."""

    instances: tuple[str, ...]
    times: np.ndarray  # origins, unix seconds
    skipped_origins: int
    probability: dict[str, dict[str, np.ndarray]]
    calibration: dict[str, np.ndarray]  # quantity -> (4, horizon): y<=p10, y<=p50, y<=p90, n
    fans: dict[str, np.ndarray] = field(default_factory=dict)  # key -> (origins, horizon, 3)
    fan_times: dict[str, np.ndarray] = field(default_factory=dict)
    methods: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    cached: bool = False  # read from a cache: `seconds` is the time of the original replay

    def save(self, path: Path) -> None:
        """Write an .npz cache (no pickles)."""
        arrays = {"times": self.times}
        for q, per_window in self.probability.items():
            arrays.update({f"p|{q}|{w}": v for w, v in per_window.items()})
        arrays.update({f"c|{q}": v for q, v in self.calibration.items()})
        arrays.update({f"f|{k}": v for k, v in self.fans.items()})
        arrays.update({f"t|{k}": v for k, v in self.fan_times.items()})
        meta = {
            "instances": list(self.instances),
            "skipped_origins": self.skipped_origins,
            "methods": dict(self.methods),
            "seconds": self.seconds,
        }
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: Path) -> Replay:
        """Read a cache written by `save`."""
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            replay = cls(tuple(meta["instances"]), data["times"], meta["skipped_origins"], {}, {})
            for name in data.files:
                kind, _, rest = name.partition("|")
                if kind == "p":
                    q, w = rest.split("|")
                    replay.probability.setdefault(q, {})[w] = data[name]
                elif kind in ("c", "f", "t"):
                    target = {"c": replay.calibration, "f": replay.fans, "t": replay.fan_times}
                    target[kind][rest] = data[name]
        replay.methods = Counter(meta["methods"])
        replay.seconds = float(meta["seconds"])
        replay.cached = True
        return replay


@dataclass(frozen=True)
class Chain:
    """What the service passes down each cycle: its quantities, targets, settings, model."""

    config: Config
    quantities: tuple[Quantity, ...]
    targets: tuple[Quantity, ...]
    predictor: Any
    step: int = STEP_SECONDS
    ramps: Mapping[str, RampRule] = field(default_factory=dict)
    context_steps: int = CONTEXT_STEPS
    horizon: int = HORIZON_STEPS
    season: int = SEASON_STEPS

    @classmethod
    def of(cls, config: Config, predictor: Any) -> Chain:
        """The chain `Service(config, ...)` would run."""
        contract = config.contract()
        targets = config.targets(contract)
        covariates = config.covariate_quantities(contract)
        quantities = targets + tuple(q for q in covariates if q not in targets)
        grid = contract.grid
        step = grid.step_seconds
        ramps = ramp_rules(config, step)
        # the replay runs no guard
        held = held_steps(config.guard.history, step, long=bool(ramps), context=grid.context_steps)
        return cls(
            config,
            quantities,
            targets,
            predictor,
            step,
            ramps,
            held,
            grid.horizon_steps,
            grid.season_steps,
        )

    def outlook(self, frame: pd.DataFrame, end: int, profiles: Mapping[str, str]):
        """(ForecastSet, masked forecasts, quantity -> window -> probability) at origin `end`."""
        warmup = self.config.cycle.warmup_steps
        cleaned = clean(
            frame,
            self.quantities,
            pd.Timestamp(end, unit="s", tz="UTC"),
            CleanConfig(context_steps=self.context_steps, min_steps=warmup, step_seconds=self.step),
        )
        result = forecast(
            cleaned,
            self.targets,
            profiles,
            self.predictor,
            min_steps=warmup,
            horizon=self.horizon,
            step=self.step,
            season=self.season,
            ramps=self.ramps,
        )
        forecasts = {
            name: np.where(result.available[name][:, None, None], values, np.nan)
            for name, values in result.forecasts.items()
        }
        probability = {
            name: breach_outlook(forecasts[name], levels.critical, self.step)[0]
            for name, levels in self.config.thresholds.items()
            if name in forecasts
        }
        return result, forecasts, probability


def _unix_seconds(timestamps: pd.Series) -> np.ndarray:
    """Unix seconds of tz-aware timestamps (`forecaster.model.dataset.epoch_seconds` without
    importing the model stack)."""
    utc = pd.to_datetime(timestamps, utc=True)
    return ((utc - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(np.int64)


def first_origin(times: np.ndarray, warmup: int) -> int:
    """Index of the first origin with `warmup` steps of history (the model's minimum)."""
    return max(warmup - 1, 0) if times.size else 0


def replay(
    wide: pd.DataFrame,
    chain: Chain,
    grid: Any,
    fans: tuple[FanRequest, ...] = (),
) -> Replay:
    """Forecast every origin of `wide` from the model's minimum history on (see the module)."""
    wide = wide.sort_values(["timestamp", "instance"], kind="stable").reset_index(drop=True)
    seconds = _unix_seconds(wide["timestamp"])
    times = np.unique(seconds)
    start = first_origin(times, chain.config.cycle.warmup_steps)
    at = times[start:]
    state = _empty(grid.instances, chain, at, int(start))
    profiles = dict(zip(grid.instances, grid.profiles, strict=True))
    row_of = {name: i for i, name in enumerate(grid.instances)}
    lo = np.searchsorted(seconds, at - chain.context_steps * chain.step, side="right")
    hi = np.searchsorted(seconds, at, side="right")
    kept: dict[str, list] = {}
    began = time.perf_counter()
    for k in tqdm(range(at.size), desc="replay", unit="origin", mininterval=30, disable=None):
        frame = wide.iloc[lo[k] : hi[k]]
        result, forecasts, probability = chain.outlook(frame, int(at[k]), profiles)
        rows = np.array([row_of[i] for i in result.instances], dtype=np.int64)
        for q, per_window in probability.items():
            for w, values in per_window.items():
                state.probability[q][w][rows, k] = values
        for name, methods in result.methods.items():
            state.methods.update(f"{name}:{m}" for m in methods)
        _calibrate(state.calibration, forecasts, grid, rows, int(at[k]))
        _keep_fans(kept, fans, result.instances, forecasts, int(at[k]))
        if (k + 1) % max(1, at.size // 10) == 0:
            log.info(
                "replay: %d of %d origins in %.0f s", k + 1, at.size, time.perf_counter() - began
            )
    state.seconds = time.perf_counter() - began
    for key, items in kept.items():
        state.fan_times[key] = np.array([origin for origin, _ in items], dtype=np.int64)
        state.fans[key] = np.stack([values for _, values in items])
    return state


def _empty(instances, chain: Chain, at: np.ndarray, skipped: int) -> Replay:
    """A replay of `at` with every probability NaN and every count zero."""
    n = len(instances)
    return Replay(
        instances=tuple(instances),
        times=at,
        skipped_origins=skipped,
        probability={
            q: {w: np.full((n, at.size), np.nan) for w in WINDOWS} for q in chain.config.thresholds
        },
        calibration={q.name: np.zeros((4, chain.horizon)) for q in chain.targets},
    )


def _calibrate(counts, forecasts, grid, rows: np.ndarray, origin: int) -> None:
    """Add the origin's forecasts to the below-p10/p50/p90 counts per horizon."""
    k = int(np.searchsorted(grid.times, origin))
    for name, values in forecasts.items():
        if name not in counts:
            continue
        horizon = values.shape[1]
        actual = np.full((rows.size, horizon), np.nan)
        future = grid.column(name)[rows, k + 1 : k + 1 + horizon]
        actual[:, : future.shape[1]] = future
        seen = np.isfinite(actual) & np.isfinite(values).all(axis=-1)
        counts[name][3] += seen.sum(axis=0)
        for j in range(3):
            counts[name][j] += (seen & (actual <= values[..., j])).sum(axis=0)


def _keep_fans(kept: dict[str, list], fans, instances, forecasts, origin: int) -> None:
    """Append (origin, forecast) of every requested pair whose range covers `origin`."""
    for request in fans:
        if not request.first <= origin <= request.last or request.instance not in instances:
            continue
        row = instances.index(request.instance)
        kept.setdefault(request.key, []).append((origin, forecasts[request.quantity][row]))


def calibration_summary(
    state: Replay, horizons: Mapping[str, int] = HORIZONS
) -> dict[str, dict[str, Any]]:
    """Per quantity and horizon (label -> steps ahead; 30m, 2h, 8h by default): p10-p90
    coverage and the shares of actual values below p10, p50 and p90."""
    out: dict[str, dict[str, Any]] = {}
    for quantity, counts in state.calibration.items():
        per = {}
        for label, k in horizons.items():
            n = max(float(counts[3, k - 1]), 1.0)
            below = [round(float(counts[j, k - 1]) / n, 4) for j in range(3)]
            per[label] = {
                "coverage": round(below[2] - below[0], 4),
                "below": below,
                "n": int(counts[3, k - 1]),
            }
        out[quantity] = per
    return out


class HistorySource:
    """A PromQL source answering `query_range` of the contract's expressions from a WIDE frame."""

    def __init__(self, wide: pd.DataFrame, quantities: tuple[Quantity, ...]) -> None:
        self.wide = wide.sort_values(["timestamp", "instance"]).reset_index(drop=True)
        self.seconds = _unix_seconds(self.wide["timestamp"])
        self.names = {q.expr: q.name for q in quantities}
        self.at = 0.0

    def now(self) -> float:
        return self.at

    def query_range(self, expr, start, end, step=STEP_SECONDS, series_hint=1, *, quantity="value"):
        """The rows of [start, end] of the expression's quantity, as a LONG frame."""
        name = self.names[expr]
        lo = np.searchsorted(self.seconds, start, side="left")
        hi = np.searchsorted(self.seconds, end, side="right")
        part = self.wide.iloc[lo:hi][["instance", "timestamp", name]]
        return RangeResult(
            part.rename(columns={name: quantity}).reset_index(drop=True), (), Counter()
        )


def service_check(
    wide: pd.DataFrame, chain: Chain, holder: Any, state: Replay, count: int = 3
) -> dict[str, Any]:
    """Largest |difference| between the replay and `Service.run_cycle` at `count` origins."""
    from forecaster.service import Service

    source = HistorySource(wide, chain.quantities)
    picks = np.unique(np.linspace(0, state.times.size - 1, count + 2)[1:-1].astype(int))
    worst, compared = 0.0, 0
    guard = chain.config.guard.model_copy(update={"enabled": False})  # as the replay runs
    config = chain.config.model_copy(update={"guard": guard})
    for k in picks:
        service = Service(config, source, holder, lambda snapshot, service_state: None)
        source.at = float(state.times[k]) + 30.0
        chunk = max(1.0, config.guard.backfill_chunk)
        for _ in range(1 + math.ceil(chain.context_steps * chain.step / chunk)):  # backfill it
            if not service.run_cycle():
                raise RuntimeError(f"Service.run_cycle failed at origin {state.times[k]}")
        for name, instance in service.snapshot.instances.items():
            row = state.instances.index(name)
            for q, breach in instance.breaches.items():
                for w, p in breach.probability.items():
                    worst = max(worst, abs(float(p) - float(state.probability[q][w][row, k])))
                    compared += 1
    origins = [pd.Timestamp(int(state.times[k]), unit="s", tz="UTC").isoformat() for k in picks]
    return {"origins": origins, "values_compared": compared, "max_abs_difference": worst}
