"""`/metrics` under 16 concurrent scrapers: idle, while cycles run, while a training runs.

A Prometheus holds 182 simulated hosts (`bench.fleet`); `bench.serve_child` runs the real
service against it once, so the hub holds a real snapshot of about 20,000 samples, and serves
it through uvicorn on loopback. 16 keep-alive scrapers (`bench.httpload`, gzip accepted as
Prometheus does) then scrape as fast as they can for a bounded time, three times: with the
service idle between cycles; with forecast cycles running back to back in the same process;
and with `python -m training.train` (nice, 1 thread) training in a child process. Goal
(RELIABILITY target 3): p99 at most 25 ms and at least 500 scrapes/s. Scrapers and server
share the machine's cores.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from bench.common import Context, figure, load, log
from bench.fleet import prometheus_fleet
from bench.httpload import hammer
from stack.ports import pick_free_ports
from stack.process import Supervisor, wait_until_ready

NAME = "scrape"
TITLE = "`/metrics` under 16 concurrent scrapers"
HOSTS, QUICK_HOSTS = 182, 20
DURATION, QUICK_DURATION = 20.0, 3.0
CLIENTS = 16
TRAIN_START_TIMEOUT = 300.0


def _serve(ctx: Context, supervisor: Supervisor, fleet: Any, name: str, extra: list[str]):
    """Start a `metrics` serve child and wait until it answers `/-/ready`."""
    (port,) = pick_free_ports(1)
    argv = [
        *(ctx.python, "-m", "bench.serve_child", "--mode", "metrics", "--port", str(port)),
        *("--url", fleet.url, "--contract", str(fleet.contract_file)),
        *("--models", str(ctx.repo / "models"), "--threads", str(ctx.threads), *extra),
    ]
    child = supervisor.start(f"serve-{name}", argv, ctx.path("logs", f"serve-{name}.log"))
    wait_until_ready(child, f"http://127.0.0.1:{port}/-/ready", timeout_s=300)
    return child, port


def last_json(path: Path) -> dict[str, Any]:
    """The last JSON line a child wrote to its log (empty when there is none)."""
    lines = [line for line in path.read_text(errors="replace").splitlines() if line[:1] == "{"]
    return json.loads(lines[-1]) if lines else {}


def _training(ctx: Context, supervisor: Supervisor, duration: float):
    """A training run on a tiny history, started and waited for until it is fitting."""
    data = ctx.path("train-tiny", "x").parent
    supervisor.run(
        "tiny history",
        [
            *(ctx.python, "-m", "simulator", "history", "--servers", "4", "--days", "4"),
            *("--openmetrics-hours", "0", "--out", str(data / "history")),
        ],
        ctx.path("logs", "tiny-history.log"),
        timeout_s=300,
    )
    log_path = ctx.path("logs", "train-during-scrape.log")
    argv = [
        *("nice", "-n", "10", ctx.python, "-m", "training.train", "--data", str(data / "history")),
        *("--models.dir", str(data / "models"), "--threads", "1", "--max-epochs", "1000"),
        *("--max-minutes", str(round((duration + TRAIN_START_TIMEOUT) / 60 + 1, 1))),
    ]
    child = supervisor.start("training", argv, log_path, cwd=ctx.repo)
    # Lightning prints "GPU available: ..." when the Trainer is built, right before fitting.
    deadline = time.monotonic() + TRAIN_START_TIMEOUT
    while time.monotonic() < deadline and child.process.poll() is None:
        text = log_path.read_text(errors="replace")
        if "GPU available" in text or "Epoch" in text:
            time.sleep(3.0)  # the first batches: dataloader workers, first forward pass
            return child, True
        time.sleep(0.5)
    log.warning(
        "training did not reach fitting within %.0f s; log %s", TRAIN_START_TIMEOUT, log_path
    )
    return child, False


def _scenario(ctx, supervisor, fleet, name: str, duration: float) -> dict[str, Any]:
    extra = ["--cycle-loop"] if name == "cycle" else []
    child, port = _serve(ctx, supervisor, fleet, name, extra)
    trainer, fitting = _training(ctx, supervisor, duration) if name == "training" else (None, None)
    try:
        result = hammer(f"http://127.0.0.1:{port}/metrics", clients=CLIENTS, duration=duration)
        result["load"] = load()
        if trainer is not None:
            fitting = fitting and trainer.process.poll() is None  # still training at the end
    finally:
        if trainer is not None:
            supervisor.stop([trainer])
        supervisor.stop([child])  # SIGTERM: the server stops gracefully and prints its JSON
        server = last_json(child.log_path)
    return {
        "scenario": name,
        **result,
        "samples": server.get("samples"),
        "cycles_during": len(server.get("cycle_wall_s", [])),
        "cycle_wall_s": server.get("cycle_wall_s", []),
        "server_rss_mib": server.get("rss_mib"),
        "training_fitting": fitting,
    }


def run(ctx: Context) -> dict[str, Any]:
    """The three scenarios over one Prometheus; figures per scenario."""
    hosts = QUICK_HOSTS if ctx.quick else HOSTS
    duration = QUICK_DURATION if ctx.quick else DURATION
    scenarios = ("idle",) if ctx.quick else ("idle", "cycle", "training")
    with prometheus_fleet(ctx, hosts) as fleet, Supervisor() as supervisor:
        rows = [_scenario(ctx, supervisor, fleet, name, duration) for name in scenarios]
    figures = []
    label = {"idle": "idle", "cycle": "while cycles run", "training": "while a training runs"}
    for row in rows:
        what = f"{label[row['scenario']]}, {row['samples']:,} samples"
        figures += [
            figure(
                f"p99 latency, {what}",
                row["p99_ms"],
                "ms",
                goal_op="<=",
                goal_value=25.0,
                at_load=row["load"],
            ),
            figure(f"p50 latency, {what}", row["p50_ms"], "ms", at_load=row["load"]),
            figure(
                f"scrapes per second, {what}",
                row["rate_per_s"],
                "/s",
                goal_op=">=",
                goal_value=500.0,
                digits=0,
                at_load=row["load"],
            ),
        ]
    return {"figures": figures, "rows": rows, "hosts": hosts, "clients": CLIENTS}
