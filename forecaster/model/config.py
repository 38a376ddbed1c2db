"""Hyper-parameters and input layout of the TFT, as a frozen, JSON-friendly dataclass."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from forecaster.features import CALENDAR
from forecaster.grid import CONTEXT_STEPS, HORIZON_STEPS

DEFAULT_TARGETS = (
    "cpu_utilisation",
    "memory_utilisation",
    "filesystem_utilisation",
    "disk_io",
    "request_latency_p95",
)
DEFAULT_COVARIATES = (
    "network_receive",
    "network_transmit",
    "http_error_ratio",
    "gc_pause",
    "load1",
)
# Per-window target normalisation: byte rates and latencies live on a log scale. Note that
# pytorch-forecasting inverts "log1p" with exp (not expm1): harmless for bytes/s, but a
# latency in seconds would gain a whole second, so latency uses "log" (inputs floored at
# LOG_FLOOR so that log never sees zero).
DEFAULT_TRANSFORMATIONS = {"disk_io": "log1p", "request_latency_p95": "log"}
LOG_FLOOR = 1e-4
FORWARD_BATCH_SIZE = 64
"""Series per forward pass on the CPU. The forward is bound by the memory traffic of its
element-wise operations over (series, steps, variables, hidden) tensors, so batches that stay in
cache are fastest: 64 was 1.1-1.25x faster than 256 and within noise of 16-32 at 1,000 servers
(`python -m bench --only forward`, docs/BENCHMARKS.md). A GPU wants far larger batches."""
# Covariates fed as log1p(value) so that heavy-tailed byte rates scale sensibly.
DEFAULT_LOG_COVARIATES = ("network_receive", "network_transmit")


@dataclass(frozen=True)
class TFTConfig:
    """Everything that fixes the model's shape and its inputs."""

    targets: tuple[str, ...] = DEFAULT_TARGETS
    covariates: tuple[str, ...] = DEFAULT_COVARIATES
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    encoder_length: int = CONTEXT_STEPS  # the model's own shape; the grid's by default
    min_encoder_length: int = 36
    horizon: int = HORIZON_STEPS
    hidden_size: int = 16
    attention_heads: int = 2
    hidden_continuous_size: int = 8
    dropout: float = 0.1
    learning_rate: float = 3e-3
    transformations: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TRANSFORMATIONS))
    log_covariates: tuple[str, ...] = DEFAULT_LOG_COVARIATES
    mask_fraction: float = 0.2  # share of training series also shown with profile/host unknown
    normalisation: str = "mean"  # per-window target centre: "mean" (library) or "last" value
    calendar: tuple[str, ...] = CALENDAR

    def __post_init__(self) -> None:
        if not self.targets:
            raise ValueError("at least one target quantity is needed")
        if list(self.quantiles) != sorted(self.quantiles) or 0.5 not in self.quantiles:
            raise ValueError("quantiles must be increasing and include 0.5")
        if not 1 <= self.min_encoder_length <= self.encoder_length:
            raise ValueError("min_encoder_length must be in [1, encoder_length]")
        if self.normalisation not in ("mean", "last"):
            raise ValueError("normalisation must be 'mean' or 'last'")
        unknown = set(self.transformations) - set(self.targets)
        if unknown:
            raise ValueError(f"transformations for quantities that are not targets: {unknown}")

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types only."""
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TFTConfig:
        """Inverse of `to_json`; unknown keys are an error naming them."""
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown model_config keys: {sorted(unknown)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)
