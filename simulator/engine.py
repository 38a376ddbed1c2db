"""The live simulation: counters integrated from the epoch, with REST changes applied on top.

Under the default schedule the engine reproduces `signals.evaluate` exactly (the history export
uses the same functions). Scenario changes and injected incidents take effect at the moment
they are made: the current step's rates are re-evaluated and the counters integrate piecewise,
so they stay monotone and consistent with the utilisation they encode. Every change is recorded.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from simulator import schedule as sch
from simulator import signals
from simulator.fleet import Fleet
from simulator.series import CHANNELS, NodeStatic, channel_rates

CHUNK_STEPS = 288  # steps integrated per batch when catching up
GAUGES = (
    "cpu_utilisation",
    "memory_utilisation",
    "filesystem_utilisation",
    "load1",
    "state",
    "incident",
)


def step_of(t: float) -> int:
    """Index of the 5-minute step (t - 300, t] that contains time `t`."""
    return math.ceil(t / sch.STEP)


@dataclass(frozen=True)
class InjectedIncident:
    """An incident started over REST: precursor compressed into `ramp` seconds."""

    node: str
    kind: str
    start: float
    breach: float
    end: float
    recovered: float

    def record(self, now: float) -> dict:
        """JSON-ready description, with its status at `now`."""
        status = (
            "precursor"
            if now < self.breach
            else "breached"
            if now < self.end
            else "recovering"
            if now < self.recovered
            else "ended"
        )
        spec = sch.KIND_BY_NAME[self.kind]
        return {
            "instance": self.node,
            "kind": self.kind,
            "quantity": spec.quantity,
            "threshold": spec.threshold,
            "precursor_start": self.start,
            "breach": self.breach,
            "end": self.end,
            "shape": "smooth",
            "status": status,
            "source": "api",
        }


@dataclass(frozen=True)
class NodeView:
    """What one scrape needs: the node's constants, integrated counters and current gauges."""

    static: NodeStatic
    time: float
    counters: NDArray[np.float64]  # (channels,)
    gauges: dict[str, float]
    scenario: str


class Engine:
    """Thread-safe live fleet state for the HTTP listener."""

    def __init__(
        self,
        fleet: Fleet,
        epoch: float,
        incident_rate: float = sch.DEFAULT_INCIDENT_RATE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if epoch % sch.STEP:
            raise ValueError(f"epoch {epoch} is not a multiple of the {sch.STEP} s step")
        self.fleet = fleet
        self.epoch = float(epoch)
        self.incident_rate = incident_rate
        self.clock = clock
        self.scenario = "healthy"
        self.changes: list[dict] = []  # scenario changes, as recorded
        self.injected: list[InjectedIncident] = []
        self._statics = [NodeStatic.of(fleet, i, self.epoch) for i in range(fleet.size)]
        self._affected = sch.affected_nodes(fleet)
        self._lock = threading.Lock()
        self._step = step_of(self.epoch)  # counters are zero at the epoch
        self._segment_start = self.epoch
        self._base = np.zeros((fleet.size, len(CHANNELS)))
        self._rates = np.zeros((fleet.size, len(CHANNELS)))
        self._gauges: dict[str, NDArray] = {}
        self.tick_count = 0
        now = clock()
        if now < self.epoch:
            raise ValueError("the epoch lies in the future")
        with self._lock:
            self._advance(now)

    # -- integration ---------------------------------------------------------------------------

    def _overrides(self) -> signals.Overrides:
        multiplier = np.where(self._affected, sch.SCENARIOS[self.scenario], 1.0)
        live = [inc for inc in self.injected if inc.recovered > self._segment_start]
        if not live:
            return signals.Overrides(multiplier)
        fields = np.full((5, self.fleet.size), np.nan)
        fields[0] = -1
        kinds = [k.name for k in sch.INCIDENT_KINDS]
        for inc in live:  # later injections win
            i = self.fleet.index(inc.node)
            fields[:, i] = (kinds.index(inc.kind), inc.start, inc.breach, inc.end, inc.recovered)
        now_only = [f[:, None] for f in fields]
        incidents = sch.Incidents(now_only[0].astype(np.int64), *now_only[1:])
        return signals.Overrides(multiplier, incidents)

    def _evaluate(self, steps: NDArray[np.int64]) -> dict[str, NDArray]:
        # Injected incidents are (nodes, 1) arrays; Incidents.override broadcasts them.
        return signals.evaluate(self.fleet, steps, self._overrides(), self.incident_rate)

    def _load_step(self, step: int) -> None:
        values = self._evaluate(np.array([step]))
        self._rates = channel_rates(values)[:, 0, :]
        self._gauges = {name: values[name][:, 0] for name in GAUGES}

    def _advance(self, now: float) -> None:
        """Integrate up to `now`; afterwards the current step's rates and gauges are loaded."""
        target = step_of(now)
        if target > self._step or not self._gauges:
            if self._gauges:
                end = self._step * sch.STEP
                self._base = self._base + self._rates * (end - self._segment_start)
            for lo in range(self._step + 1, target, CHUNK_STEPS):
                steps = np.arange(lo, min(lo + CHUNK_STEPS, target))
                rates = channel_rates(self._evaluate(steps))
                self._base = self._base + rates.sum(axis=1) * sch.STEP
            self._step = target
            self._segment_start = max((target - 1) * sch.STEP, self.epoch)
            self._load_step(target)

    def _change(self, apply: Callable[[], None]) -> None:
        """Apply an override at the current time without breaking counter continuity."""
        with self._lock:
            now = max(self.clock(), self._segment_start)
            self._advance(now)
            self._base = self._base + self._rates * (now - self._segment_start)
            self._segment_start = now
            apply()
            self._load_step(self._step)

    # -- API -----------------------------------------------------------------------------------

    def set_scenario(self, scenario: str) -> None:
        """Switch the fleet scenario (healthy, degrading, critical) now."""
        if scenario not in sch.SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}")

        def apply() -> None:
            self.scenario = scenario
            self.changes.append({"time": self.clock(), "scenario": scenario})

        self._change(apply)

    def inject(self, node: str, kind: str, ramp: float, hold: float | None = None) -> dict:
        """Start an incident of `kind` on `node` now; its threshold is crossed after `ramp` s."""
        spec = sch.KIND_BY_NAME[kind]
        self.fleet.index(node)  # KeyError for an unknown node
        if ramp <= 0:
            raise ValueError("ramp must be positive")
        hold = hold if hold is not None else spec.hold[1] * sch.STEP
        start = self.clock()
        incident = InjectedIncident(
            node,
            kind,
            start,
            start + ramp,
            start + ramp + hold,
            start + ramp + hold + sch.RECOVERY_STEPS * sch.STEP,
        )
        self._change(lambda: self.injected.append(incident))
        return incident.record(start)

    def view(self, node: str) -> NodeView:
        """Counters and gauges of `node` now (KeyError if unknown)."""
        index = self.fleet.index(node)
        with self._lock:
            now = max(self.clock(), self._segment_start)
            self._advance(now)
            self.tick_count += 1
            counters = self._base[index] + self._rates[index] * (now - self._segment_start)
            gauges = {name: float(values[index]) for name, values in self._gauges.items()}
            return NodeView(self._statics[index], now, counters, gauges, self.scenario)

    def affected_servers(self) -> list[str]:
        """Nodes the current scenario affects (none when healthy)."""
        if self.scenario == "healthy":
            return []
        return [n for n, hit in zip(self.fleet.nodes, self._affected, strict=True) if hit]

    def incidents(self, lookback: float = 86400.0) -> list[dict]:
        """Scheduled and injected incidents that started within `lookback` s or are active."""
        now = self.clock()
        first = step_of(now - lookback)
        rows = sch.incident_table(self.fleet, first, step_of(now), self.incident_rate)
        for row in rows:
            row["status"] = (
                "precursor" if now < row["breach"] else "breached" if now < row["end"] else "ended"
            )
        rows += [inc.record(now) for inc in self.injected]
        return sorted(rows, key=lambda r: r["precursor_start"])
