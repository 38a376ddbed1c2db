"""The forecast cycle: PromQL history in, an immutable snapshot of forecasts and risk out.

Every cycle (`Service.run_cycle`): read Prometheus' clock, fetch for every quantity the steps
that are new since the last cycle (the whole 24 h window after a restart or gap), keep this
shard's instances, clean, forecast them all in one batch (TFT where it can serve, heuristic
elsewhere), score the forecasts made earlier against the values that arrived, compute risk,
and publish a new snapshot. A failed fetch publishes the last good forecasts again with
`source_up` 0, so `/metrics` keeps serving them until they are `stale_after` old. Cycles run in
one thread, so they never overlap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from exporter.snapshot import (
    EMPTY_SNAPSHOT,
    THRESHOLD_LEVELS,
    Breach,
    InstanceSnapshot,
    QuantityForecast,
    Risk,
    ServiceState,
    Snapshot,
    frozen_array,
)
from forecaster.accuracy import OnlineAccuracy
from forecaster.clean import CleanConfig, clean
from forecaster.config import Config, reloadable
from forecaster.contract import Contract, Quantity
from forecaster.engine import ForecastSet, forecast
from forecaster.features import profile_of, shard_of
from forecaster.guard import METHODS as GUARD_METHODS
from forecaster.guard import Guard, guard_params
from forecaster.records import from_records
from forecaster.risk import (
    breach_outlook,
    earliest_breach,
    fleet_environment,
    risk_message,
    risk_scores,
)
from forecaster.serving import ModelHolder
from forecaster.source import SourceError
from forecaster.trend import ramp_rules
from forecaster.window import HistoryWindow, held_steps

log = logging.getLogger(__name__)
UNIT_MISTAKE_SHARE = 0.5
"""A series with more than this share of its window outside the domain gets a warning."""
Publish = Callable[[Snapshot, ServiceState], None]


class Reconfigured(NamedTuple):
    """What `Service.reconfigure` did: the configuration it replaced, the one it applies, and
    the settings the loaded one changes that need a restart (kept at their running value)."""

    previous: Config
    applied: Config
    kept: tuple[str, ...]


class _Derived(NamedTuple):
    """What `_build` computes once for the whole fleet and `_instance` slices per row."""

    forecasts: dict[str, np.ndarray]
    risk: Any
    messages: list[str]
    outlook: dict[str, tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]]
    now: float
    last_seen: Mapping[str, float]


def _scores(result: ForecastSet, quantity: str, row: int) -> Mapping[str, float]:
    """The guard's score of each method on this series (finite ones only)."""
    if quantity not in result.scores:
        return MappingProxyType({})
    values = result.scores[quantity][row]
    return MappingProxyType(
        {
            m: round(float(v), 6)
            for m, v in zip(GUARD_METHODS, values, strict=True)
            if np.isfinite(v)
        }
    )


class Service:
    """Owns the history window, the online accuracy and the current snapshot."""

    def __init__(
        self,
        config: Config,
        source: object,
        holder: ModelHolder | None,
        publish: Publish,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.contract: Contract = config.contract()
        self.targets: tuple[Quantity, ...] = config.targets(self.contract)
        self.covariates: tuple[Quantity, ...] = config.covariate_quantities(self.contract)
        self.quantities = self.targets + tuple(q for q in self.covariates if q not in self.targets)
        self.source = source
        self.holder = holder
        self.publish = publish
        self.clock = clock
        grid = self.contract.grid
        step = grid.step_seconds
        settings = config.guard
        self.guard = Guard(guard_params(settings, step), step) if settings.enabled else None
        self.ramps = ramp_rules(config, step)
        long = self.guard is not None or bool(self.ramps)
        self.window = HistoryWindow(
            tuple(q.name for q in self.quantities),
            held_steps(settings.history, step, long=long, context=grid.context_steps),
            step,
            first_steps=grid.context_steps,
            chunk_steps=max(1, int(settings.backfill_chunk // step)),
        )
        self.accuracy = OnlineAccuracy(horizons=grid.horizons, step_seconds=step)
        self.snapshot: Snapshot = EMPTY_SNAPSHOT
        self.state = ServiceState(
            contract_version=self.contract.version,
            shard_index=config.shard.index,
            shard_count=config.shard.count,
            started_at=clock(),
        )
        self._failures: Counter[str] = Counter()
        self._clean_events: Counter[str] = Counter()
        self._dropped: Counter[str] = Counter()
        self._over_capacity = False  # whether the last cycle dropped instances over max_series
        self._series_hint: dict[str, int] = {}
        self._input_warnings: dict[str, str] = {}
        self._profiles: dict[str, str] = {}
        self._source_known: bool | None = None  # last logged source state
        self._lock = threading.Lock()  # one cycle at a time; pushes merge concurrently
        self._state_lock = threading.Lock()  # every replacement of `self.state`, taken briefly

    # --- the cycle --------------------------------------------------------------------------

    def run_cycle(self) -> bool:
        """One cycle; True when fresh forecasts were published. Never raises for bad input."""
        with self._lock:
            started = time.monotonic()
            try:
                partial = self._fetch()
                snapshot = self._forecast_and_build()
            except SourceError as exc:
                self._source_failed(exc.reason, str(exc), started)
                return False
            except Exception:  # a bug must not stop the service: count it and keep serving
                log.exception("forecast cycle failed")
                self._source_failed("internal", "internal error", started, source_up=True)
                return False
            self.snapshot = snapshot
            self._finish(started, partial)
            return True

    def _fetch(self) -> bool:
        """Fetch the new steps of every quantity into the window; True if any answer was partial."""
        step = self.contract.step_seconds
        now = float(self.source.now())
        end = int(now // step) * step
        plan = self.window.plan(end)
        parts: dict[str, pd.DataFrame] = {}
        partial = False
        for quantity in self.quantities:
            result = self._query(quantity, plan)
            frame = self._own_shard(result.frame)
            self._series_hint[quantity.name] = max(1, int(result.frame["instance"].nunique()))
            self._dropped.update(result.dropped)
            partial = partial or result.partial
            parts[quantity.name] = frame
        self.window.merge(parts, plan)
        self._backfill(end)
        self._forget_vanished(end)
        return partial

    def _query(self, quantity: Quantity, plan):
        """One quantity's range query over `plan` on the contract's grid."""
        return self.source.query_range(
            quantity.expr,
            plan.start,
            plan.end,
            self.contract.step_seconds,
            self._series_hint.get(quantity.name, 1),
            quantity=quantity.name,
        )

    def _backfill(self, end: int) -> None:
        """Fetch the next older chunk of history the window should hold (one per cycle).

        A failure only postpones it: the cycle goes on with the history already held.
        """
        plan = self.window.backfill_plan(end)
        if plan is None:
            return
        parts: dict[str, pd.DataFrame] = {}
        try:
            for quantity in self.quantities:
                parts[quantity.name] = self._own_shard(self._query(quantity, plan).frame)
        except SourceError as exc:
            log.debug("backfill of %d steps postponed: %s", plan.steps, exc)
            return
        self.window.merge(parts, plan)

    def _own_shard(self, frame: pd.DataFrame) -> pd.DataFrame:
        count = self.config.shard.count
        if count == 1 or frame.empty:
            return frame
        names = frame["instance"].astype(str)
        owners = {name: shard_of(name, count) for name in names.unique()}
        return frame.loc[names.map(owners).to_numpy() == self.config.shard.index]

    def _forget_vanished(self, end: int) -> None:
        """Drop instances silent for `stale_after`, and the excess over `max_series`."""
        seen = self.window.last_seen()
        horizon = end - self.config.cycle.stale_after
        vanished = {name for name, last in seen.items() if last <= horizon}
        alive = sorted(set(seen) - vanished)
        excess = set(alive[self.config.cycle.max_series :])
        if excess:
            self._dropped["max_series"] += len(excess)
        if bool(excess) != self._over_capacity:  # one line per change, not one per cycle
            self._over_capacity = bool(excess)
            if excess:
                log.warning(
                    "over capacity: %d instances, cycle.max_series %d; %d not forecast "
                    '(forecaster_dropped_series_total{reason="max_series"}); shard the fleet '
                    "(--shard.index/--shard.count, docs/SCALING.md) or raise the limit",
                    len(alive),
                    self.config.cycle.max_series,
                    len(excess),
                )
            else:
                log.info("back within capacity: %d instances", len(alive))
        self.window.drop(vanished | excess)

    def _forecast_and_build(self) -> Snapshot:
        grid = self.contract.grid
        end = self.window.end
        frame = self.window.frame()
        cleaned = clean(
            frame,
            self.quantities,
            pd.Timestamp(end, unit="s", tz="UTC"),
            CleanConfig(
                context_steps=self.window.context_steps,
                min_steps=self.config.cycle.warmup_steps,
                step_seconds=grid.step_seconds,
            ),
        )
        self._clean_events.update(cleaned.counts)
        self._check_units(cleaned)
        self._update_profiles(frame)
        model = self.holder.current if self.holder is not None else None
        result = forecast(
            cleaned,
            self.targets,
            self._profiles,
            model.predictor if model else None,
            min_steps=self.config.cycle.warmup_steps,
            horizon=grid.horizon_steps,
            step=grid.step_seconds,
            season=grid.season_steps,
            guard=self.guard,
            ramps=self.ramps,
        )
        self._clean_events.update(result.events)
        self._score(cleaned, result)
        return self._build(result, self.window.last_seen(), model.version if model else None)

    def _check_units(self, cleaned) -> None:
        """Name every series whose window lies mostly outside its quantity's domain (a
        percentage fed as a ratio is clipped to 1 by the cleaner): one log line when it starts
        and one when it ends, and an entry in `/status` while it lasts."""
        found: dict[str, str] = {}
        by_name = {q.name: q for q in self.quantities}
        if cleaned.outside is not None:
            for r, c in zip(*np.nonzero(cleaned.outside > UNIT_MISTAKE_SHARE), strict=True):
                quantity = by_name[cleaned.quantities[c]]
                low, high = quantity.domain
                found[f"{cleaned.instances[r]}/{quantity.name}"] = (
                    f"{cleaned.outside[r, c]:.0%} of the window lies outside the domain "
                    f"[{low}, {high}] of {quantity.name} ({quantity.unit}; largest value "
                    f"{cleaned.peak[r, c]:.4g}): is the series in other units, e.g. percent "
                    f"instead of a ratio? Values are clipped to the domain."
                )
        for key in sorted(found.keys() - self._input_warnings.keys()):
            log.warning("input %s: %s", key, found[key])
        for key in sorted(self._input_warnings.keys() - found.keys()):
            log.info("input %s is inside its domain again", key)
        self._input_warnings = found

    def _update_profiles(self, frame: pd.DataFrame) -> None:
        labels: Mapping[str, str] = {}
        if "profile" in frame.columns:
            known = frame.dropna(subset=["profile"])
            labels = known.groupby("instance")["profile"].last().to_dict()
        for name in frame["instance"].unique():
            if name not in self._profiles or name in labels:
                self._profiles[name] = profile_of(name, labels.get(name))

    def _score(self, cleaned, result: ForecastSet) -> None:
        """Online accuracy: score earlier forecasts against what arrived, then record these."""
        end = int(cleaned.end.value // 1_000_000_000)
        column = {name: i for i, name in enumerate(cleaned.quantities)}
        for quantity in self.targets:
            i = column[quantity.name]
            self.accuracy.observe(
                quantity.name,
                cleaned.instances,
                end,
                cleaned.values[:, :, i],
                cleaned.observed[:, :, i],
            )
        self.accuracy.record(result.origin, result.instances, dict(result.forecasts))

    # --- the snapshot -----------------------------------------------------------------------

    def _build(self, result: ForecastSet, last_seen: Mapping[str, float], version) -> Snapshot:
        now = self.clock()
        config = self.config
        forecasts = {
            name: np.where(result.available[name][:, None, None], values, np.nan)
            for name, values in result.forecasts.items()
        }
        risk = risk_scores(forecasts, config.risk)
        messages = ["no risk predicted"] * len(result.instances)
        at_risk = np.flatnonzero(risk.score > 0)
        for row, message in zip(at_risk, risk_message(risk, config.risk, at_risk), strict=True):
            messages[row] = message
        outlook = {
            name: self._outlook(result, name, forecasts[name], levels.critical)
            for name, levels in config.thresholds.items()
            if name in forecasts
        }
        derived = _Derived(forecasts, risk, messages, outlook, now, last_seen)
        instances = {
            name: self._instance(result, r, derived) for r, name in enumerate(result.instances)
        }
        # The fleet's outlook counts the instances past their warm-up only: minutes of history
        # give honest but wide bands, and an idle fleet's incident probability must not rise
        # because the forecaster has just started (all instances still count as servers).
        warm = np.asarray(result.lengths) >= config.cycle.warmup_steps
        environment = replace(
            fleet_environment(
                {name: f[warm] for name, f in forecasts.items()},
                risk.score[warm],
                config.thresholds,
                config.risk,
            ),
            total_servers=len(result.instances),
        )
        return Snapshot(
            generated_at=now,
            instances=MappingProxyType(instances),
            environment=environment,
            thresholds=MappingProxyType(
                {
                    (q, level): float(getattr(levels, level))
                    for q, levels in config.thresholds.items()
                    for level in ("warning", "critical")
                }
            ),
            alert_thresholds=MappingProxyType(
                {
                    (q, severity): float(getattr(config.alerting(q), severity))
                    for q in config.thresholds
                    for severity in THRESHOLD_LEVELS
                }
            ),
            accuracy=self.accuracy.summary(now),
            units=MappingProxyType({q.name: q.unit for q in self.targets}),
            step_seconds=self.contract.step_seconds,
        )

    def _outlook(
        self, result: ForecastSet, name: str, served: np.ndarray, threshold: float
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Breach probabilities, time to breach (p50) and earliest breach (p90) of the served
        forecast, or of the model's own forecast where the model serves and sees it sooner.

        The guard weighs the model by its past accuracy, which mostly comes from normal times;
        a ramp that only the model extrapolates must still warn (the early-warning path that
        `docs/EVALUATION.md` measures). Where the model does not serve, the served forecast's.
        """
        step, windows = self.contract.step_seconds, self.contract.grid.windows
        probabilities, time_to_breach = breach_outlook(served, threshold, step, windows)
        earliest = earliest_breach(served, threshold, step)
        model = result.candidates.get(name, {}).get("tft")
        if model is None:
            return probabilities, time_to_breach, earliest
        serves = np.isfinite(model).all(axis=(1, 2)) & result.available[name]
        known = np.where(np.isfinite(model), model, 0.0)
        model_p, model_ttb = breach_outlook(known, threshold, step, windows)
        merged = {
            w: np.where(serves, np.maximum(p, model_p[w]), p) for w, p in probabilities.items()
        }
        sooner = np.fmin(time_to_breach, np.where(serves, model_ttb, np.nan))
        model_early = np.where(serves, earliest_breach(known, threshold, step), np.nan)
        return merged, sooner, np.fmin(earliest, model_early)

    def _instance(self, result: ForecastSet, r: int, derived: _Derived) -> InstanceSnapshot:
        forecasts, risk, outlook = derived.forecasts, derived.risk, derived.outlook
        per_quantity = {}
        breaches = {}
        for quantity in self.targets:
            name = quantity.name
            if not result.available[name][r]:
                continue
            per_quantity[name] = QuantityForecast(
                quantity=name,
                unit=quantity.unit,
                method=str(result.methods[name][r]),
                quantiles=frozen_array(forecasts[name][r]),
                current=float(result.current[name][r]),
                trend=float(result.trend[name][r]),
                scores=_scores(result, name, r),
            )
            if name in outlook:
                probabilities, time_to_breach, earliest = outlook[name]
                ttb, early = float(time_to_breach[r]), float(earliest[r])
                breaches[name] = Breach(
                    quantity=name,
                    threshold=float(self.config.thresholds[name].critical),
                    probability=MappingProxyType(
                        {w: float(probabilities[w][r]) for w in self.contract.grid.windows}
                    ),
                    time_to_breach=None if np.isnan(ttb) else ttb,
                    earliest_breach=None if np.isnan(early) else early,
                )
        return InstanceSnapshot(
            instance=result.instances[r],
            profile=result.profiles[r],
            origin=float(result.origin),
            made_at=derived.now,
            last_seen=derived.last_seen.get(result.instances[r], 0.0),
            warmup_steps=int(result.lengths[r]),
            warmup_required=self.config.cycle.warmup_steps,
            forecasts=MappingProxyType(per_quantity),
            breaches=MappingProxyType(breaches),
            risk=Risk(
                score=float(risk.score[r]),
                priority=str(risk.priority[r]),
                cpu_risk=float(risk.cpu[r]),
                mem_risk=float(risk.mem[r]),
                latency_risk=float(risk.latency[r]),
                message=derived.messages[r],
            ),
            drivers=result.drivers[r] if per_quantity else (),
        )

    # --- state and publication --------------------------------------------------------------

    def _finish(self, started: float, partial: bool) -> None:
        if self._source_known is not True:
            log.info("source %s is up: forecasts are fresh", self.config.prometheus.url)
            self._source_known = True
        model = self.holder.current if self.holder is not None else None
        now = self.clock()
        with self._state_lock:
            self.state = replace(
                self._state_common(started, model),
                source_up=True,
                last_success=now,
                input_partial=partial,
            )
        n = len(self.snapshot.instances)
        tft = sum(1 for i in self.snapshot.instances.values() if i.method == "tft")
        log.info(
            "cycle %d: %d instances (%d tft, %d heuristic) in %.2f s, model %s",
            self.state.cycles_total,
            n,
            tft,
            n - tft,
            self.state.last_cycle_duration,
            model.version if model else "none",
        )
        self.publish(self.snapshot, self.state)

    def _source_failed(
        self, reason: str, message: str, started: float, source_up: bool = False
    ) -> None:
        self._failures[reason] += 1
        if not source_up and self._source_known is not False:
            log.warning(
                "source %s is down (%s): serving the last forecasts",
                self.config.prometheus.url,
                message,
            )
            self._source_known = False
        model = self.holder.current if self.holder is not None else None
        with self._state_lock:
            self.state = replace(self._state_common(started, model), source_up=source_up)
        self.publish(self.snapshot, self.state)

    def _state_common(self, started: float, model) -> ServiceState:
        return replace(
            self.state,
            cycles_total=self.state.cycles_total + 1,
            cycle_failures=MappingProxyType(dict(self._failures)),
            last_cycle_duration=time.monotonic() - started,
            last_cycle_end=self.clock(),
            model_loaded=model is not None,
            model_version=model.version if model else None,
            clean_events=MappingProxyType(dict(self._clean_events)),
            dropped_series=MappingProxyType(dict(self._dropped)),
            model_load_failures=MappingProxyType(
                dict(self.holder.failures) if self.holder is not None else {}
            ),
            input_warnings=MappingProxyType(dict(self._input_warnings)),
        )

    # --- the service's own events: persists and configuration reloads -----------------------

    def persist_failed(self) -> None:
        """Count a failed write of the snapshot (`forecaster_persist_errors_total`); the next
        published state carries it."""
        with self._state_lock:
            self.state = replace(self.state, persist_errors=self.state.persist_errors + 1)

    def reconfigure(self, loaded: Config) -> Reconfigured:
        """Apply a reloaded configuration between two cycles, and publish the state that says
        the reload succeeded. Settings that need a restart (`forecaster.config.RESTART_SETTINGS`)
        keep their running value; the others apply from the next cycle (the cycle reads them
        from `self.config`). The ramp outlooks follow the thresholds and early-warning settings;
        the history window grows (backfilled) or shrinks when whether one runs changes it."""
        with self._lock:
            previous = self.config
            applied, kept = reloadable(previous, loaded)
            step = self.contract.grid.step_seconds
            self.ramps = ramp_rules(applied, step)
            self.window.context_steps = held_steps(
                applied.guard.history,
                step,
                long=self.guard is not None or bool(self.ramps),
                context=self.contract.grid.context_steps,
            )
            self.config = applied
            self._reloaded(successful=True)
        return Reconfigured(previous, applied, kept)

    def reload_failed(self) -> None:
        """Publish the state that says the last configuration reload failed (the running
        configuration stays)."""
        with self._lock:
            self._reloaded(successful=False)

    def _reloaded(self, *, successful: bool) -> None:
        """Record a reload's outcome and publish it with the current snapshot (cycle lock held,
        so this publication never overtakes a cycle's)."""
        with self._state_lock:
            self.state = replace(
                self.state,
                config_reload_successful=successful,
                config_reloaded_at=self.clock() if successful else self.state.config_reloaded_at,
            )
        self.publish(self.snapshot, self.state)

    # --- pushed records ---------------------------------------------------------------------

    def ingest(self, records: Sequence[object]) -> tuple[int, list[tuple[int, str]]]:
        """Validate pushed records against the contract and add the good ones to the window.

        A record is refused, with its reason, when a value is one its quantity cannot take
        (its domain, custom quantities included) or its time lies outside what the window uses.
        """
        names = [q.name for q in self.quantities]
        frame, errors = from_records(
            records,
            names,
            self.contract.step_seconds,
            domains={q.name: q.domain for q in self.quantities},
            window=self.window.push_span(self.clock()),
        )
        if not frame.empty:
            self.window.push(frame)
        return len(records) - len(errors), [(e.index, e.reason) for e in errors]
