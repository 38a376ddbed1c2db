"""Command line: `python -m stack demo` runs the stack on 127.0.0.1 until Ctrl-C."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from stack.config import load_config
from stack.process import StackError
from stack.stack import Stack, StackInfo

log = logging.getLogger("stack")

EXAMPLE_QUERIES = (
    "instance:cpu_utilisation:rate5m",
    "topk(5, instance:memory_utilisation:ratio)",
    "instance:request_latency_p95:rate5m",
    '1 - avg by (instance) (rate(node_cpu_seconds_total{mode="idle"}[5m]))',
)


def _utc(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def demo_banner(info: StackInfo) -> str:
    """What the demo prints once everything runs: URLs, queries to try, scenario switches."""
    services = [
        ("Prometheus", info.prometheus_url),
        ("Alertmanager", info.alertmanager_url),
        ("node_exporter", info.node_exporter_url),
        ("Simulator", info.simulator_url),
    ]
    lines = ["", "Stack running; Ctrl-C stops it.", ""]
    lines += [f"  {name:<14}{url}" for name, url in services if url is not None]
    lines += [
        f"  {'Work dir':<14}{info.workdir}",
        f"  {'Processes':<14}" + ", ".join(f"{name} {pid}" for name, pid in info.pids.items()),
        f"  {'History':<14}{_utc(info.window.epoch)} to {_utc(info.window.end)}"
        f" ({info.window.hours:g} h) in {info.history_dir}",
        f"  {'Backfilled':<14}up to {_utc(info.backfill_end)}, live scrapes from there on",
        "",
        f"PromQL to try at {info.prometheus_url}/graph :",
        *(f"  {query}" for query in EXAMPLE_QUERIES),
        "",
        "Switch the simulated fleet's scenario (healthy, degrading, critical):",
        f"  python -m simulator scenario critical --url {info.simulator_url}",
        f"  curl -X POST -H 'Content-Type: application/json' -d '{{\"scenario\": \"critical\"}}'"
        f" {info.simulator_url}/scenario/set",
        f"  curl {info.simulator_url}/status",
        "",
        "Break one node now (memory_leak, filesystem_fill, cpu_saturation, latency_degradation):",
        "  python -m simulator incident --node ppdb001 --kind memory_leak --ramp 20m"
        f" --url {info.simulator_url}",
        f"  curl {info.simulator_url}/incidents",
        "",
    ]
    return "\n".join(lines)


def run_demo(stack: Stack) -> int:
    """Start the stack, print the banner, wait for Ctrl-C; 1 if a service dies first."""
    with stack as info:
        print(demo_banner(info), flush=True)
        while not (exited := stack.exited()):
            time.sleep(1.0)
        for name, returncode in exited.items():
            log.error(
                "%s exited on its own with status %d; see %s/logs", name, returncode, info.workdir
            )
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m stack`."""
    config = load_config(sys.argv[1:] if argv is None else argv, os.environ)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per readiness poll
    # Ctrl-C (SIGINT) stops the stack even when a shell started it in the background, which
    # would otherwise leave SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return run_demo(Stack(config.stack))
    except StackError as error:
        log.error("%s", error)
        return 1
    except KeyboardInterrupt:
        log.info("stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())
