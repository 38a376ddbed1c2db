"""Pure planning of the stack: time window, patched configs, file_sd targets and command lines.

Nothing here starts a process or touches the network; `stack.stack` turns these values into
files and processes.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stack.config import STEP_S, StackConfig, format_duration, parse_duration

PROMETHEUS_DEFAULT_SCRAPE_INTERVAL_S = 60.0  # Prometheus's own default when the file sets none
NODE_JOB = "node"
NODE_EXPORTER_INSTANCE = "node-exporter-local"
MODEL_DIR = "models"  # the repository's model registry (models/current.json names the version)
RECEIVER_PATH = "/webhook"  # where the local receiver takes Alertmanager's notifications


@dataclass(frozen=True)
class HistoryWindow:
    """The simulator history's span in unix seconds: counters start at `epoch`, parquet rows end
    at `end` (the last 5-minute boundary), raw samples run on to `now`, where live scrapes start."""

    epoch: int
    end: int
    now: int

    @property
    def hours(self) -> float:
        """Length of the span in hours."""
        return (self.end - self.epoch) / 3600


def floor_to_step(t: float, step: int = STEP_S) -> int:
    """`t` rounded down to a multiple of `step` seconds."""
    return math.floor(t / step) * step


def history_window(now: float, hours: int) -> HistoryWindow:
    """Rows end at the last 5-minute boundary; the epoch lies `hours` whole hours before."""
    end = floor_to_step(now)
    return HistoryWindow(epoch=end - hours * 3600, end=end, now=math.floor(now))


def scrape_interval_of(prometheus_config: dict[str, Any], job: str) -> float:
    """Seconds between scrapes of `job`: its own interval, else the global one, else 1m."""
    for scrape_config in prometheus_config.get("scrape_configs") or []:
        if scrape_config.get("job_name") == job and "scrape_interval" in scrape_config:
            return parse_duration(scrape_config["scrape_interval"])
    global_interval = (prometheus_config.get("global") or {}).get("scrape_interval")
    if global_interval is None:
        return PROMETHEUS_DEFAULT_SCRAPE_INTERVAL_S
    return parse_duration(global_interval)


def _clamped_timeout(section: dict[str, Any], interval_s: int) -> None:
    """Lower an explicit `scrape_timeout` to the interval (Prometheus refuses a longer one)."""
    timeout = section.get("scrape_timeout")
    if timeout is not None and parse_duration(timeout) > interval_s:
        section["scrape_timeout"] = format_duration(interval_s)


def patch_prometheus_config(prometheus_config: dict[str, Any], interval_s: int) -> dict[str, Any]:
    """A copy whose global and per-job scrape intervals and evaluation interval are `interval_s`."""
    patched = copy.deepcopy(prometheus_config)
    interval = format_duration(interval_s)
    global_section = patched.setdefault("global", {})
    global_section["scrape_interval"] = interval
    global_section["evaluation_interval"] = interval
    _clamped_timeout(global_section, interval_s)
    for scrape_config in patched.get("scrape_configs") or []:
        if "scrape_interval" in scrape_config:
            scrape_config["scrape_interval"] = interval
        _clamped_timeout(scrape_config, interval_s)
    return patched


def patch_rule_groups(rule_file: dict[str, Any], interval_s: int) -> dict[str, Any]:
    """A copy of a rule file whose groups that set their own `interval` use `interval_s`."""
    patched = copy.deepcopy(rule_file)
    for group in patched.get("groups") or []:
        if "interval" in group:
            group["interval"] = format_duration(interval_s)
    return patched


def file_sd_targets(address: str, **labels: str) -> list[dict[str, Any]]:
    """file_sd content with one target group: `address` and its `labels`."""
    group: dict[str, Any] = {"targets": [address]}
    if labels:
        group["labels"] = dict(labels)
    return [group]


def history_command(
    python: str, config: StackConfig, window: HistoryWindow, out: Path, interval_s: float
) -> list[str]:
    """`simulator history` over `window`: parquet rows up to its last 5-minute boundary, raw
    samples at the scrape spacing up to `now`, counters integrated from its epoch."""
    span_s = window.end - window.epoch
    return [
        *(python, "-m", "simulator", "history"),
        *("--days", repr(span_s / 86400), "--openmetrics-hours", repr(span_s / 3600)),
        *("--servers", str(config.servers), "--seed", str(config.seed)),
        *("--end", str(window.now), "--epoch", str(window.epoch)),
        *("--scrape-interval", format_duration(interval_s), "--job", NODE_JOB),
        *("--out", str(out)),
        *_incident_rate_flags(config),
    ]


def backfill_command(promtool: str, openmetrics: Path, tsdb: Path) -> list[str]:
    """`promtool tsdb create-blocks-from openmetrics` with day-long blocks (fewer input passes)."""
    return [
        *(promtool, "tsdb", "create-blocks-from", "openmetrics"),
        *("--max-block-duration=24h", str(openmetrics), str(tsdb)),
    ]


def prometheus_command(binary: str, config_file: Path, tsdb: Path, address: str) -> list[str]:
    """Prometheus on `address` with the lifecycle API (reload and quit over HTTP)."""
    return [
        *(binary, f"--config.file={config_file}", f"--storage.tsdb.path={tsdb}"),
        *(f"--web.listen-address={address}", "--web.enable-lifecycle"),
    ]


def alertmanager_command(binary: str, config_file: Path, storage: Path, address: str) -> list[str]:
    """A single Alertmanager on `address`, clustering disabled."""
    return [
        *(binary, f"--config.file={config_file}", f"--storage.path={storage}"),
        *(f"--web.listen-address={address}", "--cluster.listen-address="),
    ]


# Collectors to switch off in the demo's node_exporter. Debian's build enables the systemd
# collector by default; without systemd's bus (containers, machines not booted by systemd) it
# logs "collector failed ... couldn't get dbus connection" on every scrape. The demo's metrics
# do not come from it.
NODE_EXPORTER_DISABLED_COLLECTORS = ("systemd",)


def node_exporter_command(binary: str, address: str) -> list[str]:
    """A real node_exporter on `address`, without the collectors that need systemd."""
    disabled = [f"--no-collector.{name}" for name in NODE_EXPORTER_DISABLED_COLLECTORS]
    return [binary, f"--web.listen-address={address}", *disabled]


def simulator_command(
    python: str, config: StackConfig, window: HistoryWindow, address: str, sd_file: Path
) -> list[str]:
    """`simulator serve` with the history's seed, fleet and epoch, writing its own file_sd."""
    return [
        *(python, "-m", "simulator", "serve", "--web.listen-address", address),
        *("--servers", str(config.servers), "--seed", str(config.seed)),
        *("--epoch", str(window.epoch), "--sd.file", str(sd_file)),
        *("--sd.target-address", address),
        *_incident_rate_flags(config),
    ]


def _incident_rate_flags(config: StackConfig) -> list[str]:
    """`--incident.rate` when the config sets one (history and live simulator must agree)."""
    if config.incident_rate is None:
        return []
    return ["--incident.rate", repr(float(config.incident_rate))]


def forecaster_command(
    python: str, config: StackConfig, prometheus_url: str, address: str, state_dir: Path
) -> list[str]:
    """`python -m forecaster` on `address`, reading `prometheus_url`, with the repository's
    model registry on the CPU and its state (the persisted snapshot) in `state_dir`."""
    return [
        *(python, "-m", "forecaster", "--prometheus.url", prometheus_url),
        *("--web.listen-address", address),
        *("--model.dir", str(config.repo_root / MODEL_DIR), "--model.device", "cpu"),
        *("--state.dir", str(state_dir)),
        *("--cycle.interval", format_duration(config.cycle_interval_s)),
        *(() if config.guard else ("--guard.enabled", "false")),
    ]


def receiver_command(python: str, address: str) -> list[str]:
    """The local webhook receiver (`python -m stack.receiver`) on `address`."""
    return [python, "-m", "stack.receiver", "--listen", address]


def forecaster_urls(base_url: str) -> dict[str, str]:
    """The forecaster's endpoints worth showing, by role: exposition, REST, status, WebSocket."""
    return {
        "metrics": f"{base_url}/metrics",
        "predictions": f"{base_url}/predictions/current",
        "predict": f"{base_url}/predict/{{instance}}",
        "alerts": f"{base_url}/alerts/active",
        "status": f"{base_url}/status",
        "websocket": "ws" + base_url.removeprefix("http") + "/ws",
    }


def _notifier_keys(receiver: dict[str, Any]) -> list[str]:
    """The notification integrations of one receiver (`slack_configs`, `webhook_configs`, ...)."""
    return [key for key in receiver if key.endswith("_configs")]


def local_webhook_alertmanager_config(
    document: dict[str, Any], webhook_url: str, config_dir: Path
) -> dict[str, Any] | None:
    """A copy of an Alertmanager config whose receivers post only to `webhook_url`.

    Routes, inhibit rules and null receivers stay as they are; every receiver that notifies
    anything (Slack, PagerDuty, a webhook...) gets one `webhook_configs` entry instead, with
    resolved notifications. Relative `templates` are made absolute against `config_dir`, the
    directory of the original, so that the copy works from anywhere. None when no receiver
    notifies anything: the original can then run as it is.
    """
    if not any(_notifier_keys(receiver) for receiver in document.get("receivers") or []):
        return None
    patched = copy.deepcopy(document)
    for receiver in patched["receivers"]:
        keys = _notifier_keys(receiver)
        if keys:
            for key in keys:
                del receiver[key]
            receiver["webhook_configs"] = [{"url": webhook_url, "send_resolved": True}]
    if patched.get("templates"):
        patched["templates"] = [str(config_dir / pattern) for pattern in patched["templates"]]
    return patched
