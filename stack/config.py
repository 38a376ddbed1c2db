"""Configuration of the local stack: a frozen, validated config built from flags and environment.

Precedence: defaults < environment (`STACK_*`) < flags. `load_config` is pure: it reads only
its arguments, so tests pass their own argv and environ.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
STEP_S = 300  # the data contract's grid: 5 minutes
DEFAULT_DEMO_WORKDIR = REPO_ROOT / ".stack" / "demo"
LOG_LEVELS = ("debug", "info", "warning", "error")

_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_DURATION_RE = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration string such as `15s`, `1m` or `1h30m`."""
    parts = _DURATION_RE.findall(text)
    if not text or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r} (examples: 15s, 1m, 1h30m)")
    return float(sum(int(number) * _DURATION_UNITS[unit] for number, unit in parts))


def format_duration(seconds: float) -> str:
    """Prometheus duration string for a whole number of seconds (`60` -> `1m`, `90` -> `90s`)."""
    whole = int(seconds)
    if whole != seconds or whole <= 0:
        raise ValueError(f"not a positive whole number of seconds: {seconds}")
    for unit, size in (("h", 3600), ("m", 60)):
        if whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


@dataclass(frozen=True)
class StackConfig:
    """What to start and how: one frozen bundle, validated on construction.

    `scrape_interval_s` None keeps the intervals of `prometheus/prometheus.yml`; a value replaces
    every scrape and rule-evaluation interval in the work copy (tests use it to go faster) and is
    also the sample spacing of the backfilled history. `workdir` None uses a fresh temporary
    directory.

    `forecaster` starts `python -m forecaster` with the repository's model registry, one cycle
    every `cycle_interval_s`, with its forecast guard unless `guard` is False (tests of the
    model's own path); `webhook_receiver` starts `python -m stack.receiver` and runs
    Alertmanager with a work copy of its config whose notifiers all post to that receiver.
    Both are off here and on in `python -m stack demo` (`--no-forecaster`, `--no-receiver`).

    Library-only overrides (tests): `alertmanager_config` runs Alertmanager with that file as it
    is, real receivers included (not with `webhook_receiver`); `rules_dir` is copied into the
    work dir instead of the repository's `prometheus/rules/`; `incident_rate` sets the
    simulator's scheduled incidents per node and day, for the history and the live simulator
    alike (None: the simulator's default; 0: only injected incidents happen).
    """

    servers: int = 20
    seed: int = 42
    history_hours: int = 26
    scrape_interval_s: int | None = None
    workdir: Path | None = None
    keep_workdir: bool = False
    alertmanager: bool = True
    node_exporter: bool = True
    forecaster: bool = False
    guard: bool = True
    cycle_interval_s: int = 60
    webhook_receiver: bool = False
    repo_root: Path = REPO_ROOT
    ready_timeout_s: float = 60.0
    forecaster_ready_timeout_s: float = 180.0
    stop_timeout_s: float = 10.0
    alertmanager_config: Path | None = None
    rules_dir: Path | None = None
    incident_rate: float | None = None

    def __post_init__(self) -> None:
        """Reject values that cannot give a working stack, naming the field."""
        if self.servers < 1:
            raise ValueError(f"servers: must be at least 1, got {self.servers}")
        if self.seed < 0:
            raise ValueError(f"seed: must be non-negative, got {self.seed}")
        if self.history_hours < 1:
            raise ValueError(f"history_hours: must be at least 1, got {self.history_hours}")
        if self.scrape_interval_s is not None:
            try:
                check_scrape_interval(self.scrape_interval_s)
            except ValueError as error:
                raise ValueError(f"scrape_interval_s: {error}") from error
        try:
            check_cycle_interval(self.cycle_interval_s)
        except ValueError as error:
            raise ValueError(f"cycle_interval_s: {error}") from error
        for name in ("ready_timeout_s", "forecaster_ready_timeout_s", "stop_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")
        if self.alertmanager_config is not None and self.webhook_receiver:
            raise ValueError(
                "alertmanager_config: runs as it is, so it cannot be combined with"
                " webhook_receiver (which rewrites the repository's receivers)"
            )
        if self.incident_rate is not None and not 0 <= self.incident_rate <= 4:
            raise ValueError(
                f"incident_rate: must be between 0 and 4 per node and day, got {self.incident_rate}"
            )


def check_scrape_interval(seconds: float) -> None:
    """Accept whole-second intervals that divide 5 minutes and give rate[5m] four samples."""
    if seconds != int(seconds) or seconds <= 0 or STEP_S % seconds or seconds > STEP_S / 4:
        raise ValueError(
            "must be a whole number of seconds that divides 5m and is at most 75s"
            f" (rate[5m] needs several samples), got {seconds}s"
        )


def check_cycle_interval(seconds: float) -> None:
    """Accept a whole number of seconds from 1 s to 1 h between forecast cycles."""
    if seconds != int(seconds) or not 1 <= seconds <= 3600:
        raise ValueError(f"must be a whole number of seconds from 1s to 1h, got {seconds}s")


@dataclass(frozen=True)
class CliConfig:
    """The command line of `python -m stack`: a command, its stack and the log level."""

    command: str
    stack: StackConfig
    log_level: str


@dataclass(frozen=True)
class _Option:
    """One setting: its flag, environment variable, StackConfig field and parser."""

    flag: str
    env: str
    key: str
    parse: Callable[[str], Any]
    help: str


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must be non-negative, got {value}")
    return value


def _interval(text: str) -> int:
    seconds = parse_duration(text)
    check_scrape_interval(seconds)
    return int(seconds)


def _cycle_interval(text: str) -> int:
    seconds = parse_duration(text)
    check_cycle_interval(seconds)
    return int(seconds)


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


_OPTIONS = (
    _Option("--servers", "STACK_SERVERS", "servers", _positive_int, "simulated nodes (20)"),
    _Option("--seed", "STACK_SEED", "seed", _non_negative_int, "simulator seed (42)"),
    _Option("--hours", "STACK_HOURS", "history_hours", _positive_int, "backfilled hours (26)"),
    _Option(
        "--scrape-interval",
        "STACK_SCRAPE_INTERVAL",
        "scrape_interval_s",
        _interval,
        "replace every scrape and evaluation interval, e.g. 15s (default: prometheus.yml's)",
    ),
    _Option("--workdir", "STACK_WORKDIR", "workdir", Path, "work directory (.stack/demo)"),
    _Option("--keep", "STACK_KEEP", "keep_workdir", _bool, "keep the work directory at exit"),
    _Option("--alertmanager", "STACK_ALERTMANAGER", "alertmanager", _bool, "start Alertmanager"),
    _Option(
        "--node-exporter",
        "STACK_NODE_EXPORTER",
        "node_exporter",
        _bool,
        "start a real node_exporter",
    ),
    _Option(
        "--forecaster",
        "STACK_FORECASTER",
        "forecaster",
        _bool,
        "start the forecaster service with the shipped model (default: on)",
    ),
    _Option(
        "--cycle-interval",
        "STACK_CYCLE_INTERVAL",
        "cycle_interval_s",
        _cycle_interval,
        "time between the forecaster's cycles, e.g. 10s (1m)",
    ),
    _Option(
        "--receiver",
        "STACK_RECEIVER",
        "webhook_receiver",
        _bool,
        "send Alertmanager's notifications to a local webhook receiver (default: on)",
    ),
)
_BOOLEAN_KEYS = frozenset(
    ("keep_workdir", "alertmanager", "node_exporter", "forecaster", "webhook_receiver")
)
# What `demo` sets unless a flag or variable says otherwise (StackConfig's own defaults keep a
# bare stack for tests).
DEMO_DEFAULTS: Mapping[str, Any] = {
    "workdir": DEFAULT_DEMO_WORKDIR,
    "forecaster": True,
    "webhook_receiver": True,
}


def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Wrap a parser so that argparse reports its message next to the flag's name."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from error

    convert.__name__ = parse.__name__.lstrip("_")
    return convert


def build_parser() -> argparse.ArgumentParser:
    """The `python -m stack` argument parser; every default is None so the environment shows."""
    parser = argparse.ArgumentParser(
        prog="python -m stack",
        description=(
            "Run Prometheus, Alertmanager, node_exporter, the simulator and the forecaster"
            " on 127.0.0.1."
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="start the stack and wait for Ctrl-C")
    for option in _OPTIONS:
        if option.key in _BOOLEAN_KEYS:
            action: Any = argparse.BooleanOptionalAction
            demo.add_argument(option.flag, dest=option.key, action=action, help=option.help)
        else:
            kind = _argparse_type(option.parse)
            metavar = option.flag.lstrip("-").upper().replace("-", "_")
            demo.add_argument(
                option.flag, dest=option.key, type=kind, metavar=metavar, help=option.help
            )
    demo.add_argument("--log.level", dest="log_level", choices=LOG_LEVELS, help="(info)")
    return parser


def load_config(argv: Sequence[str], environ: Mapping[str, str]) -> CliConfig:
    """Build the validated config from flags, then `STACK_*` variables, then defaults.

    Invalid values exit with status 2 and a message naming the flag or variable.
    """
    parser = build_parser()
    args = vars(parser.parse_args(list(argv)))
    values: dict[str, Any] = {}
    for option in _OPTIONS:
        if args[option.key] is not None:
            values[option.key] = args[option.key]
        elif option.env in environ:
            try:
                values[option.key] = option.parse(environ[option.env])
            except ValueError as error:
                parser.error(f"{option.env}: {error}")
    log_level = args["log_level"] or environ.get("STACK_LOG_LEVEL", "info").lower()
    if log_level not in LOG_LEVELS:
        parser.error(f"STACK_LOG_LEVEL: expected one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    if args["command"] == "demo":
        values = {**DEMO_DEFAULTS, **values}
    try:
        stack = StackConfig(**values)
    except ValueError as error:
        parser.error(str(error))
    return CliConfig(command=args["command"], stack=stack, log_level=log_level)
