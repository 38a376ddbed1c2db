"""What every benchmark shares: the run context, machine facts, figures, timing, snapshots.

A *figure* is one row of a results table: what was measured, the goal it is held against
(`goal_op` "<=" or ">=" and `goal_value`; none for informational rows), the measured value,
whether the goal is met, and the machine load (`os.getloadavg()`) when it was taken, because
the benchmark machine is shared and the load says how noisy a number is.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from exporter.snapshot import (
    Breach,
    Environment,
    InstanceSnapshot,
    QuantityForecast,
    Risk,
    Snapshot,
    frozen_array,
)
from forecaster.config import DEFAULT_THRESHOLDS
from forecaster.contract import load_contract
from forecaster.grid import CONTEXT_STEPS, HORIZON_STEPS, STEP_SECONDS

log = logging.getLogger("bench")
REPO = Path(__file__).resolve().parent.parent
# The contract's targets and the service's default thresholds (one place each): the synthetic
# snapshots below render what the service would for the packaged contract.
UNITS = MappingProxyType({q.name: q.unit for q in load_contract().targets})
THRESHOLDS = MappingProxyType(
    {name: (levels["warning"], levels["critical"]) for name, levels in DEFAULT_THRESHOLDS.items()}
)
PREFIXES = ("ppml", "ppdb", "ppweb", "ppcon", "ppetl", "pprisk", "ppgen")
PROFILES = dict(
    zip(
        PREFIXES,
        (
            "ml_compute",
            "database",
            "web_api",
            "conductor_mgmt",
            "data_ingest",
            "risk_analytics",
            "generic",
        ),
        strict=True,
    )
)
DRIVERS = ("cpu_utilisation", "memory_utilisation", "load1", "network_receive", "hour_of_day")
# Typical level and spread of each quantity (base units), for synthetic forecasts.
LEVELS = MappingProxyType(
    {
        "cpu_utilisation": (0.45, 0.08),
        "memory_utilisation": (0.6, 0.04),
        "filesystem_utilisation": (0.5, 0.01),
        "disk_io": (3.0e7, 8.0e6),
        "request_latency_p95": (0.08, 0.03),
    }
)


@dataclass
class Context:
    """One `python -m bench` run: mode, scratch directory, interpreter and command line."""

    quick: bool
    work: Path
    command: str
    python: str = sys.executable
    repo: Path = REPO
    threads: int = 1  # torch threads of the model benchmarks (0: torch's default)
    notes: list[str] = field(default_factory=list)

    def path(self, *parts: str) -> Path:
        """A path under the scratch directory (its parent created)."""
        target = self.work.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def utc_now() -> str:
    """The current time, ISO 8601 in UTC to the second."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return float("nan")


def machine() -> dict[str, Any]:
    """The facts about this machine that every figure names."""
    return {
        "hostname": platform.node(),
        "cpu_model": _cpu_model(),
        "nproc": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def figure(
    name: str,
    value: float | None,
    unit: str,
    *,
    goal_op: str | None = None,
    goal_value: float | None = None,
    digits: int = 3,
    note: str = "",
    at_load: list[float] | None = None,
) -> dict[str, Any]:
    """One table row; `met` is None for rows without a goal or without a value. `at_load` is
    the load when the value was measured (default: now)."""
    met = None
    if value is not None and goal_op is not None and goal_value is not None:
        met = bool(value <= goal_value) if goal_op == "<=" else bool(value >= goal_value)
    return {
        "name": name,
        "value": None if value is None else round(float(value), digits),
        "unit": unit,
        "goal_op": goal_op,
        "goal_value": goal_value,
        "met": met,
        "load": at_load if at_load is not None else load(),
        "note": note,
    }


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99, max and mean of `values` (NaN for an empty list)."""
    if not values:
        return {k: float("nan") for k in ("p50", "p90", "p99", "max", "mean")}
    array = np.asarray(values, dtype=float)
    return {
        "p50": float(np.percentile(array, 50)),
        "p90": float(np.percentile(array, 90)),
        "p99": float(np.percentile(array, 99)),
        "max": float(array.max()),
        "mean": float(array.mean()),
    }


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[list[float], Any]:
    """Wall times (s) of `repeat` calls of `fn`, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return times, result


def best(times: Sequence[float]) -> float:
    """The least of several timings: the run least disturbed by other load."""
    return min(times)


def median(times: Sequence[float]) -> float:
    """The median of several timings."""
    return statistics.median(times)


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (MiB; VmHWM, which starts afresh at exec,
    unlike getrusage's ru_maxrss)."""
    return proc_rss_mib(os.getpid())["peak_mib"]


def proc_rss_mib(pid: int) -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident set size of process `pid` (MiB)."""
    found: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(rest.split()[0]) / 1024
    except OSError:
        pass
    return {
        "rss_mib": found.get("VmRSS", float("nan")),
        "peak_mib": found.get("VmHWM", float("nan")),
    }


def run_json(argv: Sequence[str], *, timeout: float, cwd: Path = REPO) -> dict[str, Any]:
    """Run a benchmark child to completion and parse the last JSON line of its stdout."""
    started = time.perf_counter()
    result = subprocess.run(  # noqa: S603 - argv built by the benchmarks, no shell
        list(argv), capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(
            f"{' '.join(argv[:4])} ... exited {result.returncode}: {result.stderr[-2000:]}"
        )
    answer = json.loads(lines[-1])
    answer.setdefault("wall_s", time.perf_counter() - started)
    return dict(answer)


def emit(payload: dict[str, Any]) -> None:
    """Print one JSON line: how a benchmark child reports to its parent."""
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


# --- synthetic snapshots ------------------------------------------------------------------------


def host_names(count: int) -> list[str]:
    """`count` host names over the seven profile prefixes (`ppdb00001`, ...)."""
    return [f"{PREFIXES[k % len(PREFIXES)]}{k:05d}" for k in range(count)]


def _quantiles(rng: np.random.Generator, hosts: int, quantity: str) -> np.ndarray:
    """(hosts, horizon, 3) sorted quantiles with full float32 precision, like the model's."""
    level, spread = LEVELS[quantity]
    start = level * (1.0 + 0.3 * rng.standard_normal(hosts))
    slope = spread * 0.01 * rng.standard_normal(hosts)
    p50 = start[:, None] + slope[:, None] * np.arange(1, HORIZON_STEPS + 1)[None, :]
    noise = spread * rng.random((hosts, HORIZON_STEPS, 2))
    bands = np.stack([p50 - noise[..., 0], p50, p50 + noise[..., 1]], axis=-1)
    upper = 1.0 if UNITS[quantity] == "ratio" else np.inf
    return np.clip(bands.astype(np.float32).astype(np.float64), 0.0, upper)


def synthetic_snapshot(hosts: int, *, now: float, seed: int = 0) -> Snapshot:
    """A snapshot of `hosts` hosts forecast just now: five quantities, breaches, risk, drivers.

    Values have the precision of real model output (float32 cast to float64), so that number
    formatting costs what it costs in production; disk I/O is in bytes per second (Go writes
    those with an exponent).
    """
    rng = np.random.default_rng(seed)
    names = host_names(hosts)
    quantiles = {q: _quantiles(rng, hosts, q) for q in UNITS}
    scores = np.round(rng.random(hosts) * 100, 1)
    probabilities = rng.random((hosts, len(THRESHOLDS), 2)).astype(np.float32).astype(float)
    weights = np.sort(rng.random((hosts, len(DRIVERS))), axis=1)[:, ::-1]
    instances = {}
    for k, name in enumerate(names):
        forecasts = {
            q: QuantityForecast(q, unit, "tft", frozen_array(quantiles[q][k]), 0.5, 0.01)
            for q, unit in UNITS.items()
        }
        breaches = {
            q: Breach(
                q,
                levels[1],
                MappingProxyType({"30m": probabilities[k, j, 0], "8h": probabilities[k, j, 1]}),
                None if j % 2 else 3600.0 + STEP_SECONDS * (k % 12),
            )
            for j, (q, levels) in enumerate(THRESHOLDS.items())
        }
        instances[name] = InstanceSnapshot(
            instance=name,
            profile=PROFILES[name.rstrip("0123456789")],
            origin=now - STEP_SECONDS,
            made_at=now,
            last_seen=now - 20.5,
            warmup_steps=CONTEXT_STEPS,
            warmup_required=36,
            forecasts=MappingProxyType(forecasts),
            breaches=MappingProxyType(breaches),
            risk=Risk(float(scores[k]), "P3", 0.0, 0.0, 0.0, "no risk predicted"),
            drivers=tuple(zip(DRIVERS, weights[k].round(6).tolist(), strict=True)),
        )
    return Snapshot(
        generated_at=now,
        instances=MappingProxyType(instances),
        environment=Environment(0.12, 0.4, int((scores >= 70).sum()), hosts, "warning"),
        thresholds=MappingProxyType(
            {
                (q, level): v
                for q, (w, c) in THRESHOLDS.items()
                for level, v in (("warning", w), ("critical", c))
            }
        ),
        units=UNITS,
    )


def sample_count(body: bytes) -> int:
    """Samples (non-comment lines) in a text exposition."""
    return sum(1 for line in body.split(b"\n") if line and not line.startswith(b"#"))
