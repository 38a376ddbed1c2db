"""`python -m bench.cycle_child`: forecast cycles of the real `Service` against a Prometheus.

Run by `bench.cycle` in a fresh process per fleet size, so that its peak RSS is that of one
forecaster (torch, the model, the 24 h window, snapshots and renderings) and nothing else.
The first cycle fetches the whole 24 h window; each later one advances the forecaster's clock
by one step (the history extends into the future), so it fetches only the new step, as a
steady-state cycle does. Every stage is timed by wrapping the service's own functions:
fetch (PromQL + parsing + window merge), clean, forecast (model + heuristic), score (online
accuracy), build (risk, breach outlook, snapshot) and publish (render, gzip, WebSocket JSON).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import emit, proc_rss_mib, sample_count
from forecaster.grid import STEP_SECONDS as STEP


class ShiftedSource:
    """A source whose clock runs `offset` seconds ahead of Prometheus' own."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.offset = 0.0

    def now(self) -> float:
        return float(self.inner.now()) + self.offset

    def query_range(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.query_range(*args, **kwargs)


class Stages:
    """Accumulated wall time per stage name for the current cycle."""

    def __init__(self) -> None:
        self.current: dict[str, float] = defaultdict(float)

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.current[name] += time.perf_counter() - started

        return timed

    def take(self) -> dict[str, float]:
        taken, self.current = dict(self.current), defaultdict(float)
        return taken


def build(url: str, contract: Path, models: Path, threads: int, stages: Stages):
    """The service wired as `python -m forecaster` wires it, with its stages instrumented."""
    import exporter.hub
    import forecaster.service
    from exporter.hub import Hub
    from forecaster.config import Config
    from forecaster.service import Service
    from forecaster.serving import ModelHolder
    from forecaster.source import PrometheusSource

    config = Config.model_validate(
        {
            "prometheus": {"url": url, "timeout": 120},
            "contract_file": str(contract),
            "state": {"dir": None},
            "model": {"dir": str(models), "device": "cpu", "threads": threads},
        }
    )
    started = time.perf_counter()
    holder = ModelHolder(config.model, config.contract().version)
    model = holder.check()
    load_s = time.perf_counter() - started
    hub = Hub(stale_after=config.cycle.stale_after)
    forecaster.service.clean = stages.wrap("clean", forecaster.service.clean)
    forecaster.service.forecast = stages.wrap("forecast", forecaster.service.forecast)
    exporter.hub.prerender = stages.wrap("render", exporter.hub.prerender)
    exporter.hub.ws_message = stages.wrap("ws_message", exporter.hub.ws_message)
    published: list[Any] = []

    def publish(snapshot: Any, state: Any) -> None:
        published.append(hub.publish(snapshot, state, now=time.time()))

    source = ShiftedSource(PrometheusSource(config.prometheus))
    service = Service(config, source, holder, stages.wrap("publish", publish))
    service._fetch = stages.wrap("fetch", service._fetch)  # type: ignore[method-assign]
    service._score = stages.wrap("score", service._score)  # type: ignore[method-assign]
    service._build = stages.wrap("build", service._build)  # type: ignore[method-assign]
    info = {"model": model.version if model else None, "load_s": load_s}
    return service, source, published, hub, info


def main(argv: list[str] | None = None) -> int:
    """Run the cycles and print the measurements."""
    parser = argparse.ArgumentParser(prog="python -m bench.cycle_child")
    parser.add_argument("--url", required=True)
    parser.add_argument("--contract", type=Path, required=True)
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--cycles", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    stages = Stages()
    service, source, published, _hub, info = build(
        args.url, args.contract, args.models, args.threads, stages
    )
    rss_after_load = proc_rss_mib(os.getpid())["rss_mib"]
    cycles = []
    for k in range(args.cycles):
        source.offset = float(k * STEP)
        started = time.perf_counter()
        ok = service.run_cycle()
        wall = time.perf_counter() - started
        stage_times = stages.take()
        snapshot = service.snapshot
        body = published[-1].rendered.body if published else b""
        cycles.append(
            {
                "ok": ok,
                "wall_s": wall,
                "stages": stage_times,
                "instances": len(snapshot.instances),
                "tft": sum(1 for i in snapshot.instances.values() if i.method == "tft"),
                "samples": sample_count(body),
                "rss_mib": proc_rss_mib(os.getpid())["rss_mib"],
            }
        )
    emit(
        {
            **info,
            "rss_after_load_mib": rss_after_load,
            # VmHWM, not getrusage's ru_maxrss: Linux keeps ru_maxrss across execve, so a
            # child of a big parent would report the parent's peak.
            "peak_rss_mib": proc_rss_mib(os.getpid())["peak_mib"],
            "cycles": cycles,
            "threads": args.threads,
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
