"""Command line and configuration: defaults < YAML (--config.file) < SIMULATOR_* env < flags.

`load_config(argv, environ)` is pure apart from reading the YAML file it is pointed at; invalid
input ends with argparse's exit code 2 and a message naming the flag or key.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from simulator import schedule as sch
from webcommon.address import LISTEN_HELP, TOKEN_HELP, split_address
from webcommon.webconfig import WEB_CONFIG_HELP, WebConfigError, load_web_config

MAX_SERVERS = 5000
_DURATION_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus-style duration such as `20m`, `1h30m`, `90s` or `2d`."""
    match = _DURATION_RE.match(text.strip())
    if not text.strip() or not match or not any(match.groups()):
        raise ValueError(f"invalid duration {text!r} (expected e.g. 90s, 20m, 1h30m)")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def parse_time(text: str | float) -> float:
    """Unix seconds from a number or an RFC 3339 time (`2026-11-20T00:00:00Z`)."""
    if isinstance(text, int | float):
        return float(text)
    try:
        return float(text)
    except ValueError:
        pass
    moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@dataclass(frozen=True)
class Config:
    """Validated settings of one simulator command."""

    command: str
    servers: int = 20
    seed: int = 42
    epoch: float | None = None
    incident_rate: float = sch.DEFAULT_INCIDENT_RATE
    log_level: str = "info"
    listen_address: str = "127.0.0.1:9100"
    sd_file: Path | None = None
    sd_target_address: str | None = None
    token_file: Path | None = None
    web_config_file: Path | None = None
    scenario: str = "healthy"
    days: float = 30.0
    out: Path = Path("data/history")
    end: float | None = None
    openmetrics_hours: float | None = None
    scrape_interval: float = 60.0
    job: str = "node"
    url: str = "http://127.0.0.1:9100"
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_server_name: str | None = None
    node: str | None = None
    kind: str | None = None
    ramp: float = 1200.0


# flag -> (dest, type, help); the same names serve as YAML keys and, upper-cased with '.' and
# '-' as '_', as SIMULATOR_* environment variables.
Option = tuple[str, Callable[[Any], Any], str]
COMMON: dict[str, Option] = {
    "--servers": ("servers", int, "number of simulated nodes (seed mix of 7 profiles)"),
    "--seed": ("seed", int, "random seed: same seed, same fleet"),
    "--epoch": ("epoch", parse_time, "time the simulated counters start (unix s or RFC 3339)"),
    "--incident.rate": ("incident_rate", float, "scheduled incidents per node and day"),
    "--log.level": ("log_level", str, "debug, info, warning or error"),
}
CLIENT_TLS: dict[str, Option] = {  # how `scenario` and `incident` reach an https:// simulator
    "--tls.ca-file": ("tls_ca_file", Path, "CA certificates that verify the simulator's"),
    "--tls.cert-file": ("tls_cert_file", Path, "client certificate sent to the simulator"),
    "--tls.key-file": ("tls_key_file", Path, "the key of the client certificate"),
    "--tls.server-name": (
        "tls_server_name",
        str,
        "the name the simulator's certificate must carry (sent as SNI; default: the URL's host)",
    ),
}
COMMANDS: dict[str, dict[str, Option]] = {
    "serve": {
        "--web.listen-address": ("listen_address", str, LISTEN_HELP),
        "--sd.file": ("sd_file", Path, "write Prometheus file_sd targets here"),
        "--sd.target-address": ("sd_target_address", str, "address Prometheus should scrape"),
        "--web.token-file": ("token_file", Path, TOKEN_HELP),
        "--web.config.file": ("web_config_file", Path, WEB_CONFIG_HELP),
        "--scenario": ("scenario", str, "initial scenario"),
    },
    "history": {
        "--days": ("days", float, "days of history"),
        "--out": ("out", Path, "output directory"),
        "--end": ("end", parse_time, "time of the last row (default: now)"),
        "--openmetrics-hours": ("openmetrics_hours", float, "hours of raw OpenMetrics to write"),
        "--scrape-interval": ("scrape_interval", parse_duration, "OpenMetrics sample spacing"),
        "--job": ("job", str, "job label of the OpenMetrics series"),
    },
    "scenario": {
        "--url": ("url", str, "simulator base URL"),
        "--web.token-file": ("token_file", Path, "bearer token file"),
        **CLIENT_TLS,
    },
    "incident": {
        "--url": ("url", str, "simulator base URL"),
        "--web.token-file": ("token_file", Path, "bearer token file"),
        **CLIENT_TLS,
        "--node": ("node", str, "node to break"),
        "--kind": ("kind", str, ", ".join(sch.KIND_BY_NAME)),
        "--ramp": ("ramp", parse_duration, "precursor length before the breach"),
    },
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simulator", description=__doc__)
    parser.add_argument(
        "--config.file",
        dest="config_file",
        type=Path,
        default=None,
        help="YAML file with the same keys as the flags",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command, options in COMMANDS.items():
        p = sub.add_parser(command)
        if command == "scenario":
            p.add_argument("scenario", choices=sorted(sch.SCENARIOS))
        for flag, (dest, kind, text) in {**COMMON, **options}.items():
            p.add_argument(flag, dest=dest, type=kind, default=argparse.SUPPRESS, help=text)
    return parser


def load_config(argv: list[str], environ: dict[str, str]) -> Config:
    """Build the validated configuration of one invocation."""
    parser = _parser()
    flags = vars(parser.parse_args(argv))
    command = flags.pop("command")
    config_file = flags.pop("config_file")
    options = {**COMMON, **COMMANDS[command]}
    values: dict[str, Any] = {}
    for source, layer in (("key", _yaml(parser, config_file)), ("variable", _env(environ))):
        for name, raw in layer.items():
            flag = name if source == "key" else _flag_of_env(name, options)
            if flag not in options:
                if source == "key":
                    parser.error(f"unknown key {name!r} in --config.file")
                continue
            dest, kind, _ = options[flag]
            try:
                values[dest] = kind(raw) if raw is not None else None
            except (TypeError, ValueError) as exc:
                parser.error(f"invalid {source} {name!r}: {exc}")
    values.update(flags)
    names = {f.name for f in fields(Config)}
    config = Config(command=command, **{k: v for k, v in values.items() if k in names})
    problem = _validate(config)
    if problem:
        parser.error(problem)
    return config


def _yaml(parser: argparse.ArgumentParser, path: Path | None) -> dict[str, object]:
    """Keys of the YAML file as flags (`servers` -> `--servers`)."""
    if path is None:
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        parser.error(f"--config.file {path}: {exc}")
    if not isinstance(data, dict):
        parser.error(f"--config.file {path}: expected a mapping of flag names to values")
    return {f"--{k}": v for k, v in data.items()}


def _env(environ: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if k.startswith("SIMULATOR_")}


def _flag_of_env(name: str, options: dict[str, Option]) -> str | None:
    """The flag a SIMULATOR_* variable sets (SIMULATOR_SEED -> --seed), or None."""
    for flag in options:
        if "SIMULATOR_" + flag[2:].upper().replace(".", "_").replace("-", "_") == name:
            return flag
    return None


def _validate(c: Config) -> str | None:
    """The first problem with `c`, naming its flag, or None."""
    checks = [
        (1 <= c.servers <= MAX_SERVERS, f"--servers must be between 1 and {MAX_SERVERS}"),
        (0 <= c.incident_rate <= 4, "--incident.rate must be between 0 and 4 per node-day"),
        (c.log_level in ("debug", "info", "warning", "error"), "--log.level: unknown level"),
        (c.scenario in sch.SCENARIOS, f"--scenario must be one of {', '.join(sch.SCENARIOS)}"),
        (0 < c.days <= 400, "--days must be in (0, 400]"),
        (
            c.openmetrics_hours is None or 0 <= c.openmetrics_hours <= 24 * c.days,
            "--openmetrics-hours must be between 0 and 24 x --days",
        ),
        (
            c.scrape_interval >= 1 and math.isfinite(c.scrape_interval),
            "--scrape-interval must be at least 1s",
        ),
        (
            c.kind is None or c.kind in sch.KIND_BY_NAME,
            f"--kind must be one of {', '.join(sch.KIND_BY_NAME)}",
        ),
        (c.ramp > 0, "--ramp must be positive"),
        (c.command != "incident" or (c.node and c.kind), "incident needs --node and --kind"),
        (
            (c.tls_cert_file is None) == (c.tls_key_file is None),
            "--tls.cert-file and --tls.key-file go together",
        ),
    ]
    for ok, message in checks:
        if not ok:
            return message
    try:
        split_address(c.listen_address)
        if c.sd_target_address:
            split_address(c.sd_target_address)
    except ValueError as exc:
        return f"--web.listen-address / --sd.target-address: {exc}"
    try:
        load_web_config(c.web_config_file)
    except WebConfigError as exc:
        return f"--web.config.file: {exc}"
    return None
