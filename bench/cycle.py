"""The full forecast cycle against a real Prometheus: fetch, clean, forecast, risk, render.

Per fleet size, `bench.fleet` backfills the simulator's history as 5-minute gauges into a fresh
Prometheus on loopback and `bench.cycle_child` runs the real `Service` against it in its own
process: one first cycle (the whole 24 h window) and then steady-state cycles that fetch only
the newest step. Goal (issue "Performance benchmarks"): 1,000 servers in at most 5 s and
1.5 GiB on 2 cores.
"""

from __future__ import annotations

import statistics
from typing import Any

from bench.common import Context, figure, load, run_json
from bench.fleet import prometheus_fleet

NAME = "cycle"
TITLE = "Full cycle against a real Prometheus"
SIZES = (20, 1_000)
QUICK_SIZES = (20,)
STAGES = ("fetch", "clean", "forecast", "score", "build", "publish")


def _steady(cycles: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of the steady-state cycles, stage by stage."""
    later = cycles[1:] or cycles
    stages = {s: statistics.median(c["stages"].get(s, 0.0) for c in later) for s in STAGES}
    return {"wall_s": statistics.median(c["wall_s"] for c in later), "stages": stages}


def measure(ctx: Context, servers: int, cycles: int) -> dict[str, Any]:
    """Backfill, serve and run `cycles` cycles for one fleet size."""
    with prometheus_fleet(ctx, servers) as fleet:
        child = run_json(
            [
                *(ctx.python, "-m", "bench.cycle_child", "--url", fleet.url),
                *("--contract", str(fleet.contract_file), "--models", str(ctx.repo / "models")),
                *("--cycles", str(cycles), "--threads", str(ctx.threads)),
            ],
            timeout=1800,
        )
    first = child["cycles"][0]
    return {
        "servers": servers,
        "gauge_samples": fleet.samples,
        "setup": fleet.timings,
        "model": child["model"],
        "model_load_s": child["load_s"],
        "first": {"wall_s": first["wall_s"], "stages": first["stages"]},
        "steady": _steady(child["cycles"]),
        "all_ok": all(c["ok"] for c in child["cycles"]),
        "instances": first["instances"],
        "tft": child["cycles"][-1]["tft"],
        "samples": child["cycles"][-1]["samples"],
        "peak_rss_mib": child["peak_rss_mib"],
        "rss_after_load_mib": child["rss_after_load_mib"],
        "threads": child["threads"],
        "cycles": child["cycles"],
        "load": load(),
    }


def run(ctx: Context) -> dict[str, Any]:
    """Each fleet size in turn; figures for the first and steady cycles and the peak RSS."""
    rows = [measure(ctx, n, 3 if ctx.quick else 4) for n in (QUICK_SIZES if ctx.quick else SIZES)]
    figures: list[dict[str, Any]] = []
    for row in rows:
        goal = row["servers"] >= 1_000
        n = f"{row['servers']:,} servers"
        first = len(figures)
        figures += [
            figure(
                f"{n}: steady-state cycle (1 new step), wall",
                row["steady"]["wall_s"],
                "s",
                goal_op="<=" if goal else None,
                goal_value=5.0 if goal else None,
            ),
            figure(
                f"{n}: first cycle (24 h refetch), wall",
                row["first"]["wall_s"],
                "s",
                goal_op="<=" if goal else None,
                goal_value=5.0 if goal else None,
            ),
            figure(
                f"{n}: peak RSS of the forecaster process",
                row["peak_rss_mib"] / 1024,
                "GiB",
                goal_op="<=" if goal else None,
                goal_value=1.5 if goal else None,
            ),
            figure(
                f"{n}: instances forecast by the TFT (of {row['instances']})",
                row["tft"],
                "",
                digits=0,
            ),
        ]
        for row_figure in figures[first:]:
            row_figure["load"] = row["load"]  # the load when this fleet size was measured
    notes = [
        f"torch threads: {ctx.threads} (`--threads`). The first cycle of {r['servers']:,} "
        f"servers spent {r['first']['stages']['fetch']:.1f} s of {r['first']['wall_s']:.1f} s "
        f"fetching the 24 h window ({r['servers'] * 289 * 10:,} samples as Prometheus JSON: "
        "Prometheus encoding it, `json.loads` and building the frames); a steady cycle "
        "fetches one step per quantity."
        for r in rows[-1:]
    ]
    return {"figures": figures, "rows": rows, "notes": notes}
