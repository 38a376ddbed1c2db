"""The "Node forecast" dashboard: one server's actual values against its forecasts.

For every forecast quantity: the actual line (the data contract's PromQL, so that backfilled
history shows too), the p10-p90 band and p50 of the forecast made `$horizon` earlier (shifted
by `offset $horizon`, so its accuracy is visible against the actual line), the outlook for the
next 8 h built from the exported horizons, and the thresholds that the alerts use.
"""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import gauge, statushistory
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.common import BigValueTextMode

from exporter.snapshot import HORIZONS
from forecaster.config import DEFAULT_THRESHOLDS

from .common import (
    BLUE,
    DASHED,
    GREEN,
    ORANGE,
    RED,
    RISK_STEPS,
    Ids,
    Quantity,
    Query,
    bargauge_panel,
    fixed_color,
    horizon_variable,
    instant_stat,
    override,
    priority_mappings,
    query_variable,
    steps,
    timeseries_panel,
    value_text,
    with_queries,
)
from .common import dashboard as new_dashboard

UID = "node-forecast"
NODE = "$instance"
SELECT = f'instance="{NODE}"'
DEFAULT_HORIZON = "30m"
ACTUAL, FORECAST, OUTLOOK = BLUE, ORANGE, "purple"
LEVEL_COLORS = {"warning": "yellow", "critical": RED}
NOW_RANGE = "5m"  # the relative time of the panels that show the current value
BREACH_STEPS = ((None, GREEN), (0.2, ORANGE), (0.5, RED))
NO_BREACH = -1  # time to breach when none is forecast within the horizon
BAND = ("p10", "p50", "p90")
QS = ("0.1", "0.5", "0.9")


def outlook(quantity: Quantity, q: str) -> str:
    """The forecast for each future time, from the shortest exported horizon that reaches it.

    `x{horizon="h"} offset h` at time t is the forecast made h earlier for t; `or` keeps, at
    each t, the shortest horizon that has one. `unless` drops the times up to the newest
    forecast (now), where the `$horizon` band already shows the forecasts made earlier.
    """
    parts = [
        f"max by (instance) ({quantity.forecast(instance=NODE, horizon=h, q=q)} offset {h})"
        for h in HORIZONS
    ]
    first = next(iter(HORIZONS))
    latest = quantity.forecast(instance=NODE, horizon=first, q=q)
    return "(" + " or ".join(parts) + f") unless on () {latest}"


def quantity_queries(quantity: Quantity) -> list[Query]:
    """Actual, the band made `$horizon` earlier, the outlook, and the thresholds if any."""
    queries = [Query(quantity.actual(NODE), "actual")]
    for label, q in zip(BAND, QS, strict=True):
        made = quantity.forecast(instance=NODE, horizon="$horizon", q=q)
        queries.append(Query(f"max by (instance) ({made} offset $horizon)", label))
    for label, q in zip(BAND, QS, strict=True):
        queries.append(Query(outlook(quantity, q), f"outlook {label}"))
    if quantity.name in DEFAULT_THRESHOLDS:
        expr = f'max by (level) (forecaster_threshold{{quantity="{quantity.name}"}})'
        queries.append(Query(expr, "{{level}} threshold"))
    return queries


def quantity_panel(ids: Ids, quantity: Quantity) -> Any:
    """Actual against forecast for one quantity, over the past and the next hours."""
    panel = timeseries_panel(
        ids,
        f"{quantity.title}: actual, forecast made $horizon earlier, outlook",
        quantity_queries(quantity),
        unit=quantity.grafana_unit,
        span=24,
        height=9,
        description=(
            f"Blue: the actual value ({quantity.record}, or over backfilled history the"
            " contract expression it records). Orange: p50 and the p10-p90 band"
            " of the forecast made $horizon earlier, drawn at the time it was for, so it ends"
            " $horizon in the future. Purple, dashed: the newest forecast at the exported"
            " horizons (5m to 8h ahead). Dashed lines: the warning and critical thresholds."
        ),
    )
    panel = panel.min(0)
    hidden_line = override("custom.lineWidth", 0)
    panel = (
        panel.override_by_name("actual", [fixed_color(ACTUAL), override("custom.lineWidth", 2)])
        .override_by_name("p10", [fixed_color(FORECAST), hidden_line])
        .override_by_name(
            "p90",
            [
                fixed_color(FORECAST),
                hidden_line,
                override("custom.fillBelowTo", "p10"),
                override("custom.fillOpacity", 20),
            ],
        )
        .override_by_name("p50", [fixed_color(FORECAST)])
        .override_by_name("outlook p10", [fixed_color(OUTLOOK), hidden_line])
        .override_by_name(
            "outlook p90",
            [
                fixed_color(OUTLOOK),
                hidden_line,
                override("custom.fillBelowTo", "outlook p10"),
                override("custom.fillOpacity", 15),
            ],
        )
        .override_by_name("outlook p50", [fixed_color(OUTLOOK), DASHED])
    )
    for level, color in LEVEL_COLORS.items():
        panel = panel.override_by_name(f"{level} threshold", [fixed_color(color), DASHED])
    return panel


def current(panel: Any) -> Any:
    """`panel` evaluated now: the dashboard's range reaches 8 h ahead, and Grafana runs an
    instant query at the end of the range, where nothing is yet. The override is not shown."""
    return panel.time_from(NOW_RANGE).hide_time_override(True)


def headline(ids: Ids) -> list[Any]:
    """Risk, priority, profile, method, warm-up, alerts and data age of the server."""
    risk = f"max(forecaster_risk_score{{{SELECT}}})"
    risk_gauge = (
        gauge.Panel()
        .id(ids())
        .title("Risk score")
        .height(5)
        .span(4)
        .min(0)
        .max(100)
        .decimals(0)
        .thresholds(steps(*RISK_STEPS))
    )
    predicted = f'{{__name__=~"forecaster_predicted_.+",{SELECT}}}'
    alerts = f'ALERTS{{alertstate="firing",alertname=~"NodeForecast.+",{SELECT}}}'
    info = f"max by (profile) (forecaster_instance_info{{{SELECT}}})"
    warmup = f"max(forecaster_warmup_progress_ratio{{{SELECT}}})"
    seen = f"time() - max(forecaster_last_seen_timestamp_seconds{{{SELECT}}})"
    narrow, wide, name = {"span": 3, "height": 5}, {"span": 4, "height": 5}, BigValueTextMode.NAME
    panels = [
        with_queries(risk_gauge, [Query(risk, "risk", instant=True)]),
        instant_stat(ids, "Priority", risk, "priority", RISK_STEPS, **narrow)
        .mappings(priority_mappings())
        .decimals(0),
        instant_stat(ids, "Profile", info, "{{profile}}", [(None, BLUE)], **narrow).text_mode(name),
        instant_stat(
            ids,
            "Forecast method",
            f"count by (method) ({predicted})",
            "{{method}}",
            [(None, BLUE)],
            **narrow,
        ).text_mode(name),
        instant_stat(
            ids,
            "Warm-up",
            warmup,
            "warm-up",
            [(None, ORANGE), (1, GREEN)],
            unit="percentunit",
            **narrow,
        ),
        instant_stat(
            ids,
            "Forecast alerts firing",
            f"count({alerts}) or on () vector(0)",
            "firing",
            [(None, GREEN), (1, RED)],
            **wide,
        ),
        instant_stat(
            ids,
            "Newest sample seen",
            seen,
            "age",
            [(None, GREEN), (600, ORANGE), (1800, RED)],
            unit="s",
            **wide,
        ),
    ]
    return [current(panel) for panel in panels]


def breach(ids: Ids) -> list[Any]:
    """Breach probability per quantity and window, time to breach, top drivers."""
    by_window = f"max by (quantity, window) (forecaster_breach_probability{{{SELECT}}})"
    probability = bargauge_panel(
        ids,
        "Breach probability (critical threshold)",
        [Query(by_window, "{{quantity}} within {{window}}", instant=True)],
        unit="percentunit",
    )
    probability = probability.min(0).max(1).thresholds(steps(*BREACH_STEPS))
    # One series per quantity: its time to breach, or NO_BREACH where none is forecast.
    none = f'max by (quantity) (forecaster_breach_probability{{{SELECT},window="8h"}}) * 0'
    ttb = f"min by (quantity) (forecaster_time_to_breach_seconds{{{SELECT}}})"
    to_breach = instant_stat(
        ids,
        "Time to breach (p50 past critical)",
        f"{ttb} or on (quantity) ({none} - {-NO_BREACH})",
        "{{quantity}}",
        [(None, RED), (1800, ORANGE), (7200, GREEN)],
        unit="s",
        span=8,
        height=8,
    ).mappings(value_text([(str(NO_BREACH), "none within 8 h", GREEN)]))
    top = (
        f"topk(8, max by (variable) (forecaster_driver_importance{{{SELECT}}}))"
        ' or on () label_replace(vector(0), "variable", "none exported", "", "")'
    )
    drivers = bargauge_panel(
        ids,
        "Top drivers (model input importance)",
        [Query(top, "{{variable}}", instant=True)],
        unit="percentunit",
    )
    drivers = drivers.min(0).max(1).thresholds(steps((None, BLUE)))
    return [current(panel) for panel in (probability, to_breach, drivers)]


def history(ids: Ids) -> list[Any]:
    """Risk score and breach probabilities over time."""
    risk = timeseries_panel(
        ids,
        "Risk score",
        [Query(f"max(forecaster_risk_score{{{SELECT}}})", "risk score")],
        description="Risk score 0-100 (seed formula); P2 from 40, P1 from 70 (dashed).",
    )
    risk = (
        risk.min(0)
        .max(100)
        .thresholds(steps(*RISK_STEPS))
        .thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(
                common.GraphThresholdsStyleMode.DASHED
            )
        )
    )
    probability = (
        timeseries_panel(
            ids,
            "Breach probability",
            [
                Query(
                    f"max by (quantity, window) (forecaster_breach_probability{{{SELECT}}})",
                    "{{quantity}} within {{window}}",
                )
            ],
            unit="percentunit",
        )
        .min(0)
        .max(1)
    )
    return [risk, probability]


def ground_truth(ids: Ids) -> Any:
    """The simulator's state and incidents for the server (demo stack only)."""
    panel = (
        statushistory.Panel()
        .id(ids())
        .title("Ground truth (simulator only): state and incidents")
        .description("Empty on real servers: the simulator's own labels, to judge the forecasts.")
        .height(6)
        .span(24)
        .show_value(common.VisibilityMode.NEVER)
        .color_scheme(db.FieldColor().mode(model.FieldColorModeId.FIXED).fixed_color(RED))
        .mappings(value_text([("0", " ", "transparent"), ("1", "active", RED)]))
    )
    return with_queries(
        panel,
        [
            Query(f"max by (state) (simulator_node_state{{{SELECT}}})", "state {{state}}"),
            Query(f"max by (kind) (simulator_incident_active{{{SELECT}}})", "incident {{kind}}"),
        ],
    )


def build(quantities: dict[str, Quantity]) -> Any:
    """The whole dashboard."""
    ids = Ids()
    board = (
        new_dashboard(
            UID,
            "Node forecast",
            "One server: actual values against the forecasts made earlier, the outlook for the"
            " next 8 h, breach probabilities, time to breach and the model's drivers.",
            time_from="now-6h",
            time_to="now+8h",
        )
        .with_variable(
            query_variable("instance", "Server", "label_values(forecaster_risk_score, instance)")
        )
        .with_variable(horizon_variable(list(HORIZONS), DEFAULT_HORIZON))
    )
    board = board.with_row(db.Row("Outlook").id(ids()))
    for panel in (*headline(ids), *breach(ids)):
        board = board.with_panel(panel)
    board = board.with_row(db.Row("Actual against forecast").id(ids()))
    for quantity in quantities.values():
        board = board.with_panel(quantity_panel(ids, quantity))
    board = board.with_row(db.Row("Risk history and ground truth").id(ids()))
    for panel in (*history(ids), ground_truth(ids)):
        board = board.with_panel(panel)
    return board
