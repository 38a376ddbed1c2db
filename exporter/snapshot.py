"""The immutable forecast snapshot: everything `/metrics`, REST and WebSocket serve.

The forecaster builds one `Snapshot` per cycle and hands it, with the service's `ServiceState`,
to the exporter (`publish`). Nothing here is computed on a request: the collector and the HTTP
handlers only read these objects. Arrays are numpy arrays made read-only by `frozen_array`.

Units are the data contract's base units (ratio 0-1, seconds, bytes per second); times are unix
seconds (UTC). Forecast step k (0-based) is the value expected at `origin + (k + 1) * step`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
from numpy.typing import NDArray

STEP_SECONDS = 300
"""The grid step the exported labels count in; the forecaster's data contract must agree
(`forecaster.contract.Grid` refuses a contract whose step does not fit these labels)."""
_UNIT_SECONDS: Mapping[str, int] = MappingProxyType({"m": 60, "h": 3600, "d": 86400})


def duration_seconds(label: str) -> int:
    """Seconds in a duration label of one unit: "5m", "8h", "1d"; `ValueError` otherwise."""
    number, unit = label[:-1], label[-1:]
    if not number.isdecimal() or unit not in _UNIT_SECONDS or int(number) < 1:
        raise ValueError(f"duration {label!r}: expected a positive count of m, h or d")
    return int(number) * _UNIT_SECONDS[unit]


def label_steps(labels: tuple[str, ...], step_seconds: int = STEP_SECONDS) -> Mapping[str, int]:
    """label -> whole steps of `step_seconds` in that duration, in the order given."""
    steps = {}
    for label in labels:
        count, rest = divmod(duration_seconds(label), step_seconds)
        if rest:
            raise ValueError(f"duration {label!r} is not a whole number of {step_seconds} s steps")
        steps[label] = count
    return MappingProxyType(steps)


# The one definition of the exported labels; their steps follow from the labels themselves.
# Exported horizons: label -> steps ahead (1-based), so that `x{horizon="1h"} offset 1h`
# lines up with the actual value.
HORIZONS: Mapping[str, int] = label_steps(("5m", "30m", "1h", "2h", "4h", "8h"))
QUANTILES = (0.1, 0.5, 0.9)
QUANTILE_LABELS = ("0.1", "0.5", "0.9")
# Breach-probability windows: label -> steps covered from the origin.
WINDOWS: Mapping[str, int] = label_steps(("30m", "8h"))
# Methods the guard weighs (forecaster.guard), and every method that may serve a forecast:
# those, and the ramp outlook of the capacity quantities (forecaster.trend).
CANDIDATE_METHODS = ("tft", "seasonal_mean", "seasonal_naive", "heuristic")
METHODS = (*CANDIDATE_METHODS, "ramp")
PRIORITIES = ("P1", "P2", "P3")
FLEET_HEALTH = ("healthy", "warning", "critical")
THRESHOLD_LEVELS = ("warning", "critical")
# Contract unit -> metric-name suffix (Prometheus base-unit naming).
UNIT_SUFFIX: Mapping[str, str] = MappingProxyType(
    {"ratio": "ratio", "seconds": "seconds", "bytes_per_second": "bytes_per_second"}
)
# The name of a quantity's forecast family, a `str.format` template (`exporter.families`).
PREDICTED_NAME = "forecaster_predicted_{quantity}_{suffix}"


def frozen_array(values: object, dtype: type = np.float64) -> NDArray[np.float64]:
    """A read-only copy of `values` as a numpy array."""
    array: NDArray[np.float64] = np.array(values, dtype=dtype, copy=True)
    array.flags.writeable = False
    return array


def metric_name(quantity: str, unit: str) -> str:
    """`forecaster_predicted_<quantity>_<unit>` for a contract quantity."""
    return PREDICTED_NAME.format(quantity=quantity, suffix=UNIT_SUFFIX.get(unit, unit))


@dataclass(frozen=True)
class QuantityForecast:
    """One instance's forecast of one quantity over the whole horizon.

    `quantiles` is (horizon, 3): p10, p50, p90 per step, never crossing. `current` is the last
    observed value; `trend` the least-squares slope of the last hour of observations, in units
    per hour (positive: rising). `method` is the method with the most weight in the served
    forecast (one of `METHODS`); `scores` the guard's NQL of each candidate method on this
    series' recent history (`forecaster.guard`), empty without the guard or before any score.
    """

    quantity: str
    unit: str
    method: str
    quantiles: NDArray[np.float64]
    current: float
    trend: float
    scores: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    def at(self, horizon: str) -> NDArray[np.float64]:
        """(p10, p50, p90) at an exported horizon label such as "30m"."""
        return self.quantiles[HORIZONS[horizon] - 1]


@dataclass(frozen=True)
class Breach:
    """Breach outlook of one quantity against its critical threshold.

    `probability` maps a `WINDOWS` label to P(value > threshold at some step of the window),
    derived from the quantile forecast. `time_to_breach` is the seconds from the origin to the
    first step whose p50 passes the threshold, None when it does not within the horizon;
    `earliest_breach` the same for the p90 (the earliest plausible breach: the time-to-breach
    band runs from it to `time_to_breach`).
    """

    quantity: str
    threshold: float
    probability: Mapping[str, float]
    time_to_breach: float | None
    earliest_breach: float | None = None


@dataclass(frozen=True)
class Risk:
    """The seed's per-server risk score (0-100) and its parts, with a human message."""

    score: float
    priority: str  # P1 >= 70, P2 >= 40, else P3
    cpu_risk: float
    mem_risk: float
    latency_risk: float
    message: str


@dataclass(frozen=True)
class InstanceSnapshot:
    """Everything known about one instance after a cycle.

    `origin` is the time of the last observed grid step (the forecast origin); `made_at` is when
    the forecast was computed (staleness is judged on it); `last_seen` the newest sample.
    `warmup_steps` of `warmup_required` steps of history are in memory. `drivers` are the
    model's most important input variables with their weights (largest first; empty for the
    heuristic).
    """

    instance: str
    profile: str
    origin: float
    made_at: float
    last_seen: float
    warmup_steps: int
    warmup_required: int
    forecasts: Mapping[str, QuantityForecast]
    breaches: Mapping[str, Breach]
    risk: Risk
    drivers: tuple[tuple[str, float], ...] = ()

    @property
    def method(self) -> str:
        """ "tft" when every quantity came from the model, else the method serving most of its
        quantities (ties: the earlier in `METHODS`); "heuristic" for an empty forecast."""
        methods = [f.method for f in self.forecasts.values()]
        if methods and all(m == "tft" for m in methods):
            return "tft"
        others = [m for m in methods if m != "tft"] or ["heuristic"]
        return max(METHODS, key=lambda m: (others.count(m), -METHODS.index(m)))

    @property
    def warmup_progress(self) -> float:
        """Share of the required history that is in memory, 0-1."""
        if self.warmup_required <= 0:
            return 1.0
        return min(1.0, self.warmup_steps / self.warmup_required)


@dataclass(frozen=True)
class Environment:
    """Fleet-wide outlook (seed 004 section 4)."""

    prob_30m: float
    prob_8h: float
    high_risk_servers: int
    total_servers: int
    fleet_health: str  # healthy | warning | critical


@dataclass(frozen=True)
class Accuracy:
    """Online accuracy of forecasts made earlier, scored once the actual values arrived."""

    quantity: str
    horizon: str
    nql: float  # normalised quantile loss, 2 * sum(pinball) / sum(|y|), mean over quantiles
    coverage: float  # share of actual values inside [p10, p90]
    samples: int


EMPTY_ENVIRONMENT = Environment(0.0, 0.0, 0, 0, "healthy")


@dataclass(frozen=True)
class Snapshot:
    """The forecasts of one cycle; replaced as a whole, never mutated."""

    generated_at: float
    instances: Mapping[str, InstanceSnapshot]
    environment: Environment = EMPTY_ENVIRONMENT
    thresholds: Mapping[tuple[str, str], float] = field(default_factory=dict)  # (q, level)
    # (q, severity) -> breach probability above which its NodeForecast* alert fires
    alert_thresholds: Mapping[tuple[str, str], float] = field(default_factory=dict)
    accuracy: tuple[Accuracy, ...] = ()
    units: Mapping[str, str] = field(default_factory=dict)  # quantity -> contract unit
    step_seconds: int = STEP_SECONDS


EMPTY_SNAPSHOT = Snapshot(generated_at=0.0, instances=MappingProxyType({}))


@dataclass(frozen=True)
class ServiceState:
    """The service's own state, published with every cycle, failed ones included."""

    source_up: bool = False
    last_success: float | None = None  # unix seconds of the last successful cycle
    cycles_total: int = 0
    cycle_failures: Mapping[str, int] = field(default_factory=dict)  # reason -> count
    last_cycle_duration: float = 0.0
    last_cycle_end: float | None = None
    input_partial: bool = False
    model_loaded: bool = False
    model_version: str | None = None
    contract_version: str = "1.0.0"
    shard_index: int = 0
    shard_count: int = 1
    clean_events: Mapping[str, int] = field(default_factory=dict)  # cleaner reason -> count
    dropped_series: Mapping[str, int] = field(default_factory=dict)  # reason -> count
    model_load_failures: Mapping[str, int] = field(default_factory=dict)  # reason -> count
    # "instance/quantity" -> what is wrong with its input (e.g. a likely unit mistake)
    input_warnings: Mapping[str, str] = field(default_factory=dict)
    started_at: float = 0.0
    persist_errors: int = 0  # failed writes of the snapshot to the state directory
    config_reload_successful: bool = True  # whether the last configuration reload succeeded
    # unix seconds of the last successful configuration reload; None: none since the start
    config_reloaded_at: float | None = None
