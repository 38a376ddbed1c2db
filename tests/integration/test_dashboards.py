"""Every query of the committed Grafana dashboards, run against a real Prometheus holding the
simulator's history and the forecaster's live forecasts, as Grafana would run it.

Each target of `grafana/dashboards/*.json` is taken (their count asserted, none skipped), its
variables substituted the way Grafana fills them (query variables from their `label_values`,
one panel per value of a repeat variable, custom variables at their current value, the
built-in intervals from the stack's scrape interval), then run over the panel's time range:
an instant query at the end of the range for an instant target, a range query for the others.
Each must succeed and return at least one series.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from stack import StackInfo
from tools.dashboards.targets import panels, substitute, variables

from .conftest import POLL_INTERVAL_S, SCRAPE_INTERVAL_S, SIMULATED_NODES, query, wait_for

pytestmark = [pytest.mark.prometheus, pytest.mark.torch, pytest.mark.slow]

DASHBOARD_DIR = Path(__file__).resolve().parents[2] / "grafana" / "dashboards"
TARGET_COUNTS = {"fleet-forecast": 30, "node-forecast": 53, "forecaster-health": 24}
STEP_S = 60  # range-query step; also `$__interval`
RATE_INTERVAL = f"{4 * SCRAPE_INTERVAL_S}s"  # Grafana's $__rate_interval: 4 scrape intervals
TFT_TIMEOUT_S = 150.0  # model load and a first TFT cycle on two busy cores
DATA_TIMEOUT_S = 60.0  # then every query has data within a few scrapes
# Nodes with a TFT forecast and a risk score, both scraped.
TFT_AND_RISK = (
    'max by (instance) (forecaster_predicted_cpu_utilisation_ratio{method="tft",horizon="5m"})'
    " and on (instance) forecaster_risk_score"
)
_RELATIVE = re.compile(r"^now(?:([+-])(\d+)([smhd]))?$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Check:
    """One query to run: which target, its PromQL, and how (instant or over a range)."""

    name: str
    expr: str
    instant: bool
    start: float  # seconds relative to now
    end: float


def _relative(text: str) -> float:
    """Seconds from now of a Grafana relative time: `now`, `now-6h`, `now+8h`."""
    match = _RELATIVE.match(text)
    assert match, f"unsupported relative time {text!r}"
    sign, amount, unit = match.groups()
    return 0.0 if amount is None else (-1 if sign == "-" else 1) * int(amount) * _SECONDS[unit]


def _panel_range(board: dict[str, Any], panel: dict[str, Any]) -> tuple[float, float]:
    """The panel's time range relative to now: the dashboard's, or its relative-time override."""
    if panel.get("timeFrom"):
        return _relative(f"now-{panel['timeFrom']}"), 0.0
    return _relative(board["time"]["from"]), _relative(board["time"]["to"])


def _variable_values(url: str, board: dict[str, Any]) -> dict[str, list[str]]:
    """Values of each template variable as Grafana offers them (all of a query variable's)."""
    values: dict[str, list[str]] = {}
    for variable in board["templating"]["list"]:
        name = variable["name"]
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["query"])
            assert match, variable["query"]
            metric, label = match.groups()
            response = httpx.get(f"{url}/api/v1/label/{label}/values", params={"match[]": metric})
            values[name] = sorted(response.json()["data"])
        elif variable["type"] == "custom":
            values[name] = [variable["current"]["value"]]
        assert variable["type"] == "datasource" or values[name], f"{name} has no value"
    return values


def _checks(url: str, board: dict[str, Any]) -> Iterator[Check]:
    """Every target of `board` with its variables substituted, one per repeated panel."""
    options = _variable_values(url, board)
    for panel in panels(board):
        start, end = _panel_range(board, panel)
        builtins = {
            "__interval": f"{STEP_S}s",
            "__rate_interval": RATE_INTERVAL,
            "__range": f"{int(end - start)}s",
        }
        repeat = panel.get("repeat")
        for value in options[repeat] if repeat else [None]:
            chosen = {name: vals[0] for name, vals in options.items()}
            if repeat:
                chosen[repeat] = value
            for target in panel.get("targets", []):
                assert "datasource" not in variables(target["expr"]), target["expr"]
                instant = bool(target.get("instant")) and not target.get("range")
                yield Check(
                    name=f"{board['uid']} panel {panel['id']} {target['refId']}"
                    + (f" ({repeat}={value})" if repeat else ""),
                    expr=substitute(target["expr"], chosen | builtins),
                    instant=instant,
                    start=start,
                    end=end,
                )


def _run(url: str, check: Check) -> tuple[str, int]:
    """(status, number of series) of one check, evaluated relative to the time now."""
    now = time.time()
    if check.instant:
        path, params = "/api/v1/query", {"query": check.expr, "time": now + check.end}
    else:
        path = "/api/v1/query_range"
        params = {
            "query": check.expr,
            "start": now + check.start,
            "end": now + check.end,
            "step": STEP_S,
        }
    body = httpx.get(url + path, params=params, timeout=30.0).json()
    if body.get("status") != "success":
        return f"{body.get('errorType')}: {body.get('error')}", 0
    return "success", len(body["data"]["result"])


def _boards() -> dict[str, dict[str, Any]]:
    return {uid: json.loads((DASHBOARD_DIR / f"{uid}.json").read_text()) for uid in TARGET_COUNTS}


@pytest.fixture(scope="module")
def served(forecast_stack: StackInfo) -> StackInfo:
    """The stack once Prometheus holds a TFT forecast for every simulated node."""

    def every_node_has_tft() -> bool:
        result = query(forecast_stack.prometheus_url, TFT_AND_RISK)
        return {series["metric"]["instance"] for series in result} >= SIMULATED_NODES

    wait_for(every_node_has_tft, TFT_TIMEOUT_S, "a TFT forecast and risk for every node")
    return forecast_stack


def test_committed_dashboards_hold_the_expected_number_of_targets() -> None:
    counts = {
        uid: sum(len(p.get("targets", [])) for p in panels(board))
        for uid, board in _boards().items()
    }
    assert counts == TARGET_COUNTS


def test_every_dashboard_query_succeeds_and_returns_data(served: StackInfo) -> None:
    url = served.prometheus_url
    boards = _boards()
    checks = [check for board in boards.values() for check in _checks(url, board)]
    repeats = {
        uid: sum(1 for p in panels(board) for _ in p.get("targets", []) if p.get("repeat"))
        for uid, board in boards.items()
    }
    profiles = len(_variable_values(url, boards["fleet-forecast"])["profile"])
    expected = sum(TARGET_COUNTS.values()) + sum(repeats.values()) * (profiles - 1)
    assert len(checks) == expected, "every target, once per value of a repeat variable"
    assert _variable_values(url, boards["node-forecast"])["instance"][0] in SIMULATED_NODES

    pending = {check.name: check for check in checks}
    failures: dict[str, str] = {}

    deadline = time.monotonic() + DATA_TIMEOUT_S
    while True:  # poll with a deadline: the first scrapes after start may still be missing
        for name, check in list(pending.items()):
            status, series = _run(url, check)
            if status != "success":
                failures[name] = f"{status}\n    {check.expr}"
            if status != "success" or series:
                del pending[name]
        if not pending or failures or time.monotonic() >= deadline:
            break
        time.sleep(POLL_INTERVAL_S)
    lines = [f"{name}: {why}" for name, why in sorted(failures.items())]
    lines += [f"{name}: no data\n    {check.expr}" for name, check in sorted(pending.items())]
    assert not lines, "\n".join(lines)
