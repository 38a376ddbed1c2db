"""History export: 5-minute parquet rows, incidents, server mapping, metadata and OpenMetrics.

The parquet holds what the contract's PromQL expressions return at each step, and the
OpenMetrics file holds the raw series at scrape spacing for backfilling with
`promtool tsdb create-blocks-from openmetrics`; both come from `signals.evaluate`, so they agree
with each other and with the live listener for the same seed and epoch.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from simulator import __version__, signals
from simulator import schedule as sch
from simulator.fleet import Fleet, server_id
from simulator.series import CHANNELS, NodeStatic, channel_rates, node_samples

log = logging.getLogger(__name__)

CONTRACT_VERSION = "1.0.0"
# Parquet columns after timestamp/instance/profile: name -> (unit, role in the data contract).
COLUMNS: dict[str, tuple[str, str]] = {
    "cpu_utilisation": ("ratio", "target"),
    "memory_utilisation": ("ratio", "target"),
    "filesystem_utilisation": ("ratio", "target"),
    "disk_io": ("bytes_per_second", "target"),
    "request_latency_p95": ("seconds", "target"),
    "network_receive": ("bytes_per_second", "covariate"),
    "network_transmit": ("bytes_per_second", "covariate"),
    "http_error_ratio": ("ratio", "covariate"),
    "gc_pause": ("seconds", "covariate"),
    "load1": ("tasks", "covariate"),
}
DAY_STEPS = sch.DAY // sch.STEP


@dataclass(frozen=True)
class HistorySpec:
    """What to export: steps (first, last], the counter epoch and the OpenMetrics window."""

    first_step: int  # exclusive: rows start at first_step + 1
    last_step: int
    epoch: float
    incident_rate: float = sch.DEFAULT_INCIDENT_RATE
    openmetrics_hours: float = 0.0
    scrape_interval: int = 60
    job: str = "node"
    # Raw samples may run past the last full step, up to this time (default: the last row):
    # the demo backfills right up to the moment the live scrapes take over.
    openmetrics_end: float | None = None

    @property
    def start(self) -> float:
        """Time of the first row's step start (the history covers (start, end])."""
        return float(self.first_step * sch.STEP)

    @property
    def end(self) -> float:
        """Time of the last row."""
        return float(self.last_step * sch.STEP)


def write_history(
    fleet: Fleet, spec: HistorySpec, out: Path, argv: list[str] | None = None
) -> dict:
    """Write every history artefact into `out`; returns the metadata written."""
    if spec.epoch > spec.start:
        raise ValueError("the epoch must not be later than the history start")
    out.mkdir(parents=True, exist_ok=True)
    rows, stats = _write_parquet(fleet, spec, out / "server_metrics.parquet")
    incidents = _write_incidents(fleet, spec, out / "incidents.parquet")
    _write_json(out / "server_mapping.json", server_mapping(fleet))
    metadata = {
        "contract_version": CONTRACT_VERSION,
        "generator": f"simulator {__version__}",
        "command": argv if argv is not None else sys.argv,
        "seed": fleet.seed,
        "servers": fleet.size,
        "profiles": {p: fleet.profiles.count(p) for p in dict.fromkeys(fleet.profiles)},
        "start": spec.start,
        "end": spec.end,
        "epoch": spec.epoch,
        "step_seconds": sch.STEP,
        "rows": rows,
        "incidents": incidents,
        "incident_rate_per_node_day": spec.incident_rate,
        "columns": {
            name: {"unit": unit, "role": role, **stats[name]}
            for name, (unit, role) in COLUMNS.items()
        },
    }
    if spec.openmetrics_hours > 0:
        metadata["openmetrics"] = write_openmetrics(fleet, spec, out / "openmetrics.txt")
    _write_json(out / "metrics_metadata.json", metadata)
    return metadata


def server_mapping(fleet: Fleet) -> dict:
    """Host key -> stable SHA-256 encoding and profile (the seed's server_mapping.json)."""
    return {
        "version": "1",
        "encoding": "sha256 of the instance name, first 16 hex digits",
        "servers": {
            n: {"id": server_id(n), "profile": p}
            for n, p in zip(fleet.nodes, fleet.profiles, strict=True)
        },
    }


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def _chunks(first: int, last: int, size: int = DAY_STEPS) -> Iterator[np.ndarray]:
    for lo in range(first + 1, last + 1, size):
        yield np.arange(lo, min(lo + size, last + 1))


def frame_of(fleet: Fleet, steps: np.ndarray, values: dict[str, np.ndarray]) -> pd.DataFrame:
    """The WIDE frame of `values` (as `simulator.signals.evaluate` returns them) at `steps`."""
    n, s = fleet.size, steps.size
    frame = {
        "timestamp": pd.to_datetime(np.tile(steps * sch.STEP, n), unit="s", utc=True),
        "instance": np.repeat(np.array(fleet.nodes, dtype=object), s),
        "profile": np.repeat(np.array(fleet.profiles, dtype=object), s),
    }
    frame.update({name: values[name].ravel() for name in COLUMNS})
    frame["state"] = np.array(sch.STATES, dtype=object)[values["state"].ravel()]
    return pd.DataFrame(frame).sort_values(["timestamp", "instance"], kind="stable")


def _write_parquet(fleet: Fleet, spec: HistorySpec, path: Path) -> tuple[int, dict]:
    tmp = path.with_suffix(".parquet.tmp")
    writer: pq.ParquetWriter | None = None
    rows = 0
    acc = {name: [0.0, np.inf, -np.inf] for name in COLUMNS}
    chunks = list(_chunks(spec.first_step, spec.last_step))
    try:
        for steps in tqdm(chunks, desc="history", unit="day", disable=None):
            values = signals.evaluate(fleet, steps, incident_rate=spec.incident_rate)
            table = pa.Table.from_pandas(frame_of(fleet, steps, values), preserve_index=False)
            writer = writer or pq.ParquetWriter(tmp, table.schema, compression="zstd")
            writer.write_table(table)
            rows += table.num_rows
            for name in COLUMNS:
                v = values[name]
                acc[name][0] += float(v.sum())
                acc[name][1] = min(acc[name][1], float(v.min()))
                acc[name][2] = max(acc[name][2], float(v.max()))
    finally:
        if writer is not None:
            writer.close()
    tmp.replace(path)
    stats = {n: {"mean": s / max(rows, 1), "min": lo, "max": hi} for n, (s, lo, hi) in acc.items()}
    return rows, stats


def _write_incidents(fleet: Fleet, spec: HistorySpec, path: Path) -> int:
    records = sch.incident_table(fleet, spec.first_step, spec.last_step, spec.incident_rate)
    frame = pd.DataFrame(
        records,
        columns=[
            "instance",
            "kind",
            "quantity",
            "threshold",
            "precursor_start",
            "breach",
            "end",
            "shape",
            "source",
        ],
    )
    for column in ("precursor_start", "breach", "end"):
        frame[column] = pd.to_datetime(frame[column].astype(float), unit="s", utc=True)
    frame.to_parquet(path, index=False)
    return len(frame)


# --- OpenMetrics -------------------------------------------------------------------------------


def _cumulative(fleet: Fleet, spec: HistorySpec, first: int, last: int):
    """Counters at the end of every step in [first, last] (integrated from the epoch), the
    rates of steps first..last and their gauges; arrays indexed (node, step, ...)."""
    epoch_step = int(spec.epoch // sch.STEP)
    base = np.zeros((fleet.size, len(CHANNELS)))
    for steps in _chunks(epoch_step, first - 1):
        base += (
            channel_rates(signals.evaluate(fleet, steps, incident_rate=spec.incident_rate)).sum(
                axis=1
            )
            * sch.STEP
        )
    steps = np.arange(first, last + 1)
    values = signals.evaluate(fleet, steps, incident_rate=spec.incident_rate)
    rates = channel_rates(values)
    ends = base[:, None, :] + np.cumsum(rates, axis=1) * sch.STEP
    return steps, ends, rates, values


def write_openmetrics(fleet: Fleet, spec: HistorySpec, path: Path) -> dict:
    """Raw series at scrape spacing over the last `openmetrics_hours` hours ending at `end`."""
    interval = spec.scrape_interval
    end = spec.end if spec.openmetrics_end is None else spec.openmetrics_end // interval * interval
    span = int(spec.openmetrics_hours * 3600) // interval * interval
    times = np.arange(end - span, end + 1, interval, dtype=np.float64)
    times = times[times > spec.epoch]  # counters start at the epoch: nothing to show before
    first = int(np.ceil(times[0] / sch.STEP))
    last = int(np.ceil(times[-1] / sch.STEP))
    steps, ends, rates, values = _cumulative(fleet, spec, first, last)
    index = np.ceil(times / sch.STEP).astype(np.int64) - first  # step holding each sample
    since = times - (steps[index] - 1) * sch.STEP  # seconds into that step
    gauge_names = ("load1", "memory_utilisation", "filesystem_utilisation", "state", "incident")
    workdir = Path(tempfile.mkdtemp(prefix=".openmetrics-", dir=path.parent))
    files: dict[str, TextIO] = {}
    samples = 0
    try:
        for n in tqdm(range(fleet.size), desc="openmetrics", unit="node", disable=None):
            static = NodeStatic.of(fleet, n, spec.epoch)
            counters = ends[n, index] - rates[n, index] * (sch.STEP - since[:, None])
            gauges = {g: values[g][n, index] for g in gauge_names}
            extra = f'instance="{fleet.nodes[n]}",job="{spec.job}",profile="{fleet.profiles[n]}"'
            for name, labels, series in node_samples(static, times, counters, gauges, "healthy"):
                handle = files.get(name) or files.setdefault(name, (workdir / name).open("w"))
                handle.write(_lines(name, labels, extra, times, series))
                samples += series.size
        _concatenate(files, path)
    finally:
        for handle in files.values():
            handle.close()
        shutil.rmtree(workdir, ignore_errors=True)
    log.info("wrote %d samples to %s", samples, path)
    return {
        "path": path.name,
        "start": float(times[0]),
        "end": float(times[-1]),
        "scrape_interval": spec.scrape_interval,
        "job": spec.job,
        "samples": samples,
    }


def _lines(name: str, labels: dict[str, str], extra: str, times, values) -> str:
    inner = ",".join([*(f'{k}="{v}"' for k, v in labels.items()), extra])
    prefix = f"{name}{{{inner}}} "
    return "".join(
        [f"{prefix}{v!r} {int(t)}\n" for t, v in zip(times.tolist(), values.tolist(), strict=True)]
    )


def _concatenate(files: dict[str, TextIO], path: Path) -> None:
    """One gauge family per sample name (types are not stored in TSDB blocks), then # EOF."""
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as out:
        for name, handle in files.items():
            handle.close()
            out.write(f"# TYPE {name} gauge\n")
            with open(handle.name) as part:
                shutil.copyfileobj(part, out)
        out.write("# EOF\n")
    tmp.replace(path)
