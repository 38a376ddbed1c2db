"""The stack end to end: backfilled history, live scrapes, recording rules, config, shutdown."""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from stack import Stack, StackConfig, StackError, StackInfo
from stack.config import REPO_ROOT
from stack.lock import WorkdirLock
from stack.plan import NODE_EXPORTER_INSTANCE

from .conftest import (
    APPLICATION_QUANTITIES,
    SCRAPE_INTERVAL_S,
    SIMULATED_NODES,
    label_values,
    query,
    query_range,
    wait_for,
)

pytestmark = pytest.mark.prometheus

RULES_TIMEOUT_S = 120.0
LIVE_TIMEOUT_S = 120.0
# Largest accepted relative difference between the parquet and PromQL, per quantity.
TOLERANCE = {"request_latency_p95": 0.05}
DEFAULT_TOLERANCE = 0.01
ABSOLUTE_FLOOR = 1e-9  # relative errors are taken against at least this much


def _instances(result: list[dict[str, Any]]) -> list[str]:
    return [series["metric"].get("instance", "") for series in result]


def _live_scrapes(stack: StackInfo, instance: str) -> int:
    """Scrapes of `instance` by the node job since the history ended."""
    since = int(time.time() - stack.window.end) + 1
    expr = f'count_over_time(up{{job="node",instance="{instance}"}}[{since}s])'
    result = query(stack.prometheus_url, expr)
    return int(float(result[0]["value"][1])) if result else 0


def _covering_simulated_nodes(stack: StackInfo, expr: str) -> list[dict[str, Any]] | None:
    """The instant result of `expr` if it has a series for every simulated node, else None."""
    result = query(stack.prometheus_url, expr)
    return result if set(_instances(result)) >= SIMULATED_NODES else None


@pytest.fixture(scope="module")
def live(stack: StackInfo) -> StackInfo:
    """The stack once every simulated node and the node_exporter were scraped live twice."""
    for instance in (*sorted(SIMULATED_NODES), NODE_EXPORTER_INSTANCE):
        wait_for(
            lambda instance=instance: _live_scrapes(stack, instance) >= 2,
            LIVE_TIMEOUT_S,
            f"two live scrapes of {instance}",
        )
    return stack


def test_every_recording_rule_returns_one_series_per_simulated_node(
    live: StackInfo, contract: dict[str, dict[str, Any]]
) -> None:
    for name, quantity in contract.items():
        record = quantity["record"]
        result = wait_for(
            lambda record=record: _covering_simulated_nodes(live, record),
            RULES_TIMEOUT_S,
            f"{record} evaluated for every simulated node",
        )
        simulated = sorted(i for i in _instances(result) if i in SIMULATED_NODES)
        assert simulated == sorted(SIMULATED_NODES), f"{record}: one series per node"
        others = {i for i in _instances(result) if i not in SIMULATED_NODES}
        allowed = set() if name in APPLICATION_QUANTITIES else {NODE_EXPORTER_INSTANCE}
        assert others <= allowed, f"{record}: unexpected instances {others}"
        assert all(series["metric"]["__name__"] == record for series in result)


def test_backfilled_history_joins_live_scrapes_without_a_gap(
    live: StackInfo, contract: dict[str, dict[str, Any]]
) -> None:
    start, end = live.window.epoch + 600, time.time()
    expected_steps = int((end - start) // 60) + 1
    result = query_range(live.prometheus_url, contract["cpu_utilisation"]["expr"], start, end, 60)
    by_instance = {series["metric"]["instance"]: series["values"] for series in result}
    assert by_instance.keys() >= SIMULATED_NODES
    for node in sorted(SIMULATED_NODES):
        times = [t for t, _ in by_instance[node]]
        missing = sorted(set(range(int(start), int(end) + 1, 60)) - {int(t) for t in times})
        assert len(times) == expected_steps, f"{node}: no value at {missing[:10]}"
        values = [float(v) for _, v in by_instance[node]]
        assert all(0.0 <= v <= 1.0 for v in values), f"{node}: CPU utilisation outside [0, 1]"


def test_raw_counter_never_decreases_across_the_join(live: StackInfo) -> None:
    expr = 'node_cpu_seconds_total{instance="ppdb001",cpu="0",mode="idle"}'
    join = live.backfill_end
    start, end = live.window.end - 600, time.time()
    result = query_range(live.prometheus_url, expr, start, end, SCRAPE_INTERVAL_S)
    assert len(result) == 1
    points = [(float(t), float(v)) for t, v in result[0]["values"]]
    assert any(t <= join for t, _ in points), "no backfilled sample before the join"
    assert any(t > join + SCRAPE_INTERVAL_S for t, _ in points), "no live sample after the join"
    drops = [(a, b) for a, b in itertools.pairwise(points) if b[1] < a[1]]
    assert not drops, f"counter decreased: {drops[:5]}"


def test_no_simulated_counter_resets_from_history_into_live_scrapes(live: StackInfo) -> None:
    nodes = "|".join(sorted(SIMULATED_NODES))
    selector = f'{{job="node",instance=~"{nodes}"}}'
    names = label_values(live.prometheus_url, "__name__", selector)
    counters = [n for n in names if n.endswith(("_total", "_sum", "_count", "_bucket"))]
    assert "node_cpu_seconds_total" in counters and "http_requests_total" in counters
    span = f"{int(time.time() - live.window.epoch)}s"  # the whole backfill and the live scrapes
    offenders = {}
    for name in counters:
        result = query(live.prometheus_url, f"resets({name}{selector}[{span}]) > 0")
        if result:
            offenders[name] = sorted(
                f"{series['metric']['instance']} {series['metric']}" for series in result
            )
    assert not offenders, "counters that decrease: " + "; ".join(
        f"{name}: {len(series)} series, e.g. {series[0]}" for name, series in offenders.items()
    )


def _promql_frame(stack: StackInfo, name: str, expr: str, start: float, end: float) -> pd.DataFrame:
    rows = [
        (series["metric"].get("instance"), pd.Timestamp(float(t), unit="s", tz="UTC"), float(v))
        for series in query_range(stack.prometheus_url, expr, start, end, 300)
        for t, v in series["values"]
    ]
    return pd.DataFrame(rows, columns=["instance", "timestamp", f"{name}_promql"])


def test_parquet_history_equals_contract_expressions_over_the_backfill(
    stack: StackInfo, contract: dict[str, dict[str, Any]]
) -> None:
    metadata = json.loads((stack.history_dir / "metrics_metadata.json").read_text())
    # From 10 minutes into the raw samples (rate()[5m] needs a full window), on the 5-minute grid.
    start = math.ceil((metadata["openmetrics"]["start"] + 600) / 300) * 300
    end = metadata["end"]
    parquet = pd.read_parquet(stack.history_dir / "server_metrics.parquet")
    parquet = parquet[parquet["timestamp"] >= pd.Timestamp(start, unit="s", tz="UTC")]
    expected_points = len(SIMULATED_NODES) * (int(end - start) // 300 + 1)
    assert len(parquet) == expected_points
    failures = []
    for name, quantity in contract.items():
        promql = _promql_frame(stack, name, quantity["expr"], start, end)
        joined = parquet[["instance", "timestamp", name]].merge(
            promql, on=["instance", "timestamp"], how="left"
        )
        compared = joined[name + "_promql"].notna().sum()
        assert compared == expected_points, f"{name}: {compared} of {expected_points} points"
        tolerance = TOLERANCE.get(name, DEFAULT_TOLERANCE)
        joined["error"] = (joined[name + "_promql"] - joined[name]).abs()
        allowed = tolerance * joined[name].abs().clip(lower=ABSOLUTE_FLOOR)
        worst = joined[joined["error"] > allowed].nlargest(5, "error")
        if not worst.empty:
            failures.append(f"{name} (tolerance {tolerance:.0%}):\n{worst.to_string()}")
    assert not failures, "parquet and PromQL differ:\n" + "\n".join(failures)


def test_node_exporter_quantities_cover_the_real_node_exporter(
    live: StackInfo, contract: dict[str, dict[str, Any]]
) -> None:
    missing = [
        name
        for name, quantity in contract.items()
        if name not in APPLICATION_QUANTITIES
        and NODE_EXPORTER_INSTANCE not in _instances(query(live.prometheus_url, quantity["expr"]))
    ]
    assert not missing, f"no {NODE_EXPORTER_INSTANCE} series for {missing}"


def test_patched_work_copy_of_prometheus_config_passes_promtool(stack: StackInfo) -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool missing: install the Debian package 'prometheus'"
    checked = subprocess.run(
        [promtool, "check", "config", str(stack.prometheus_config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{SCRAPE_INTERVAL_S}s" in stack.prometheus_config.read_text()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_stack_stops_every_child_and_releases_its_workdir(tmp_path: Path) -> None:
    workdir = tmp_path / "small"
    config = StackConfig(servers=3, history_hours=1, alertmanager=False, workdir=workdir)
    with Stack(config) as info:
        pids = dict(info.pids)
        assert set(pids) == {"prometheus", "node_exporter", "simulator"}
        assert all(_alive(pid) for pid in pids.values())
        with pytest.raises(StackError, match="already running"), Stack(config):
            pass
        assert workdir.is_dir(), "a refused second stack must not wipe the first one's workdir"
    dead = {name: pid for name, pid in pids.items() if not _alive(pid)}
    assert dead == pids, f"still running after stop: {set(pids) - set(dead)}"
    assert not workdir.exists()
    with WorkdirLock(workdir):
        pass


def _wait_for_banner(output: Path, process: subprocess.Popen[bytes]) -> dict[str, int]:
    """PIDs listed on the demo's `Processes` line, once it has printed its banner."""

    def banner() -> str | None:
        assert process.poll() is None, output.read_text()
        lines = [line for line in output.read_text().splitlines() if "Processes" in line]
        return lines[0] if lines else None

    line = wait_for(banner, 120.0, "the demo's banner")
    pairs = (entry.split() for entry in line.split("Processes", 1)[1].split(","))
    return {name: int(pid) for name, pid in pairs}


@pytest.mark.parametrize(
    ("signum", "status"),
    [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)],
    ids=["SIGINT", "SIGTERM", "SIGHUP"],
)
def test_demo_refuses_a_second_run_and_stops_its_children_on_signal(
    tmp_path: Path, signum: signal.Signals, status: int
) -> None:
    workdir = tmp_path / "demo"
    argv = [sys.executable, "-m", "stack", "demo", "--servers", "3", "--hours", "1"]
    argv += ["--no-alertmanager", "--no-node-exporter", "--workdir", str(workdir)]
    output = tmp_path / "demo.out"
    with output.open("wb") as sink:
        demo = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=sink, stderr=subprocess.STDOUT)
    try:
        pids = _wait_for_banner(output, demo)
        second = subprocess.run(
            argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False
        )
        assert second.returncode == 1
        assert "already running" in second.stderr
        demo.send_signal(signum)
        assert demo.wait(timeout=60) == status, output.read_text()
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert not [name for name, pid in pids.items() if _alive(pid)]
    assert not workdir.exists()
