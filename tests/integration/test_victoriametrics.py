"""The forecaster against VictoriaMetrics (Debian's single-node `victoria-metrics`), the other
PromQL server a user is likely to run.

The simulator's raw node_exporter-style history (4 hours of 1-minute samples for 4 servers) is
imported through VictoriaMetrics' Prometheus text import, then the real forecaster runs its
cycle against VictoriaMetrics' Prometheus query API with the shipped model: every server gets
a TFT forecast of every contract target, with the same PromQL the service sends to
Prometheus. What differs from Prometheus is in docs/SERVICE.md ("Other PromQL servers").
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stack.config import REPO_ROOT
from stack.ports import pick_free_ports

from .conftest import simulated_history, terminate, wait_for

pytestmark = [pytest.mark.prometheus, pytest.mark.torch, pytest.mark.slow]

SERVERS = 4
TARGETS = {
    "cpu_utilisation",
    "memory_utilisation",
    "filesystem_utilisation",
    "disk_io",
    "request_latency_p95",
}


@pytest.fixture
def victoria(tmp_path: Path) -> Iterator[str]:
    """A VictoriaMetrics on a free loopback port holding the simulator's raw history."""
    binary = shutil.which("victoria-metrics")
    if binary is None:
        pytest.fail("victoria-metrics not found on PATH (Debian package victoria-metrics)")
    history = tmp_path / "history"
    simulated_history(history, servers=SERVERS, days=1, openmetrics_hours=4)
    url = f"http://127.0.0.1:{pick_free_ports(1)[0]}"
    process = subprocess.Popen(
        [
            binary,
            f"-httpListenAddr={url.removeprefix('http://')}",
            f"-storageDataPath={tmp_path / 'vm-data'}",
            "-retentionPeriod=100y",
            "-search.latencyOffset=0s",  # answer up to now, as Prometheus does
            "-loggerLevel=ERROR",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "vm.log").open("wb"),
    )
    try:
        wait_for(lambda: _healthy(url), 30, "VictoriaMetrics up")
        lines = []
        for line in (history / "openmetrics.txt").read_text().splitlines():
            if line and not line.startswith("#"):
                sample, seconds = line.rsplit(" ", 1)  # OpenMetrics: seconds; the import: ms
                lines.append(f"{sample} {int(float(seconds)) * 1000}")
        answer = httpx.post(
            f"{url}/api/v1/import/prometheus", content="\n".join(lines) + "\n", timeout=60
        )
        assert answer.status_code == 204, answer.text
        httpx.get(f"{url}/internal/force_flush", timeout=30).raise_for_status()
        yield url
    finally:
        terminate(process)


def _healthy(url: str) -> bool | None:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200 or None
    except httpx.HTTPError:
        return None


def _forecasts(address: str) -> dict | None:
    try:
        body = httpx.get(f"http://{address}/predictions/current", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return None
    predictions = body.get("predictions", {})
    served = [f["method"] for quantities in predictions.values() for f in quantities.values()]
    # the first cycles may run before the model has loaded: the heuristic serves them
    return predictions if len(predictions) == SERVERS and set(served) == {"tft"} else None


def test_a_forecast_cycle_against_victoriametrics_serves_every_server_with_the_tft(
    victoria, tmp_path
):
    address = f"127.0.0.1:{pick_free_ports(1)[0]}"
    log = (tmp_path / "forecaster.log").open("wb")
    forecaster = subprocess.Popen(
        [
            *(sys.executable, "-m", "forecaster", "--prometheus.url", victoria),
            *("--web.listen-address", address, "--state.dir", str(tmp_path / "state")),
            *("--model.dir", str(REPO_ROOT / "models"), "--model.device", "cpu"),
            *("--cycle.interval", "10s", "--guard.enabled", "false"),
        ],
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        predictions = wait_for(
            lambda: _forecasts(address), 180, "a TFT cycle against VictoriaMetrics"
        )
        status = httpx.get(f"http://{address}/status", timeout=5).json()
    finally:
        terminate(forecaster)
        log.close()
    assert status["source_up"] is True and status["input_partial"] is False
    for instance, quantities in predictions.items():
        assert set(quantities) == TARGETS, instance
        for name, forecast in quantities.items():
            assert forecast["method"] == "tft", (instance, name)
            assert forecast["p10"][0] <= forecast["p50"][0] <= forecast["p90"][0]
    cpu = [q["cpu_utilisation"]["current"] for q in predictions.values()]
    assert all(0.0 < c < 1.0 for c in cpu), cpu
