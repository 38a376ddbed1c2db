"""Shared pieces of the dashboards: datasource, queries, panels, the contract's expressions.

Every panel and every target reads the `datasource` template variable, never a fixed uid, so
the dashboards work with any Prometheus-compatible datasource. Panel ids are assigned in
order by `Ids`, so that a regenerated dashboard is byte for byte the committed one.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from grafana_foundation_sdk.builders import bargauge, stat, table, text, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

from exporter.snapshot import metric_name

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTRACT_FILE = REPO_ROOT / "forecaster" / "contract_v1.yaml"
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
SCHEMA_VERSION = 39
REFRESH = "1m"
# Grafana unit ids per contract unit.
UNITS = {"ratio": "percentunit", "bytes_per_second": "Bps", "seconds": "s", "tasks": "short"}
# Risk tiers of the seed system (forecaster/config.py `risk.p1`, `risk.p2`).
P1, P2 = 70.0, 40.0
GREEN, BLUE, ORANGE, RED = "green", "blue", "orange", "red"
PanelBuilder = cogbuilder.Builder[model.Panel]


@dataclass(frozen=True)
class Quantity:
    """A forecast target of the data contract: its PromQL, unit and forecast metric."""

    name: str
    title: str
    unit: str
    expr: str
    record: str

    @property
    def metric(self) -> str:
        """The forecaster's metric for this quantity, `forecaster_predicted_<q>_<unit>`."""
        return metric_name(self.name, self.unit)

    @property
    def grafana_unit(self) -> str:
        """Grafana's unit id for the values."""
        return UNITS.get(self.unit, "short")

    def actual(self, instance: str | None = None) -> str:
        """The observed value, for one instance when given: the recording rule, or else the
        contract expression that it records.

        Prometheus evaluates no rule over backfilled history, so the expression fills in there;
        where both exist `or` keeps the rule, which unlike `rate()` does not drop in the few
        minutes after the last scrape (a time range that reaches into the future shows them).
        `max by (instance)` makes the two one series.
        """
        if instance is None:
            return f"max by (instance) ({self.record} or {self.expr})"
        selector = f'{self.record}{{instance="{instance}"}}'
        return f"max by (instance) ({selector} or {for_instance(self.expr, instance)})"

    def forecast(self, *, instance: str = "", horizon: str = "", q: str = "") -> str:
        """The forecast selector, restricted by the labels given."""
        pairs = (("instance", instance), ("horizon", horizon), ("q", q))
        matchers = ",".join(f'{label}="{value}"' for label, value in pairs if value)
        return f"{self.metric}{{{matchers}}}"


TITLES = {
    "cpu_utilisation": "CPU utilisation",
    "memory_utilisation": "Memory utilisation",
    "filesystem_utilisation": "Filesystem utilisation (/)",
    "disk_io": "Disk I/O",
    "request_latency_p95": "Request latency p95",
}


def load_targets(path: Path = CONTRACT_FILE) -> tuple[Quantity, ...]:
    """The contract's forecast targets, in contract order."""
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    return tuple(
        Quantity(name, TITLES.get(name, name), spec["unit"], spec["expr"], spec["record"])
        for name, spec in document["quantities"].items()
        if spec["role"] == "target"
    )


_KEYWORDS = frozenset(
    [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "and",
        "or",
        "unless",
        "inf",
        "nan",
    ]
)
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\{[^}]*\})?')


def for_instance(expr: str, instance: str) -> str:
    """`expr` with `instance="<instance>"` added to every vector selector.

    Selectors are the metric names that are neither called (`rate(`), nor keywords, nor inside
    a grouping clause (`by (instance, le)`); string literals are left alone. Enough for the
    contract's expressions: `tests/unit/test_dashboards.py` checks each one.
    """
    masked = _GROUPING.sub(lambda m: "\0" * len(m.group(0)), expr)
    out, last = [], 0
    for match in _TOKEN.finditer(masked):
        name, braces = match.group(1), match.group(2)
        if name is None or name.lower() in _KEYWORDS:
            continue
        if re.match(r"[\s\0]*\(", masked[match.end() :]):
            continue  # a function or aggregation call
        inner = expr[match.start(2) : match.end(2)].strip()[1:-1].strip() if braces else ""
        matcher = f'instance="{instance}"' + (f",{inner}" if inner else "")
        out.append(expr[last : match.start()] + f"{name}{{{matcher}}}")
        last = match.end()
    out.append(expr[last:])
    return "".join(out)


@dataclass(frozen=True)
class Query:
    """One panel target: PromQL, legend, and whether Grafana runs it instant or as a table."""

    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False


def _target(query: Query, ref: str) -> prom.Dataquery:
    target = prom.Dataquery().datasource(DATASOURCE).expr(query.expr).ref_id(ref)
    target = target.legend_format(query.legend or "__auto")
    target = target.instant() if query.instant else target.range()
    if query.table:
        target = target.format("table")
    return target


class Ids:
    """Panel ids in order of creation, from 1, per dashboard."""

    def __init__(self) -> None:
        self._next = itertools.count(1)

    def __call__(self) -> int:
        """The next id."""
        return next(self._next)


def with_queries(panel: Any, queries: Sequence[Query]) -> Any:
    """`panel` with the datasource variable and `queries` as targets A, B, C..."""
    panel = panel.datasource(DATASOURCE)
    for index, query in enumerate(queries):
        panel = panel.with_target(_target(query, _ref(index)))
    return panel


def _ref(index: int) -> str:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return letters[index] if index < len(letters) else f"{letters[index // 26 - 1]}{index % 26}"


Step = tuple[float | None, str]


def steps(*pairs: Step) -> db.ThresholdsConfig:
    """Absolute threshold steps (value, colour); the first value is None (the base)."""
    return (
        db.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=value, color=color) for value, color in pairs])
    )


RISK_STEPS = ((None, GREEN), (P2, ORANGE), (P1, RED))


def priority_mappings() -> list[model.ValueMapping]:
    """Risk score -> P1 / P2 / P3, as the seed's alert table shows it.

    Grafana's ranges include both ends and the first mapping that matches wins, so 70 is P1
    and 40 is P2.
    """
    return [
        _range(P1, 100.0, "P1", RED, 0),
        _range(P2, P1, "P2", ORANGE, 1),
        _range(0.0, P2, "P3", BLUE, 2),
    ]


def _range(low: float, high: float, label: str, color: str, index: int) -> model.RangeMap:
    result = model.ValueMappingResult(text=label, color=color, index=index)
    return model.RangeMap(options=model.DashboardRangeMapOptions(low, high, result))


def value_text(pairs: Iterable[tuple[str, str, str]]) -> list[model.ValueMapping]:
    """One value mapping: (value, text, colour) each."""
    options = {
        value: model.ValueMappingResult(text=label, color=color, index=index)
        for index, (value, label, color) in enumerate(pairs)
    }
    return [model.ValueMap(options=options)]


def stat_panel(
    ids: Ids,
    title: str,
    queries: Sequence[Query],
    *,
    unit: str = "short",
    span: int = 4,
    height: int = 4,
) -> stat.Panel:
    """A single-value panel, last value, coloured background."""
    panel = (
        stat.Panel()
        .id(ids())
        .title(title)
        .unit(unit)
        .height(height)
        .span(span)
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.NONE)
        .reduce_options(common_reduce(["lastNotNull"]))
    )
    return with_queries(panel, queries)


def instant_stat(
    ids: Ids, title: str, expr: str, legend: str, thresholds: Sequence[Step], **layout: Any
) -> stat.Panel:
    """A stat of one instant query, coloured by `thresholds` ((value, colour) steps)."""
    panel = stat_panel(ids, title, [Query(expr, legend, instant=True)], **layout)
    return panel.thresholds(steps(*thresholds))


def common_reduce(calcs: list[str]) -> Any:
    """Reduce options: these calculations over every series, one value per series."""
    return common_builders.ReduceDataOptions().calcs(calcs).values(False)


def timeseries_panel(
    ids: Ids,
    title: str,
    queries: Sequence[Query],
    *,
    unit: str = "short",
    span: int = 12,
    height: int = 8,
    description: str = "",
) -> timeseries.Panel:
    """A time series panel with a bottom legend listing last and max values."""
    legend = (
        common_builders.VizLegendOptions()
        .display_mode(common.LegendDisplayMode.LIST)
        .placement(common.LegendPlacement.BOTTOM)
        .show_legend(True)
    )
    tooltip = (
        common_builders.VizTooltipOptions()
        .mode(common.TooltipDisplayMode.MULTI)
        .sort(common.SortOrder.DESCENDING)
    )
    panel = (
        timeseries.Panel()
        .id(ids())
        .title(title)
        .unit(unit)
        .height(height)
        .span(span)
        .legend(legend)
        .tooltip(tooltip)
        .line_width(1)
        .fill_opacity(0)
        .span_nulls(False)
    )
    if description:
        panel = panel.description(description)
    return with_queries(panel, queries)


def bargauge_panel(
    ids: Ids, title: str, queries: Sequence[Query], *, unit: str, span: int = 8, height: int = 8
) -> bargauge.Panel:
    """Horizontal bars, one per series, last value."""
    panel = (
        bargauge.Panel()
        .id(ids())
        .title(title)
        .unit(unit)
        .height(height)
        .span(span)
        .orientation(common.VizOrientation.HORIZONTAL)
        .display_mode(common.BarGaugeDisplayMode.GRADIENT)
        .reduce_options(common_reduce(["lastNotNull"]))
    )
    return with_queries(panel, queries)


def table_panel(
    ids: Ids, title: str, queries: Sequence[Query], *, span: int = 24, height: int = 9
) -> table.Panel:
    """A table of instant queries merged on their common labels."""
    panel = table.Panel().id(ids()).title(title).height(height).span(span)
    return with_queries(panel, queries)


def text_panel(ids: Ids, title: str, content: str, *, span: int = 12, height: int = 9) -> Any:
    """A markdown panel (no data, so no target)."""
    return (
        text.Panel()
        .id(ids())
        .title(title)
        .mode("markdown")
        .content(content)
        .span(span)
        .height(height)
    )


def transformation(kind: str, options: dict[str, Any]) -> model.DataTransformerConfig:
    """A Grafana transformation by id."""
    return model.DataTransformerConfig(id_val=kind, options=options)


def override(value_id: str, value: Any) -> model.DynamicConfigValue:
    """One field-config property for an override (`custom.fillBelowTo`, `color`...)."""
    return model.DynamicConfigValue(id_val=value_id, value=value)


def fixed_color(color: str) -> model.DynamicConfigValue:
    """A fixed series colour."""
    return override("color", {"mode": "fixed", "fixedColor": color})


DASHED = override("custom.lineStyle", {"dash": [10, 10], "fill": "dash"})


def datasource_variable() -> db.DatasourceVariable:
    """The `datasource` variable (type prometheus) that every panel uses."""
    return db.DatasourceVariable("datasource").label("Data source").type("prometheus")


def query_variable(name: str, label: str, query: str, *, include_all: bool = False) -> Any:
    """A variable filled from `label_values(...)`, refreshed with the time range."""
    variable = (
        db.QueryVariable(name)
        .label(label)
        .query(query)
        .datasource(DATASOURCE)
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
    )
    if include_all:
        variable = variable.include_all(True).multi(True)
        all_option = model.VariableOption(selected=True, text=["All"], value=["$__all"])
        variable = variable.current(all_option)
    return variable


def horizon_variable(horizons: Sequence[str], default: str) -> Any:
    """The `horizon` variable: one of the exported forecast horizons."""
    current = model.VariableOption(selected=True, text=default, value=default)
    options = [model.VariableOption(selected=h == default, text=h, value=h) for h in horizons]
    return (
        db.CustomVariable("horizon")
        .label("Forecast horizon")
        .values(",".join(horizons))
        .current(current)
        .options(options)
    )


def dashboard(uid: str, title: str, description: str, *, time_from: str, time_to: str) -> Any:
    """A dashboard shell: uid, tags, time range, refresh, crosshair, the datasource variable."""
    return (
        db.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["prometheus-forecaster", "forecast"])
        .time(time_from, time_to)
        .refresh(REFRESH)
        .timezone("utc")
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .readonly()
        .with_variable(datasource_variable())
    )
