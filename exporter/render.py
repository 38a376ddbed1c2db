"""Fast text exposition (format 0.0.4) of a snapshot: the bytes `generate_latest` would give.

`exporter.collector.SnapshotCollector` is the specification: families, HELP/TYPE lines, label
order (sorted by name), label escaping (backslash, double quote, newline), value formatting
(prometheus_client's `floatToGoString`) and which samples are left out (missing or non-finite
values, stale instances). Both walk one table, `exporter.families.FAMILIES`, for the families,
their names, types, HELP texts, labels and rows. prometheus_client builds a `Sample` per value
and formats it field by field, about 30-40 µs per sample; this module writes the same lines from
per-family format templates, and the forecast families (90 of the ~110 samples of a host) from
one template per (quantity, method) filled with the 18 values of a host at once.
`tests/unit/test_exporter_render.py` checks the bytes are identical, for the golden snapshot and
for generated hostile ones.

Sample of the output (abridged)::

    # TYPE forecaster_predicted_cpu_utilisation_ratio gauge
    forecaster_predicted_cpu_utilisation_ratio{horizon="30m",instance="ppdb001",...,q="0.9"} 0.98
    forecaster_risk_score{instance="ppdb001"} 80.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from prometheus_client.openmetrics.exposition import escape_metric_name
from prometheus_client.utils import floatToGoString

from exporter.families import FAMILIES, PREDICTED, Family, Params, View, forecast_rows
from exporter.snapshot import HORIZONS, QUANTILE_LABELS, QuantityForecast, ServiceState, Snapshot

_NEG_INF = -math.inf
_GO_FROM = 1e6  # from here on floatToGoString may switch to an exponent; below it is repr()
_ROWS = np.array([step - 1 for step in HORIZONS.values()], dtype=np.intp)
_FULL_STEPS = max(HORIZONS.values())


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
    given in the declared order and written sorted by label name; `name` is the sample name
    (a counter's ends in `_total`), `doc` the whole HELP text.
    """

    __slots__ = ("head", "lines", "order", "sample", "template")

    def __init__(self, name: str, doc: str, labels: Sequence[str], kind: str) -> None:
        self.sample = sample = escape_metric_name(name)
        doc = doc.replace("\\", r"\\").replace("\n", r"\n")
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
        """One sample unless `value` is missing or non-finite (what the collector leaves out)."""
        if value is not None and math.isfinite(value):
            self.put(labels, float(value))

    def write(self, out: list[str]) -> None:
        """Append the header and the samples to `out`."""
        out.append(self.head)
        out.extend(self.lines)


class _Escaper(dict[str, str]):
    """Label value -> its escaped form, memoised for one rendering (`esc[value]`: instance
    names, quantities and methods repeat in every family and row)."""

    def __missing__(self, value: str) -> str:
        escaped = self[value] = escape_label_value(value)
        return escaped


def render_text(
    snapshot: Snapshot, state: ServiceState, *, now: float, stale_after: float
) -> bytes:
    """Text exposition format 0.0.4 of `snapshot` and `state` as seen at `now`; the same bytes
    as `exporter.collector.render` (prometheus_client's `generate_latest`)."""
    view = View.of(snapshot, state, now=now, stale_after=stale_after)
    esc = _Escaper()
    out: list[str] = []
    for family in FAMILIES:
        write = _SPECIALISED.get(family.name, _rows)
        for name, doc, params in family.exported(view):
            block = _Family(name, doc, family.labels, family.type)
            write(block, family, view, params, esc)
            if block.lines or not family.omit_empty:
                block.write(out)
    return "".join(out).encode("utf-8")


def _rows(block: _Family, family: Family, view: View, params: Params, esc: _Escaper) -> None:
    """The samples of a family, row by row as the table reads them (`_Family.add`, inlined)."""
    template, order, lines, escaped = block.template, block.order, block.lines, esc.__getitem__
    isfinite = math.isfinite
    for labels, value in family.rows(view, params):
        if value is None or not isfinite(value):
            continue
        values = [*map(escaped, labels)]
        if order is not None:
            values = [values[i] for i in order]
        values.append(format_value(float(value)))
        lines.append(template % tuple(values))


# --- forecast families ------------------------------------------------------------------------


def _forecasts(block: _Family, family: Family, view: View, params: Params, esc: _Escaper) -> None:
    """`forecaster_predicted_<quantity>_<unit>`: the samples of `family.rows`, written from one
    template per (method, value format) with the 18 values of a host at once."""
    quantity = params["quantity"]
    hosts: list[tuple[str, QuantityForecast]] = []
    for name, instance in view.fresh:
        forecast = instance.forecasts.get(quantity)
        if forecast is not None:
            hosts.append((name, forecast))
    _forecast_lines(block, family.labels, hosts, esc)


_SPECIALISED = {PREDICTED.name: _forecasts}


def _forecast_template(sample: str, labels: Sequence[str], method: str, spec: str) -> str:
    """The 18 lines of one host's forecast of one quantity, a `%`-format template taking
    (instance, value) 18 times (horizon-major, then quantile); `spec` converts the values.

    `labels` are the family's label names, whose values `forecast_rows` gives in the order
    (instance, horizon, q, method); they are written sorted by name.
    """
    name, method = _literal(sample), _literal(method)
    order = sorted(range(len(labels)), key=labels.__getitem__)
    lines = []
    for horizon in HORIZONS:
        for q in QUANTILE_LABELS:
            values = ("%s", horizon, q, method)
            body = ",".join(f'{labels[i]}="{values[i]}"' for i in order)
            lines.append(f"{name}{{{body}}} %{spec}\n")
    return "".join(lines)


def _is_full(quantiles: object) -> bool:
    """Whether a forecast covers every exported horizon with at least 3 float64 quantiles."""
    return (
        isinstance(quantiles, np.ndarray)
        and quantiles.dtype == np.float64
        and quantiles.ndim == 2
        and quantiles.shape[0] >= _FULL_STEPS
        and quantiles.shape[1] >= len(QUANTILE_LABELS)
    )


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
    family: _Family,
    labels: Sequence[str],
    rows: list[tuple[str, QuantityForecast]],
    esc: _Escaper,
) -> None:
    """The samples of one forecast family from (instance label, forecast) rows: one template
    per (method, mode), 18 lines a host."""
    modes = _row_modes(rows)
    templates: dict[tuple[str, str], str] = {}
    args: list[object] = [None] * (2 * len(_ROWS) * len(QUANTILE_LABELS))
    for k, (name, forecast) in enumerate(rows):
        mode, row = modes.get(k, ("-", []))
        if mode == "-":  # value by value, as the table reads them (short or non-finite)
            for values, value in forecast_rows(name, forecast):
                family.add([*map(esc.__getitem__, values)], value)
            continue
        template = templates.get((forecast.method, mode))
        if template is None:
            template = _forecast_template(family.sample, labels, esc[forecast.method], mode)
            templates[(forecast.method, mode)] = template
        args[0::2] = (esc[name],) * len(row)
        args[1::2] = row if mode == "r" else [format_value(v) for v in row]
        family.lines.append(template % tuple(args))
