"""The live engine agrees with the exported history and keeps counters consistent."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from simulator import schedule as sch
from simulator.engine import Engine
from simulator.fleet import build_fleet
from simulator.history import HistorySpec, write_history
from simulator.series import node_samples
from simulator.signals import evaluate

EPOCH = 1_795_305_600.0  # 2026-11-22T00:00Z


class FakeClock:
    """A settable clock for the engine."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def exposition(engine: Engine, node: str) -> dict[tuple, float]:
    """All samples of `node` now, keyed by (name, sorted labels)."""
    view = engine.view(node)
    gauges = {k: np.array([v]) for k, v in view.gauges.items()}
    samples = node_samples(
        view.static, np.array([view.time]), view.counters[None, :], gauges, view.scenario
    )
    return {(name, tuple(sorted(labels.items()))): float(v[0]) for name, labels, v in samples}


COUNTERS = ("_total", "_bucket", "_sum", "_count")


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """Three nodes, 6 hours from the epoch, with 3 hours of OpenMetrics at 60 s."""
    out = tmp_path_factory.mktemp("history")
    fleet = build_fleet(3, seed=5)
    first = int(EPOCH // sch.STEP)
    spec = HistorySpec(first, first + 72, EPOCH, openmetrics_hours=3)
    meta = write_history(fleet, spec, out, ["test"])
    return fleet, out, meta


def _openmetrics(path) -> dict[tuple, dict[int, float]]:
    pattern = re.compile(r"^(\w+)\{(.*)\} (\S+) (\d+)$")
    series: dict[tuple, dict[int, float]] = {}
    for line in path.read_text().splitlines():
        match = pattern.match(line)
        if match:
            name, labels, value, ts = match.groups()
            key = (name, tuple(sorted(re.findall(r'(\w+)="([^"]*)"', labels))))
            series.setdefault(key, {})[int(ts)] = float(value)
    return series


def test_live_exposition_continues_the_openmetrics_history_exactly(history):
    fleet, out, meta = history
    backfill = _openmetrics(out / "openmetrics.txt")
    assert meta["openmetrics"]["samples"] == sum(len(v) for v in backfill.values())
    clock = FakeClock(meta["openmetrics"]["end"])
    engine = Engine(fleet, EPOCH, clock=clock)
    extra = {"job": "node"}
    for node, profile in zip(fleet.nodes, fleet.profiles, strict=True):
        live = exposition(engine, node)
        for (name, labels), value in live.items():
            key = (
                name,
                tuple(
                    sorted({**dict(labels), **extra, "instance": node, "profile": profile}.items())
                ),
            )
            if name.startswith("simulator_") or key not in backfill:
                continue
            assert backfill[key][int(clock.now)] == pytest.approx(value, rel=1e-12), key


def test_openmetrics_starting_at_the_epoch_continues_into_live_counters(tmp_path):
    fleet = build_fleet(3, seed=42)
    first = int(EPOCH // sch.STEP)
    spec = HistorySpec(first, first + 12, EPOCH, openmetrics_hours=1)
    write_history(fleet, spec, tmp_path, ["test"])
    backfill = _openmetrics(tmp_path / "openmetrics.txt")
    assert min(min(series) for series in backfill.values()) > EPOCH
    clock = FakeClock(EPOCH + 1800)
    live = exposition(Engine(fleet, EPOCH, clock=clock), "ppml001")
    key = ("http_requests_total", (("code", "200"),))
    labels = {"code": "200", "instance": "ppml001", "job": "node", "profile": "ml_compute"}
    assert backfill[(key[0], tuple(sorted(labels.items())))][int(clock.now)] == pytest.approx(
        live[key], rel=1e-12
    )
    assert exposition(Engine(fleet, EPOCH, clock=FakeClock(EPOCH)), "ppml001")[key] == 0.0


def test_openmetrics_can_run_past_the_last_full_step_up_to_now(tmp_path):
    fleet = build_fleet(3, seed=42)
    first = int(EPOCH // sch.STEP)
    now = EPOCH + 7200 + 137.5  # 2 minutes into a step
    spec = HistorySpec(first, first + 24, EPOCH, openmetrics_hours=1, openmetrics_end=now)
    meta = write_history(fleet, spec, tmp_path, ["test"])
    assert meta["openmetrics"]["end"] == EPOCH + 7200 + 120
    backfill = _openmetrics(tmp_path / "openmetrics.txt")
    live = exposition(Engine(fleet, EPOCH, clock=FakeClock(EPOCH + 7320)), "ppweb001")
    for (name, labels), value in live.items():
        if name.endswith(COUNTERS) or name.startswith("node_memory"):
            key = (
                name,
                tuple(
                    sorted(
                        {
                            **dict(labels),
                            "instance": "ppweb001",
                            "job": "node",
                            "profile": "web_api",
                        }.items()
                    )
                ),
            )
            assert backfill[key][int(EPOCH + 7320)] == pytest.approx(value, rel=1e-12), key


def test_openmetrics_history_has_every_series_for_every_node(history):
    fleet, out, _ = history
    backfill = _openmetrics(out / "openmetrics.txt")
    names = {name for name, _ in backfill}
    for required in (
        "node_cpu_seconds_total",
        "node_memory_MemAvailable_bytes",
        "node_filesystem_avail_bytes",
        "node_disk_read_bytes_total",
        "http_request_duration_seconds_bucket",
        "jvm_gc_pause_seconds_sum",
        "node_load1",
        "simulator_node_state",
    ):
        instances = {dict(labels)["instance"] for name, labels in backfill if name == required}
        assert instances == set(fleet.nodes), required
    assert (out / "openmetrics.txt").read_text().endswith("# EOF\n")
    assert names


def test_parquet_rows_hold_the_contract_columns_at_5_minute_steps(history):
    fleet, out, meta = history
    frame = pd.read_parquet(out / "server_metrics.parquet")
    assert len(frame) == 72 * fleet.size == meta["rows"]
    assert str(frame["timestamp"].dt.tz) == "UTC"
    assert set(frame.columns) >= {
        "timestamp",
        "instance",
        "profile",
        "cpu_utilisation",
        "memory_utilisation",
        "filesystem_utilisation",
        "disk_io",
        "request_latency_p95",
        "network_receive",
        "network_transmit",
        "http_error_ratio",
        "gc_pause",
        "load1",
        "state",
    }
    stamps = frame["timestamp"].dt
    assert ((stamps.minute % 5 == 0) & (stamps.second == 0)).all()
    mapping = json.loads((out / "server_mapping.json").read_text())
    assert set(mapping["servers"]) == set(fleet.nodes)
    assert len({s["id"] for s in mapping["servers"].values()}) == fleet.size
    incidents = pd.read_parquet(out / "incidents.parquet")
    assert list(incidents.columns)[:7] == [
        "instance",
        "kind",
        "quantity",
        "threshold",
        "precursor_start",
        "breach",
        "end",
    ]


def test_counters_over_a_step_encode_that_steps_utilisation():
    fleet = build_fleet(20, seed=3)
    clock = FakeClock(EPOCH + 3600)
    engine = Engine(fleet, EPOCH, clock=clock)
    before = {n: exposition(engine, n) for n in fleet.nodes}
    clock.now += sch.STEP
    step = np.array([int(clock.now // sch.STEP)])
    expected = evaluate(fleet, step)
    for i, node in enumerate(fleet.nodes):
        after = exposition(engine, node)
        idle = [
            after[k] - before[node][k]
            for k in after
            if k[0] == "node_cpu_seconds_total" and ("mode", "idle") in k[1]
        ]
        utilisation = 1 - np.mean(idle) / sch.STEP
        assert utilisation == pytest.approx(expected["cpu_utilisation"][i, 0], rel=1e-9)
        written = [after[k] - before[node][k] for k in after if k[0].startswith("node_disk_")]
        assert sum(written) / sch.STEP == pytest.approx(expected["disk_io"][i, 0], rel=1e-9)


def test_counters_stay_monotone_through_scenario_changes_and_incidents():
    fleet = build_fleet(20, seed=9)
    clock = FakeClock(EPOCH + 7200)
    engine = Engine(fleet, EPOCH, clock=clock)
    rng = np.random.default_rng(0)
    previous = {n: exposition(engine, n) for n in fleet.nodes[:6]}
    for i in range(60):
        clock.now += float(rng.uniform(1, 200))
        if i == 10:
            engine.set_scenario("critical")
        if i == 20:
            engine.inject("ppml001", "cpu_saturation", 600)
        if i == 30:
            engine.set_scenario("healthy")
        for node in previous:
            current = exposition(engine, node)
            for key, value in current.items():
                if key[0].endswith(COUNTERS):
                    assert value >= previous[node][key], (i, node, key)
            previous[node] = current


def test_injected_incident_breaches_after_its_ramp_and_is_listed():
    fleet = build_fleet(20, seed=1)
    clock = FakeClock(EPOCH + 36000)
    engine = Engine(fleet, EPOCH, clock=clock)
    record = engine.inject("ppdb002", "memory_leak", ramp=1200)
    assert record["breach"] == clock.now + 1200 and record["status"] == "precursor"
    start = engine.view("ppdb002").gauges["memory_utilisation"]
    clock.now += 900
    assert start < engine.view("ppdb002").gauges["memory_utilisation"] < 0.95
    clock.now += 330
    view = engine.view("ppdb002")
    assert view.gauges["memory_utilisation"] >= 0.95
    assert sch.INCIDENT_KINDS[int(view.gauges["incident"])].name == "memory_leak"
    listed = [i for i in engine.incidents() if i["source"] == "api"]
    assert listed and listed[0]["status"] == "breached"
    with pytest.raises(KeyError):
        engine.inject("nosuchnode", "memory_leak", 60)


def test_critical_scenario_raises_load_on_affected_nodes_only():
    fleet = build_fleet(20, seed=2)
    clock = FakeClock(EPOCH + 11 * 3600)
    engine = Engine(fleet, EPOCH, clock=clock)
    before = {n: engine.view(n).gauges["memory_utilisation"] for n in fleet.nodes}
    engine.set_scenario("critical")
    affected = set(engine.affected_servers())
    assert len(affected) == 5
    after = {n: engine.view(n).gauges["memory_utilisation"] for n in fleet.nodes}
    for node in fleet.nodes:
        if node in affected:
            assert after[node] > before[node]
        else:
            assert after[node] == before[node]
    assert engine.changes[-1]["scenario"] == "critical"


def test_engine_serves_a_thousand_nodes():
    fleet = build_fleet(1000, seed=4)
    engine = Engine(fleet, EPOCH, clock=FakeClock(EPOCH + 1800))
    samples = exposition(engine, fleet.nodes[-1])
    assert len(samples) > 60
    assert engine.fleet.size == 1000


def test_epoch_must_be_on_the_step_grid_and_not_in_the_future():
    fleet = build_fleet(3)
    with pytest.raises(ValueError, match="multiple"):
        Engine(fleet, EPOCH + 1, clock=FakeClock(EPOCH + 10))
    with pytest.raises(ValueError, match="future"):
        Engine(fleet, EPOCH, clock=FakeClock(EPOCH - 10))
