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
import zipfile
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
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        log.warning("ignoring unreadable persisted snapshot %s: %s", path, exc)
        return None


def _snapshot(meta: dict[str, Any], data: Any) -> Snapshot:
    instances = {}
    for item in meta["instances"]:
        forecasts = {
            name: QuantityForecast(
                quantity=name,
                unit=f["unit"],
                method=f["method"],
                quantiles=frozen_array(data[f["array"]]),
                current=float(f["current"]),
                trend=float(f["trend"]),
                scores=MappingProxyType({str(k): float(v) for k, v in f.get("scores", {}).items()}),
            )
            for name, f in item["forecasts"].items()
        }
        breaches = {
            k: Breach(
                quantity=b["quantity"],
                threshold=float(b["threshold"]),
                probability=MappingProxyType(dict(b["probability"])),
                time_to_breach=b["time_to_breach"],
                earliest_breach=b.get("earliest_breach"),
            )
            for k, b in item["breaches"].items()
        }
        instances[item["instance"]] = InstanceSnapshot(
            instance=item["instance"],
            profile=item["profile"],
            origin=float(item["origin"]),
            made_at=float(item["made_at"]),
            last_seen=float(item["last_seen"]),
            warmup_steps=int(item["warmup_steps"]),
            warmup_required=int(item["warmup_required"]),
            forecasts=MappingProxyType(forecasts),
            breaches=MappingProxyType(breaches),
            risk=Risk(**item["risk"]),
            drivers=tuple((str(n), float(w)) for n, w in item["drivers"]),
        )
    return Snapshot(
        generated_at=float(meta["generated_at"]),
        instances=MappingProxyType(instances),
        environment=Environment(**meta["environment"]),
        thresholds=MappingProxyType({(q, lv): float(v) for q, lv, v in meta["thresholds"]}),
        alert_thresholds=MappingProxyType(
            {(q, s): float(v) for q, s, v in meta.get("alert_thresholds", [])}
        ),
        accuracy=tuple(Accuracy(**a) for a in meta["accuracy"]),
        units=MappingProxyType(dict(meta["units"])),
        step_seconds=int(meta["step_seconds"]),
    )


def _breach(breach: Breach) -> dict[str, Any]:
    return {
        "quantity": breach.quantity,
        "threshold": breach.threshold,
        "probability": dict(breach.probability),
        "time_to_breach": breach.time_to_breach,
        "earliest_breach": breach.earliest_breach,
    }
