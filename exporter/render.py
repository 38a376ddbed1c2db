"""Fast text exposition (format 0.0.4) of a snapshot: the bytes `generate_latest` would give.

`exporter.collector.SnapshotCollector` is the specification: families, HELP/TYPE lines, label
order (sorted by name), label escaping (backslash, double quote, newline), value formatting
(prometheus_client's `floatToGoString`) and which samples are left out (missing or non-finite
values, stale instances). prometheus_client builds a `Sample` per value and formats it field by
field, about 30-40 µs per sample; this module writes the same lines from per-family format
templates, and the forecast families (90 of the ~110 samples of a host) from one template per
(quantity, method) filled with the 18 values of a host at once. `tests/unit/test_exporter_render.py`
checks the bytes are identical, for the golden snapshot and for generated hostile ones.

Sample of the output (abridged)::

    # TYPE forecaster_predicted_cpu_utilisation_ratio gauge
    forecaster_predicted_cpu_utilisation_ratio{horizon="30m",instance="ppdb001",...,q="0.9"} 0.98
    forecaster_risk_score{instance="ppdb001"} 80.0
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from prometheus_client.openmetrics.exposition import escape_metric_name
from prometheus_client.utils import floatToGoString

from exporter.collector import (
    CYCLE_NOTE,
    MAX_DRIVERS,
    _quantity_order,
    is_stale,
    safe_label,
    state_gauges,
)
from exporter.snapshot import (
    ALERT_THRESHOLD,
    EARLIEST_BREACH,
    FLEET_HEALTH,
    HORIZONS,
    METHODS,
    QUANTILE_LABELS,
    InstanceSnapshot,
    QuantityForecast,
    ServiceState,
    Snapshot,
    metric_name,
)

_NEG_INF = -math.inf
_GO_FROM = 1e6  # from here on floatToGoString may switch to an exponent; below it is repr()
_ROWS = np.array([step - 1 for step in HORIZONS.values()], dtype=np.intp)
_FULL_STEPS = max(HORIZONS.values())
_FORECAST_LABELS = ("instance", "horizon", "q", "method")


def format_value(value: float) -> str:
    """`floatToGoString(value)` for a float, inlined: `repr`, except non-finite values and
    positive ones from 1e6 on with more than 6 integer digits, which Go writes with an
    exponent (`5.2e+07`)."""
    if _NEG_INF < value < _GO_FROM:
        return repr(value)
    if not math.isfinite(value):
        return floatToGoString(value)
    text = repr(value)
    dot = text.find(".")
    if dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def escape_label_value(value: str) -> str:
    """A label value as the text format writes it: backslash, newline, quote escaped."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _literal(text: str) -> str:
    """`text` as a literal inside a `%`-format template."""
    return text.replace("%", "%%")


class _Family:
    """One metric family: its HELP/TYPE header and sample lines from a format template.

    Mirrors `GaugeMetricFamily` / `CounterMetricFamily` + `generate_latest`: label values are
    given in the declared order and written sorted by label name; counters get `_total`.
    """

    __slots__ = ("head", "lines", "order", "sample", "template")

    def __init__(
        self, name: str, help_text: str, labels: Sequence[str] = (), kind: str = "gauge"
    ) -> None:
        self.sample = sample = escape_metric_name(f"{name}_total" if kind == "counter" else name)
        doc = f"{help_text} {CYCLE_NOTE}".replace("\\", r"\\").replace("\n", r"\n")
        self.head = f"# HELP {sample} {doc}\n# TYPE {sample} {kind}\n"
        order = sorted(range(len(labels)), key=labels.__getitem__)
        self.order = None if order == list(range(len(labels))) else order
        body = ",".join(f'{labels[i]}="%s"' for i in order)
        self.template = (
            f"{_literal(sample)}{{{body}}} %s\n" if labels else f"{_literal(sample)} %s\n"
        )
        self.lines: list[str] = []

    def put(self, labels: Sequence[str], value: float) -> None:
        """One sample; label values already escaped, `value` a finite or constant float."""
        if self.order is not None:
            labels = [labels[i] for i in self.order]
        self.lines.append(self.template % (*labels, format_value(value)))

    def add(self, labels: Sequence[str], value: float | None) -> None:
        """One sample unless `value` is missing or non-finite (the collector's `_add`)."""
        if value is not None and math.isfinite(value):
            self.put(labels, float(value))

    def write(self, out: list[str]) -> None:
        """Append the header and the samples to `out`."""
        out.append(self.head)
        out.extend(self.lines)


class _Escaper:
    """Escaped label values, memoised for one rendering (instance names repeat per family)."""

    def __init__(self) -> None:
        self._cache: dict[str, str] = {}

    def __call__(self, value: str) -> str:
        cached = self._cache.get(value)
        if cached is None:
            cached = self._cache[value] = escape_label_value(value)
        return cached


def render_text(
    snapshot: Snapshot, state: ServiceState, *, now: float, stale_after: float
) -> bytes:
    """Text exposition format 0.0.4 of `snapshot` and `state` as seen at `now`; the same bytes
    as `exporter.collector.render` (prometheus_client's `generate_latest`)."""
    instances = [snapshot.instances[name] for name in sorted(snapshot.instances)]
    fresh = [i for i in instances if not is_stale(i, now, stale_after)]
    esc = _Escaper()
    names = {id(i): esc(safe_label(i.instance)) for i in instances}
    out: list[str] = []
    _forecasts(out, snapshot, fresh, names, esc)
    _risk(out, fresh, names, esc)
    _fleet(out, snapshot, esc)
    _instances(out, instances, names, esc)
    _service(out, state, instances, esc)
    _accuracy(out, snapshot, esc)
    return "".join(out).encode("utf-8")


# --- forecast families ------------------------------------------------------------------------


def _forecast_template(sample: str, method: str, spec: str) -> str:
    """The 18 lines of one host's forecast of one quantity, a `%`-format template taking
    (instance, value) 18 times (horizon-major, then quantile); `spec` converts the values."""
    name, method = _literal(sample), _literal(method)
    return "".join(
        f'{name}{{horizon="{horizon}",instance="%s",method="{method}",q="{q}"}} %{spec}\n'
        for horizon in HORIZONS
        for q in QUANTILE_LABELS
    )


def _is_full(quantiles: object) -> bool:
    """Whether a forecast covers every exported horizon with at least 3 float64 quantiles."""
    return (
        isinstance(quantiles, np.ndarray)
        and quantiles.dtype == np.float64
        and quantiles.ndim == 2
        and quantiles.shape[0] >= _FULL_STEPS
        and quantiles.shape[1] >= len(QUANTILE_LABELS)
    )


def _forecasts(
    out: list[str],
    snapshot: Snapshot,
    fresh: list[InstanceSnapshot],
    names: Mapping[int, str],
    esc: _Escaper,
) -> None:
    """`forecaster_predicted_<quantity>_<unit>`, one family per quantity with samples."""
    for quantity, unit in _quantity_order(snapshot, fresh).items():
        family = _Family(
            metric_name(quantity, unit),
            f"Forecast of {quantity} ({unit}) at the horizon ahead of the forecast origin, "
            "at quantile q.",
            _FORECAST_LABELS,
        )
        rows: list[tuple[str, QuantityForecast]] = []
        for instance in fresh:
            forecast = instance.forecasts.get(quantity)
            if forecast is not None:
                rows.append((names[id(instance)], forecast))
        _forecast_lines(family, rows, esc)
        if family.lines:
            family.write(out)


def _row_modes(rows: list[tuple[str, QuantityForecast]]) -> dict[int, tuple[str, list[float]]]:
    """Row index -> (mode, the 18 exported values) for the forecasts covering every horizon.

    Mode "r": every value finite and below 1e6, so `repr` is `floatToGoString`; "s": finite,
    some need the Go exponent form; "-": some are not finite (written value by value).
    """
    full = [k for k, (_, forecast) in enumerate(rows) if _is_full(forecast.quantiles)]
    if not full:
        return {}
    values = np.stack([rows[k][1].quantiles[_ROWS, :3] for k in full]).reshape(len(full), -1)
    finite = np.isfinite(values).all(axis=1)
    small = (values < _GO_FROM).all(axis=1)
    modes = np.where(finite, np.where(small, "r", "s"), "-").tolist()
    return dict(zip(full, zip(modes, values.tolist(), strict=True), strict=True))


def _forecast_lines(
    family: _Family, rows: list[tuple[str, QuantityForecast]], esc: _Escaper
) -> None:
    """The samples of one forecast family: one template per (method, mode), 18 lines a host."""
    modes = _row_modes(rows)
    templates: dict[tuple[str, str], str] = {}
    args: list[object] = [None] * (2 * len(_ROWS) * len(QUANTILE_LABELS))
    for k, (name, forecast) in enumerate(rows):
        mode, row = modes.get(k, ("-", []))
        if mode == "-":
            _forecast_slow(family, name, forecast, esc)
            continue
        template = templates.get((forecast.method, mode))
        if template is None:
            template = _forecast_template(family.sample, esc(forecast.method), mode)
            templates[(forecast.method, mode)] = template
        args[0::2] = (name,) * len(row)
        args[1::2] = row if mode == "r" else [format_value(v) for v in row]
        family.lines.append(template % tuple(args))


def _forecast_slow(family: _Family, name: str, forecast: QuantityForecast, esc: _Escaper) -> None:
    """One host's samples of one quantity, value by value (short or non-finite forecasts)."""
    quantiles = forecast.quantiles
    steps = quantiles.shape[0] if quantiles.ndim == 2 else 0
    method = esc(forecast.method)
    for horizon, step in HORIZONS.items():
        if step > steps:
            continue
        row = forecast.at(horizon)
        for q, value in zip(QUANTILE_LABELS, row.tolist(), strict=False):
            family.add((name, horizon, q, method), value)


# --- the other families -----------------------------------------------------------------------


def _risk(
    out: list[str], fresh: list[InstanceSnapshot], names: Mapping[int, str], esc: _Escaper
) -> None:
    """Risk score, breach probabilities, time to breach and drivers of fresh instances."""
    score = _Family(
        "forecaster_risk_score", "Risk score 0-100 of the instance (seed formula).", ["instance"]
    )
    breach = _Family(
        "forecaster_breach_probability",
        "Probability 0-1 that the quantity passes its critical threshold within the window.",
        ["instance", "quantity", "window"],
    )
    ttb = _Family(
        "forecaster_time_to_breach_seconds",
        "Seconds from the forecast origin until the median forecast passes the critical "
        "threshold; absent when it does not within the horizon.",
        ["instance", "quantity"],
    )
    earliest = _Family(*EARLIEST_BREACH)
    drivers = _Family(
        "forecaster_driver_importance",
        f"Weight of the model's most important input variables (at most {MAX_DRIVERS}).",
        ["instance", "variable"],
    )
    methods = _Family(
        "forecaster_method_score",
        "The guard's normalised quantile loss of each forecast method on the series' own "
        "recent history, on the targets all of them were scored on (lower is better); the "
        "served forecast weights them by it.",
        ["instance", "quantity", "method"],
    )
    for instance in fresh:
        name = names[id(instance)]
        score.add((name,), instance.risk.score)
        for quantity, forecast in instance.forecasts.items():
            q = esc(quantity)
            for method, value in forecast.scores.items():
                methods.add((name, q, esc(method)), value)
        for quantity, outlook in instance.breaches.items():
            q = esc(quantity)
            for window, probability in outlook.probability.items():
                breach.add((name, q, esc(window)), probability)
            ttb.add((name, q), outlook.time_to_breach)
            earliest.add((name, q), outlook.earliest_breach)
        for variable, weight in instance.drivers[:MAX_DRIVERS]:
            drivers.add((name, esc(safe_label(variable))), weight)
    for family in (score, breach, ttb, earliest, drivers, methods):
        family.write(out)


def _fleet(out: list[str], snapshot: Snapshot, esc: _Escaper) -> None:
    """Fleet outlook and the thresholds alerts use."""
    env = snapshot.environment
    prob = _Family(
        "forecaster_fleet_incident_probability",
        "Fleet-wide incident probability 0-1 within the window.",
        ["window"],
    )
    prob.add(("30m",), env.prob_30m)
    prob.add(("8h",), env.prob_8h)
    health = _Family(
        "forecaster_fleet_health", "Current fleet health state (1 for the current one).", ["state"]
    )
    for state in FLEET_HEALTH:
        health.put((state,), 1.0 if env.fleet_health == state else 0.0)
    high = _Family("forecaster_fleet_high_risk_servers", "Instances with risk score >= 70.")
    high.add((), env.high_risk_servers)
    total = _Family("forecaster_fleet_servers", "Instances in the fleet outlook.")
    total.add((), env.total_servers)
    threshold = _Family(
        "forecaster_threshold",
        "Threshold of the quantity at the level, in the quantity's base unit.",
        ["quantity", "level"],
    )
    for (quantity, level), value in sorted(snapshot.thresholds.items()):
        threshold.add((esc(quantity), esc(level)), value)
    alert = _Family(*ALERT_THRESHOLD)
    for (quantity, severity), value in sorted(snapshot.alert_thresholds.items()):
        alert.add((esc(quantity), esc(severity)), value)
    for family in (prob, health, high, total, threshold, alert):
        family.write(out)


def _instances(
    out: list[str], instances: list[InstanceSnapshot], names: Mapping[int, str], esc: _Escaper
) -> None:
    """Per-instance series that stay while a forecast is stale: warm-up, last seen, info."""
    warmup = _Family(
        "forecaster_warmup_progress_ratio",
        "Share 0-1 of the required history that is in memory.",
        ["instance"],
    )
    seen = _Family(
        "forecaster_last_seen_timestamp_seconds",
        "Unix time of the newest sample seen for the instance.",
        ["instance"],
    )
    info = _Family(
        "forecaster_instance_info",
        "Instance profile (always 1; join on instance).",
        ["instance", "profile"],
    )
    for instance in instances:
        name = names[id(instance)]
        warmup.add((name,), instance.warmup_progress)
        seen.add((name,), instance.last_seen)
        info.put((name, esc(safe_label(instance.profile))), 1.0)
    for family in (warmup, seen, info):
        family.write(out)


def _service(
    out: list[str], state: ServiceState, instances: list[InstanceSnapshot], esc: _Escaper
) -> None:
    """The service's own health: cycles, source, model, input cleaning, shard."""
    if state.last_success is not None:
        last = _Family(
            "forecaster_last_success_timestamp_seconds", "Unix time of the last successful cycle."
        )
        last.add((), state.last_success)
        last.write(out)
    flags = state_gauges(state)
    for name, help_text, value in flags:
        family = _Family(name, help_text)
        family.add((), float(value))
        family.write(out)
    _counters(out, state, esc)
    series = _Family("forecaster_series", "Instances forecast, by method.", ["method"])
    methods = [i.method for i in instances]
    for method in METHODS:
        series.put((method,), float(methods.count(method)))
    series.write(out)
    if state.model_loaded and state.model_version is not None:
        model = _Family(
            "forecaster_model_info", "Loaded model (always 1).", ["version", "contract"]
        )
        model.put((esc(safe_label(state.model_version)), esc(state.contract_version)), 1.0)
        model.write(out)
    shard = _Family("forecaster_shard_info", "This replica's shard (always 1).", ["index", "count"])
    shard.put((esc(str(state.shard_index)), esc(str(state.shard_count))), 1.0)
    shard.write(out)


def _by_reason(name: str, help_text: str, counts: Mapping[str, int], esc: _Escaper) -> _Family:
    family = _Family(name, help_text, ["reason"], kind="counter")
    for reason, count in sorted(counts.items()):
        family.add((esc(safe_label(reason)),), count)
    return family


def _counters(out: list[str], state: ServiceState, esc: _Escaper) -> None:
    """Cycles and the bounded-reason event counters."""
    cycles = _Family("forecaster_cycles", "Forecast cycles run since start.", kind="counter")
    cycles.add((), state.cycles_total)
    families: Iterable[_Family] = (
        cycles,
        _by_reason(
            "forecaster_cycle_failures", "Failed cycles by reason.", state.cycle_failures, esc
        ),
        _by_reason(
            "forecaster_model_load_failures",
            "Refused model loads by reason.",
            state.model_load_failures,
            esc,
        ),
        _by_reason(
            "forecaster_clean_events", "Input cleaning events by reason.", state.clean_events, esc
        ),
        _by_reason(
            "forecaster_dropped_series",
            "Series dropped before forecasting by reason.",
            state.dropped_series,
            esc,
        ),
    )
    for family in families:
        family.write(out)


def _accuracy(out: list[str], snapshot: Snapshot, esc: _Escaper) -> None:
    """Online accuracy of earlier forecasts, scored against the values that arrived."""
    labels = ["quantity", "horizon"]
    nql = _Family(
        "forecaster_realized_nql", "Normalised quantile loss of earlier forecasts.", labels
    )
    coverage = _Family(
        "forecaster_interval_coverage_ratio",
        "Share 0-1 of actual values inside the forecast p10-p90 interval.",
        labels,
    )
    samples = _Family("forecaster_accuracy_samples", "Forecast-actual pairs scored.", labels)
    for score in snapshot.accuracy:
        key = (esc(score.quantity), esc(score.horizon))
        nql.add(key, score.nql)
        coverage.add(key, score.coverage)
        samples.add(key, score.samples)
    for family in (nql, coverage, samples):
        family.write(out)
