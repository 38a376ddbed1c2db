"""The last snapshot on disk, so that a restarted service serves it within seconds.

One file, `snapshot.npz`: the quantile arrays as float64 plus the rest of the snapshot as JSON
stored in a uint8 array. It is written to a temp file, fsynced and `os.replace`d, and read back
with `allow_pickle=False`: nothing on this path can execute code. Reading it needs numpy only
(no torch, no pandas), so the service publishes it before the model is imported.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from exporter.snapshot import (
    Accuracy,
    Breach,
    Environment,
    InstanceSnapshot,
    QuantityForecast,
    Risk,
    Snapshot,
    frozen_array,
)

log = logging.getLogger(__name__)
FILENAME = "snapshot.npz"
FORMAT = 1


def save_snapshot(snapshot: Snapshot, directory: Path) -> Path:
    """Write `snapshot` atomically under `directory`; returns the file written."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    instances = []
    for i, item in enumerate(snapshot.instances.values()):
        forecasts = {}
        for j, (name, f) in enumerate(item.forecasts.items()):
            key = f"q{i}_{j}"
            arrays[key] = np.asarray(f.quantiles, dtype=np.float64)
            forecasts[name] = {
                "array": key,
                "unit": f.unit,
                "method": f.method,
                "current": f.current,
                "trend": f.trend,
                "scores": dict(f.scores),
            }
        instances.append(
            {
                "instance": item.instance,
                "profile": item.profile,
                "origin": item.origin,
                "made_at": item.made_at,
                "last_seen": item.last_seen,
                "warmup_steps": item.warmup_steps,
                "warmup_required": item.warmup_required,
                "forecasts": forecasts,
                "breaches": {k: _breach(b) for k, b in item.breaches.items()},
                "risk": vars(item.risk),
                "drivers": [list(d) for d in item.drivers],
            }
        )
    meta = {
        "format": FORMAT,
        "generated_at": snapshot.generated_at,
        "instances": instances,
        "environment": vars(snapshot.environment),
        "thresholds": [[q, level, v] for (q, level), v in snapshot.thresholds.items()],
        "alert_thresholds": [[q, s, v] for (q, s), v in snapshot.alert_thresholds.items()],
        "accuracy": [vars(a) for a in snapshot.accuracy],
        "units": dict(snapshot.units),
        "step_seconds": snapshot.step_seconds,
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    path = directory / FILENAME
    tmp = directory / f".{FILENAME}.tmp-{os.getpid()}"
    try:
        with tmp.open("wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_snapshot(directory: Path) -> Snapshot | None:
    """The persisted snapshot, or None when there is none or it cannot be read (logged)."""
    path = directory / FILENAME
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT}")
            return _snapshot(meta, data)
    # A damaged or edited file can fail anywhere in zipfile's and numpy's readers, not only
    # with OSError / ValueError (EOFError when empty, NotImplementedError for an unknown
    # compression method, tokenize.TokenError for a mangled .npy header, RecursionError for
    # deep JSON, ...) and in `_snapshot` with any type error: whatever the cause, the file
    # is a cache, so it is ignored, never a reason not to start.
    except Exception as exc:
        log.warning("ignoring unreadable persisted snapshot %s: %s", path, exc)
        return None


def _snapshot(meta: dict[str, Any], data: Any) -> Snapshot:
    """The snapshot of a file's JSON part and arrays; every field is checked for the type the
    exporter serves (TypeError / ValueError otherwise), so that a file edited or damaged into
    valid JSON of other types is refused here instead of failing the service's first publish."""
    instances = {}
    for item in meta["instances"]:
        forecasts = {
            _name(name): QuantityForecast(
                quantity=_name(name),
                unit=_name(f["unit"]),
                method=_name(f["method"]),
                quantiles=_quantiles(data[f["array"]]),
                current=float(f["current"]),
                trend=float(f["trend"]),
                scores=MappingProxyType(
                    {_name(k): float(v) for k, v in dict(f.get("scores", {})).items()}
                ),
            )
            for name, f in item["forecasts"].items()
        }
        breaches = {
            _name(k): Breach(
                quantity=_name(b["quantity"]),
                threshold=float(b["threshold"]),
                probability=MappingProxyType(
                    {_name(w): float(p) for w, p in dict(b["probability"]).items()}
                ),
                time_to_breach=_optional(b["time_to_breach"]),
                earliest_breach=_optional(b.get("earliest_breach")),
            )
            for k, b in item["breaches"].items()
        }
        risk = item["risk"]
        instances[_text(item["instance"])] = InstanceSnapshot(
            instance=_text(item["instance"]),
            profile=_text(item["profile"]),
            origin=float(item["origin"]),
            made_at=float(item["made_at"]),
            last_seen=float(item["last_seen"]),
            warmup_steps=int(item["warmup_steps"]),
            warmup_required=int(item["warmup_required"]),
            forecasts=MappingProxyType(forecasts),
            breaches=MappingProxyType(breaches),
            risk=Risk(
                score=float(risk["score"]),
                priority=_text(risk["priority"]),
                cpu_risk=float(risk["cpu_risk"]),
                mem_risk=float(risk["mem_risk"]),
                latency_risk=float(risk["latency_risk"]),
                message=_text(risk["message"]),
            ),
            drivers=tuple((str(n), float(w)) for n, w in item["drivers"]),
        )
    environment = meta["environment"]
    return Snapshot(
        generated_at=float(meta["generated_at"]),
        instances=MappingProxyType(instances),
        environment=Environment(
            prob_30m=float(environment["prob_30m"]),
            prob_8h=float(environment["prob_8h"]),
            high_risk_servers=int(environment["high_risk_servers"]),
            total_servers=int(environment["total_servers"]),
            fleet_health=_text(environment["fleet_health"]),
        ),
        thresholds=MappingProxyType(
            {(_name(q), _name(lv)): float(v) for q, lv, v in meta["thresholds"]}
        ),
        alert_thresholds=MappingProxyType(
            {(_name(q), _name(s)): float(v) for q, s, v in meta.get("alert_thresholds", [])}
        ),
        accuracy=tuple(
            Accuracy(
                quantity=_name(a["quantity"]),
                horizon=_name(a["horizon"]),
                nql=float(a["nql"]),
                coverage=float(a["coverage"]),
                samples=int(a["samples"]),
            )
            for a in meta["accuracy"]
        ),
        units=MappingProxyType({_name(q): _name(u) for q, u in dict(meta["units"]).items()}),
        step_seconds=int(meta["step_seconds"]),
    )


def _text(value: object) -> str:
    """A string field (instance names and profiles may hold any text: the exporter makes their
    labels valid UTF-8); TypeError for any other JSON value."""
    if not isinstance(value, str):
        raise TypeError(f"a {type(value).__name__} where a string belongs")
    return value


def _name(value: object) -> str:
    """One of the forecaster's own names (quantity, unit, method, window, level): a string
    that is valid UTF-8, as the exporter writes it into labels unchanged."""
    text = _text(value)
    text.encode("utf-8")  # UnicodeEncodeError, a ValueError, for a lone surrogate
    return text


def _optional(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _quantiles(values: np.ndarray) -> np.ndarray:
    """A forecast's (horizon, quantiles) array of real numbers; ValueError for any other."""
    if values.dtype.kind not in "biuf":  # complex, strings, dates: no forecast
        raise ValueError(f"a forecast array of dtype {values.dtype}")
    array = frozen_array(values)
    if array.ndim != 2:
        raise ValueError(f"a forecast array of shape {array.shape}, not (horizon, quantiles)")
    return array


def _breach(breach: Breach) -> dict[str, Any]:
    return {
        "quantity": breach.quantity,
        "threshold": breach.threshold,
        "probability": dict(breach.probability),
        "time_to_breach": breach.time_to_breach,
        "earliest_breach": breach.earliest_breach,
    }
