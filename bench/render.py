"""`/metrics` rendering: the hand-written renderer against prometheus_client's `generate_latest`.

Both render the same synthetic snapshot (model-precision values, five quantities per host) in
the same process, alternately, so their ratio is measured under the same load; each size keeps
the fastest of its runs. The bytes must be identical. Sizes: about 20,000 samples (182 hosts,
RELIABILITY target 3: render at most 0.5 s), 1,000 hosts and 20,000 hosts.
"""

from __future__ import annotations

import gzip
import time
from typing import Any

from bench.common import Context, figure, load, sample_count, synthetic_snapshot
from exporter.collector import GZIP_LEVEL, render
from exporter.render import render_text
from exporter.snapshot import ServiceState

NAME = "render"
TITLE = "`/metrics` rendering"
SIZES = (182, 1_000, 20_000)
QUICK_SIZES = (20, 200)
STALE_AFTER = 1800.0


def _state(now: float) -> ServiceState:
    return ServiceState(
        source_up=True,
        last_success=now,
        cycles_total=120,
        cycle_failures={"timeout": 1},
        last_cycle_duration=3.2,
        last_cycle_end=now,
        model_loaded=True,
        model_version="default-v3",
        clean_events={"missing": 12},
        started_at=now - 3600,
    )


def measure(hosts: int, *, runs: int) -> dict[str, Any]:
    """Both renderers on one snapshot of `hosts` hosts, `runs` alternating runs each."""
    now = time.time()
    snapshot, state = synthetic_snapshot(hosts, now=now), _state(now)
    fast_times, library_times, identical = [], [], True
    fast = b""
    for _ in range(runs):
        started = time.perf_counter()
        fast = render_text(snapshot, state, now=now, stale_after=STALE_AFTER)
        fast_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        reference = render(snapshot, state, now=now, stale_after=STALE_AFTER)
        library_times.append(time.perf_counter() - started)
        identical = identical and reference == fast
        del reference
    started = time.perf_counter()
    gzip.compress(fast, compresslevel=GZIP_LEVEL, mtime=0)
    gzip_s = time.perf_counter() - started
    return {
        "hosts": hosts,
        "samples": sample_count(fast),
        "bytes": len(fast),
        "fast_s": min(fast_times),
        "library_s": min(library_times),
        "ratio": min(library_times) / min(fast_times),
        "gzip_s": gzip_s,
        "identical": identical,
        "runs": runs,
        "load": load(),
    }


def run(ctx: Context) -> dict[str, Any]:
    """Render at each size; figures for the target size, the ratios and the byte identity."""
    sizes = QUICK_SIZES if ctx.quick else SIZES
    rows = [measure(hosts, runs=1 if hosts > 5_000 else 3) for hosts in sizes]
    target = rows[0]
    figures = [
        figure(
            f"render at {target['samples']:,} samples ({target['hosts']} hosts), fast renderer",
            target["fast_s"],
            "s",
            goal_op="<=",
            goal_value=0.5,
            at_load=target["load"],
        ),
        figure(
            f"render + gzip at {target['samples']:,} samples",
            target["fast_s"] + target["gzip_s"],
            "s",
        ),
    ]
    for row in rows:
        figures.append(
            figure(
                f"{row['hosts']:,} hosts ({row['samples']:,} samples): generate_latest "
                f"{row['library_s']:.2f} s / fast {row['fast_s']:.3f} s",
                row["ratio"],
                "x",
                digits=1,
                at_load=row["load"],
            )
        )
    figures.append(
        figure(
            "identical bytes (fast renderer == generate_latest) at every size",
            float(all(r["identical"] for r in rows)),
            "bool",
            goal_op=">=",
            goal_value=1.0,
        )
    )
    return {"figures": figures, "rows": rows}
