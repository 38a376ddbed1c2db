"""The local stack: simulated history backfilled into Prometheus, then live services on 127.0.0.1.

`Stack` is a context manager. Entering it generates the simulator's history, backfills its raw
samples with promtool (up to the moment of the start, so that live scrapes join them without a
gap), writes a work copy of the Prometheus config and its file_sd targets, and starts
Prometheus, optionally a local webhook receiver, Alertmanager and a real node_exporter, the
simulator (same seed, fleet and epoch as the history, so live counters continue the
backfilled ones) and optionally the forecaster with the repository's model. Leaving it stops
every process it started and removes the work directory unless asked to keep it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from stack import plan
from stack.config import StackConfig
from stack.launch import Binaries, Launch, timed
from stack.layout import (
    Layout,
    alertmanager_config_source,
    prepare_workdir,
    prometheus_config_source,
    write_alertmanager_config,
    write_prometheus_config,
)
from stack.lock import WorkdirLock
from stack.ports import pick_free_ports
from stack.process import StackError, Supervisor, find_binary

__all__ = ["Stack", "StackInfo", "preflight", "prepare_workdir"]

log = logging.getLogger(__name__)

# The services of one stack, each given a free loopback port whether it starts or not.
SERVICES = ("prometheus", "receiver", "alertmanager", "node_exporter", "simulator", "forecaster")


@dataclass(frozen=True)
class StackInfo:
    """What a running stack offers: URLs, files, the history window and its processes' PIDs.

    `window` is the span of the simulator's history files (rows end at the last 5-minute
    boundary); raw samples are backfilled up to `backfill_end`, just before the live scrapes.
    `alertmanager_config` is the file Alertmanager runs with (the repository's, or the work copy
    whose notifiers post to the receiver at `receiver_url`).
    """

    workdir: Path
    history_dir: Path
    prometheus_config: Path
    window: plan.HistoryWindow
    backfill_end: int
    prometheus_url: str
    simulator_url: str
    alertmanager_url: str | None
    node_exporter_url: str | None
    pids: Mapping[str, int]
    forecaster_url: str | None = None
    receiver_url: str | None = None
    alertmanager_config: Path | None = None
    cycle_interval_s: int | None = None


def preflight(config: StackConfig) -> Binaries:
    """Locate every program and config file the stack needs, before starting anything."""
    required = [
        prometheus_config_source(config.repo_root),
        config.repo_root / "prometheus" / "rules",
        config.repo_root / "simulator" / "__main__.py",
    ]
    if config.forecaster:
        required += [
            config.repo_root / "forecaster" / "__main__.py",
            config.repo_root / plan.MODEL_DIR / "current.json",
        ]
    if config.rules_dir is not None:
        required.append(config.rules_dir)
    alertmanager = node_exporter = None
    if config.alertmanager:
        required.append(config.alertmanager_config or alertmanager_config_source(config.repo_root))
        alertmanager = find_binary(
            ["prometheus-alertmanager", "alertmanager"], "prometheus-alertmanager"
        )
    if config.node_exporter:
        node_exporter = find_binary(
            ["prometheus-node-exporter", "node_exporter"], "prometheus-node-exporter"
        )
    for path in required:
        if not path.exists():
            raise StackError(f"{path} not found: the stack runs from a checkout of the repository")
    return Binaries(
        prometheus=find_binary(["prometheus"], "prometheus"),
        promtool=find_binary(["promtool"], "prometheus"),
        alertmanager=alertmanager,
        node_exporter=node_exporter,
    )


class Stack:
    """Context manager running the whole stack; entering returns a `StackInfo`."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self._resources = ExitStack()
        self._supervisor = Supervisor(config.stop_timeout_s)

    def __enter__(self) -> StackInfo:
        try:
            return self._start()
        except BaseException:
            self._resources.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        with timed("stop"):
            self._resources.close()

    def exited(self) -> dict[str, int]:
        """Services that have stopped on their own, with their exit status."""
        return {
            child.name: returncode
            for child in self._supervisor.children
            if (returncode := child.process.poll()) is not None
        }

    def _start(self) -> StackInfo:
        config = self.config
        binaries = preflight(config)
        layout = Layout(self._resources.enter_context(self._workdir()))
        launch = Launch(config, binaries, layout, self._resources.enter_context(self._supervisor))
        with timed("config"):
            interval_s = write_prometheus_config(
                config.repo_root, layout, config.scrape_interval_s, config.rules_dir
            )
        window = plan.history_window(time.time(), config.history_hours)
        with timed(f"history ({config.servers} servers, {config.history_hours} h)"):
            launch.simulate(window, interval_s)
        with timed("backfill"):
            launch.backfill(layout.history / "openmetrics.txt")
        return self._start_services(launch, window, plan.floor_to_step(window.now, int(interval_s)))

    def _start_services(
        self, launch: Launch, window: plan.HistoryWindow, backfill_end: int
    ) -> StackInfo:
        binaries, config = launch.binaries, self.config
        ports = dict(zip(SERVICES, pick_free_ports(len(SERVICES)), strict=True))
        urls: dict[str, str | None] = dict.fromkeys(SERVICES)
        urls["prometheus"] = prometheus_url = launch.start_prometheus(ports["prometheus"])
        alertmanager_config = None
        if binaries.alertmanager is not None:
            webhook_url = None
            if config.webhook_receiver:
                urls["receiver"] = launch.start_receiver(ports["receiver"])
                webhook_url = f"{urls['receiver']}{plan.RECEIVER_PATH}"
            if config.alertmanager_config is not None:
                alertmanager_config = config.alertmanager_config
            else:
                alertmanager_config = write_alertmanager_config(
                    config.repo_root, launch.layout, webhook_url
                )
            urls["alertmanager"] = launch.start_alertmanager(
                binaries.alertmanager, ports["alertmanager"], alertmanager_config
            )
        if binaries.node_exporter is not None:
            urls["node_exporter"] = launch.start_node_exporter(
                binaries.node_exporter, ports["node_exporter"]
            )
        simulator_url = launch.start_simulator(window, ports["simulator"])
        if config.forecaster:
            urls["forecaster"] = launch.start_forecaster(prometheus_url, ports["forecaster"])
        return StackInfo(
            workdir=launch.layout.workdir,
            history_dir=launch.layout.history,
            prometheus_config=launch.layout.prometheus_config,
            window=window,
            backfill_end=backfill_end,
            prometheus_url=prometheus_url,
            simulator_url=simulator_url,
            alertmanager_url=urls["alertmanager"],
            node_exporter_url=urls["node_exporter"],
            pids={child.name: child.pid for child in launch.supervisor.children},
            forecaster_url=urls["forecaster"],
            receiver_url=urls["receiver"],
            alertmanager_config=alertmanager_config,
            cycle_interval_s=config.cycle_interval_s if config.forecaster else None,
        )

    @contextmanager
    def _workdir(self) -> Iterator[Path]:
        """The work directory for this run: locked and wiped if given, else a temporary one."""
        with ExitStack() as resources:
            if self.config.workdir is None:
                path = Path(tempfile.mkdtemp(prefix="stack-"))
            else:
                path = self.config.workdir.resolve()
                resources.enter_context(WorkdirLock(path))
                prepare_workdir(path)
            try:
                yield path
            finally:
                if self.config.keep_workdir:
                    log.info("work directory kept: %s", path)
                else:
                    shutil.rmtree(path, ignore_errors=True)
