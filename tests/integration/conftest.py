"""Integration fixtures: real stacks, PromQL helpers and a deadline poller.

One stack per session (`stack`), and one with the forecaster per module that asks for it
(`forecast_stack`).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from time import monotonic, sleep
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from stack import Stack, StackConfig, StackInfo
from stack.config import REPO_ROOT

T = TypeVar("T")

# The simulator's 20 default nodes, named as the host key everywhere.
SIMULATED_NODES = frozenset(
    [f"ppml{i:03d}" for i in range(1, 4)]
    + [f"ppdb{i:03d}" for i in range(1, 5)]
    + [f"ppweb{i:03d}" for i in range(1, 6)]
    + [f"ppcon{i:03d}" for i in range(1, 3)]
    + [f"ppetl{i:03d}" for i in range(1, 4)]
    + [f"pprisk{i:03d}" for i in range(1, 3)]
    + ["ppgen001"]
)
# Contract quantities that only an application exposes, never a plain node_exporter.
APPLICATION_QUANTITIES = frozenset(["request_latency_p95", "http_error_ratio", "gc_pause"])

SCRAPE_INTERVAL_S = 15
POLL_INTERVAL_S = 0.5


def query(url: str, expr: str, time: float | None = None) -> list[dict[str, Any]]:
    """Instant query: the `result` list of a vector answer (each `metric` and `value`)."""
    params: dict[str, Any] = {"query": expr}
    if time is not None:
        params["time"] = time
    result: list[dict[str, Any]] = _api(url, "/api/v1/query", params)
    return result


def query_range(url: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    """Range query: the `result` list of a matrix answer (each `metric` and `values`)."""
    params = {"query": expr, "start": start, "end": end, "step": step}
    result: list[dict[str, Any]] = _api(url, "/api/v1/query_range", params)
    return result


def label_values(url: str, label: str, match: str) -> list[str]:
    """Values of `label` over the series that `match` selects."""
    values: list[str] = _api(url, f"/api/v1/label/{label}/values", {"match[]": match})
    return values


def _api(url: str, path: str, params: dict[str, Any]) -> Any:
    response = httpx.get(url + path, params=params, timeout=30.0)
    body = response.json()
    if response.status_code != 200 or body.get("status") != "success":
        raise AssertionError(f"{path} {params} failed: {response.status_code} {body}")
    data = body["data"]
    return data["result"] if isinstance(data, dict) else data


def simulated_history(out: Path, servers: int, days: float, openmetrics_hours: float = 0) -> Path:
    """`python -m simulator history` into `out` (the CLI, as a user runs it); `out`."""
    subprocess.run(
        [
            *(sys.executable, "-m", "simulator", "history", "--servers", str(servers)),
            *("--days", str(days), "--openmetrics-hours", str(openmetrics_hours)),
            *("--out", str(out)),
        ],
        check=True,
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=120,
    )
    return out


def terminate(process: subprocess.Popen, grace_s: float = 20.0) -> None:
    """Stop a process the test started (by its PID): SIGTERM, then SIGKILL after `grace_s`."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def wait_for(predicate: Callable[[], T], timeout: float, what: str = "condition") -> T:
    """Poll `predicate` until it returns something truthy, which is returned; fail at deadline."""
    deadline = monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        sleep(POLL_INTERVAL_S)


@pytest.fixture(scope="session")
def contract() -> dict[str, dict[str, Any]]:
    """The data contract's quantities: name -> {record, expr, domain, ...}."""
    document = yaml.safe_load((REPO_ROOT / "forecaster" / "contract_v1.yaml").read_text())
    quantities: dict[str, dict[str, Any]] = document["quantities"]
    return quantities


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    """The full stack (20 nodes, 6 h history, Alertmanager, node_exporter), stopped at the end.

    The work directory is kept under pytest's temporary directory, logs included, for
    inspection after a failure.
    """
    config = StackConfig(
        servers=len(SIMULATED_NODES),
        seed=42,
        history_hours=6,
        scrape_interval_s=SCRAPE_INTERVAL_S,
        workdir=Path(tmp_path_factory.mktemp("stack")) / "work",
        keep_workdir=True,
        alertmanager=True,
        node_exporter=True,
    )
    with Stack(config) as info:
        yield info


# The forecaster's stack: a short cycle so that a scenario switch shows within a minute or two.
FORECAST_CYCLE_S = 10
FORECAST_HISTORY_HOURS = 4  # above the model's 3 h minimum, so every node is served by the TFT


@pytest.fixture(scope="module")
def forecast_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    """Prometheus, the simulator (20 nodes, 4 h history) and the forecaster with the shipped
    model, one cycle every 10 s, scraped every 15 s; no Alertmanager or node_exporter.

    Module-scoped: its tests may switch the simulator's scenario. The work directory, logs
    included, is kept under pytest's temporary directory for inspection after a failure.
    """
    config = StackConfig(
        servers=len(SIMULATED_NODES),
        seed=42,
        history_hours=FORECAST_HISTORY_HOURS,
        scrape_interval_s=SCRAPE_INTERVAL_S,
        workdir=Path(tmp_path_factory.mktemp("forecast-stack")) / "work",
        keep_workdir=True,
        alertmanager=False,
        node_exporter=False,
        forecaster=True,
        guard=False,  # the model's own path end to end; the guard: tests/unit/test_guard.py
        cycle_interval_s=FORECAST_CYCLE_S,
        incident_rate=0.0,  # only the incident a test injects; background episodes remain
    )
    with Stack(config) as info:
        yield info
