"""The retrainer's configuration: defaults < YAML (--config.file) < RETRAIN_* env < flags.

`load_config(argv, environ)` is pure apart from reading the YAML file it is pointed at and
returns one frozen, validated `RetrainConfig`. Every setting has a flag named after its YAML
path (`gate.coverage_min` -> `--gate.coverage-min`) and an environment variable
(`RETRAIN_GATE_COVERAGE_MIN`). Durations are Prometheus strings (`7d`, `12h`). Invalid input
raises `ConfigError` naming the key; `python -m training.retrain` exits 2 with it.

A sample YAML file::

    prometheus: {url: "http://127.0.0.1:9090", timeout: 30s}
    models: {dir: models}
    interval: 7d          # how often a run starts (also POST /retrain)
    first_run_after: 7d   # with no run recorded, the first starts once this much history exists
    history: 14d          # history pulled per run
    holdout: 1d           # latest window held out for the gate (origins every gate.origin_every)
    web: {listen_address: "127.0.0.1:9466", token_file: /run/secrets/retrain_token}
    max_minutes: 18
    threads: 1
    nice: 10
    train: {hidden_size: 16, batches_per_epoch: 50, seed: 42}
    gate: {tolerance: 0.05, coverage_min: 0.70, coverage_max: 0.90, origin_every: 2h}
    shadow: {cycles: 0, interval: 1h}   # K > 0: scored K cycles on newer history first
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
)

from forecaster.config import (
    ConfigError,
    PrometheusSettings,
    flag_help,
    layered,
    parse_duration,
    validated,
)
from forecaster.contract import load_contract
from forecaster.grid import STEP_SECONDS
from forecaster.model.config import TFTConfig
from training.baselines import BASELINES
from training.gates import GateSpec, Window
from webcommon.address import LISTEN_HELP, TOKEN_HELP, split_address
from webcommon.webconfig import WEB_CONFIG_HELP, load_web_config

ENV_PREFIX = "RETRAIN_"
Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _csv(value: object) -> object:
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return value


class WebSettings(_Section):
    """The retrainer's own listener: /metrics, /status, POST /retrain, POST /rollback."""

    listen_address: str = Field("127.0.0.1:9466", description=LISTEN_HELP)
    token_file: Path | None = Field(None, description=TOKEN_HELP)
    config_file: Path | None = Field(None, description=WEB_CONFIG_HELP)

    @field_validator("config_file")
    @classmethod
    def _web_config(cls, value: Path | None) -> Path | None:
        load_web_config(value)  # a WebConfigError (a ValueError) names the file and the key
        return value

    @field_validator("listen_address")
    @classmethod
    def _address(cls, value: str) -> str:
        split_address(value)
        return value


class ModelsSettings(_Section):
    """The registry the candidates are written to."""

    dir: Path = Field(Path("models"), description="the registry the candidates are written to")


class TrainSettings(_Section):
    """Passed to the `python -m training.train` child."""

    hidden_size: int = Field(16, ge=1, le=1024, description="hidden size of the trained TFT")
    batch_size: int = Field(64, ge=1, le=65536, description="training windows per batch")
    batches_per_epoch: int = Field(50, ge=1, description="training batches per epoch")
    max_epochs: int = Field(100, ge=1, description="training epochs at most")
    seed: int = Field(42, description="random seed of the training run")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="torch device of the training child: auto, cpu or cuda"
    )
    normalisation: Literal["mean", "last"] = Field(
        "mean",
        description="centre each window on its mean (the library's default) or on its last value",
    )
    excursion_weight: float = Field(
        0.0, ge=0, description="extra loss weight on steps far from their recent normal (0: none)"
    )
    absent_fraction: float = Field(
        0.0,
        ge=0,
        le=1,
        description="add copies of this share of series with some quantities absent (0: none)",
    )
    targets: Annotated[tuple[str, ...] | None, BeforeValidator(_csv)] = Field(
        None, description="comma-separated quantities to train (default: the contract's targets)"
    )

    @field_validator("targets")
    @classmethod
    def _targets(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return value
        known = {q.name for q in load_contract().quantities}
        unknown = [t for t in value if t not in known]
        if not value or unknown:
            raise ValueError(f"not in the data contract: {unknown or 'empty list'}")
        return value


class GateSettings(_Section):
    """Promotion thresholds (training.gates)."""

    tolerance: float = Field(
        0.05,
        ge=0,
        le=10,
        description="the candidate's NQL at most (1 + this) x the current model's",
    )
    baseline: str = Field(
        "seasonal_naive_24h", description="the baseline the candidate must not lose to"
    )
    baseline_tolerance: float = Field(
        0.0, ge=0, le=10, description="the candidate's NQL at most (1 + this) x the baseline's"
    )
    coverage_min: float = Field(
        0.70, ge=0, le=1, description="the candidate's p10-p90 coverage at least"
    )
    coverage_max: float = Field(0.90, ge=0, le=1, description="its p10-p90 coverage at most")
    origin_every: Duration = Field(
        7200.0, description="time between backtest origins on the holdout (a multiple of 5m)"
    )

    @field_validator("baseline")
    @classmethod
    def _baseline(cls, value: str) -> str:
        if value not in BASELINES:
            raise ValueError(f"{value!r} is not one of {sorted(BASELINES)}")
        return value

    @field_validator("origin_every")
    @classmethod
    def _origin_every(cls, value: float) -> float:
        if value % STEP_SECONDS:
            raise ValueError(f"must be a multiple of {STEP_SECONDS}s")
        return value

    def spec(self) -> GateSpec:
        """The pure gate's thresholds."""
        return GateSpec(
            tolerance=self.tolerance,
            baseline=self.baseline,
            baseline_tolerance=self.baseline_tolerance,
            coverage=(self.coverage_min, self.coverage_max),
        )


class ShadowSettings(_Section):
    """The shadow stage between the gate and promotion (training.retrain.shadow)."""

    cycles: int = Field(
        0,
        ge=0,
        le=1000,
        description="cycles a candidate that passed the gate is scored on newer history "
        "before promotion (0: promote at the gate)",
    )
    interval: Duration = Field(3600.0, description="time between shadow cycles")


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="log level: debug, info, warning or error"
    )


class RetrainConfig(_Section):
    """Every setting of `python -m training.retrain`."""

    prometheus: PrometheusSettings = PrometheusSettings()
    data: Path | None = Field(
        None, description="parquet history read instead of Prometheus (tests, offline use)"
    )
    models: ModelsSettings = ModelsSettings()
    web: WebSettings = WebSettings()
    train: TrainSettings = TrainSettings()
    gate: GateSettings = GateSettings()
    shadow: ShadowSettings = ShadowSettings()
    log: LogSettings = LogSettings()
    interval: Duration = Field(
        7 * 86400.0, description="how often a run starts (also POST /retrain)"
    )
    first_run_after: Annotated[float, BeforeValidator(parse_duration), Field(ge=0)] = Field(
        7 * 86400.0,
        description="with no run recorded, start the first as soon as Prometheus holds this "
        "much history (checked hourly); 0s: one interval after start-up",
    )
    history: Duration = Field(14 * 86400.0, description="history pulled per run")
    holdout: Duration = Field(
        86400.0,
        description="latest window held out for the gate (a multiple of 5m, at least one horizon)",
    )
    max_minutes: float = Field(
        18.0, gt=0, le=24 * 60, description="time box of the training child, in minutes"
    )
    threads: int = Field(1, ge=1, le=256, description="threads of the training child")
    nice: int = Field(10, ge=0, le=19, description="niceness of the training child (0-19)")
    once: bool = Field(
        False, description="run one retrain and exit (0 promoted, 1 rejected or failed)"
    )

    @field_validator("holdout")
    @classmethod
    def _holdout(cls, value: float) -> float:
        horizon = TFTConfig().horizon
        if value % STEP_SECONDS:
            raise ValueError(f"must be a multiple of {STEP_SECONDS}s")
        if value < horizon * STEP_SECONDS:
            raise ValueError(f"must cover at least one horizon ({horizon} steps)")
        return value

    def window(self) -> Window:
        """The step counts one run needs (model shape from TFTConfig's defaults)."""
        model = TFTConfig()
        return Window(
            encoder=model.encoder_length,
            horizon=model.horizon,
            holdout=int(self.holdout // STEP_SECONDS),
        )


def _leaves(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted paths of every setting (each gets a flag and an environment variable)."""
    paths = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths += _leaves(annotation, f"{prefix}{name}.")
        else:
            paths.append(f"{prefix}{name}")
    return paths


LEAVES = tuple(_leaves(RetrainConfig))
BOOLEAN_FLAGS = ("once",)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.retrain",
        description="Retrain the TFT on schedule; promote a candidate only past the gate.",
    )
    parser.add_argument(
        "--config.file",
        dest="config_file",
        metavar="PATH",
        help=f"the YAML file of the settings, also {ENV_PREFIX}CONFIG_FILE (default: none)",
    )
    for path in LEAVES:
        flag = "--" + path.replace("_", "-")
        if path in BOOLEAN_FLAGS:
            parser.add_argument(
                flag,
                dest=path,
                action="store_const",
                const=True,
                default=None,
                help=RetrainConfig.model_fields[path].description,
            )
        else:
            aliases = ["--web.config.file"] if path == "web.config_file" else []
            parser.add_argument(
                flag,
                *aliases,
                dest=path,
                metavar="VALUE",
                default=None,
                help=flag_help(RetrainConfig, path),
            )
    return parser


def load_config(argv: Sequence[str], environ: Mapping[str, str]) -> RetrainConfig:
    """The validated configuration from flags, environment and the YAML file they name."""
    args = vars(_parser().parse_args(list(argv)))
    config = validated(RetrainConfig, layered(args, environ, ENV_PREFIX, LEAVES))
    _check(config)
    return config


def _check(config: RetrainConfig) -> None:
    """Rules across settings, each naming the key to change."""
    if not config.gate.coverage_min < config.gate.coverage_max:
        raise ConfigError("gate.coverage_min", "must be below gate.coverage_max")
    if config.once and config.shadow.cycles > 0:
        raise ConfigError(
            "shadow.cycles", "the shadow stage runs on the service's schedule: not with --once"
        )
    needed = config.window().minimum * STEP_SECONDS
    if 0 < config.first_run_after < needed:
        raise ConfigError(
            "first_run_after", f"must be 0s (off) or at least {needed / 3600:g}h, what a run needs"
        )
    if config.history < needed:
        raise ConfigError(
            "history",
            f"must be at least {needed / 3600:g}h: max(training window + validation day, "
            "backtest context) + holdout",
        )
