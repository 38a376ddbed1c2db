"""Every metric family `/metrics` exports, declared once: name, type, HELP, labels and rows.

`FAMILIES` is the exposition, in order. Each `Family` says how its rows (label values, value)
are read from a `View`: the snapshot and the service state as seen at one instant, with the
instances sorted by name and the fresh ones (forecast within `stale_after`) apart. Both writers
walk this table: `exporter.collector.SnapshotCollector` (prometheus_client families through
`generate_latest`, the specification) and `exporter.render.render_text` (the fast renderer,
which keeps a specialised loop for the forecast families but takes their declaration from
here). Adding a metric is one entry here; `tests/unit/test_families.py` checks that both
writers emit exactly this table and that rules, dashboards and docs name only families in it.

Rows carry raw label values in `labels` order, already passed through `safe_label` where the
exposition needs valid UTF-8 (instance names, profiles, drivers, reasons, model versions); the
writers escape them. A row whose value is None or not finite is left out. Forecast samples
never carry timestamps: Prometheus rejects samples from the future, so the lead time is the
`horizon` label instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from exporter.snapshot import (
    FLEET_HEALTH,
    HORIZONS,
    METHODS,
    PREDICTED_NAME,
    QUANTILE_LABELS,
    UNIT_SUFFIX,
    Accuracy,
    InstanceSnapshot,
    QuantityForecast,
    ServiceState,
    Snapshot,
)

MAX_DRIVERS = 5  # driver_importance series per instance: bounded cardinality
CYCLE_NOTE = "Computed once per forecast cycle, not at scrape time."

Params = Mapping[str, str]
Row = tuple[tuple[str, ...], float | None]
NO_PARAMS: Params = MappingProxyType({})


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


@dataclass(frozen=True)
class View:
    """What one exposition reads. `instances`: (label-safe name, instance) of every instance,
    sorted by instance key; `fresh`: those whose forecast is still served. An instance whose
    forecast was made more than `stale_after` seconds before `now` keeps only its info,
    last-seen and warm-up series, so dashboards still see the host."""

    snapshot: Snapshot
    state: ServiceState
    instances: tuple[tuple[str, InstanceSnapshot], ...]
    fresh: tuple[tuple[str, InstanceSnapshot], ...]

    @classmethod
    def of(cls, snapshot: Snapshot, state: ServiceState, *, now: float, stale_after: float) -> View:
        """The view of `snapshot` and `state` at `now`."""
        named = tuple(
            (safe_label(instance.instance), instance)
            for instance in (snapshot.instances[key] for key in sorted(snapshot.instances))
        )
        fresh = tuple(pair for pair in named if not is_stale(pair[1], now, stale_after))
        return cls(snapshot, state, named, fresh)


def _once(view: View) -> tuple[Params]:
    return (NO_PARAMS,)


def _when(test: Callable[[View], bool]) -> Callable[[View], tuple[Params, ...]]:
    """`Family.each` of a family exported only when `test(view)` holds (even without samples)."""
    return lambda view: (NO_PARAMS,) if test(view) else ()


@dataclass(frozen=True)
class Family:
    """One declared metric family.

    `name` is the name `/metrics` writes (counters end in `_total`; prometheus_client's family
    name drops it); `help` the HELP text without `CYCLE_NOTE`, which every family appends.
    `rows(view, params)` gives the samples. `each(view)` gives the parameters of every family
    the entry exports from a view: once (the default), never (`_when`), or once per quantity,
    whose name and HELP are `str.format` templates over the parameters. `omit_empty` leaves a
    family with no samples out rather than writing its HELP/TYPE lines alone.
    """

    name: str
    type: Literal["gauge", "counter"]
    help: str
    labels: tuple[str, ...]
    rows: Callable[[View, Params], Iterable[Row]]
    each: Callable[[View], Iterable[Params]] = _once
    omit_empty: bool = False

    def exported(self, view: View) -> Iterator[tuple[str, str, Params]]:
        """(name, HELP with `CYCLE_NOTE`, parameters) of every family exported from `view`."""
        for params in self.each(view):
            if params:
                name, help_text = self.name.format_map(params), self.help.format_map(params)
            else:
                name, help_text = self.name, self.help
            yield name, f"{help_text} {CYCLE_NOTE}", params


def quantity_order(snapshot: Snapshot, instances: Iterable[InstanceSnapshot]) -> dict[str, str]:
    """quantity -> unit: the snapshot's unit table first, then others in first-seen order."""
    order = dict(snapshot.units)
    for instance in instances:
        for quantity, forecast in instance.forecasts.items():
            order.setdefault(quantity, forecast.unit)
    return order


# --- how rows are read from a view --------------------------------------------------------------


def _quantities(view: View) -> Iterator[Params]:
    """One forecast family per quantity of the fresh instances."""
    for quantity, unit in quantity_order(view.snapshot, (i for _, i in view.fresh)).items():
        yield {"quantity": quantity, "unit": unit, "suffix": UNIT_SUFFIX.get(unit, unit)}


def forecast_rows(name: str, forecast: QuantityForecast) -> Iterator[Row]:
    """(instance, horizon, q, method) rows of one host's forecast of one quantity: every
    exported horizon the forecast covers, quantile by quantile."""
    steps = forecast.quantiles.shape[0] if forecast.quantiles.ndim == 2 else 0
    for horizon, step in HORIZONS.items():
        if step > steps:
            continue
        row = forecast.at(horizon)
        for q, value in zip(QUANTILE_LABELS, row.tolist(), strict=False):
            yield (name, horizon, q, forecast.method), value


def _forecasts(view: View, params: Params) -> Iterator[Row]:
    """The rows of the fresh instances' forecasts of the family's quantity."""
    quantity = params["quantity"]
    for name, instance in view.fresh:
        forecast = instance.forecasts.get(quantity)
        if forecast is not None:
            yield from forecast_rows(name, forecast)


def _risk_scores(view: View, _: Params) -> Iterator[Row]:
    for name, instance in view.fresh:
        yield (name,), instance.risk.score


def _breach_probabilities(view: View, _: Params) -> Iterator[Row]:
    for name, instance in view.fresh:
        for quantity, outlook in instance.breaches.items():
            for window, probability in outlook.probability.items():
                yield (name, quantity, window), probability


def _times_to_breach(view: View, _: Params) -> Iterator[Row]:
    for name, instance in view.fresh:
        for quantity, outlook in instance.breaches.items():
            yield (name, quantity), outlook.time_to_breach


def _earliest_breaches(view: View, _: Params) -> Iterator[Row]:
    for name, instance in view.fresh:
        for quantity, outlook in instance.breaches.items():
            yield (name, quantity), outlook.earliest_breach


def _drivers(view: View, _: Params) -> Iterator[Row]:
    for name, instance in view.fresh:
        for variable, weight in instance.drivers[:MAX_DRIVERS]:
            yield (name, safe_label(variable)), weight


def _method_scores(view: View, _: Params) -> Iterator[Row]:
    for name, instance in view.fresh:
        for quantity, forecast in instance.forecasts.items():
            for method, value in forecast.scores.items():
                yield (name, quantity, method), value


def _fleet_probabilities(view: View, _: Params) -> tuple[Row, ...]:
    env = view.snapshot.environment
    return (("30m",), env.prob_30m), (("8h",), env.prob_8h)


def _fleet_health(view: View, _: Params) -> Iterator[Row]:
    current = view.snapshot.environment.fleet_health
    for state in FLEET_HEALTH:
        yield (state,), 1.0 if current == state else 0.0


def _scalar(value: Callable[[View], float | None]) -> Callable[[View, Params], tuple[Row]]:
    """Rows of a family with one unlabelled sample."""
    return lambda view, _: (((), value(view)),)


def _by_key(
    table: Callable[[View], Mapping[tuple[str, str], float]],
) -> Callable[[View, Params], list[Row]]:
    """Rows of a (label, label) -> value table, sorted by key."""
    return lambda view, _: sorted(table(view).items())


def _by_reason(
    counts: Callable[[ServiceState], Mapping[str, int]],
) -> Callable[[View, Params], Iterator[Row]]:
    """Rows of a reason -> count counter, sorted by reason."""

    def rows(view: View, _: Params) -> Iterator[Row]:
        for reason, count in sorted(counts(view.state).items()):
            yield (safe_label(reason),), count

    return rows


def _per_instance(
    value: Callable[[InstanceSnapshot], float],
) -> Callable[[View, Params], Iterator[Row]]:
    """One sample per instance, stale ones included."""

    def rows(view: View, _: Params) -> Iterator[Row]:
        for name, instance in view.instances:
            yield (name,), value(instance)

    return rows


def _instance_info(view: View, _: Params) -> Iterator[Row]:
    for name, instance in view.instances:
        yield (name, safe_label(instance.profile)), 1.0


def _series(view: View, _: Params) -> Iterator[Row]:
    methods = [instance.method for _, instance in view.instances]
    for method in METHODS:
        yield (method,), float(methods.count(method))


def _config_loaded_at(state: ServiceState) -> float:
    """When the running configuration was loaded: its last successful reload, else the start."""
    if state.config_reloaded_at is not None:
        return float(state.config_reloaded_at)
    return float(state.started_at)


def _model_info(view: View, _: Params) -> tuple[Row]:
    state = view.state
    return (((safe_label(state.model_version or ""), state.contract_version), 1.0),)


def _shard_info(view: View, _: Params) -> tuple[Row]:
    return (((str(view.state.shard_index), str(view.state.shard_count)), 1.0),)


def _accuracy(value: Callable[[Accuracy], float]) -> Callable[[View, Params], Iterator[Row]]:
    """(quantity, horizon) -> one figure of the online accuracy scores."""

    def rows(view: View, _: Params) -> Iterator[Row]:
        for score in view.snapshot.accuracy:
            yield (score.quantity, score.horizon), value(score)

    return rows


# --- the table ----------------------------------------------------------------------------------

PREDICTED = Family(
    PREDICTED_NAME,
    "gauge",
    "Forecast of {quantity} ({unit}) at the horizon ahead of the forecast origin, at quantile q.",
    ("instance", "horizon", "q", "method"),
    _forecasts,
    each=_quantities,
    omit_empty=True,
)
_ACCURACY = ("quantity", "horizon")

FAMILIES: tuple[Family, ...] = (
    PREDICTED,
    # risk, breach outlook and drivers of the fresh instances
    Family(
        "forecaster_risk_score",
        "gauge",
        "Risk score 0-100 of the instance (seed formula).",
        ("instance",),
        _risk_scores,
    ),
    Family(
        "forecaster_breach_probability",
        "gauge",
        "Probability 0-1 that the quantity passes its critical threshold within the window.",
        ("instance", "quantity", "window"),
        _breach_probabilities,
    ),
    Family(
        "forecaster_time_to_breach_seconds",
        "gauge",
        "Seconds from the forecast origin until the median forecast passes the critical "
        "threshold; absent when it does not within the horizon.",
        ("instance", "quantity"),
        _times_to_breach,
    ),
    Family(  # the lower end of the time-to-breach band
        "forecaster_earliest_breach_seconds",
        "gauge",
        "Seconds from the forecast origin until the p90 forecast passes the critical threshold "
        "(the earliest plausible breach); absent when it does not within the horizon.",
        ("instance", "quantity"),
        _earliest_breaches,
    ),
    Family(
        "forecaster_driver_importance",
        "gauge",
        f"Weight of the model's most important input variables (at most {MAX_DRIVERS}).",
        ("instance", "variable"),
        _drivers,
    ),
    Family(
        "forecaster_method_score",
        "gauge",
        "The guard's normalised quantile loss of each forecast method on the series' own "
        "recent history, on the targets all of them were scored on (lower is better); the "
        "served forecast weights them by it.",
        ("instance", "quantity", "method"),
        _method_scores,
    ),
    # fleet outlook and the thresholds alerts use
    Family(
        "forecaster_fleet_incident_probability",
        "gauge",
        "Fleet-wide incident probability 0-1 within the window.",
        ("window",),
        _fleet_probabilities,
    ),
    Family(
        "forecaster_fleet_health",
        "gauge",
        "Current fleet health state (1 for the current one).",
        ("state",),
        _fleet_health,
    ),
    Family(
        "forecaster_fleet_high_risk_servers",
        "gauge",
        "Instances with risk score >= 70.",
        (),
        _scalar(lambda view: view.snapshot.environment.high_risk_servers),
    ),
    Family(
        "forecaster_fleet_servers",
        "gauge",
        "Instances in the fleet outlook.",
        (),
        _scalar(lambda view: view.snapshot.environment.total_servers),
    ),
    Family(
        "forecaster_threshold",
        "gauge",
        "Threshold of the quantity at the level, in the quantity's base unit.",
        ("quantity", "level"),
        _by_key(lambda view: view.snapshot.thresholds),
    ),
    Family(  # what the NodeForecast* rules compare breach probabilities with
        "forecaster_alert_probability_threshold",
        "gauge",
        "Breach probability above which the quantity's forecast alert of the severity fires.",
        ("quantity", "severity"),
        _by_key(lambda view: view.snapshot.alert_thresholds),
    ),
    # per-instance series that stay while a forecast is stale
    Family(
        "forecaster_warmup_progress_ratio",
        "gauge",
        "Share 0-1 of the required history that is in memory.",
        ("instance",),
        _per_instance(lambda instance: instance.warmup_progress),
    ),
    Family(
        "forecaster_last_seen_timestamp_seconds",
        "gauge",
        "Unix time of the newest sample seen for the instance.",
        ("instance",),
        _per_instance(lambda instance: instance.last_seen),
    ),
    Family(
        "forecaster_instance_info",
        "gauge",
        "Instance profile (always 1; join on instance).",
        ("instance", "profile"),
        _instance_info,
    ),
    # the service's own health: cycles, source, model, input cleaning, shard
    Family(
        "forecaster_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last successful cycle.",
        (),
        _scalar(lambda view: view.state.last_success),
        each=_when(lambda view: view.state.last_success is not None),
    ),
    Family(
        "forecaster_cycle_duration_seconds",
        "gauge",
        "Duration of the last cycle.",
        (),
        _scalar(lambda view: float(view.state.last_cycle_duration)),
    ),
    Family(
        "forecaster_source_up",
        "gauge",
        "Whether the last query of the source succeeded.",
        (),
        _scalar(lambda view: float(view.state.source_up)),
    ),
    Family(
        "forecaster_input_partial",
        "gauge",
        "Whether the last input was partial.",
        (),
        _scalar(lambda view: float(view.state.input_partial)),
    ),
    Family(
        "forecaster_model_loaded",
        "gauge",
        "Whether a model is loaded.",
        (),
        _scalar(lambda view: float(view.state.model_loaded)),
    ),
    Family(
        "forecaster_start_time_seconds",
        "gauge",
        "Unix time the service started.",
        (),
        _scalar(lambda view: float(view.state.started_at)),
    ),
    Family(  # Prometheus' own names for the outcome of `POST /-/reload` and SIGHUP
        "forecaster_config_last_reload_successful",
        "gauge",
        "Whether the last configuration reload succeeded (1 from the start until one fails).",
        (),
        _scalar(lambda view: float(view.state.config_reload_successful)),
    ),
    Family(
        "forecaster_config_last_reload_success_timestamp_seconds",
        "gauge",
        "Unix time of the last successful configuration reload (the start until one succeeds).",
        (),
        _scalar(lambda view: _config_loaded_at(view.state)),
    ),
    Family(
        "forecaster_cycles_total",
        "counter",
        "Forecast cycles run since start.",
        (),
        _scalar(lambda view: view.state.cycles_total),
    ),
    Family(
        "forecaster_cycle_failures_total",
        "counter",
        "Failed cycles by reason.",
        ("reason",),
        _by_reason(lambda state: state.cycle_failures),
    ),
    Family(
        "forecaster_model_load_failures_total",
        "counter",
        "Refused model loads by reason.",
        ("reason",),
        _by_reason(lambda state: state.model_load_failures),
    ),
    Family(
        "forecaster_clean_events_total",
        "counter",
        "Input cleaning events by reason.",
        ("reason",),
        _by_reason(lambda state: state.clean_events),
    ),
    Family(
        "forecaster_dropped_series_total",
        "counter",
        "Series dropped before forecasting by reason.",
        ("reason",),
        _by_reason(lambda state: state.dropped_series),
    ),
    Family(
        "forecaster_persist_errors_total",
        "counter",
        "Failed writes of the snapshot to the state directory.",
        (),
        _scalar(lambda view: view.state.persist_errors),
    ),
    Family(
        "forecaster_series",
        "gauge",
        "Instances forecast, by method.",
        ("method",),
        _series,
    ),
    Family(
        "forecaster_model_info",
        "gauge",
        "Loaded model (always 1).",
        ("version", "contract"),
        _model_info,
        each=_when(lambda view: view.state.model_loaded and view.state.model_version is not None),
    ),
    Family(
        "forecaster_shard_info",
        "gauge",
        "This replica's shard (always 1).",
        ("index", "count"),
        _shard_info,
    ),
    # online accuracy of earlier forecasts, scored against the values that arrived
    Family(
        "forecaster_realized_nql",
        "gauge",
        "Normalised quantile loss of earlier forecasts.",
        _ACCURACY,
        _accuracy(lambda score: score.nql),
    ),
    Family(
        "forecaster_interval_coverage_ratio",
        "gauge",
        "Share 0-1 of actual values inside the forecast p10-p90 interval.",
        _ACCURACY,
        _accuracy(lambda score: score.coverage),
    ),
    Family(
        "forecaster_accuracy_samples",
        "gauge",
        "Forecast-actual pairs scored.",
        _ACCURACY,
        _accuracy(lambda score: score.samples),
    ),
)
