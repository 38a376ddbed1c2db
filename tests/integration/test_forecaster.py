"""The forecaster in the stack: Prometheus scrapes its TFT forecasts, REST serves them, and a
critical scenario (with a CPU saturation on one of its nodes) raises the risk of the nodes it
affects and of no other.

The forecaster's origin moves on the contract's 5-minute grid (`end = now // 300 * 300`), so
new load shows in its forecasts at the first 5-minute boundary after it, however short the
cycle. The scenario is therefore switched as soon as the stack is up, and the scrape and REST
checks run while the risk builds up. In trials a 1.6x load alone took three boundaries (about
16 minutes) to lift a risk score (ppdb001: CPU 0.53 -> 0.91, score 0 -> 30), because the
simulated load climbs gradually; a `cpu_saturation` incident with a 30-second ramp on one
affected node lifts its score (latency component, 25 points) at the first boundary that sees
30-60 s of it, one cycle and one scrape later.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from stack import StackInfo
from stack.config import REPO_ROOT

from .conftest import FORECAST_CYCLE_S, SIMULATED_NODES, query, wait_for

pytestmark = [pytest.mark.prometheus, pytest.mark.torch, pytest.mark.slow]

HORIZON_STEPS = 96  # 8 h on the 5-minute grid
# The model loads in the background (torch import: 5-10 s, more on 2 busy cores), then one
# cycle and one scrape later Prometheus holds its forecasts.
TFT_TIMEOUT_S = 150.0
# Up to two 5-minute boundaries after the injection (the first one may come too soon to see
# it), plus a cycle and a scrape.
RISK_TIMEOUT_S = 480.0
RAISED = 15.0  # the lowest points of a CPU or latency tier above 0.1 s: a tier was passed
LOW = 40.0  # P2 starts here; the nodes the scenario leaves alone stay below
FORECAST = 'forecaster_predicted_cpu_utilisation_ratio{{q="0.9",horizon="30m"{more}}}'
FORECAST_EXPR = FORECAST.format(more="")
TFT_FORECAST_EXPR = FORECAST.format(more=',method="tft"')
TIMEOUT = httpx.Timeout(30.0)


def _current_model_version() -> str:
    """The version that the repository's model registry names as current."""
    pointer = json.loads((REPO_ROOT / "models" / "current.json").read_text())
    version: str = pointer["version"]
    return version


@dataclass(frozen=True)
class Switch:
    """The critical scenario as switched: its nodes, the one also saturated, the risk before."""

    affected: frozenset[str]
    saturated: str
    risk_before: dict[str, float]
    started: float  # monotonic


def _rest_risk(stack: StackInfo) -> dict[str, float]:
    """Risk scores from the forecaster's `/alerts/active` (nodes it omits score 0)."""
    assert stack.forecaster_url is not None
    body = httpx.get(stack.forecaster_url + "/alerts/active", timeout=TIMEOUT).json()
    scores = {alert["server_name"]: float(alert["risk_score"]) for alert in body["alerts"]}
    return {node: scores.get(node, 0.0) for node in SIMULATED_NODES}


# The simulator's own background episodes (seed-style state machine) and incidents on the
# other nodes: a node that went through one of them in the last hour may rightly score high.
TROUBLED_EXPR = (
    'max by (instance) (max_over_time(simulator_node_state{state=~"degraded|critical"}[1h]))'
    " == 1 or max by (instance) (max_over_time(simulator_incident_active[1h])) == 1"
)


def _troubled(stack: StackInfo) -> set[str]:
    """Nodes the simulator's ground truth had degraded, critical or in an incident lately."""
    return {series["metric"]["instance"] for series in query(stack.prometheus_url, TROUBLED_EXPR)}


def _scraped_risk(stack: StackInfo) -> dict[str, float]:
    """`forecaster_risk_score` per instance as Prometheus scraped it."""
    result = query(stack.prometheus_url, "forecaster_risk_score")
    return {series["metric"]["instance"]: float(series["value"][1]) for series in result}


@pytest.fixture(scope="module")
def switch(forecast_stack: StackInfo) -> Switch:
    """Critical scenario on, and a CPU saturation (30 s ramp) on its least risky node."""
    before = _rest_risk(forecast_stack)
    simulator = forecast_stack.simulator_url
    switched = httpx.post(
        simulator + "/scenario/set", json={"scenario": "critical"}, timeout=TIMEOUT
    )
    assert switched.status_code == 200, switched.text
    affected = frozenset(switched.json()["affected_servers"])
    status = httpx.get(simulator + "/status", timeout=TIMEOUT).json()
    assert status["scenario"] == "critical" and set(status["affected"]) == affected
    assert 0 < len(affected) < len(SIMULATED_NODES)
    saturated = min(sorted(affected), key=lambda node: before[node])
    incident = {"node": saturated, "kind": "cpu_saturation", "ramp": "30s"}
    injected = httpx.post(simulator + "/incident/inject", json=incident, timeout=TIMEOUT)
    assert injected.status_code == 201, injected.text
    return Switch(affected, saturated, before, time.monotonic())


def _by_instance(result: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {series["metric"].get("instance", ""): series for series in result}


def _tft_for_every_node(stack: StackInfo) -> dict[str, dict[str, Any]] | None:
    """The scraped 30 m p90 CPU forecasts, once every simulated node has its TFT series."""
    series = _by_instance(query(stack.prometheus_url, TFT_FORECAST_EXPR))
    return series if series.keys() >= SIMULATED_NODES else None


@pytest.fixture(scope="module")
def served(forecast_stack: StackInfo, switch: Switch) -> StackInfo:
    """The stack once Prometheus has scraped a TFT forecast for every simulated node (the
    scenario switched first, so that its effect builds up meanwhile)."""
    wait_for(
        lambda: _tft_for_every_node(forecast_stack),
        TFT_TIMEOUT_S,
        "a scraped TFT forecast for every simulated node",
    )
    return forecast_stack


def test_prometheus_scrapes_one_tft_forecast_per_simulated_node(served: StackInfo) -> None:
    result = query(served.prometheus_url, FORECAST_EXPR)
    instances = sorted(series["metric"]["instance"] for series in result)
    assert instances == sorted(SIMULATED_NODES), "one series per node, under its own instance"
    for series in result:
        labels = series["metric"]
        assert labels["method"] == "tft", labels
        assert labels["job"] == "forecaster" and "exported_instance" not in labels
        assert 0.0 <= float(series["value"][1]) <= 1.0, labels
    model = query(served.prometheus_url, "forecaster_model_info")
    assert [series["metric"]["version"] for series in model] == [_current_model_version()]


def test_predictions_current_lists_every_node_with_full_quantile_paths(served: StackInfo) -> None:
    assert served.forecaster_url is not None
    body = httpx.get(served.forecaster_url + "/predictions/current", timeout=TIMEOUT).json()
    predictions = body["predictions"]
    assert set(predictions) == SIMULATED_NODES
    for node in sorted(SIMULATED_NODES):
        cpu = predictions[node]["cpu_utilisation"]
        assert cpu["method"] == "tft", node
        for key in ("p10", "p50", "p90"):
            assert len(cpu[key]) == HORIZON_STEPS, f"{node} {key}"
        paths = zip(cpu["p10"], cpu["p50"], cpu["p90"], strict=True)
        assert all(lo <= mid <= hi for lo, mid, hi in paths), f"{node}: quantiles cross"
    assert body["metadata"]["horizon_steps"] == HORIZON_STEPS
    assert body["metadata"]["model_version"] == _current_model_version()


def test_predict_of_an_unknown_server_answers_404(served: StackInfo) -> None:
    assert served.forecaster_url is not None
    known = httpx.get(served.forecaster_url + "/predict/ppdb001", timeout=TIMEOUT)
    assert known.status_code == 200 and known.json()["server_name"] == "ppdb001"
    unknown = httpx.get(served.forecaster_url + "/predict/no-such-server", timeout=TIMEOUT)
    assert unknown.status_code == 404


def test_critical_scenario_raises_the_risk_of_affected_nodes_only(
    served: StackInfo, switch: Switch
) -> None:
    assert switch.risk_before[switch.saturated] < RAISED

    def raised() -> dict[str, float] | None:
        risk = _scraped_risk(served)
        return risk if risk.get(switch.saturated, 0.0) >= RAISED else None

    risk = wait_for(
        raised, RISK_TIMEOUT_S, f"a risk score of {RAISED:g} or more on {switch.saturated}"
    )
    assert risk is not None
    elapsed = time.monotonic() - switch.started
    troubled = _troubled(served)
    quiet = SIMULATED_NODES - switch.affected - troubled
    unaffected = {node: risk[node] for node in sorted(quiet)}
    print(
        f"\nrisk {elapsed:.0f} s after the switch (cycle {FORECAST_CYCLE_S} s),"
        f" {switch.saturated} saturated:"
        f"\n  affected   { ({n: risk[n] for n in sorted(switch.affected)}) }"
        f"\n  before     { ({n: switch.risk_before[n] for n in sorted(switch.affected)}) }"
        f"\n  unaffected {unaffected}"
        f"\n  left out (own episode or incident in the last hour) {sorted(troubled)}"
    )
    assert len(quiet) >= len(SIMULATED_NODES) // 2, f"too few quiet nodes to judge: {troubled}"
    assert all(score < LOW for score in unaffected.values()), unaffected
