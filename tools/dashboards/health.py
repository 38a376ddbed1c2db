"""The "Forecaster health" dashboard: the service's own metrics and the retrainer's.

Replicas up, cycle age and duration, source and model state, the model version, the mix of TFT
and heuristic forecasts, warm-up, the online accuracy of earlier forecasts (realised NQL and
p10-p90 coverage) and the outcomes of the scheduled retraining.
"""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import common

from exporter.snapshot import HORIZONS

from .common import (
    BLUE,
    GREEN,
    ORANGE,
    RED,
    Ids,
    Query,
    bargauge_panel,
    fixed_color,
    horizon_variable,
    instant_stat,
    override,
    stat_panel,
    steps,
    table_panel,
    timeseries_panel,
    transformation,
    value_text,
)
from .common import dashboard as new_dashboard

UID = "forecaster-health"
DEFAULT_HORIZON = "30m"
NEVER = -1  # stands for "no retraining run recorded"
NOMINAL_COVERAGE = 0.8  # p10-p90
FORECASTER_ALERTS = 'ALERTS{alertstate="firing",alertname=~"Forecast.+"}'
UP_DOWN = value_text([("0", "DOWN", RED), ("1", "UP", GREEN)])


def none_yet(label: str, value: str = "NaN") -> str:
    """A one-series fallback, `label="none scored yet"`, for a family with no sample yet."""
    return f'label_replace(vector({value}), "{label}", "none scored yet", "", "")'


def service(ids: Ids) -> list[Any]:
    """Headline stats of the service."""
    version = (
        "max by (version, contract) (forecaster_model_info) or on ()"
        ' label_replace(label_replace(vector(0), "version", "none loaded", "", ""),'
        ' "contract", "-", "", "")'
    )
    return [
        stat_panel(
            ids, "Replicas up", [Query('sum(up{job="forecaster"})', "up", instant=True)]
        ).thresholds(steps((None, RED), (1, GREEN))),
        stat_panel(
            ids,
            "Last successful cycle",
            [Query("time() - max(forecaster_last_success_timestamp_seconds)", "age", instant=True)],
            unit="s",
        ).thresholds(steps((None, GREEN), (300, ORANGE), (900, RED))),
        stat_panel(
            ids, "Source up", [Query("min(forecaster_source_up)", "source", instant=True)]
        ).mappings(UP_DOWN),
        stat_panel(
            ids, "Model loaded", [Query("min(forecaster_model_loaded)", "model", instant=True)]
        ).mappings(value_text([("0", "NO: heuristic only", ORANGE), ("1", "YES", GREEN)])),
        stat_panel(
            ids,
            "Model version",
            [Query(version, "{{version}} (contract {{contract}})", instant=True)],
        )
        .text_mode(common.BigValueTextMode.NAME)
        .thresholds(steps((None, BLUE))),
        stat_panel(
            ids,
            "Heuristic share",
            [
                Query(
                    'sum(forecaster_series{method="heuristic"}) / sum(forecaster_series)',
                    "heuristic",
                    instant=True,
                )
            ],
            unit="percentunit",
        ).thresholds(steps((None, GREEN), (0.01, ORANGE), (0.5, RED))),
    ]


def cycles(ids: Ids) -> list[Any]:
    """Cycle duration, cycle and failure rates, source and model over time."""
    duration = timeseries_panel(
        ids,
        "Cycle duration",
        [Query("max by (instance) (forecaster_cycle_duration_seconds)", "{{instance}}")],
        unit="s",
        span=8,
    ).min(0)
    rates = timeseries_panel(
        ids,
        "Cycles and failed cycles per minute",
        [
            Query(
                "sum by (instance) (rate(forecaster_cycles_total[$__rate_interval])) * 60",
                "{{instance}} cycles",
            ),
            Query(
                "sum by (reason) (rate(forecaster_cycle_failures_total[$__rate_interval])) * 60"
                ' or on () label_replace(vector(0), "reason", "none", "", "")',
                "failed: {{reason}}",
            ),
        ],
        span=8,
    ).min(0)
    flags = (
        timeseries_panel(
            ids,
            "Source up and model loaded",
            [
                Query("min(forecaster_source_up)", "source up"),
                Query("min(forecaster_model_loaded)", "model loaded"),
            ],
            span=8,
        )
        .min(0)
        .max(1)
        .mappings(UP_DOWN)
    )
    return [duration, rates, flags]


def methods(ids: Ids) -> list[Any]:
    """Method mix over time, warm-up, firing forecaster alerts."""
    mix = (
        timeseries_panel(
            ids,
            "Instances by forecast method",
            [Query("sum by (method) (forecaster_series)", "{{method}}")],
            span=8,
        )
        .stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
        .fill_opacity(40)
        .min(0)
        .override_by_name("tft", [fixed_color(GREEN)])
        .override_by_name("heuristic", [fixed_color(ORANGE)])
    )
    warmup = (
        bargauge_panel(
            ids,
            "Least warmed-up instances",
            [
                Query(
                    "bottomk(10, max by (instance) (forecaster_warmup_progress_ratio))",
                    "{{instance}}",
                    instant=True,
                )
            ],
            unit="percentunit",
        )
        .min(0)
        .max(1)
        .thresholds(steps((None, ORANGE), (1, GREEN)))
    )
    hidden = ("Time", "Value", "__name__", "alertstate", "job", "monitor")
    alerts = table_panel(
        ids,
        "Forecaster alerts firing",
        [
            Query(
                f"{FORECASTER_ALERTS} or on ()"
                ' label_replace(vector(0), "alertname", "none firing", "", "")',
                instant=True,
                table=True,
            )
        ],
        span=8,
        height=8,
    ).with_transformation(
        transformation("organize", {"excludeByName": dict.fromkeys(hidden, True)})
    )
    return [mix, warmup, alerts]


def accuracy(ids: Ids) -> list[Any]:
    """Realised NQL and coverage at `$horizon`, and the table over every horizon."""
    nql = timeseries_panel(
        ids,
        "Realised NQL at $horizon (lower is better)",
        [
            Query(
                'max by (quantity) (forecaster_realized_nql{horizon="$horizon"})'
                f" or on () {none_yet('quantity')}",
                "{{quantity}}",
            )
        ],
        span=8,
        description="Normalised quantile loss of the forecasts made $horizon before the actual"
        " values arrived; 'none scored yet' until the first horizon has passed.",
    ).min(0)
    coverage = (
        timeseries_panel(
            ids,
            "p10-p90 coverage at $horizon",
            [
                Query(
                    'max by (quantity) (forecaster_interval_coverage_ratio{horizon="$horizon"})'
                    f" or on () {none_yet('quantity')}",
                    "{{quantity}}",
                ),
                Query(f"vector({NOMINAL_COVERAGE})", "nominal 80 %"),
            ],
            unit="percentunit",
            span=8,
        )
        .min(0)
        .max(1)
    )
    coverage = coverage.override_by_name(
        "nominal 80 %",
        [fixed_color("text"), override("custom.lineStyle", {"dash": [10, 10], "fill": "dash"})],
    )
    table = accuracy_table(ids)
    return [nql, coverage, table]


def accuracy_table(ids: Ids) -> Any:
    """NQL, coverage and pairs scored per quantity and horizon."""
    queries = [
        Query(
            f"max by (quantity, horizon) ({metric}) or on () {none_yet('quantity', fallback)}",
            instant=True,
            table=True,
        )
        for metric, fallback in (
            ("forecaster_realized_nql", "NaN"),
            ("forecaster_interval_coverage_ratio", "NaN"),
            ("forecaster_accuracy_samples", "0"),
        )
    ]
    organize = {
        "excludeByName": {"Time": True},
        "renameByName": {
            "quantity": "Quantity",
            "horizon": "Horizon",
            "Value #A": "NQL",
            "Value #B": "Coverage",
            "Value #C": "Pairs scored",
        },
        "indexByName": {"Quantity": 0, "Horizon": 1, "NQL": 2, "Coverage": 3, "Pairs scored": 4},
    }
    panel = table_panel(ids, "Online accuracy, every horizon", queries, span=8, height=8)
    return (
        panel.with_transformation(transformation("merge", {}))
        .with_transformation(transformation("organize", organize))
        .override_by_name("Coverage", [override("unit", "percentunit")])
        .override_by_name("NQL", [override("decimals", 3)])
    )


def retraining(ids: Ids) -> list[Any]:
    """Scheduled retraining: last success, outcomes, duration."""
    age = "time() - max(forecaster_retrain_last_success_timestamp_seconds)"
    last = instant_stat(
        ids,
        "Last successful retraining",
        f"{age} or on () vector({NEVER})",
        "age",
        [(None, GREEN), (8 * 86400, ORANGE), (14 * 86400, RED)],
        unit="s",
        span=6,
    ).mappings(value_text([(str(NEVER), "never", ORANGE)]))
    none = 'label_replace(vector(0), "outcome", "none", "", "")'
    runs = "sum by (outcome) (increase(forecaster_retrain_runs_total[{window}]))"
    outcomes = instant_stat(
        ids,
        "Retraining runs in the time range",
        f"{runs.format(window='$__range')} or on () {none}",
        "{{outcome}}",
        [(None, BLUE)],
        span=6,
    )
    duration = instant_stat(
        ids,
        "Last retraining duration",
        f"max(forecaster_retrain_duration_seconds) or on () vector({NEVER})",
        "duration",
        [(None, BLUE)],
        unit="s",
        span=6,
    ).mappings(value_text([(str(NEVER), "no run", ORANGE)]))
    history = timeseries_panel(
        ids,
        "Retraining runs by outcome",
        [Query(f"{runs.format(window='$__interval')} or on () {none}", "{{outcome}}")],
        span=6,
        height=4,
    )
    history = history.draw_style(common.GraphDrawStyle.BARS).fill_opacity(80).min(0)
    for outcome, color in (("promoted", GREEN), ("rejected", ORANGE), ("failed", RED)):
        history = history.override_by_name(outcome, [fixed_color(color)])
    return [last, outcomes, duration, history]


def build() -> Any:
    """The whole dashboard."""
    ids = Ids()
    board = new_dashboard(
        UID,
        "Forecaster health",
        "The forecaster's own metrics: cycles, source, model, method mix, online accuracy and"
        " retraining.",
        time_from="now-6h",
        time_to="now",
    ).with_variable(horizon_variable(list(HORIZONS), DEFAULT_HORIZON))
    sections = (
        ("Service", service),
        ("Cycles", cycles),
        ("Forecast methods, warm-up and alerts", methods),
        ("Online accuracy", accuracy),
        ("Retraining", retraining),
    )
    for title, make in sections:
        board = board.with_row(db.Row(title).id(ids()))
        for panel in make(ids):
            board = board.with_panel(panel)
    return board
