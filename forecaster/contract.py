"""The versioned data contract: quantities, units, domains and their PromQL expressions.

The contract lives in `contract_v1.yaml` next to this module; `prometheus/rules/recording.yml`
records the same expressions and the simulator's history uses the same column names.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

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
class Contract:
    """A data contract version and its quantities, in declaration order."""

    version: str
    step_seconds: int
    quantities: tuple[Quantity, ...]

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
    """Read and validate a contract file (the packaged v1 contract by default)."""
    if path is None:
        text = resources.files("forecaster").joinpath("contract_v1.yaml").read_text()
    else:
        text = path.read_text()
    data = yaml.safe_load(text)
    step = str(data["step"])
    if not step.endswith("m"):
        raise ValueError(f"contract step {step!r}: expected minutes such as '5m'")
    quantities = []
    for name, spec in data["quantities"].items():
        if spec["role"] not in ROLES:
            raise ValueError(f"quantity {name}: role must be one of {ROLES}")
        low, high = spec["domain"]
        quantities.append(
            Quantity(name, spec["role"], spec["unit"], (low, high), spec["record"], spec["expr"])
        )
    return Contract(str(data["version"]), int(step[:-1]) * 60, tuple(quantities))
