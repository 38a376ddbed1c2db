"""The "Fleet forecast" dashboard: the seed dashboard's fleet overview on Prometheus.

Fleet health and incident probabilities, servers per priority, risk per server grouped by
profile, the top problem servers table (now, p90 at +30 min, the change, risk, priority) and
the forecast alerts that fire, with the demo's scenario controls beside them.
"""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import statushistory
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

from .common import (
    BLUE,
    GREEN,
    ORANGE,
    P1,
    P2,
    RED,
    RISK_STEPS,
    Ids,
    Quantity,
    Query,
    fixed_color,
    override,
    priority_mappings,
    query_variable,
    stat_panel,
    steps,
    table_panel,
    text_panel,
    timeseries_panel,
    transformation,
    value_text,
    with_queries,
)
from .common import dashboard as new_dashboard

UID = "fleet-forecast"
# Forecast alerts of prometheus/rules/alerts.yml: NodeForecast*, Fleet*, Forecaster*, Forecast*.
ALERTS = 'ALERTS{alertstate="firing",alertname=~"NodeForecast.+|Fleet.+|Forecast.+"}'
TABLE_QUANTITIES = ("cpu_utilisation", "memory_utilisation", "filesystem_utilisation")
TABLE_LATENCY = "request_latency_p95"
SHORT = {
    "cpu_utilisation": "CPU",
    "memory_utilisation": "Mem",
    "filesystem_utilisation": "Disk",
    "request_latency_p95": "Lat",
}
NODE_LINK = "/d/node-forecast/node-forecast?var-instance=${__value.raw}&${datasource:queryparam}"
DEMO_HELP = """\
The demo stack (`make demo`, that is `python -m stack demo`) prints the simulator's URL at
start. Switch the whole fleet's scenario, then watch the risk scores and incident
probabilities move within a few forecast cycles:

```sh
.venv/bin/python -m simulator scenario critical --url http://127.0.0.1:<simulator port>
curl -X POST http://127.0.0.1:<simulator port>/scenario/set \\
     -H 'Content-Type: application/json' -d '{"scenario": "critical"}'
```

Scenarios: `healthy`, `degrading` (a quarter of the fleet at 1.15x), `critical` (a quarter
at 1.6x). Break one node now, with a precursor compressed into the ramp:

```sh
.venv/bin/python -m simulator incident --node ppdb001 --kind memory_leak --ramp 20m \\
     --url http://127.0.0.1:<simulator port>
curl -X POST http://127.0.0.1:<simulator port>/incident/inject \\
     -H 'Content-Type: application/json' \\
     -d '{"node": "ppdb001", "kind": "memory_leak", "ramp": "20m"}'
```

Kinds: `memory_leak`, `filesystem_fill`, `cpu_saturation`, `latency_degradation`.
`GET /status` and `GET /incidents` show the simulator's ground truth, also scraped as
`simulator_scenario`, `simulator_incident_active` and `simulator_node_state`.
"""


def fleet_probability(window: str) -> str:
    """Fleet incident probability, averaged over the replicas weighted by their servers."""
    prob = f'forecaster_fleet_incident_probability{{window="{window}"}}'
    return (
        f"sum({prob} * ignoring (window) group_left () forecaster_fleet_servers)"
        " / sum(forecaster_fleet_servers)"
    )


def _priority_count(low: float | None, high: float | None) -> str:
    cond = "".join(
        [f" >= {low:g}" if low is not None else "", f" < {high:g}" if high is not None else ""]
    )
    return f"count(max by (instance) (forecaster_risk_score){cond}) or on () vector(0)"


def overview(ids: Ids) -> list[Any]:
    """The headline stats: health, probabilities, high-risk servers, alerts."""
    health = stat_panel(
        ids,
        "Fleet health",
        [
            Query(
                'max(forecaster_fleet_health{state="critical"}) * 2'
                ' + max(forecaster_fleet_health{state="warning"})',
                "fleet health",
                instant=True,
            )
        ],
    ).mappings(
        value_text([("0", "HEALTHY", GREEN), ("1", "WARNING", ORANGE), ("2", "CRITICAL", RED)])
    )
    prob_steps = steps((None, GREEN), (0.4, ORANGE), (0.7, RED))
    panels = [health]
    for window, label in (("30m", "next 30 min"), ("8h", "next 8 h")):
        query = Query(fleet_probability(window), label, instant=True)
        panel = stat_panel(ids, f"Incident probability, {label}", [query], unit="percentunit")
        panels.append(panel.thresholds(prob_steps).decimals(0))
    panels += [
        stat_panel(
            ids,
            "High-risk servers (risk ≥ 70)",
            [Query("sum(forecaster_fleet_high_risk_servers)", "high risk", instant=True)],
        ).thresholds(steps((None, GREEN), (1, RED))),
        stat_panel(
            ids,
            "Servers forecast",
            [Query("sum(forecaster_fleet_servers)", "servers", instant=True)],
        ).thresholds(steps((None, BLUE))),
        stat_panel(
            ids,
            "Forecast alerts firing",
            [Query(f"count({ALERTS}) or on () vector(0)", "firing", instant=True)],
        ).thresholds(steps((None, GREEN), (1, ORANGE))),
    ]
    return panels


def trends(ids: Ids) -> list[Any]:
    """Fleet incident probability and servers per priority over time."""
    probability = timeseries_panel(
        ids,
        "Fleet incident probability",
        [
            Query(fleet_probability("30m"), "next 30 min"),
            Query(fleet_probability("8h"), "next 8 h"),
        ],
        unit="percentunit",
        description="Mean over the fleet of each server's incident probability (seed formula)."
        " Dashed lines: the warning (40 %) and critical (70 %) fleet health levels.",
    )
    probability = (
        probability.min(0)
        .max(1)
        .thresholds(steps((None, GREEN), (0.4, ORANGE), (0.7, RED)))
        .thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(
                common.GraphThresholdsStyleMode.DASHED
            )
        )
    )
    priorities = timeseries_panel(
        ids,
        "Servers by priority",
        [
            Query(_priority_count(P1, None), "P1 (risk ≥ 70)"),
            Query(_priority_count(P2, P1), "P2 (risk 40-70)"),
            Query(_priority_count(None, P2), "P3 (risk < 40)"),
        ],
        description="Servers per priority tier of the seed system: P1 risk ≥ 70, P2 ≥ 40.",
    )
    priorities = (
        priorities.stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
        .fill_opacity(40)
        .min(0)
        .override_by_name("P1 (risk ≥ 70)", [fixed_color(RED)])
        .override_by_name("P2 (risk 40-70)", [fixed_color(ORANGE)])
        .override_by_name("P3 (risk < 40)", [fixed_color(BLUE)])
    )
    return [probability, priorities]


def risk_by_profile(ids: Ids) -> Any:
    """Risk score per server over time, one status-history panel per profile (repeated)."""
    expr = (
        "max by (instance) (forecaster_risk_score)"
        " * on (instance) group_left (profile)"
        ' max by (instance, profile) (forecaster_instance_info{profile=~"$profile"})'
    )
    panel = (
        statushistory.Panel()
        .id(ids())
        .title("Risk score: $profile")
        .description("Risk score 0-100 per server; P1 (red) ≥ 70, P2 (orange) ≥ 40.")
        .height(7)
        .span(8)
        .repeat("profile")
        .repeat_direction("h")
        .max_per_row(3)
        .min(0)
        .max(100)
        .decimals(0)
        .show_value(common.VisibilityMode.NEVER)
        .thresholds(steps(*RISK_STEPS))
        .color_scheme(db.FieldColor().mode(model.FieldColorModeId.THRESHOLDS))
    )
    return with_queries(panel, [Query(expr, "{{instance}}")])


def problem_queries(quantities: dict[str, Quantity]) -> tuple[list[Query], list[str]]:
    """Targets of the top problem servers table and the column name of each value."""
    risk = "max by (instance) (forecaster_risk_score)"
    queries = [
        Query(risk, instant=True, table=True),
        Query(risk, instant=True, table=True),
        Query("max by (instance, profile) (forecaster_instance_info)", instant=True, table=True),
    ]
    columns = ["Risk", "Priority", ""]
    for name in (*TABLE_QUANTITIES, TABLE_LATENCY):
        quantity = quantities[name]
        now = f"{quantity.actual()} and on (instance) forecaster_risk_score"
        ahead = f"max by (instance) ({quantity.forecast(horizon='30m', q='0.9')})"
        queries += [
            Query(now, instant=True, table=True),
            Query(ahead, instant=True, table=True),
            Query(f"{ahead} - on (instance) {quantity.actual()}", instant=True, table=True),
        ]
        short = SHORT[name]
        columns += [f"{short} now", f"{short} +30m p90", f"{short} Δ"]
    return queries, columns


def problem_servers(ids: Ids, quantities: dict[str, Quantity]) -> Any:
    """The seed's alert table: priority, server, profile, risk, now / +30 min p90 / change."""
    queries, columns = problem_queries(quantities)
    refs = [chr(ord("A") + i) for i in range(len(queries))]
    rename = {f"Value #{ref}": column for ref, column in zip(refs, columns, strict=True) if column}
    rename |= {"instance": "Server", "profile": "Profile"}
    order = ["Priority", "Server", "Profile", "Risk", *columns[3:]]
    organize = {
        "excludeByName": {"Time": True, f"Value #{refs[2]}": True},
        "renameByName": rename,
        "indexByName": {name: index for index, name in enumerate(order)},
    }
    panel = table_panel(ids, "Top problem servers", queries, height=12)
    panel = (
        panel.with_transformation(transformation("merge", {}))
        .with_transformation(transformation("organize", organize))
        .sort_by([common_builders.TableSortByFieldState().display_name("Risk").desc(True)])
        .description(
            "Every forecast server, highest risk first: the value now, the p90 forecast 30 min"
            " ahead and the change (Δ), as in the seed system's alert table."
        )
    )
    panel = panel.override_by_name(
        "Priority",
        [
            override("mappings", [m.to_json() for m in priority_mappings()]),
            override("custom.cellOptions", {"type": "color-background"}),
            override("custom.width", 80),
        ],
    ).override_by_name(
        "Server",
        [override("links", [{"title": "Node forecast", "url": NODE_LINK}])],
    )
    panel = panel.override_by_name(
        "Risk",
        [
            override("decimals", 0),
            override("thresholds", steps(*RISK_STEPS).build().to_json()),
            override("custom.cellOptions", {"type": "color-text"}),
        ],
    )
    for name in TABLE_QUANTITIES:
        unit = quantities[name].grafana_unit
        for column in (f"{SHORT[name]} now", f"{SHORT[name]} +30m p90", f"{SHORT[name]} Δ"):
            panel = panel.override_by_name(
                column, [override("unit", unit), override("decimals", 1)]
            )
    latency = quantities[TABLE_LATENCY].grafana_unit
    for column in ("Lat now", "Lat +30m p90", "Lat Δ"):
        panel = panel.override_by_name(column, [override("unit", latency)])
    return panel


def alerts_table(ids: Ids) -> Any:
    """Forecast alerts firing now, one row each; a single 'none firing' row otherwise."""
    expr = f'{ALERTS} or on () label_replace(vector(0), "alertname", "none firing", "", "")'
    hidden = ("Time", "Value", "__name__", "alertstate", "job", "monitor")
    organize = {"excludeByName": dict.fromkeys(hidden, True), "renameByName": {}}
    panel = table_panel(
        ids, "Active forecast alerts", [Query(expr, instant=True, table=True)], span=12
    )
    return panel.with_transformation(transformation("organize", organize)).description(
        "Firing NodeForecast*, Fleet* and Forecaster* alerts (prometheus/rules/alerts.yml)."
    )


def demo(ids: Ids) -> list[Any]:
    """The demo-mode help and the simulator's ground truth beside it."""
    help_panel = text_panel(ids, "Demo mode", DEMO_HELP, span=12, height=14)
    scenario = stat_panel(
        ids,
        "Simulator scenario",
        [Query("max by (scenario) (simulator_scenario) == 1", "{{scenario}}", instant=True)],
        span=6,
        height=5,
    ).text_mode(common.BigValueTextMode.NAME)
    incidents = stat_panel(
        ids,
        "Simulated incidents running",
        [Query("sum by (kind) (simulator_incident_active)", "{{kind}}", instant=True)],
        span=6,
        height=5,
    ).thresholds(steps((None, GREEN), (1, RED)))
    return [help_panel, scenario.thresholds(steps((None, BLUE))), incidents]


def build(quantities: dict[str, Quantity]) -> Any:
    """The whole dashboard."""
    ids = Ids()
    board = new_dashboard(
        UID,
        "Fleet forecast",
        "Fleet outlook from the forecaster: incident probability, risk per server, the top"
        " problem servers and the forecast alerts.",
        time_from="now-6h",
        time_to="now",
    ).with_variable(
        query_variable(
            "profile",
            "Profile",
            "label_values(forecaster_instance_info, profile)",
            include_all=True,
        )
    )
    board = board.with_row(db.Row("Fleet outlook").id(ids()))
    for panel in overview(ids):
        board = board.with_panel(panel)
    for panel in trends(ids):
        board = board.with_panel(panel)
    board = board.with_row(db.Row("Risk per server, by profile").id(ids()))
    board = board.with_panel(risk_by_profile(ids))
    board = board.with_row(db.Row("Top problem servers").id(ids()))
    board = board.with_panel(problem_servers(ids, quantities))
    board = board.with_row(db.Row("Alerts and demo mode").id(ids()))
    board = board.with_panel(alerts_table(ids))
    for panel in demo(ids):
        board = board.with_panel(panel)
    return board
