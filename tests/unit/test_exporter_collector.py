"""The forecaster's exposition: golden file, promtool lint, round trip, staleness, hostile labels.

Regenerate the golden file after an intended change:
`UPDATE_GOLDEN=1 pytest tests/unit/test_exporter_collector.py`.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import subprocess
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from exporter.collector import (
    CONTENT_TYPE,
    CYCLE_NOTE,
    MAX_DRIVERS,
    SnapshotCollector,
    prerender,
    render,
)
from exporter.snapshot import HORIZONS, ServiceState, Snapshot, frozen_array, metric_name
from tests.exporter_fixtures import MADE_AT, NOW, UNITS, fixed_snapshot, fixed_state, ppweb001
from tests.unit.test_repo_rules import system_tool

GOLDEN = Path(__file__).parent.parent / "golden" / "forecaster_metrics.prom"
STALE_AFTER = 1800.0
CPU = metric_name("cpu_utilisation", "ratio")
HOSTILE = [
    'a"} or vector(1) or x{y="',
    "back\\slash\\",
    "new\nline",
    "unicode ünïcødé 中文 \u200f\u202ertl",
    "x" * 10_000,
]


def _registry(snapshot: Snapshot, state: ServiceState | None = None, now: float = NOW):
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        SnapshotCollector(snapshot, state or fixed_state(), now=now, stale_after=STALE_AFTER)
    )
    return registry


def _families(text: bytes) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text.decode("utf-8"))}


def _rename(instance, name: str):
    return dataclasses.replace(instance, instance=name)


def _with_instances(*instances) -> Snapshot:
    return dataclasses.replace(
        fixed_snapshot(), instances=MappingProxyType({i.instance: i for i in instances})
    )


def _promtool_problems(text: bytes) -> list[str]:
    promtool = system_tool("promtool", "prometheus")
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, timeout=30, check=False
    )
    lines = result.stdout.decode().splitlines() + result.stderr.decode().splitlines()
    return [line for line in lines if line.strip()] + (
        [f"exit {result.returncode}"] if result.returncode else []
    )


def test_exposition_matches_the_golden_file_byte_for_byte():
    text = render(fixed_snapshot(), fixed_state(), now=NOW, stale_after=STALE_AFTER)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_bytes(text)
    assert text == GOLDEN.read_bytes()


@pytest.mark.prometheus
def test_golden_exposition_passes_promtool_check_metrics():
    assert _promtool_problems(GOLDEN.read_bytes()) == []


@pytest.mark.prometheus
@pytest.mark.fault("B6")
def test_hostile_label_values_pass_promtool_check_metrics():
    snapshot = _with_instances(*(_rename(ppweb001(), name) for name in HOSTILE))
    assert _promtool_problems(render(snapshot, fixed_state(), now=NOW, stale_after=1800)) == []


def test_exposition_parses_back_with_the_snapshot_values():
    families = _families(render(fixed_snapshot(), fixed_state(), now=NOW, stale_after=1800))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in families[CPU].samples}
    key = (CPU, (("horizon", "30m"), ("instance", "ppdb001"), ("method", "tft"), ("q", "0.9")))
    expected = fixed_snapshot().instances["ppdb001"].forecasts["cpu_utilisation"].at("30m")[2]
    assert samples[key] == pytest.approx(expected)
    assert len(families[CPU].samples) == 3 * len(HORIZONS) * 3
    assert families["forecaster_cycles"].type == "counter"
    assert families["forecaster_risk_score"].type == "gauge"
    methods = {s.labels["method"]: s.value for s in families["forecaster_series"].samples}
    assert methods == {
        "tft": 2.0,
        "seasonal_mean": 0.0,
        "seasonal_naive": 0.0,
        "heuristic": 1.0,
        "ramp": 0.0,
    }
    alert = families["forecaster_alert_probability_threshold"].samples
    assert {(s.labels["quantity"], s.labels["severity"]): s.value for s in alert} == {
        ("memory_utilisation", "warning"): 0.35,
        ("memory_utilisation", "critical"): 0.5,
    }
    latency = families[metric_name("request_latency_p95", "seconds")]
    assert {s.labels["instance"] for s in latency.samples} == {"ppdb001", "ppweb001"}


@pytest.mark.fault("A3")
def test_every_family_says_it_is_computed_once_per_cycle():
    for family in _families(
        render(fixed_snapshot(), fixed_state(), now=NOW, stale_after=1800)
    ).values():
        assert CYCLE_NOTE in family.documentation, family.name


@pytest.mark.fault("E3")
def test_no_sample_carries_a_timestamp():
    text = render(fixed_snapshot(), fixed_state(), now=NOW, stale_after=STALE_AFTER)
    for family in _families(text).values():
        assert all(s.timestamp is None for s in family.samples), family.name
    for line in text.decode().splitlines():
        if not line.startswith("#"):
            rest = line.rsplit("} ", 1)[1] if "} " in line else line.split(" ", 1)[1]
            assert len(rest.split()) == 1, line  # a value and nothing after it


@pytest.mark.fault("A2")
def test_collector_withdraws_stale_forecasts():
    later = MADE_AT + STALE_AFTER + 1
    registry = _registry(fixed_snapshot(), now=later)
    labels = {"instance": "ppdb001", "horizon": "30m", "q": "0.5", "method": "tft"}
    assert registry.get_sample_value(CPU, labels) is None
    assert registry.get_sample_value("forecaster_risk_score", {"instance": "ppdb001"}) is None
    breach = {"instance": "ppdb001", "quantity": "cpu_utilisation", "window": "30m"}
    assert registry.get_sample_value("forecaster_breach_probability", breach) is None
    ttb = {"instance": "ppdb001", "quantity": "cpu_utilisation"}
    assert registry.get_sample_value("forecaster_time_to_breach_seconds", ttb) is None
    driver = {"instance": "ppdb001", "variable": "load1"}
    assert registry.get_sample_value("forecaster_driver_importance", driver) is None
    # the host itself stays visible
    info = {"instance": "ppdb001", "profile": "database"}
    assert registry.get_sample_value("forecaster_instance_info", info) == 1.0
    seen = registry.get_sample_value(
        "forecaster_last_seen_timestamp_seconds", {"instance": "ppdb001"}
    )
    assert seen == fixed_snapshot().instances["ppdb001"].last_seen
    warm = registry.get_sample_value("forecaster_warmup_progress_ratio", {"instance": "ppdb001"})
    assert warm == 1.0


def test_forecasts_just_inside_stale_after_are_still_served():
    registry = _registry(fixed_snapshot(), now=MADE_AT + STALE_AFTER)
    assert registry.get_sample_value("forecaster_risk_score", {"instance": "ppdb001"}) == 80.0


@pytest.mark.fault("B8")
def test_collector_drops_series_of_vanished_instance():
    registry = _registry(_with_instances(ppweb001()))
    assert registry.get_sample_value("forecaster_risk_score", {"instance": "ppweb001"}) == 8.0
    for name in ("forecaster_risk_score", "forecaster_warmup_progress_ratio"):
        assert registry.get_sample_value(name, {"instance": "ppdb001"}) is None
    info = {"instance": "ppdb001", "profile": "database"}
    assert registry.get_sample_value("forecaster_instance_info", info) is None


@pytest.mark.fault("B6")
def test_label_values_with_quotes_backslashes_newlines_round_trip():
    snapshot = _with_instances(*(_rename(ppweb001(), name) for name in HOSTILE))
    families = _families(render(snapshot, fixed_state(), now=NOW, stale_after=STALE_AFTER))
    names = {s.labels["instance"] for s in families["forecaster_risk_score"].samples}
    assert names == set(HOSTILE)
    registry = _registry(snapshot)
    for name in HOSTILE:
        assert registry.get_sample_value("forecaster_risk_score", {"instance": name}) == 8.0


@pytest.mark.fault("B6")
def test_lone_surrogate_in_a_label_value_does_not_break_rendering():
    snapshot = _with_instances(_rename(ppweb001(), "bad\ud800host"))
    families = _families(render(snapshot, fixed_state(), now=NOW, stale_after=STALE_AFTER))
    assert [s.labels["instance"] for s in families["forecaster_risk_score"].samples] == ["bad?host"]


@pytest.mark.fault("C7")
def test_non_finite_forecast_values_are_not_exported():
    web = ppweb001()
    cpu = web.forecasts["cpu_utilisation"]
    quantiles = np.array(cpu.quantiles)
    quantiles[HORIZONS["30m"] - 1, 2] = np.nan
    quantiles[HORIZONS["1h"] - 1, 0] = np.inf
    forecasts = dict(web.forecasts)
    forecasts["cpu_utilisation"] = dataclasses.replace(cpu, quantiles=frozen_array(quantiles))
    risk = dataclasses.replace(web.risk, score=float("nan"))
    snapshot = _with_instances(dataclasses.replace(web, forecasts=forecasts, risk=risk))
    registry = _registry(snapshot)
    base = {"instance": "ppweb001", "method": "tft"}
    assert registry.get_sample_value(CPU, {**base, "horizon": "30m", "q": "0.9"}) is None
    assert registry.get_sample_value(CPU, {**base, "horizon": "1h", "q": "0.1"}) is None
    assert registry.get_sample_value(CPU, {**base, "horizon": "30m", "q": "0.5"}) is not None
    assert registry.get_sample_value("forecaster_risk_score", {"instance": "ppweb001"}) is None


def test_short_forecast_exports_only_the_horizons_it_covers():
    web = ppweb001()
    cpu = web.forecasts["cpu_utilisation"]
    short = dataclasses.replace(cpu, quantiles=frozen_array(cpu.quantiles[:12]))
    snapshot = _with_instances(dataclasses.replace(web, forecasts={"cpu_utilisation": short}))
    registry = _registry(snapshot)
    base = {"instance": "ppweb001", "method": "tft", "q": "0.5"}
    assert registry.get_sample_value(CPU, {**base, "horizon": "1h"}) is not None
    assert registry.get_sample_value(CPU, {**base, "horizon": "2h"}) is None


def test_fleet_health_has_one_sample_per_state_and_one_is_set():
    registry = _registry(fixed_snapshot())
    states = {
        s: registry.get_sample_value("forecaster_fleet_health", {"state": s})
        for s in ("healthy", "warning", "critical")
    }
    assert states == {"healthy": 0.0, "warning": 1.0, "critical": 0.0}
    for window, value in (("30m", 0.45), ("8h", 0.62)):
        got = registry.get_sample_value("forecaster_fleet_incident_probability", {"window": window})
        assert got == value
    assert registry.get_sample_value("forecaster_fleet_servers") == 3.0
    assert registry.get_sample_value("forecaster_fleet_high_risk_servers") == 1.0
    threshold = {"quantity": "cpu_utilisation", "level": "critical"}
    assert registry.get_sample_value("forecaster_threshold", threshold) == 0.95


def test_series_counts_both_methods_even_with_no_instances():
    registry = _registry(_with_instances())
    assert registry.get_sample_value("forecaster_series", {"method": "tft"}) == 0.0
    assert registry.get_sample_value("forecaster_series", {"method": "heuristic"}) == 0.0


def test_self_metrics_follow_the_service_state():
    registry = _registry(fixed_snapshot())
    assert registry.get_sample_value("forecaster_last_success_timestamp_seconds") == MADE_AT
    assert registry.get_sample_value("forecaster_cycles_total") == 42.0
    failures = {"reason": "timeout"}
    assert registry.get_sample_value("forecaster_cycle_failures_total", failures) == 2.0
    assert registry.get_sample_value("forecaster_clean_events_total", {"reason": "missing"}) == 3.0
    assert registry.get_sample_value("forecaster_source_up") == 1.0
    assert registry.get_sample_value("forecaster_input_partial") == 0.0
    assert registry.get_sample_value("forecaster_model_loaded") == 1.0
    model = {"version": "20261121-0001", "contract": "1.0.0"}
    assert registry.get_sample_value("forecaster_model_info", model) == 1.0
    assert registry.get_sample_value("forecaster_shard_info", {"index": "0", "count": "1"}) == 1.0
    assert registry.get_sample_value("forecaster_cycle_duration_seconds") == 1.25
    assert registry.get_sample_value("forecaster_start_time_seconds") == NOW - 3600.0
    nql = {"quantity": "cpu_utilisation", "horizon": "30m"}
    assert registry.get_sample_value("forecaster_realized_nql", nql) == 0.08
    assert registry.get_sample_value("forecaster_interval_coverage_ratio", nql) == 0.81
    assert registry.get_sample_value("forecaster_accuracy_samples", nql) == 1200.0


@pytest.mark.fault("C1")
def test_service_without_model_or_success_omits_model_info_and_last_success():
    state = ServiceState(model_load_failures={"corrupt": 1})
    text = render(fixed_snapshot(), state, now=NOW, stale_after=STALE_AFTER).decode()
    assert "forecaster_model_info" not in text
    assert "forecaster_last_success_timestamp_seconds" not in text
    assert "forecaster_model_loaded 0.0" in text
    assert 'forecaster_model_load_failures_total{reason="corrupt"} 1.0' in text
    assert "forecaster_source_up 0.0" in text


def test_time_to_breach_is_absent_when_no_breach_is_forecast():
    registry = _registry(fixed_snapshot())
    ttb = "forecaster_time_to_breach_seconds"
    cpu = {"instance": "ppdb001", "quantity": "cpu_utilisation"}
    assert registry.get_sample_value(ttb, cpu) == 7800.0
    assert registry.get_sample_value(ttb, {**cpu, "instance": "ppweb001"}) is None


def test_driver_importance_is_capped_per_instance():
    families = _families(render(fixed_snapshot(), fixed_state(), now=NOW, stale_after=1800))
    drivers = [
        s.labels["variable"]
        for s in families["forecaster_driver_importance"].samples
        if s.labels["instance"] == "ppdb001"
    ]
    assert len(drivers) == MAX_DRIVERS
    assert "gc_pause" not in drivers


def test_predicted_family_names_come_from_the_contract_units():
    families = _families(render(fixed_snapshot(), fixed_state(), now=NOW, stale_after=1800))
    for quantity, unit in UNITS.items():
        assert metric_name(quantity, unit) in families


def test_prerender_compresses_once_and_keeps_the_body():
    rendered = prerender(fixed_snapshot(), fixed_state(), now=NOW, stale_after=STALE_AFTER)
    assert gzip.decompress(rendered.gzipped) == rendered.body
    assert rendered.rendered_at == NOW
    again = prerender(fixed_snapshot(), fixed_state(), now=NOW, stale_after=STALE_AFTER)
    assert again.gzipped == rendered.gzipped  # deterministic: no gzip mtime
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")
