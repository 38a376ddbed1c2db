"""A real Prometheus on loopback holding the simulator's history as pre-aggregated gauges.

Backfilling raw node_exporter counters for 1,000 nodes is impractical (ARCHITECTURE.md,
"Pitfalls"), so the benchmarks store the contract quantities themselves: `simulator history`
writes one parquet row per host and 5-minute step, each quantity becomes a gauge
`bench_<quantity>{instance=...}` with one sample per step (OpenMetrics), `promtool tsdb
create-blocks-from openmetrics` turns that into TSDB blocks, and Prometheus serves them. A
contract file maps every quantity's `expr` to its gauge, so the forecaster's own PromQL
client, window, cleaner, model and risk code run unchanged.

The history ends `ahead_s` after now, so that a benchmark can advance the forecaster's clock
by whole steps (incremental cycles) without waiting for real time to pass.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from bench.common import Context, log
from forecaster.grid import STEP_SECONDS as STEP
from stack.plan import backfill_command, prometheus_command
from stack.ports import address, pick_free_ports
from stack.process import Supervisor, find_binary, wait_until_ready

GAUGE_PREFIX = "bench_"
QUANTITIES = (
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
)


@dataclass
class Fleet:
    """A started Prometheus with `servers` hosts of history ending at `end` (unix s)."""

    servers: int
    url: str
    end: int
    contract_file: Path
    history_dir: Path
    timings: dict[str, float] = field(default_factory=dict)
    samples: int = 0


def gauge_contract(path: Path) -> Path:
    """The v1 contract with each quantity's expression replaced by its benchmark gauge."""
    from forecaster.contract import load_contract

    contract = load_contract()
    quantities: dict[str, Any] = {}
    for q in contract.quantities:
        quantities[q.name] = {
            "role": q.role,
            "unit": q.unit,
            "domain": list(q.domain),
            "record": q.record,
            "expr": f"{GAUGE_PREFIX}{q.name}",
        }
    document = {"version": contract.version, "step": f"{contract.step_seconds // 60}m"}
    document["quantities"] = quantities
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def write_openmetrics(wide: pd.DataFrame, path: Path) -> int:
    """Every quantity of `wide` as a gauge family, one sample per row; returns the samples."""
    wide = wide.sort_values(["instance", "timestamp"], kind="stable")
    seconds = (wide["timestamp"].astype("int64") // 1_000_000_000).tolist()
    instances = wide["instance"].astype(str).tolist()
    samples = 0
    with path.open("w") as out:
        for quantity in QUANTITIES:
            name = f"{GAUGE_PREFIX}{quantity}"
            values = wide[quantity].to_numpy(np.float64)
            keep = np.isfinite(values).tolist()
            out.write(f"# TYPE {name} gauge\n")
            out.writelines(
                f'{name}{{instance="{i}"}} {v!r} {t}\n'
                for i, v, t, k in zip(instances, values.tolist(), seconds, keep, strict=True)
                if k
            )
            samples += sum(keep)
        out.write("# EOF\n")
    return samples


def _history(
    ctx: Context, supervisor: Supervisor, servers: int, *, days: float, end: int, out: Path
) -> None:
    argv = [
        *(ctx.python, "-m", "simulator", "history", "--servers", str(servers)),
        *("--days", repr(days), "--openmetrics-hours", "0", "--seed", "42"),
        *("--end", str(end), "--out", str(out), "--log.level", "warning"),
    ]
    supervisor.run(
        "simulator history", argv, ctx.path("logs", f"history-{servers}.log"), timeout_s=900
    )


@contextmanager
def prometheus_fleet(
    ctx: Context, servers: int, *, days: float = 1.2, ahead_s: int = 3 * 3600
) -> Iterator[Fleet]:
    """Generate, backfill and serve `servers` hosts of history; Prometheus stops on exit."""
    work = ctx.path(f"fleet-{servers}", "x").parent
    end = int(time.time()) // STEP * STEP + ahead_s
    timings: dict[str, float] = {}
    with Supervisor() as supervisor:
        started = time.perf_counter()
        _history(ctx, supervisor, servers, days=days, end=end, out=work / "history")
        timings["history_s"] = time.perf_counter() - started
        started = time.perf_counter()
        wide = pd.read_parquet(work / "history" / "server_metrics.parquet")
        samples = write_openmetrics(wide, work / "gauges.om")
        del wide
        timings["openmetrics_s"] = time.perf_counter() - started
        promtool = find_binary(["promtool"], "prometheus")
        started = time.perf_counter()
        supervisor.run(
            "promtool backfill",
            backfill_command(promtool, work / "gauges.om", work / "tsdb"),
            ctx.path("logs", f"backfill-{servers}.log"),
            timeout_s=1800,
        )
        timings["backfill_s"] = time.perf_counter() - started
        (work / "gauges.om").unlink()
        config = work / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 1m\n")
        (port,) = pick_free_ports(1)
        binary = find_binary(["prometheus"], "prometheus")
        argv = prometheus_command(binary, config, work / "tsdb", address(port))
        argv.append("--storage.tsdb.retention.time=30d")
        started = time.perf_counter()
        child = supervisor.start("prometheus", argv, ctx.path("logs", f"prometheus-{servers}.log"))
        url = f"http://{address(port)}"
        wait_until_ready(child, f"{url}/-/ready", timeout_s=120)
        timings["prometheus_start_s"] = time.perf_counter() - started
        log.info("prometheus with %d servers of history at %s", servers, url)
        yield Fleet(
            servers=servers,
            url=url,
            end=end,
            contract_file=gauge_contract(work / "contract.yaml"),
            history_dir=work / "history",
            timings=timings,
            samples=samples,
        )
