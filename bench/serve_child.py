"""`python -m bench.serve_child`: the forecaster's HTTP surface under load, in its own process.

Two modes, both serving `exporter.app.build_app` through the same uvicorn server the service
uses (`forecaster.__main__._server`) on a loopback port:

- `metrics`: the real `Service` runs one cycle against a Prometheus (see `bench.fleet`), so
  the hub holds a real snapshot; with `--cycle-loop` it then keeps running cycles in a thread
  (each one step later: incremental fetches), as the service does while it is scraped.
- `ws`: synthetic snapshots of `--hosts` hosts are published `--rate` times a second, `--messages`
  times, once `--clients` WebSocket clients are connected; the WebSocket message carries
  `generated_at` = the time `Hub.publish` was called, from which clients compute latency.

On SIGTERM (or, in `ws` mode, after the last message) it stops and prints one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import emit, proc_rss_mib, sample_count
from forecaster.grid import STEP_SECONDS as STEP


def _metrics(args: argparse.Namespace, report: dict[str, Any]) -> tuple[Any, threading.Event]:
    from bench.cycle_child import Stages, build

    service, source, published, hub, info = build(
        args.url, args.contract, args.models, args.threads, Stages()
    )
    if not service.run_cycle():
        raise SystemExit("the first cycle failed")
    report.update(info, samples=sample_count(published[-1].rendered.body))
    report["body_bytes"] = len(published[-1].rendered.body)
    report["gzip_bytes"] = len(published[-1].rendered.gzipped)
    stop = threading.Event()
    walls: list[float] = []
    report["cycle_wall_s"] = walls

    def loop() -> None:
        k = 1
        while not stop.is_set():
            source.offset = float(min(k, args.max_steps) * STEP)
            started = time.perf_counter()
            service.run_cycle()
            walls.append(time.perf_counter() - started)
            k += 1

    if args.cycle_loop:
        threading.Thread(target=loop, name="cycle-loop", daemon=True).start()
    return hub, stop


def _ws_publisher(args, hub, app, server, report: dict[str, Any]) -> None:
    from bench.common import synthetic_snapshot
    from exporter.snapshot import ServiceState

    snapshots = [synthetic_snapshot(args.hosts, now=time.time(), seed=k) for k in range(4)]
    broadcaster = app.state.broadcaster
    deadline = time.monotonic() + args.connect_timeout
    while len(broadcaster.clients) < args.clients and time.monotonic() < deadline:
        time.sleep(0.05)
    report["connected"] = len(broadcaster.clients)
    state = ServiceState(source_up=True, model_loaded=True, model_version="bench")
    publish_s, clients_after, drops_after = [], [], []
    interval = 1.0 / args.rate
    next_at = time.monotonic()
    for k in range(args.messages):
        snapshot = dataclasses.replace(snapshots[k % len(snapshots)], generated_at=time.time())
        started = time.perf_counter()
        published = hub.publish(snapshot, state)
        publish_s.append(time.perf_counter() - started)
        report["message_bytes"] = len(published.message.encode())
        clients_after.append(len(broadcaster.clients))
        drops_after.append(broadcaster.dropped_total)
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    time.sleep(args.linger)
    report.update(
        publish_s=publish_s,
        clients_after=clients_after,
        drops_after=drops_after,
        dropped_total=broadcaster.dropped_total,
        clients_left=len(broadcaster.clients),
    )
    server.should_exit = True


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM (or the last WebSocket message), then print the measurements."""
    parser = argparse.ArgumentParser(prog="python -m bench.serve_child")
    parser.add_argument("--mode", choices=("metrics", "ws"), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--url")
    parser.add_argument("--contract", type=Path)
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cycle-loop", action="store_true")
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--rate", type=float, default=2.0)
    parser.add_argument("--messages", type=int, default=40)
    parser.add_argument("--clients", type=int, default=250)
    parser.add_argument("--connect-timeout", type=float, default=60.0)
    parser.add_argument("--linger", type=float, default=2.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from exporter.app import build_app
    from exporter.hub import Hub
    from forecaster.__main__ import _server

    report: dict[str, Any] = {"mode": args.mode}
    stop = threading.Event()
    if args.mode == "metrics":
        hub, stop = _metrics(args, report)
    else:
        hub = Hub()
    app = build_app(hub, ws_max_clients=max(250, args.clients))
    server = _server(app, "127.0.0.1", args.port)
    if args.mode == "ws":
        publisher = threading.Thread(
            target=_ws_publisher, args=(args, hub, app, server, report), daemon=True
        )
        publisher.start()
    server.run()
    stop.set()
    report.update(proc_rss_mib(os.getpid()))
    emit(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
