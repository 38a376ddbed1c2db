"""JSON bodies of the REST and WebSocket surface, built from a snapshot (pure functions).

Field names follow the earlier system's REST API (seed 004: `p10`/`p50`/`p90`, `current`,
`trend`, `risk_score`, `priority`, `environment`, `warmup`...); quantity keys and units are the
data contract's (ratio 0-1, bytes per second, seconds). Times are unix seconds (UTC); `trend`
is in units per hour. Non-finite numbers become `null`, so every body is strict JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from exporter.snapshot import (
    HORIZONS,
    QUANTILES,
    WINDOWS,
    InstanceSnapshot,
    QuantityForecast,
    ServiceState,
    Snapshot,
)

WS_TOP_DRIVERS = 3


def number(value: float | None) -> float | None:
    """`value` as a JSON number, or None when missing or non-finite."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def column(values: NDArray[np.float64]) -> list[float | None]:
    """A float column as a JSON list; non-finite entries become None."""
    if bool(np.isfinite(values).all()):
        return values.tolist()  # type: ignore[no-any-return]
    return [v if math.isfinite(v) else None for v in values.tolist()]


def dumps(body: object) -> bytes:
    """Compact strict JSON (NaN refused: callers map non-finite values to None first)."""
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")


def fresh_instances(snapshot: Snapshot, now: float, stale_after: float) -> list[InstanceSnapshot]:
    """The snapshot's instances whose forecast is still fresh at `now`, sorted by name."""
    cutoff = now - stale_after
    return [
        snapshot.instances[name]
        for name in sorted(snapshot.instances)
        if snapshot.instances[name].made_at >= cutoff
    ]


def forecast_body(forecast: QuantityForecast) -> dict[str, Any]:
    """`{"p10": [...], "p50": [...], "p90": [...], "current", "trend", "unit", "method"}`."""
    quantiles = forecast.quantiles
    body: dict[str, Any] = {}
    for index, key in enumerate(("p10", "p50", "p90")):
        ok = quantiles.ndim == 2 and quantiles.shape[1] > index
        body[key] = column(quantiles[:, index]) if ok else []
    body.update(
        current=number(forecast.current),
        trend=number(forecast.trend),
        unit=forecast.unit,
        method=forecast.method,
    )
    return body


def predictions_body(instance: InstanceSnapshot) -> dict[str, Any]:
    """quantity -> forecast body for one instance."""
    return {q: forecast_body(f) for q, f in instance.forecasts.items()}


def alert_body(instance: InstanceSnapshot) -> dict[str, Any]:
    """One row of `/alerts/active` (seed section 10 shape plus the profile)."""
    risk = instance.risk
    return {
        "server_name": instance.instance,
        "profile": instance.profile,
        "priority": risk.priority,
        "risk_score": number(risk.score),
        "cpu_risk": number(risk.cpu_risk),
        "mem_risk": number(risk.mem_risk),
        "latency_risk": number(risk.latency_risk),
        "message": risk.message,
    }


def alerts_body(instances: Iterable[InstanceSnapshot]) -> dict[str, Any]:
    """Instances with a positive risk score, highest first (ties by name)."""
    risky = [i for i in instances if math.isfinite(i.risk.score) and i.risk.score > 0]
    risky.sort(key=lambda i: (-i.risk.score, i.instance))
    alerts = [alert_body(i) for i in risky]
    return {"alerts": alerts, "count": len(alerts)}


def environment_body(snapshot: Snapshot) -> dict[str, Any]:
    """The fleet outlook (seed section 4)."""
    env = snapshot.environment
    return {
        "prob_30m": number(env.prob_30m),
        "prob_8h": number(env.prob_8h),
        "high_risk_servers": env.high_risk_servers,
        "total_servers": env.total_servers,
        "fleet_health": env.fleet_health,
    }


def horizon_steps(snapshot: Snapshot) -> int:
    """Forecast length in steps: the longest forecast in the snapshot, else 8 h."""
    lengths = [
        f.quantiles.shape[0] for i in snapshot.instances.values() for f in i.forecasts.values()
    ]
    return max(lengths, default=max(HORIZONS.values()))


def current_body(
    snapshot: Snapshot, state: ServiceState, instances: list[InstanceSnapshot]
) -> dict[str, Any]:
    """`/predictions/current`: every fresh instance's forecasts, alerts, fleet, metadata."""
    return {
        "predictions": {i.instance: predictions_body(i) for i in instances},
        "alerts": alerts_body(instances)["alerts"],
        "environment": environment_body(snapshot),
        "metadata": {
            "generated_at": number(snapshot.generated_at),
            "model_version": state.model_version if state.model_loaded else None,
            "contract_version": state.contract_version,
            "step_seconds": snapshot.step_seconds,
            "horizon_steps": horizon_steps(snapshot),
            "quantiles": list(QUANTILES),
        },
    }


def breach_body(instance: InstanceSnapshot) -> dict[str, dict[str, Any]]:
    """quantity -> `{"threshold", "prob_30m", "prob_8h", "time_to_breach_seconds"}`."""
    out: dict[str, dict[str, Any]] = {}
    for quantity, breach in instance.breaches.items():
        body: dict[str, Any] = {"threshold": number(breach.threshold)}
        for window in WINDOWS:
            body[f"prob_{window}"] = number(breach.probability.get(window))
        body["time_to_breach_seconds"] = number(breach.time_to_breach)
        body["earliest_breach_seconds"] = number(breach.earliest_breach)
        out[quantity] = body
    return out


def server_body(instance: InstanceSnapshot) -> dict[str, Any]:
    """`/predict/{server}`: one instance in full."""
    risk = alert_body(instance)
    for key in ("server_name", "profile"):
        risk.pop(key)
    return {
        "server_name": instance.instance,
        "profile": instance.profile,
        "method": instance.method,
        "origin": number(instance.origin),
        "made_at": number(instance.made_at),
        "predictions": predictions_body(instance),
        "risk": risk,
        "breaches": breach_body(instance),
        "drivers": [{"variable": v, "weight": number(w)} for v, w in instance.drivers],
    }


def warmup_body(instances: Mapping[str, InstanceSnapshot]) -> dict[str, Any]:
    """Warm-up over the fleet (seed section 10), with a per-server breakdown."""
    servers = {
        name: {
            "steps": i.warmup_steps,
            "required": i.warmup_required,
            "progress": round(i.warmup_progress, 4),
        }
        for name, i in sorted(instances.items())
    }
    if not instances:
        return {
            "is_warmed_up": False,
            "progress_percent": 0.0,
            "current_size": 0,
            "required_size": 0,
            "message": "No data received yet",
            "servers": servers,
        }
    values = list(instances.values())
    waiting = [i for i in values if i.warmup_progress < 1.0]
    progress = 100.0 * sum(i.warmup_progress for i in values) / len(values)
    least = min(values, key=lambda i: (i.warmup_progress, i.instance))
    message = (
        "Model ready for predictions"
        if not waiting
        else f"Warming up: {len(waiting)} of {len(values)} servers below the required history "
        f"(least: {least.instance} {least.warmup_steps}/{least.warmup_required} steps); "
        "they get heuristic forecasts meanwhile"
    )
    return {
        "is_warmed_up": not waiting,
        "progress_percent": round(progress, 1),
        "current_size": least.warmup_steps,
        "required_size": max(i.warmup_required for i in values),
        "message": message,
        "servers": servers,
    }


def status_body(snapshot: Snapshot, state: ServiceState, *, ready: bool) -> dict[str, Any]:
    """`/status` (seed section 10 shape, extended with model, cycle, source and shard)."""
    return {
        "running": True,
        "ready": ready,
        "warmup": warmup_body(snapshot.instances),
        "model": {
            "loaded": state.model_loaded,
            "version": state.model_version,
            "contract": state.contract_version,
            "load_failures": dict(state.model_load_failures),
        },
        "last_cycle": {
            "end": number(state.last_cycle_end),
            "duration_seconds": number(state.last_cycle_duration),
            "success_timestamp": number(state.last_success),
        },
        "cycles_total": state.cycles_total,
        "source_up": state.source_up,
        "input_partial": state.input_partial,
        "input_warnings": dict(state.input_warnings),
        "shard": {"index": state.shard_index, "count": state.shard_count},
        "cycle_failures": dict(state.cycle_failures),
        "dropped_series": dict(state.dropped_series),
        "persist": {"errors": state.persist_errors},
        "config": {
            "reload_successful": state.config_reload_successful,
            "reloaded_at": number(state.config_reloaded_at),
        },
        "generated_at": number(snapshot.generated_at),
    }


def ws_message(snapshot: Snapshot, instances: list[InstanceSnapshot]) -> str:
    """The WebSocket `predictions` message of one cycle, serialized once for all clients."""
    servers = [
        {
            "server_id": i.instance,
            "server_name": i.instance,
            "profile": i.profile,
            "risk_score": number(i.risk.score),
            "priority": i.risk.priority,
            "method": i.method,
            "drivers": [variable for variable, _ in i.drivers[:WS_TOP_DRIVERS]],
        }
        for i in instances
    ]
    body = {
        "type": "predictions",
        "generated_at": number(snapshot.generated_at),
        "servers": servers,
    }
    return dumps(body).decode("utf-8")
