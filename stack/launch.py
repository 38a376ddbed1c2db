"""The steps of one stack start: history, backfill, then each service as a supervised child.

`Launch` turns the plans of `stack.plan` into processes: it runs the one-shot jobs to
completion, starts each service in its own session with its log under the work directory,
waits until the service answers its readiness path and writes the file_sd targets through
which Prometheus finds it.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from stack import plan
from stack.config import StackConfig
from stack.layout import Layout, write_json
from stack.ports import address
from stack.process import StackError, Supervisor, wait_until_ready

log = logging.getLogger(__name__)

HISTORY_TIMEOUT_S = 900.0
BACKFILL_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Binaries:
    """Paths of the external programs the stack runs."""

    prometheus: str
    promtool: str
    alertmanager: str | None
    node_exporter: str | None


@contextmanager
def timed(step: str) -> Iterator[None]:
    """Log how long `step` took."""
    started = time.monotonic()
    yield
    log.info("%s: done in %.1f s", step, time.monotonic() - started)


@dataclass(frozen=True)
class Launch:
    """One start of the stack: its config, programs, directories and supervisor, and the steps."""

    config: StackConfig
    binaries: Binaries
    layout: Layout
    supervisor: Supervisor

    def simulate(self, window: plan.HistoryWindow, interval_s: float) -> None:
        """Run `simulator history` over `window` into the layout's history directory."""
        out = self.layout.history
        command = plan.history_command(sys.executable, self.config, window, out, interval_s)
        log_path = self.layout.log(out.name)
        self.supervisor.run(
            "history", command, log_path, timeout_s=HISTORY_TIMEOUT_S, cwd=self.config.repo_root
        )
        if not (out / "openmetrics.txt").is_file():
            raise StackError(
                f"simulator history wrote no {out / 'openmetrics.txt'}; see {log_path}"
            )

    def backfill(self, openmetrics: Path) -> None:
        """Turn an OpenMetrics file into TSDB blocks in Prometheus's storage."""
        command = plan.backfill_command(self.binaries.promtool, openmetrics, self.layout.tsdb)
        log_path = self.layout.log("promtool")
        self.supervisor.run("promtool", command, log_path, timeout_s=BACKFILL_TIMEOUT_S)

    def serve(
        self,
        name: str,
        command: list[str],
        port: int,
        *,
        ready_path: str = "/-/ready",
        cwd: Path | None = None,
        timeout_s: float | None = None,
    ) -> str:
        """Start a service and wait until `ready_path` answers 200; return its base URL."""
        url = f"http://{address(port)}"
        with timed(f"{name} ready at {url}"):
            child = self.supervisor.start(name, command, self.layout.log(name), cwd=cwd)
            wait_until_ready(child, url + ready_path, timeout_s or self.config.ready_timeout_s)
        return url

    def start_prometheus(self, port: int) -> str:
        """Prometheus over the backfilled TSDB, scraping itself."""
        layout = self.layout
        write_json(layout.targets / "prometheus.json", plan.file_sd_targets(address(port)))
        command = plan.prometheus_command(
            self.binaries.prometheus, layout.prometheus_config, layout.tsdb, address(port)
        )
        return self.serve("prometheus", command, port)

    def start_receiver(self, port: int) -> str:
        """The local webhook receiver that prints Alertmanager's notifications."""
        command = plan.receiver_command(sys.executable, address(port))
        return self.serve("receiver", command, port, cwd=self.config.repo_root)

    def start_alertmanager(self, binary: str, port: int, config_file: Path) -> str:
        """Alertmanager with `config_file`, then announced to Prometheus."""
        command = plan.alertmanager_command(
            binary, config_file, self.layout.alertmanager_data, address(port)
        )
        url = self.serve("alertmanager", command, port)
        write_json(self.layout.targets / "alertmanager.json", plan.file_sd_targets(address(port)))
        return url

    def start_node_exporter(self, binary: str, port: int) -> str:
        """A real node_exporter, scraped by the node job under a fixed instance name."""
        command = plan.node_exporter_command(binary, address(port))
        url = self.serve("node_exporter", command, port, ready_path="/")
        targets = plan.file_sd_targets(address(port), instance=plan.NODE_EXPORTER_INSTANCE)
        write_json(self.layout.targets / "node_exporter.json", targets)
        return url

    def start_simulator(self, window: plan.HistoryWindow, port: int) -> str:
        """The live simulator, continuing the history's counters; it writes its own file_sd."""
        command = plan.simulator_command(
            sys.executable,
            self.config,
            window,
            address(port),
            self.layout.targets / "simulator.json",
        )
        return self.serve("simulator", command, port, cwd=self.config.repo_root)

    def start_forecaster(self, prometheus_url: str, port: int) -> str:
        """The forecaster over `prometheus_url`, ready once its first cycle has published a
        snapshot; then scraped by the forecaster job."""
        command = plan.forecaster_command(
            sys.executable, self.config, prometheus_url, address(port), self.layout.forecaster_state
        )
        url = self.serve(
            "forecaster",
            command,
            port,
            cwd=self.config.repo_root,
            timeout_s=self.config.forecaster_ready_timeout_s,
        )
        write_json(self.layout.targets / "forecaster.json", plan.file_sd_targets(address(port)))
        return url
