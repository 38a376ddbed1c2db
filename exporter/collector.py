"""The forecaster's `/metrics`: a custom collector over one immutable snapshot, rendered once.

`SnapshotCollector` follows client_python's custom-collector pattern: every `collect()` builds
fresh metric families from the (frozen) `Snapshot` and `ServiceState` it was given; nothing is
registered globally and nothing is computed from live data. `prerender` turns that into the
bytes `/metrics` serves (plain and gzip-compressed), once per forecast cycle, off the request
path. Forecast samples never carry timestamps: Prometheus rejects samples from the future, so
the lead time is the `horizon` label instead.

An instance whose forecast was made more than `stale_after` seconds before `now` has all its
forecast families withdrawn (predicted values, risk, breaches, drivers); its info, last-seen and
warm-up series stay, so dashboards still see the host. Non-finite values are never exported.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from exporter.snapshot import (
    ALERT_THRESHOLD,
    EARLIEST_BREACH,
    FLEET_HEALTH,
    HORIZONS,
    METHODS,
    QUANTILE_LABELS,
    InstanceSnapshot,
    ServiceState,
    Snapshot,
    metric_name,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_DRIVERS = 5  # driver_importance series per instance: bounded cardinality
CYCLE_NOTE = "Computed once per forecast cycle, not at scrape time."
GZIP_LEVEL = 6


def is_stale(instance: InstanceSnapshot, now: float, stale_after: float) -> bool:
    """Whether `instance`'s forecast is too old to be served (made before now - stale_after)."""
    return instance.made_at < now - stale_after


def safe_label(value: str) -> str:
    """`value` as valid UTF-8 text (lone surrogates replaced), so encoding never fails."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace").decode("utf-8")
    return value


def _gauge(name: str, help_text: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, f"{help_text} {CYCLE_NOTE}", labels=list(labels))


def _counter(name: str, help_text: str, labels: Iterable[str] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(name, f"{help_text} {CYCLE_NOTE}", labels=list(labels))


def _add(
    family: GaugeMetricFamily | CounterMetricFamily, labels: list[str], value: float | None
) -> None:
    """Add one sample unless its value is missing or non-finite."""
    if value is not None and math.isfinite(value):
        family.add_metric(labels, float(value))


class SnapshotCollector(Collector):
    """Collector over one published snapshot: fresh families per `collect()`, nothing cached.

    Sample of the output (abridged)::

        # HELP forecaster_predicted_cpu_utilisation_ratio Forecast of cpu_utilisation ...
        # TYPE forecaster_predicted_cpu_utilisation_ratio gauge
        forecaster_predicted_cpu_utilisation_ratio{horizon="30m",instance="ppdb001",...} 0.98
        # HELP forecaster_risk_score Risk score 0-100 of the instance (seed formula). ...
        # TYPE forecaster_risk_score gauge
        forecaster_risk_score{instance="ppdb001"} 80.0
        # HELP forecaster_fleet_health Current fleet health state (1 for the current one). ...
        # TYPE forecaster_fleet_health gauge
        forecaster_fleet_health{state="healthy"} 0.0
        forecaster_fleet_health{state="warning"} 1.0
        forecaster_fleet_health{state="critical"} 0.0
        # HELP forecaster_cycles_total Forecast cycles run since start. ...
        # TYPE forecaster_cycles_total counter
        forecaster_cycles_total 42.0
    """

    def __init__(
        self, snapshot: Snapshot, state: ServiceState, *, now: float, stale_after: float
    ) -> None:
        self.snapshot = snapshot
        self.state = state
        self.now = now
        self.stale_after = stale_after

    def collect(self) -> Iterator[Metric]:
        """Yield every family, in a stable order (instances sorted by name)."""
        instances = [self.snapshot.instances[name] for name in sorted(self.snapshot.instances)]
        fresh = [i for i in instances if not is_stale(i, self.now, self.stale_after)]
        yield from forecast_families(self.snapshot, fresh)
        yield from risk_families(fresh)
        yield from fleet_families(self.snapshot)
        yield from instance_families(instances)
        yield from service_families(self.state, instances)
        yield from accuracy_families(self.snapshot)


def _quantity_order(snapshot: Snapshot, instances: list[InstanceSnapshot]) -> dict[str, str]:
    """quantity -> unit: the snapshot's unit table first, then others in first-seen order."""
    order = dict(snapshot.units)
    for instance in instances:
        for quantity, forecast in instance.forecasts.items():
            order.setdefault(quantity, forecast.unit)
    return order


def forecast_families(snapshot: Snapshot, fresh: list[InstanceSnapshot]) -> Iterator[Metric]:
    """`forecaster_predicted_<quantity>_<unit>{instance,horizon,q,method}`, one per quantity."""
    for quantity, unit in _quantity_order(snapshot, fresh).items():
        family = _gauge(
            metric_name(quantity, unit),
            f"Forecast of {quantity} ({unit}) at the horizon ahead of the forecast origin, "
            "at quantile q.",
            ["instance", "horizon", "q", "method"],
        )
        for instance in fresh:
            forecast = instance.forecasts.get(quantity)
            if forecast is None:
                continue
            name = safe_label(instance.instance)
            steps = forecast.quantiles.shape[0] if forecast.quantiles.ndim == 2 else 0
            for horizon, step in HORIZONS.items():
                if step > steps:
                    continue
                row = forecast.at(horizon)
                for q, value in zip(QUANTILE_LABELS, row.tolist(), strict=False):
                    _add(family, [name, horizon, q, forecast.method], value)
        if family.samples:
            yield family


def risk_families(fresh: list[InstanceSnapshot]) -> Iterator[Metric]:
    """Risk score, breach probabilities, time to breach and drivers of fresh instances."""
    score = _gauge(
        "forecaster_risk_score", "Risk score 0-100 of the instance (seed formula).", ["instance"]
    )
    breach = _gauge(
        "forecaster_breach_probability",
        "Probability 0-1 that the quantity passes its critical threshold within the window.",
        ["instance", "quantity", "window"],
    )
    ttb = _gauge(
        "forecaster_time_to_breach_seconds",
        "Seconds from the forecast origin until the median forecast passes the critical "
        "threshold; absent when it does not within the horizon.",
        ["instance", "quantity"],
    )
    earliest = _gauge(*EARLIEST_BREACH)
    drivers = _gauge(
        "forecaster_driver_importance",
        f"Weight of the model's most important input variables (at most {MAX_DRIVERS}).",
        ["instance", "variable"],
    )
    methods = _gauge(
        "forecaster_method_score",
        "The guard's normalised quantile loss of each forecast method on the series' own "
        "recent history, on the targets all of them were scored on (lower is better); the "
        "served forecast weights them by it.",
        ["instance", "quantity", "method"],
    )
    for instance in fresh:
        name = safe_label(instance.instance)
        _add(score, [name], instance.risk.score)
        for quantity, forecast in instance.forecasts.items():
            for method, value in forecast.scores.items():
                _add(methods, [name, quantity, method], value)
        for quantity, outlook in instance.breaches.items():
            for window, probability in outlook.probability.items():
                _add(breach, [name, quantity, window], probability)
            _add(ttb, [name, quantity], outlook.time_to_breach)
            _add(earliest, [name, quantity], outlook.earliest_breach)
        for variable, weight in instance.drivers[:MAX_DRIVERS]:
            _add(drivers, [name, safe_label(variable)], weight)
    yield from (score, breach, ttb, earliest, drivers, methods)


def fleet_families(snapshot: Snapshot) -> Iterator[Metric]:
    """Fleet outlook and the thresholds alerts use."""
    env = snapshot.environment
    prob = _gauge(
        "forecaster_fleet_incident_probability",
        "Fleet-wide incident probability 0-1 within the window.",
        ["window"],
    )
    _add(prob, ["30m"], env.prob_30m)
    _add(prob, ["8h"], env.prob_8h)
    health = _gauge(
        "forecaster_fleet_health", "Current fleet health state (1 for the current one).", ["state"]
    )
    for state in FLEET_HEALTH:
        health.add_metric([state], 1.0 if env.fleet_health == state else 0.0)
    high = _gauge("forecaster_fleet_high_risk_servers", "Instances with risk score >= 70.")
    _add(high, [], env.high_risk_servers)
    total = _gauge("forecaster_fleet_servers", "Instances in the fleet outlook.")
    _add(total, [], env.total_servers)
    threshold = _gauge(
        "forecaster_threshold",
        "Threshold of the quantity at the level, in the quantity's base unit.",
        ["quantity", "level"],
    )
    for (quantity, level), value in sorted(snapshot.thresholds.items()):
        _add(threshold, [quantity, level], value)
    alert = _gauge(*ALERT_THRESHOLD)
    for (quantity, severity), value in sorted(snapshot.alert_thresholds.items()):
        _add(alert, [quantity, severity], value)
    yield from (prob, health, high, total, threshold, alert)


def instance_families(instances: list[InstanceSnapshot]) -> Iterator[Metric]:
    """Per-instance series that stay while a forecast is stale: warm-up, last seen, info."""
    warmup = _gauge(
        "forecaster_warmup_progress_ratio",
        "Share 0-1 of the required history that is in memory.",
        ["instance"],
    )
    seen = _gauge(
        "forecaster_last_seen_timestamp_seconds",
        "Unix time of the newest sample seen for the instance.",
        ["instance"],
    )
    info = _gauge(
        "forecaster_instance_info",
        "Instance profile (always 1; join on instance).",
        ["instance", "profile"],
    )
    for instance in instances:
        name = safe_label(instance.instance)
        _add(warmup, [name], instance.warmup_progress)
        _add(seen, [name], instance.last_seen)
        info.add_metric([name, safe_label(instance.profile)], 1.0)
    yield from (warmup, seen, info)


def _by_reason(name: str, help_text: str, counts: Mapping[str, int]) -> CounterMetricFamily:
    family = _counter(name, help_text, ["reason"])
    for reason, count in sorted(counts.items()):
        _add(family, [safe_label(reason)], count)
    return family


def state_gauges(state: ServiceState) -> tuple[tuple[str, str, float], ...]:
    """(name, help, value) of the service's single-value gauges, in exposition order."""
    return (
        (
            "forecaster_cycle_duration_seconds",
            "Duration of the last cycle.",
            state.last_cycle_duration,
        ),
        (
            "forecaster_source_up",
            "Whether the last query of the source succeeded.",
            float(state.source_up),
        ),
        (
            "forecaster_input_partial",
            "Whether the last input was partial.",
            float(state.input_partial),
        ),
        ("forecaster_model_loaded", "Whether a model is loaded.", float(state.model_loaded)),
        ("forecaster_start_time_seconds", "Unix time the service started.", state.started_at),
    )


def service_families(state: ServiceState, instances: list[InstanceSnapshot]) -> Iterator[Metric]:
    """The service's own health: cycles, source, model, input cleaning, shard."""
    if state.last_success is not None:
        last = _gauge(
            "forecaster_last_success_timestamp_seconds", "Unix time of the last successful cycle."
        )
        _add(last, [], state.last_success)
        yield last
    flags = state_gauges(state)
    for name, help_text, value in flags:
        family = _gauge(name, help_text)
        _add(family, [], float(value))
        yield family
    yield from counter_families(state)
    series = _gauge("forecaster_series", "Instances forecast, by method.", ["method"])
    for method in METHODS:
        series.add_metric([method], float(sum(1 for i in instances if i.method == method)))
    yield series
    if state.model_loaded and state.model_version is not None:
        model = _gauge("forecaster_model_info", "Loaded model (always 1).", ["version", "contract"])
        model.add_metric([safe_label(state.model_version), state.contract_version], 1.0)
        yield model
    shard = _gauge("forecaster_shard_info", "This replica's shard (always 1).", ["index", "count"])
    shard.add_metric([str(state.shard_index), str(state.shard_count)], 1.0)
    yield shard


def counter_families(state: ServiceState) -> Iterator[Metric]:
    """Cycles and the bounded-reason event counters."""
    cycles = _counter("forecaster_cycles", "Forecast cycles run since start.")
    _add(cycles, [], state.cycles_total)
    yield cycles
    yield _by_reason("forecaster_cycle_failures", "Failed cycles by reason.", state.cycle_failures)
    yield _by_reason(
        "forecaster_model_load_failures",
        "Refused model loads by reason.",
        state.model_load_failures,
    )
    yield _by_reason(
        "forecaster_clean_events", "Input cleaning events by reason.", state.clean_events
    )
    yield _by_reason(
        "forecaster_dropped_series",
        "Series dropped before forecasting by reason.",
        state.dropped_series,
    )


def accuracy_families(snapshot: Snapshot) -> Iterator[Metric]:
    """Online accuracy of earlier forecasts, scored against the values that arrived."""
    labels = ["quantity", "horizon"]
    nql = _gauge(
        "forecaster_realized_nql", "Normalised quantile loss of earlier forecasts.", labels
    )
    coverage = _gauge(
        "forecaster_interval_coverage_ratio",
        "Share 0-1 of actual values inside the forecast p10-p90 interval.",
        labels,
    )
    samples = _gauge("forecaster_accuracy_samples", "Forecast-actual pairs scored.", labels)
    for score in snapshot.accuracy:
        key = [score.quantity, score.horizon]
        _add(nql, key, score.nql)
        _add(coverage, key, score.coverage)
        _add(samples, key, score.samples)
    yield from (nql, coverage, samples)


def render(snapshot: Snapshot, state: ServiceState, *, now: float, stale_after: float) -> bytes:
    """Text exposition format 0.0.4 of `snapshot` and `state` as seen at `now`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot, state, now=now, stale_after=stale_after))
    return generate_latest(registry)


@dataclass(frozen=True)
class Rendered:
    """One rendering of `/metrics`: the body, its gzip form (compressed once) and when."""

    body: bytes
    gzipped: bytes
    rendered_at: float

    @classmethod
    def of(cls, body: bytes, rendered_at: float) -> Rendered:
        """Wrap `body`, compressing it once (deterministic: no gzip mtime)."""
        return cls(body, gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0), rendered_at)


def prerender(
    snapshot: Snapshot, state: ServiceState, *, now: float, stale_after: float
) -> Rendered:
    """The exposition plus its compression: what the hub stores and `/metrics` serves.

    The body comes from `exporter.render.render_text`, a hand-written renderer that writes
    the same bytes as `render` (prometheus_client's `generate_latest` over this collector)
    several times faster (docs/BENCHMARKS.md); `render` stays the specification that
    `tests/unit/test_exporter_render.py` compares it with.
    """
    from exporter.render import render_text  # imports this module: import it late

    return Rendered.of(render_text(snapshot, state, now=now, stale_after=stale_after), now)
