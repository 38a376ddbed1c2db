"""A fixed, deterministic forecast snapshot and service state for exporter tests.

Three instances, forecast at `NOW - 60`:

- `ppdb001` (database, TFT): all five contract targets, CPU and memory heading over their
  critical thresholds, risk 80 (P1), six drivers (the collector exports at most five);
- `ppweb001` (web_api, TFT): all five targets, calm, risk 8 (P3);
- `newhost01` (generic, heuristic, warm-up 20 of 36 steps): four targets (no HTTP latency),
  risk 0.

Values are simple linear ramps with short decimals so that golden files stay readable.
"""

from __future__ import annotations

from types import MappingProxyType

import numpy as np

from exporter.snapshot import (
    Accuracy,
    Breach,
    Environment,
    InstanceSnapshot,
    QuantityForecast,
    Risk,
    ServiceState,
    Snapshot,
    frozen_array,
)
from forecaster.config import DEFAULT_THRESHOLDS
from forecaster.contract import load_contract

EPOCH = 1_795_305_600.0  # 2026-11-22T00:00Z
NOW = EPOCH + 13.5 * 3600  # a grid-aligned afternoon
MADE_AT = NOW - 60.0
ORIGIN = NOW - 300.0
STEPS = 96
UNITS = MappingProxyType({q.name: q.unit for q in load_contract().targets})
THRESHOLDS = MappingProxyType(
    {
        (name, severity): value
        for name, levels in DEFAULT_THRESHOLDS.items()
        for severity, value in levels.items()
    }
)
ALERT_THRESHOLDS = MappingProxyType(
    {
        ("memory_utilisation", "warning"): 0.35,
        ("memory_utilisation", "critical"): 0.5,
    }
)


GUARD_SCORES = {"tft": 0.052, "seasonal_naive": 0.094}  # the guard's NQL per method


def ramp(
    start: float, slope: float, spread: float, upper: float = np.inf, steps: int = STEPS
) -> np.ndarray:
    """(steps, 3) quantiles: p50 = start + slope * (k + 1), p10/p90 = p50 -/+ spread.

    Clipped to [0, upper] (ratios stay within 0-1), so the quantiles never cross.
    """
    p50 = start + slope * np.arange(1, steps + 1)
    quantiles = np.stack([p50 - spread, p50, p50 + spread], axis=1)
    return frozen_array(np.clip(quantiles, 0.0, upper).round(6))


def forecast(
    quantity: str, start: float, slope: float, spread: float, method: str = "tft"
) -> QuantityForecast:
    """A ramp forecast of `quantity` whose `current` is `start` and trend `slope` per step."""
    return QuantityForecast(
        quantity=quantity,
        unit=UNITS[quantity],
        method=method,
        quantiles=ramp(start, slope, spread, 1.0 if UNITS[quantity] == "ratio" else np.inf),
        current=start,
        trend=round(slope * 12, 6),
        scores=MappingProxyType(GUARD_SCORES if method == "tft" else {}),
    )


def _forecasts(items: list[QuantityForecast]) -> MappingProxyType:
    return MappingProxyType({f.quantity: f for f in items})


def _breach(quantity: str, p30: float, p8h: float, ttb: float | None) -> Breach:
    """The p90 passes the threshold an hour before the p50 (or at the first step)."""
    threshold = THRESHOLDS[(quantity, "critical")]
    earliest = None if ttb is None else max(300.0, ttb - 3600.0)
    return Breach(quantity, threshold, MappingProxyType({"30m": p30, "8h": p8h}), ttb, earliest)


def ppdb001() -> InstanceSnapshot:
    """The hot database: CPU and memory heading over their critical thresholds (P1)."""
    return InstanceSnapshot(
        instance="ppdb001",
        profile="database",
        origin=ORIGIN,
        made_at=MADE_AT,
        last_seen=ORIGIN + 15.0,
        warmup_steps=288,
        warmup_required=36,
        forecasts=_forecasts(
            [
                forecast("cpu_utilisation", 0.93, 0.0008, 0.05),
                forecast("memory_utilisation", 0.93, 0.0003, 0.03),
                forecast("filesystem_utilisation", 0.6, 0.0005, 0.01),
                forecast("disk_io", 52_000_000.0, 100_000.0, 8_000_000.0),
                forecast("request_latency_p95", 0.18, 0.002, 0.05),
            ]
        ),
        breaches=MappingProxyType(
            {
                "cpu_utilisation": _breach("cpu_utilisation", 0.35, 0.97, 7800.0),
                "memory_utilisation": _breach("memory_utilisation", 0.2, 0.9, 20100.0),
                "filesystem_utilisation": _breach("filesystem_utilisation", 0.0, 0.01, None),
                "request_latency_p95": _breach("request_latency_p95", 0.0, 0.05, None),
            }
        ),
        risk=Risk(80.0, "P1", 40.0, 25.0, 15.0, "CPU p90 predicted to reach 98.5% in 30 minutes"),
        drivers=(
            ("cpu_utilisation", 0.31),
            ("memory_utilisation", 0.22),
            ("load1", 0.15),
            ("network_receive", 0.12),
            ("hour_of_day", 0.1),
            ("gc_pause", 0.05),
        ),
    )


def ppweb001() -> InstanceSnapshot:
    """A calm web server (P3)."""
    return InstanceSnapshot(
        instance="ppweb001",
        profile="web_api",
        origin=ORIGIN,
        made_at=MADE_AT,
        last_seen=ORIGIN + 30.0,
        warmup_steps=288,
        warmup_required=36,
        forecasts=_forecasts(
            [
                forecast("cpu_utilisation", 0.35, 0.0005, 0.08),
                forecast("memory_utilisation", 0.55, 0.0, 0.02),
                forecast("filesystem_utilisation", 0.4, 0.0001, 0.005),
                forecast("disk_io", 4_000_000.0, 0.0, 1_000_000.0),
                forecast("request_latency_p95", 0.06, 0.0001, 0.05),
            ]
        ),
        breaches=MappingProxyType(
            {
                "cpu_utilisation": _breach("cpu_utilisation", 0.0, 0.02, None),
                "request_latency_p95": _breach("request_latency_p95", 0.0, 0.01, None),
            }
        ),
        risk=Risk(8.0, "P3", 0.0, 0.0, 8.0, "Latency p90 may reach 0.11 s within 30 minutes"),
        drivers=(("request_latency_p95", 0.4), ("http_error_ratio", 0.25), ("hour_of_day", 0.2)),
    )


def newhost01() -> InstanceSnapshot:
    """A new host still warming up: heuristic forecasts, no HTTP latency, no drivers."""
    return InstanceSnapshot(
        instance="newhost01",
        profile="generic",
        origin=ORIGIN,
        made_at=MADE_AT,
        last_seen=ORIGIN + 45.0,
        warmup_steps=20,
        warmup_required=36,
        forecasts=_forecasts(
            [
                forecast("cpu_utilisation", 0.2, 0.0, 0.05, "heuristic"),
                forecast("memory_utilisation", 0.3, 0.0, 0.05, "heuristic"),
                forecast("filesystem_utilisation", 0.1, 0.0, 0.01, "heuristic"),
                forecast("disk_io", 1_000_000.0, 0.0, 500_000.0, "heuristic"),
            ]
        ),
        breaches=MappingProxyType({"cpu_utilisation": _breach("cpu_utilisation", 0.0, 0.0, None)}),
        risk=Risk(0.0, "P3", 0.0, 0.0, 0.0, "No risk predicted"),
    )


def fixed_snapshot() -> Snapshot:
    """The three-instance snapshot, generated at `MADE_AT`."""
    instances = [ppdb001(), ppweb001(), newhost01()]
    return Snapshot(
        generated_at=MADE_AT,
        instances=MappingProxyType({i.instance: i for i in instances}),
        environment=Environment(
            prob_30m=0.45,
            prob_8h=0.62,
            high_risk_servers=1,
            total_servers=3,
            fleet_health="warning",
        ),
        thresholds=THRESHOLDS,
        alert_thresholds=ALERT_THRESHOLDS,
        accuracy=(
            Accuracy("cpu_utilisation", "30m", 0.08, 0.81, 1200),
            Accuracy("cpu_utilisation", "8h", 0.15, 0.76, 900),
            Accuracy("memory_utilisation", "30m", 0.04, 0.84, 1200),
        ),
        units=UNITS,
    )


def fixed_state() -> ServiceState:
    """A healthy service state after 42 cycles, two of them failed, with a loaded model."""
    return ServiceState(
        source_up=True,
        last_success=MADE_AT,
        cycles_total=42,
        cycle_failures=MappingProxyType({"timeout": 2}),
        last_cycle_duration=1.25,
        last_cycle_end=MADE_AT,
        input_partial=False,
        model_loaded=True,
        model_version="20261121-0001",
        contract_version="1.0.0",
        shard_index=0,
        shard_count=1,
        clean_events=MappingProxyType({"missing": 3, "out_of_domain": 1}),
        dropped_series=MappingProxyType({}),
        model_load_failures=MappingProxyType({}),
        started_at=NOW - 3600.0,
    )
