"""The versioned data contract: quantities, units, domains and their PromQL expressions.

The contract lives in `contract_v1.yaml` next to this module; `prometheus/rules/recording.yml`
records the same expressions and the simulator's history uses the same column names. Its
`grid` section (`Grid`) fixes the season, context and horizon on the contract's step; the
exported horizon labels and breach windows are `exporter.snapshot`'s, checked against it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from exporter.snapshot import HORIZONS, WINDOWS, duration_seconds

ROLES = ("target", "covariate")
Domain = tuple[float | None, float | None]
MAGNITUDE_LIMIT = 1e18
"""Bound on |value| of any quantity: sums and squares over a day of steps stay finite."""
IMPOSSIBLE_WIDTHS = 1000.0
"""A value further outside a bounded domain than this many domain widths is impossible, not a
unit mistake (a percentage fed as a ratio lies within 100 widths of the domain)."""


def possible_range(domain: Domain) -> tuple[float, float]:
    """The [low, high] a value of a quantity with `domain` can take, unit mistakes included.

    Beyond it a value is no measurement at all: farther than `IMPOSSIBLE_WIDTHS` domain widths
    outside a domain bounded on both sides, or larger in magnitude than `MAGNITUDE_LIMIT`.
    """
    low, high = domain
    if low is None or high is None:
        return -MAGNITUDE_LIMIT, MAGNITUDE_LIMIT
    margin = IMPOSSIBLE_WIDTHS * (high - low)
    return max(low - margin, -MAGNITUDE_LIMIT), min(high + margin, MAGNITUDE_LIMIT)


@dataclass(frozen=True)
class Quantity:
    """One contract quantity: what it measures and how PromQL computes it."""

    name: str
    role: str
    unit: str
    domain: Domain
    record: str
    expr: str


@dataclass(frozen=True)
class Grid:
    """The forecast grid: the step in seconds; season, context and horizon in steps; the
    exported labels (label -> steps, 1-based for `horizons`, steps covered for `windows`).

    The labels are the exporter's (`exporter.snapshot.HORIZONS` and `WINDOWS`, their one
    definition); each must last exactly its steps on this step and lie within the horizon.
    """

    step_seconds: int
    season_steps: int
    context_steps: int
    horizon_steps: int
    horizons: Mapping[str, int] = field(default_factory=lambda: HORIZONS, hash=False)
    windows: Mapping[str, int] = field(default_factory=lambda: WINDOWS, hash=False)

    def __post_init__(self) -> None:
        for name in ("step_seconds", "season_steps", "context_steps", "horizon_steps"):
            if not _positive_int(getattr(self, name)):
                raise ValueError(f"grid {name} must be a positive integer: {getattr(self, name)!r}")
        if not self.horizons:
            raise ValueError("grid: no exported horizon")
        for kind, labels in (("horizon", self.horizons), ("window", self.windows)):
            for label, steps in labels.items():
                if not _positive_int(steps) or steps > self.horizon_steps:
                    raise ValueError(
                        f"grid {kind} {label!r}: {steps!r} steps is not within the horizon "
                        f"of {self.horizon_steps} steps"
                    )
                if duration_seconds(label) != steps * self.step_seconds:
                    raise ValueError(
                        f"grid {kind} {label!r} does not last {steps} steps of "
                        f"{self.step_seconds} s"
                    )
        object.__setattr__(self, "horizons", MappingProxyType(dict(self.horizons)))
        object.__setattr__(self, "windows", MappingProxyType(dict(self.windows)))


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


GRID_KEYS = ("season", "context", "horizon")


def _grid(spec: Any, step_seconds: int) -> Grid:
    """The `grid` section (durations such as "1d", "8h") as a `Grid` on `step_seconds`."""
    if not isinstance(spec, Mapping) or set(spec) != set(GRID_KEYS):
        raise ValueError(f"contract grid: expected exactly the durations {', '.join(GRID_KEYS)}")
    steps = {}
    for key in GRID_KEYS:
        count, rest = divmod(duration_seconds(str(spec[key])), step_seconds)
        if rest:
            raise ValueError(f"contract grid {key} {spec[key]!r}: not a whole number of steps")
        steps[key] = count
    return Grid(step_seconds, steps["season"], steps["context"], steps["horizon"])


@dataclass(frozen=True)
class Contract:
    """A data contract version, its grid and its quantities, in declaration order."""

    version: str
    grid: Grid
    quantities: tuple[Quantity, ...]

    @property
    def step_seconds(self) -> int:
        """The grid step in seconds."""
        return self.grid.step_seconds

    def __getitem__(self, name: str) -> Quantity:
        for quantity in self.quantities:
            if quantity.name == name:
                return quantity
        raise KeyError(name)

    @property
    def targets(self) -> tuple[Quantity, ...]:
        """Quantities that are forecast."""
        return tuple(q for q in self.quantities if q.role == "target")


def load_contract(path: Path | None = None) -> Contract:
    """Read and validate a contract file (the packaged v1 contract by default).

    A file without a `grid` section (written before there was one) gets the packaged grid.
    """
    packaged = resources.files("forecaster").joinpath("contract_v1.yaml").read_text()
    data = yaml.safe_load(packaged if path is None else path.read_text())
    step = str(data["step"])
    if not step.endswith("m"):
        raise ValueError(f"contract step {step!r}: expected minutes such as '5m'")
    step_seconds = int(step[:-1]) * 60
    section = data.get("grid")
    if section is None and path is not None:
        section = yaml.safe_load(packaged)["grid"]
    grid = _grid(section, step_seconds)
    quantities = []
    for name, spec in data["quantities"].items():
        if spec["role"] not in ROLES:
            raise ValueError(f"quantity {name}: role must be one of {ROLES}")
        low, high = spec["domain"]
        quantities.append(
            Quantity(name, spec["role"], spec["unit"], (low, high), spec["record"], spec["expr"])
        )
    return Contract(str(data["version"]), grid, tuple(quantities))
