"""The local stack: simulated history backfilled into Prometheus, then live services on 127.0.0.1.

`Stack` is a context manager. Entering it generates the simulator's history, backfills its raw
samples with promtool (up to the moment of the start, so that live scrapes join them without a
gap), writes a work copy of the Prometheus config and its file_sd targets, and starts
Prometheus, optionally Alertmanager and a real node_exporter, and the simulator (same seed,
fleet and epoch as the history, so live counters continue the backfilled ones). Leaving it
stops every process it started and removes the work directory unless asked to keep it.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from stack import plan
from stack.config import StackConfig
from stack.lock import WorkdirLock
from stack.ports import address, pick_free_ports
from stack.process import StackError, Supervisor, find_binary, wait_until_ready

log = logging.getLogger(__name__)

HISTORY_TIMEOUT_S = 900.0
BACKFILL_TIMEOUT_S = 600.0
WORKDIR_MARKER = ".stack-workdir"


@dataclass(frozen=True)
class Binaries:
    """Paths of the external programs the stack runs."""

    prometheus: str
    promtool: str
    alertmanager: str | None
    node_exporter: str | None


@dataclass(frozen=True)
class Layout:
    """Where everything lives inside the work directory."""

    workdir: Path

    @property
    def history(self) -> Path:
        """Output of `simulator history` (parquet, metadata, openmetrics.txt)."""
        return self.workdir / "history"

    @property
    def prometheus_config(self) -> Path:
        """The work copy of prometheus.yml; rules/ and targets/ sit next to it."""
        return self.workdir / "prometheus" / "prometheus.yml"

    @property
    def targets(self) -> Path:
        """file_sd directory read by the work copy of the Prometheus config."""
        return self.prometheus_config.parent / "targets"

    @property
    def tsdb(self) -> Path:
        """Prometheus storage, holding the backfilled blocks."""
        return self.workdir / "data" / "prometheus"

    @property
    def alertmanager_data(self) -> Path:
        """Alertmanager storage (silences, notification log)."""
        return self.workdir / "data" / "alertmanager"

    def log(self, name: str) -> Path:
        """The output file of the process `name`."""
        return self.workdir / "logs" / f"{name}.log"


@dataclass(frozen=True)
class StackInfo:
    """What a running stack offers: URLs, files, the history window and its processes' PIDs.

    `window` is the span of the simulator's history files (rows end at the last 5-minute
    boundary); raw samples are backfilled up to `backfill_end`, just before the live scrapes.
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


def preflight(config: StackConfig) -> Binaries:
    """Locate every program and config file the stack needs, before starting anything."""
    required = [
        prometheus_config_source(config.repo_root),
        config.repo_root / "prometheus" / "rules",
        config.repo_root / "simulator" / "__main__.py",
    ]
    alertmanager = node_exporter = None
    if config.alertmanager:
        required.append(alertmanager_config(config.repo_root))
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


def prometheus_config_source(repo_root: Path) -> Path:
    """The repository's Prometheus config, copied (and patched if asked) into the work dir."""
    return repo_root / "prometheus" / "prometheus.yml"


def alertmanager_config(repo_root: Path) -> Path:
    """The Alertmanager config the stack runs with (used in place, not copied)."""
    return repo_root / "alertmanager" / "alertmanager.yml"


def prepare_workdir(path: Path) -> None:
    """Make `path` an empty work directory, wiping it only if a stack made it."""
    if path.exists() and any(path.iterdir()) and not (path / WORKDIR_MARKER).exists():
        raise StackError(
            f"refusing to wipe {path}: it is not empty and was not made by the stack"
            f" (no {WORKDIR_MARKER} file); pass an empty or new --workdir"
        )
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    (path / WORKDIR_MARKER).write_text("made by `python -m stack`; wiped at every start\n")


def write_json(path: Path, content: Any) -> None:
    """Write JSON atomically, so Prometheus never reads a half-written file_sd file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_text(json.dumps(content, indent=2) + "\n")
    partial.replace(path)


def write_prometheus_config(repo_root: Path, layout: Layout, interval_s: int | None) -> float:
    """Copy prometheus.yml and rules/ into the work dir, patching intervals if asked.

    Returns the node job's scrape interval in the copy: the spacing the history must have.
    """
    source = prometheus_config_source(repo_root)
    document = yaml.safe_load(source.read_text())
    rules_target = layout.prometheus_config.parent / "rules"
    shutil.copytree(source.parent / "rules", rules_target)
    if interval_s is not None:
        document = plan.patch_prometheus_config(document, interval_s)
        for rule_file in sorted(rules_target.glob("*.yml")):
            patched = plan.patch_rule_groups(yaml.safe_load(rule_file.read_text()), interval_s)
            rule_file.write_text(yaml.safe_dump(patched, sort_keys=False))
    layout.prometheus_config.write_text(yaml.safe_dump(document, sort_keys=False))
    return plan.scrape_interval_of(document, plan.NODE_JOB)


@contextmanager
def timed(step: str) -> Iterator[None]:
    """Log how long `step` took."""
    started = time.monotonic()
    yield
    log.info("%s: done in %.1f s", step, time.monotonic() - started)


@dataclass(frozen=True)
class _Launch:
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
    ) -> str:
        """Start a service and wait until `ready_path` answers 200; return its base URL."""
        url = f"http://{address(port)}"
        with timed(f"{name} ready at {url}"):
            child = self.supervisor.start(name, command, self.layout.log(name), cwd=cwd)
            wait_until_ready(child, url + ready_path, self.config.ready_timeout_s)
        return url

    def start_prometheus(self, port: int) -> str:
        """Prometheus over the backfilled TSDB, scraping itself."""
        layout = self.layout
        write_json(layout.targets / "prometheus.json", plan.file_sd_targets(address(port)))
        command = plan.prometheus_command(
            self.binaries.prometheus, layout.prometheus_config, layout.tsdb, address(port)
        )
        return self.serve("prometheus", command, port)

    def start_alertmanager(self, binary: str, port: int) -> str:
        """Alertmanager with the repository's config, then announced to Prometheus."""
        config_file = alertmanager_config(self.config.repo_root)
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
        launch = _Launch(config, binaries, layout, self._resources.enter_context(self._supervisor))
        with timed("config"):
            interval_s = write_prometheus_config(config.repo_root, layout, config.scrape_interval_s)
        window = plan.history_window(time.time(), config.history_hours)
        with timed(f"history ({config.servers} servers, {config.history_hours} h)"):
            launch.simulate(window, interval_s)
        with timed("backfill"):
            launch.backfill(layout.history / "openmetrics.txt")
        return self._start_services(launch, window, plan.floor_to_step(window.now, int(interval_s)))

    def _start_services(
        self, launch: _Launch, window: plan.HistoryWindow, backfill_end: int
    ) -> StackInfo:
        binaries = launch.binaries
        prometheus_port, alertmanager_port, node_exporter_port, simulator_port = pick_free_ports(4)
        prometheus_url = launch.start_prometheus(prometheus_port)
        alertmanager_url = node_exporter_url = None
        if binaries.alertmanager is not None:
            alertmanager_url = launch.start_alertmanager(binaries.alertmanager, alertmanager_port)
        if binaries.node_exporter is not None:
            node_exporter_url = launch.start_node_exporter(
                binaries.node_exporter, node_exporter_port
            )
        simulator_url = launch.start_simulator(window, simulator_port)
        return StackInfo(
            workdir=launch.layout.workdir,
            history_dir=launch.layout.history,
            prometheus_config=launch.layout.prometheus_config,
            window=window,
            backfill_end=backfill_end,
            prometheus_url=prometheus_url,
            simulator_url=simulator_url,
            alertmanager_url=alertmanager_url,
            node_exporter_url=node_exporter_url,
            pids={child.name: child.pid for child in launch.supervisor.children},
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
