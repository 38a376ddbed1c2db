"""The forecaster's configuration: defaults < YAML (--config.file) < FORECASTER_* env < flags.

`load_config(argv, environ)` is pure apart from reading the files it is pointed at and returns
one frozen, validated `Config`. Every scalar setting has a flag named after its YAML path
(`prometheus.url` -> `--prometheus.url`, `web.listen_address` -> `--web.listen-address`) and an
environment variable (`FORECASTER_PROMETHEUS_URL`, `FORECASTER_WEB_LISTEN_ADDRESS`); lists and
maps (quantities, thresholds, early_warning, risk tiers) come from YAML only. Durations are
Prometheus strings (`90s`, `5m`, `1h30m`). Invalid input raises `ConfigError` naming the key;
`__main__` turns it into exit code 2.

A sample YAML file::

    prometheus:
      url: http://127.0.0.1:9090
      timeout: 30s
    web:
      listen_address: 127.0.0.1:9465
      token_file: /run/secrets/forecaster_token
    cycle:
      interval: 60s
      stale_after: 30m
    quantities: [cpu_utilisation, memory_utilisation, request_latency_p95]
    custom_quantities:
      nginx_active:
        expr: sum by (instance) (nginx_connections_active)
        unit: tasks
        domain: [0, null]
    thresholds:
      cpu_utilisation: {warning: 0.9, critical: 0.95}
    early_warning:          # laid over the defaults field by field
      memory_utilisation: {warning: 0.9, ramp_window: 6h, ramp_pace: 1h, ramp_detrend: false}
"""

from __future__ import annotations

import argparse
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from forecaster.contract import Contract, Quantity, load_contract
from forecaster.model.config import FORWARD_BATCH_SIZE
from webcommon.address import LISTEN_HELP, TOKEN_HELP, split_address
from webcommon.webconfig import WEB_CONFIG_HELP, client_ssl_context, load_web_config

ENV_PREFIX = "FORECASTER_"
M = TypeVar("M", bound=BaseModel)
_DURATION_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class ConfigError(ValueError):
    """An invalid setting; `key` is its dotted path (or flag)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


def parse_duration(value: object) -> float:
    """Seconds in a Prometheus duration (`90s`, `5m`, `1h30m`, `2d`); numbers are seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    match = _DURATION_RE.match(text)
    if not text or not match or not any(match.groups()):
        raise ValueError(f"invalid duration {value!r} (expected e.g. 90s, 5m, 1h30m)")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TLSClientSettings(_Section):
    """TLS to Prometheus, in the names of Prometheus's own `tls_config`. The certificate is
    always verified, host name and expiry included, unless `insecure_skip_verify`; a failure
    is a `tls` error, never a fallback to plain HTTP or to no verification."""

    ca_file: Path | None = Field(
        None, description="CA certificates that verify Prometheus's (instead of the system's)"
    )
    cert_file: Path | None = Field(None, description="client certificate sent to Prometheus")
    key_file: Path | None = Field(None, description="the key of the client certificate")
    server_name: str | None = Field(
        None, description="the name Prometheus's certificate must carry (default: the URL's host)"
    )
    insecure_skip_verify: bool = Field(
        False, description="do not verify Prometheus's certificate (tests only)"
    )

    @property
    def configured(self) -> bool:
        """Whether any setting differs from its default."""
        return any(getattr(self, name) not in (None, False) for name in type(self).model_fields)

    @model_validator(mode="after")
    def _files(self) -> TLSClientSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file are set together")
        try:
            client_ssl_context(self.ca_file, self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot load the CA, certificate or key: {exc}") from None
        return self


class PrometheusSettings(_Section):
    """Where history comes from."""

    url: str = Field("http://127.0.0.1:9090", description="base URL of the Prometheus queried")
    timeout: Duration = Field(30.0, description="timeout of each request to Prometheus")
    bearer_token_file: Path | None = Field(
        None, description="file holding the bearer token sent to Prometheus"
    )
    retries: int = Field(3, ge=0, le=10, description="retries of a failed request (0-10)")
    max_samples_per_request: int = Field(
        250_000, ge=1000, description="samples per range query at most; a longer one is split"
    )
    max_body_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="answers larger than this many bytes are refused"
    )
    tls_config: TLSClientSettings = TLSClientSettings()

    @model_validator(mode="after")
    def _url(self) -> PrometheusSettings:
        if not re.match(r"^https?://[^\s/]+", self.url):
            raise ValueError(f"url {self.url!r} is not an http(s) URL")
        if self.tls_config.configured and not self.url.startswith("https://"):
            raise ValueError(f"tls_config is set but url {self.url!r} is not https://")
        return self


class WebSettings(_Section):
    """The HTTP surface (`/metrics`, REST, WebSocket)."""

    listen_address: str = Field("127.0.0.1:9465", description=LISTEN_HELP)
    token_file: Path | None = Field(None, description=TOKEN_HELP)
    config_file: Path | None = Field(None, description=WEB_CONFIG_HELP)
    max_body_bytes: int = Field(
        1024 * 1024, ge=1024, description="request bodies larger than this many bytes are refused"
    )
    ws_max_clients: int = Field(250, ge=1, description="WebSocket clients served at most")
    ws_queue: int = Field(
        8, ge=1, description="messages queued per WebSocket client before it is dropped"
    )

    @model_validator(mode="after")
    def _address(self) -> WebSettings:
        split_address(self.listen_address)
        return self

    @field_validator("config_file")
    @classmethod
    def _web_config(cls, value: Path | None) -> Path | None:
        load_web_config(value)  # a WebConfigError (a ValueError) names the file and the key
        return value


class CycleSettings(_Section):
    """The forecast cycle."""

    interval: Duration = Field(60.0, description="time between the starts of two cycles")
    stale_after: Duration = Field(
        1800.0,
        description="forecasts older than this are withdrawn; instances silent as long are "
        "forgotten",
    )
    max_series: int = Field(
        10_000,
        ge=1,
        description="instances held at most (the excess is counted in "
        'forecaster_dropped_series_total{reason="max_series"})',
    )
    warmup_steps: int = Field(
        36, ge=1, description="5-minute steps of history before the TFT serves an instance"
    )


class GuardSettings(_Section):
    """Per-series weighting of the TFT and the baselines by their scores (`forecaster.guard`)."""

    enabled: bool = Field(
        True, description="false: the TFT wherever it serves, the heuristic elsewhere"
    )
    history: Duration = Field(
        3 * 86_400.0, description="history held per series (at least 2 seasons for the backtest)"
    )
    backfill_chunk: Duration = Field(
        12 * 3_600.0, description="older history fetched per cycle until it is held"
    )
    spacing: Duration = Field(
        3_600.0, description="time between recorded (and backtested) forecast origins"
    )
    memory: int = Field(
        96, ge=4, le=1_000, description="scored samples kept per series and horizon band"
    )
    min_samples: int = Field(
        12, ge=1, description="scored samples before a method is chosen or a band moved"
    )
    power: float = Field(
        2.0, ge=0.0, le=64.0, description="weight of the baselines among them: loss ** -power"
    )
    model_power: float = Field(
        8.0,
        ge=0.0,
        le=64.0,
        description="weight of the model against the best baseline: loss ** -model_power",
    )
    half_life: Annotated[float, BeforeValidator(parse_duration), Field(ge=0)] = Field(
        0.0, description="losses weighted 0.5 ** (age / half life); 0: equal weights"
    )
    per_slot: bool = Field(
        True, description="losses relative to each target's mean over methods (spike-robust)"
    )
    calibration_prior: float = Field(
        24.0, ge=0.0, description="a band is shifted by its scored bias x n / (n + prior)"
    )
    bootstrap_origins: int = Field(
        24, ge=0, le=1_000, description="past forecast origins backtested at start"
    )
    bootstrap_per_cycle: int = Field(
        4, ge=1, description="of those origins, backtested per cycle (bounds a cycle's cost)"
    )


class ModelSettings(_Section):
    """Which model serves, on what device."""

    dir: Path = Field(Path("models"), description="the model registry directory")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="torch device: auto, cpu or cuda"
    )
    threads: int = Field(0, ge=0, description="torch threads (0: torch's default)")
    batch_size: int = Field(FORWARD_BATCH_SIZE, ge=1, description="instances per forward pass")
    reload_interval: Duration = Field(
        30.0, description="how often the registry's current-model pointer is polled"
    )
    enabled: bool = Field(True, description="false: heuristic only, torch never imported")


class ShardSettings(_Section):
    """This replica's share of the fleet: instances whose hash % count == index."""

    index: int = Field(
        0, ge=0, description="this replica's share: the instances whose hash % count == index"
    )
    count: int = Field(1, ge=1, le=1024, description="replicas sharing the fleet (1-1024)")

    @model_validator(mode="after")
    def _index(self) -> ShardSettings:
        if self.index >= self.count:
            raise ValueError(f"index {self.index} must be below count {self.count}")
        return self


class StateSettings(_Section):
    """Where the last snapshot is persisted so a restart serves it at once."""

    dir: Path | None = Field(
        Path("forecaster-state"),
        description="where the last snapshot is persisted, so that a restart serves it at once",
    )


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="log level: debug, info, warning or error"
    )


class CustomQuantity(_Section):
    """A user-defined quantity: its own PromQL (one series per instance), unit and domain."""

    expr: str = Field(min_length=1, max_length=4000)
    unit: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    domain: tuple[float | None, float | None] = (None, None)
    role: Literal["target", "covariate"] = "target"


class Levels(_Section):
    """Threshold levels of one quantity in base units; `critical` is the breach threshold."""

    warning: float
    critical: float

    @model_validator(mode="after")
    def _order(self) -> Levels:
        if not self.warning <= self.critical:
            raise ValueError("warning must not exceed critical")
        return self


DEFAULT_THRESHOLDS: dict[str, dict[str, float]] = {
    "cpu_utilisation": {"warning": 0.90, "critical": 0.95},
    "memory_utilisation": {"warning": 0.90, "critical": 0.95},
    "filesystem_utilisation": {"warning": 0.85, "critical": 0.95},
    "request_latency_p95": {"warning": 0.2, "critical": 0.5},
}


class EarlyWarning(_Section):
    """How the `NodeForecast*` alerts of one quantity are decided (docs/RAMP-study.md).

    `warning` and `critical` are the breach probabilities above which the 8 h warning and the
    30 min critical alert fire; the forecaster exports them as
    `forecaster_alert_probability_threshold{quantity, severity}` and the rules compare with
    that series, so this is the one place they are set. With `ramp_window`, the ramp outlook
    (`forecaster.trend.ramp_takeover`) is fitted over that duration and serves where the last
    value is above `ramp_level` x the critical threshold and it sees a breach as more likely;
    with `ramp_pace`, also only where `predict_linear` over that last stretch alone reaches the
    critical threshold within the horizon (a ramp still rising, not a level that settled).
    `ramp_detrend` fits the deviation from the usual day (the median of the last 3 days at the
    same time) instead of the value itself: for quantities with a daily cycle. With
    `ramp_knee`, where the ramp has taken over, the fan served is that of the line with one bend
    (at least that long after the bend) where it warns too: the same alerts, a fan that starts
    at the current value and a time to breach that follows the ramp's recent pace.
    """

    warning: float = Field(0.5, gt=0.0, lt=1.0)
    critical: float = Field(0.5, gt=0.0, lt=1.0)
    ramp_window: Annotated[float, BeforeValidator(parse_duration), Field(ge=0)] = 0.0  # 0: off
    ramp_level: float = Field(0.0, ge=0.0, le=2.0)
    ramp_pace: Annotated[float, BeforeValidator(parse_duration), Field(ge=0)] = 0.0  # 0: off
    ramp_detrend: bool = True
    ramp_knee: Annotated[float, BeforeValidator(parse_duration), Field(ge=0)] = 0.0  # 0: off


# Chosen on the seed-4242 fleet (simulator with every precursor shape), never on an evaluation
# fleet: the ramp settings and memory's warning by `training.evaluation.ramp_study` (fit window,
# level, pace gate and detrending together; docs/RAMP-study.md), the other probabilities by
# `training.evaluation --tune-probability` on a replay of that fleet through the whole serving
# path (latency's pick there, 0.95, caught 8 % of its incidents: it keeps 0.5). Scored on
# fleets never used for either (docs/EVALUATION.md).
DEFAULT_EARLY_WARNING: dict[str, dict[str, Any]] = {
    "cpu_utilisation": {"warning": 0.1, "critical": 0.1},
    "memory_utilisation": {
        "warning": 0.9,
        "ramp_window": "6h",
        "ramp_level": 0.0,
        "ramp_pace": "1h",
        "ramp_detrend": False,
        "ramp_knee": "1h",
    },
    "filesystem_utilisation": {
        "warning": 0.2,
        "critical": 0.2,
        "ramp_window": "4h",
        "ramp_level": 0.0,
        "ramp_pace": "1h",
        "ramp_knee": "1h",
    },
}


def _early_warning(value: object) -> object:
    """The defaults with the configured entries laid over them, field by field."""
    if not isinstance(value, Mapping):
        return value
    merged = {q: dict(v) for q, v in DEFAULT_EARLY_WARNING.items()}
    for quantity, entry in value.items():
        if isinstance(entry, Mapping):
            merged[quantity] = {**merged.get(quantity, {}), **entry}
        else:
            merged[quantity] = entry
    return merged


class RiskComponent(_Section):
    """One part of the seed's risk score: max p90 over `window` steps against tiers."""

    quantity: str
    window_steps: int = Field(6, ge=1)
    tiers: tuple[tuple[float, float], ...]  # (threshold, points), highest threshold first


class RiskSettings(_Section):
    """The seed's risk score (004 section 4), units converted to the contract's."""

    cpu: RiskComponent = RiskComponent(
        quantity="cpu_utilisation", tiers=((0.98, 40), (0.95, 30), (0.90, 15))
    )
    memory: RiskComponent = RiskComponent(
        quantity="memory_utilisation", tiers=((0.98, 35), (0.95, 25), (0.90, 12))
    )
    latency: RiskComponent = RiskComponent(
        quantity="request_latency_p95", tiers=((0.5, 25), (0.2, 15), (0.1, 8))
    )
    p1: float = 70.0
    p2: float = 40.0


class Config(_Section):
    """Every setting of the forecaster service."""

    prometheus: PrometheusSettings = PrometheusSettings()
    web: WebSettings = WebSettings()
    cycle: CycleSettings = CycleSettings()
    model: ModelSettings = ModelSettings()
    guard: GuardSettings = GuardSettings()
    shard: ShardSettings = ShardSettings()
    state: StateSettings = StateSettings()
    log: LogSettings = LogSettings()
    contract_file: Path | None = Field(
        None,
        description="a data contract file instead of forecaster/contract_v1.yaml (default: the "
        "packaged v1)",
    )
    quantities: tuple[str, ...] | None = None  # forecast targets; None: the contract's
    covariates: tuple[str, ...] | None = None  # None: the contract's covariates
    custom_quantities: dict[str, CustomQuantity] = Field(default_factory=dict)
    thresholds: dict[str, Levels] = Field(
        default_factory=lambda: {k: Levels(**v) for k, v in DEFAULT_THRESHOLDS.items()}
    )
    risk: RiskSettings = RiskSettings()
    early_warning: Annotated[dict[str, EarlyWarning], BeforeValidator(_early_warning)] = Field(
        default_factory=lambda: {k: EarlyWarning(**v) for k, v in DEFAULT_EARLY_WARNING.items()}
    )
    # (argv, the FORECASTER_* environment) `load_config` read this from; None: built otherwise
    _origin: tuple[tuple[str, ...], dict[str, str]] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _names(self) -> Config:
        for name in self.custom_quantities:
            if not NAME_RE.match(name):
                raise ValueError(f"custom quantity name {name!r} must match {NAME_RE.pattern}")
        return self

    @model_validator(mode="before")
    @classmethod
    def _ramps_have_thresholds(cls, data: Any) -> Any:
        """A ramp the user configures needs that quantity's thresholds; a default ramp of a
        quantity without thresholds is left out (`forecaster.trend.ramp_rules`)."""
        if not isinstance(data, Mapping):
            return data
        entries, thresholds = data.get("early_warning"), data.get("thresholds")
        if not isinstance(entries, Mapping) or not isinstance(thresholds, Mapping):
            return data
        for name, entry in entries.items():
            if isinstance(entry, Mapping) and name not in thresholds:
                try:
                    window = parse_duration(entry.get("ramp_window", 0))
                except ValueError:
                    continue  # the field's own validation names it
                if window > 0:
                    raise ValueError(f"early_warning.{name}: a ramp needs thresholds.{name}")
        return data

    def reread(self) -> Config:
        """The configuration read again from the flags, environment and YAML file that
        `load_config` built this one from (a reload: the file may have changed); this one
        when it was built otherwise. Raises `ConfigError` like `load_config`."""
        if self._origin is None:
            return self
        return load_config(*self._origin)

    def alerting(self, quantity: str) -> EarlyWarning:
        """The early-warning settings of `quantity` (the defaults where none are set)."""
        return self.early_warning.get(quantity, EarlyWarning())

    def contract(self) -> Contract:
        """The data contract (packaged v1 unless `contract_file`) plus the custom quantities."""
        contract = load_contract(self.contract_file)
        extra = tuple(
            Quantity(name, q.role, q.unit, q.domain, record="", expr=q.expr)
            for name, q in self.custom_quantities.items()
        )
        return replace(contract, quantities=contract.quantities + extra)

    def targets(self, contract: Contract) -> tuple[Quantity, ...]:
        """The forecast quantities: the configured names, or every target of the contract."""
        if self.quantities is None:
            names = [q.name for q in contract.targets]  # custom targets are in the contract
        else:
            names = list(self.quantities)
        return tuple(_lookup(contract, n, "quantities") for n in names)

    def covariate_quantities(self, contract: Contract) -> tuple[Quantity, ...]:
        """The observed covariates fetched beside the targets."""
        if self.covariates is None:
            names = [q.name for q in contract.quantities if q.role == "covariate"]
        else:
            names = list(self.covariates)
        return tuple(_lookup(contract, n, "covariates") for n in names)


RESTART_SETTINGS = (
    "prometheus",
    "web",
    "cycle.stale_after",
    "model",
    "guard",
    "shard",
    "state",
    "contract_file",
    "quantities",
    "covariates",
    "custom_quantities",
)
"""Settings a reload keeps at their running value: the source, the listener, the hub, the model
holder, the guard and the history window (what it holds, for which shard and quantities) are
built from them at start. Every other setting (the cycle's interval, `max_series` and
`warmup_steps`, thresholds, early warning, risk, log level) applies from the next cycle."""


def reloadable(running: Config, loaded: Config) -> tuple[Config, tuple[str, ...]]:
    """(`loaded` with every `RESTART_SETTINGS` entry kept at its `running` value, the dotted
    names of those entries whose value differs: they need a restart)."""
    applied, kept = loaded, []
    for path in RESTART_SETTINGS:
        value = _get(running, path)
        if _get(loaded, path) != value:
            applied = _with(applied, path, value)
            kept.append(path)
    return applied, tuple(kept)


def _get(model: BaseModel, path: str) -> Any:
    for part in path.split("."):
        model = getattr(model, part)
    return model


def _with(model: M, path: str, value: Any) -> M:
    """A copy of `model` with the setting at dotted `path` replaced (already validated)."""
    head, _, rest = path.partition(".")
    if rest:
        value = _with(getattr(model, head), rest, value)
    return model.model_copy(update={head: value})


def _lookup(contract: Contract, name: str, key: str) -> Quantity:
    try:
        return contract[name]
    except KeyError:
        known = ", ".join(q.name for q in contract.quantities)
        raise ConfigError(key, f"unknown quantity {name!r} (known: {known})") from None


def _leaves(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted paths of the scalar settings (those that get a flag and an env variable)."""
    paths = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, _Section):
            if annotation not in (RiskSettings,):
                paths += _leaves(annotation, f"{prefix}{name}.")
        elif name not in (
            "quantities",
            "covariates",
            "custom_quantities",
            "thresholds",
            "early_warning",
        ):
            paths.append(f"{prefix}{name}")
    return paths


LEAVES = tuple(_leaves(Config))
FLAG_ALIASES = {"device": "model.device", "web.config.file": "web.config_file"}


def describe(root: type[BaseModel], path: str) -> str | None:
    """The `description` of the setting at dotted `path` of `root` (its flag's help), if any."""
    model = root
    *parents, leaf = path.split(".")
    for part in parents:
        model = model.model_fields[part].annotation  # type: ignore[assignment]
    return model.model_fields[leaf].description


def format_duration(seconds: float) -> str:
    """A Prometheus duration string of whole `seconds`, largest units first: `1m`, `1h30m`, `7d`;
    `parse_duration` reads it back."""
    if seconds == 0:
        return "0s"
    rest, parts = int(seconds), []
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts) if float(seconds) == int(seconds) else f"{seconds:g}s"


def _shown(value: Any, duration: bool) -> str:
    """A default as a flag would take it: `none`, `true`, `1m`, `2`, `models`."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if duration:
        return format_duration(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def flag_help(root: type[BaseModel], path: str) -> str:
    """The `--help` text of the setting at dotted `path` of `root`: its description and, unless
    the description names it, its default (`... (default: 1m)`), escaped for argparse."""
    model = root
    *parents, leaf = path.split(".")
    for part in parents:
        model = model.model_fields[part].annotation  # type: ignore[assignment]
    info = model.model_fields[leaf]
    text = info.description or ""
    if "(default:" not in text:
        duration = any(getattr(m, "func", None) is parse_duration for m in info.metadata)
        default = _shown(info.get_default(call_default_factory=True), duration)
        text = f"{text} (default: {default})".lstrip()
    return text.replace("%", "%%")


def _flag(path: str) -> str:
    return "--" + path.replace("_", "-")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m forecaster",
        description="Forecast node_exporter metrics from Prometheus and export the forecasts.",
    )
    parser.add_argument(
        "--config.file",
        dest="config_file",
        metavar="PATH",
        help=f"the YAML file of the settings, also {ENV_PREFIX}CONFIG_FILE (default: none)",
    )
    parser.add_argument(
        "--check-config", action="store_true", help="validate the configuration and exit"
    )
    aliases = {
        path: [f"--{alias}" for alias, p in FLAG_ALIASES.items() if p == path] for path in LEAVES
    }
    for path in LEAVES:
        parser.add_argument(
            _flag(path),
            *aliases[path],
            dest=path,
            metavar="VALUE",
            default=None,
            help=flag_help(Config, path),
        )
    return parser


def _set(tree: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(path, f"{part} must be a mapping")
        node = child
    node[leaf] = value


def layered(
    args: dict[str, Any], environ: Mapping[str, str], prefix: str, leaves: Sequence[str]
) -> dict[str, Any]:
    """The settings tree: the YAML file (`config_file` flag or `<prefix>CONFIG_FILE`), then
    `<prefix><PATH>` environment variables for the scalar `leaves`, then the flags in `args`
    (dotted path -> value, None when not given). Shared by every service of the project."""
    config_file = args.pop("config_file", None) or environ.get(f"{prefix}CONFIG_FILE")
    tree: dict[str, Any] = {}
    if config_file:
        try:
            loaded = yaml.safe_load(Path(config_file).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError("config.file", f"cannot read {config_file}: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError("config.file", "the top level must be a mapping")
        tree = loaded or {}
    for path in leaves:
        env = prefix + path.replace(".", "_").upper()
        if env in environ:
            _set(tree, path, environ[env])
    for path, value in args.items():
        if value is not None:
            _set(tree, path, value)
    return tree


def validated(model: type[M], tree: dict[str, Any]) -> M:
    """`model` built from `tree`; the first validation error becomes a `ConfigError`."""
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"]) or "config"
        raise ConfigError(key, error["msg"]) from None


def load_config(argv: Sequence[str], environ: Mapping[str, str]) -> Config:
    """The validated configuration from flags, environment and the YAML file they name."""
    args = vars(_parser().parse_args(list(argv)))
    args.pop("check_config")
    config = validated(Config, layered(args, environ, ENV_PREFIX, LEAVES))
    own = {key: value for key, value in environ.items() if key.startswith(ENV_PREFIX)}
    config._origin = (tuple(argv), own)  # what `Config.reread` reads again
    return config


def read_secret(path: Path | None) -> str | None:
    """The stripped content of a secret file, or None when no file is configured."""
    if path is None:
        return None
    try:
        secret = path.read_text().strip()
    except OSError as exc:
        raise ConfigError("token_file", f"cannot read {path}: {exc.strerror}") from None
    if not secret:
        raise ConfigError("token_file", f"{path} is empty")
    return secret
