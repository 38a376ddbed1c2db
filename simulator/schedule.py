"""Time patterns and schedules: diurnal and weekly load, background state episodes, incidents.

Everything here is a pure function of (seed, node, step). Background episodes and incidents are
drawn per fixed time slot from hashed random numbers, so the state at any step needs only the
slots that can still cover it (a bounded look-back) instead of replaying a Markov chain.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from simulator import rng
from simulator.fleet import Fleet

STEP = 300  # seconds; the data contract's grid
DAY = 86400
STATES = ("healthy", "morning_spike", "heavy_load", "degraded", "critical", "recovering")
HEALTHY, MORNING_SPIKE, HEAVY_LOAD, DEGRADED, CRITICAL, RECOVERING = range(6)
STATE_MULTIPLIER = np.array([1.0, 1.3, 1.5, 1.8, 2.2, 1.2])
SCENARIOS = {"healthy": 1.0, "degrading": 1.15, "critical": 1.6}
AFFECTED_SHARE = 0.25

# Diurnal load curve (hour of day UTC -> multiplier), after the seed's table, normalised below so
# that its weekday business-hours (09:00-17:00) mean is exactly 1: baselines are those means.
_DIURNAL_HOURS = np.array([0, 3, 5, 6, 7.5, 9, 11, 12, 13, 15, 17, 19, 21, 22, 24], dtype=float)
_DIURNAL_VALUES = np.array(
    [0.55, 0.45, 0.47, 0.6, 0.8, 1.0, 1.12, 1.08, 1.05, 1.12, 1.0, 0.9, 0.8, 0.7, 0.55]
)
_BUSINESS = np.linspace(9.0, 17.0, 961)
_DIURNAL_VALUES = _DIURNAL_VALUES / np.interp(_BUSINESS, _DIURNAL_HOURS, _DIURNAL_VALUES).mean()

EPISODE_SLOT = 24  # steps (2 h) per background-episode slot
EPISODE_PROBABILITY = 0.12  # chance that an episode starts in a slot
# Episode kinds: probability and the (state, min steps, max steps) phases they go through.
EPISODE_KINDS = (
    (0.6, ((HEAVY_LOAD, 4, 18), (RECOVERING, 3, 6))),
    (0.3, ((HEAVY_LOAD, 3, 9), (DEGRADED, 4, 12), (RECOVERING, 4, 8))),
    (0.1, ((HEAVY_LOAD, 2, 6), (DEGRADED, 3, 8), (CRITICAL, 2, 6), (RECOVERING, 4, 9))),
)
MORNING_SPIKE_PROBABILITY = 0.5  # per node and weekday


def hour_of_day(t: ArrayLike) -> NDArray[np.float64]:
    """Hour of day in UTC (fractional)."""
    return np.mod(np.asarray(t, dtype=np.float64), DAY) / 3600.0


def day_of_week(t: ArrayLike) -> NDArray[np.int64]:
    """ISO day of week minus one (Monday 0 ... Sunday 6) in UTC."""
    return np.mod(np.floor_divide(np.asarray(t, dtype=np.float64), DAY).astype(np.int64) + 3, 7)


def diurnal(t: ArrayLike) -> NDArray[np.float64]:
    """Diurnal load multiplier at unix time(s) `t`."""
    return np.interp(hour_of_day(t), _DIURNAL_HOURS, _DIURNAL_VALUES)


def load_factor(fleet: Fleet, t: ArrayLike) -> NDArray[np.float64]:
    """Demand multiplier per node and time: diurnal curve times the profile's weekend factor.

    `t` has shape (nodes, steps) or (steps,); the result has shape (nodes, steps).
    """
    t2 = np.broadcast_to(t, (fleet.size, np.shape(t)[-1]))
    weekend = day_of_week(t2) >= 5
    return diurnal(t2) * np.where(weekend, fleet["weekend"][:, None], 1.0)


def batch_factors(fleet: Fleet, t: ArrayLike) -> tuple[NDArray[np.float64], ...]:
    """Nightly batch work: (cpu, disk I/O) multipliers for ETL runs and database backups."""
    hour = hour_of_day(np.broadcast_to(t, (fleet.size, np.shape(t)[-1])))
    profiles = np.array(fleet.profiles)[:, None]
    etl = (profiles == "data_ingest") & (hour >= 1.0) & (hour < 4.0)
    backup = (profiles == "database") & (hour >= 2.0) & (hour < 3.0)
    cpu = np.where(etl, 1.4, 1.0)
    io = np.where(etl, 2.5, 1.0) * np.where(backup, 2.0, 1.0)
    return cpu, io


def _episode_state(
    fleet: Fleet, steps: NDArray[np.int64], slot: NDArray[np.int64]
) -> NDArray[np.int64]:
    """State code at `steps` caused by the episode drawn for `slot` (HEALTHY where none covers)."""
    key = fleet.node_keys[:, None] ^ np.uint64(rng.stream_key(fleet.seed, "episode"))
    base = slot * 16
    exists = rng.uniform(key, base) < EPISODE_PROBABILITY
    kind_u = rng.uniform(key, base + 1)
    start = slot * EPISODE_SLOT + (rng.uniform(key, base + 2) * EPISODE_SLOT).astype(np.int64)
    rel = steps - start
    state = np.full(rel.shape, HEALTHY, dtype=np.int64)
    threshold = 0.0
    for k, (probability, phases) in enumerate(EPISODE_KINDS):
        chosen = exists & (kind_u >= threshold) & (kind_u < threshold + probability)
        threshold += probability
        offset = np.zeros(rel.shape, dtype=np.int64)
        for i, (code, low, high) in enumerate(phases):
            length = low + (rng.uniform(key, base + 3 + 4 * k + i) * (high - low + 1)).astype(
                np.int64
            )
            inside = chosen & (rel >= offset) & (rel < offset + length)
            state = np.where(inside, code, state)
            offset = offset + length
    return state


def background_states(fleet: Fleet, steps: NDArray[np.int64]) -> NDArray[np.int64]:
    """Seed-style state machine per node and step, shape (nodes, steps).

    Episodes (heavy load, possibly through degraded and critical, then recovering) start at
    hashed offsets in 2-hour slots; the newest episode covering a step wins. Weekday mornings
    may bring a morning spike.
    """
    steps2 = np.broadcast_to(steps, (fleet.size, steps.shape[-1]))
    slot = np.floor_divide(steps2, EPISODE_SLOT)
    state = np.full(steps2.shape, HEALTHY, dtype=np.int64)
    for lag in (2, 1, 0):  # older first, newer overwrite
        episode = _episode_state(fleet, steps2, slot - lag)
        state = np.where(episode != HEALTHY, episode, state)
    t = steps2 * STEP
    day = np.floor_divide(t, DAY)
    key = fleet.node_keys[:, None] ^ np.uint64(rng.stream_key(fleet.seed, "morning"))
    spike_start = 8.0 + 0.5 * rng.uniform(key, 2 * day)
    spike_end = spike_start + 1.0 + 0.5 * rng.uniform(key, 2 * day + 1)
    hour = hour_of_day(t)
    spike = (
        (rng.uniform(key, 2 * day + 10**9) < MORNING_SPIKE_PROBABILITY)
        & (day_of_week(t) < 5)
        & (hour >= spike_start)
        & (hour < spike_end)
    )
    return np.where((state == HEALTHY) & spike, MORNING_SPIKE, state)


def affected_nodes(fleet: Fleet) -> NDArray[np.bool_]:
    """The 25 % of nodes (at least one) that a degrading or critical scenario affects."""
    count = max(1, round(AFFECTED_SHARE * fleet.size))
    mask = np.zeros(fleet.size, dtype=bool)
    mask[np.argsort(fleet["scenario_rank"], kind="stable")[:count]] = True
    return mask


# --- incidents --------------------------------------------------------------------------------


@dataclass(frozen=True)
class IncidentKind:
    """An incident type: the quantity it breaches, the threshold and its timing (in steps)."""

    name: str
    quantity: str
    threshold: float
    precursor: tuple[int, int]  # precursor duration range, steps
    hold: tuple[int, int]  # breach-to-end duration range, steps


INCIDENT_KINDS = (
    IncidentKind("memory_leak", "memory_utilisation", 0.95, (30, 96), (2, 6)),
    IncidentKind("filesystem_fill", "filesystem_utilisation", 0.95, (30, 96), (6, 18)),
    IncidentKind("cpu_saturation", "cpu_utilisation", 0.95, (9, 24), (4, 12)),
    IncidentKind("latency_degradation", "request_latency_p95", 0.5, (9, 24), (3, 9)),
)
KIND_BY_NAME = {k.name: k for k in INCIDENT_KINDS}

# How the precursor approaches the breach. "smooth" is the kind's ramp; "stepped" climbs in
# plateaus (batch writes, a cache that grows by chunks); "sawtooth" rises in cycles that fall
# back part of the way (a garbage-collected heap, log rotation on a filling disk); "noisy" is the
# smooth ramp under heavy jitter; "sudden" has no precursor: one step from normal to breach.
SHAPES = ("smooth", "stepped", "sawtooth", "noisy", "sudden")
SMOOTH, STEPPED, SAWTOOTH, NOISY, SUDDEN = range(len(SHAPES))
PRECURSOR_SHAPES = SHAPES[:SUDDEN]  # the shapes an early warning can be asked to see
# Share of each shape per kind, in SHAPES order (each row sums to 1).
SHAPE_MIX = {
    "memory_leak": (0.45, 0.0, 0.25, 0.15, 0.15),
    "filesystem_fill": (0.45, 0.2, 0.2, 0.0, 0.15),
    "cpu_saturation": (0.6, 0.0, 0.0, 0.25, 0.15),
    "latency_degradation": (0.6, 0.0, 0.0, 0.25, 0.15),
}
RAMP_CYCLES = 4  # plateaus of a stepped ramp, cycles of a saw-tooth one
INCIDENT_SLOT = 144  # steps (12 h): at most one scheduled incident per node and slot
RECOVERY_STEPS = 6  # 'recovering' after an incident ends
CALM_BEFORE = 2 * 3600  # seconds without background episodes before a scheduled incident
DEFAULT_INCIDENT_RATE = 0.5  # scheduled incidents per node and day


@dataclass(frozen=True)
class Incidents:
    """Incident covering each (node, step), as arrays of shape (nodes, steps); kind -1 = none.

    Times are unix seconds: the precursor starts at `start`, the quantity crosses the kind's
    threshold at `breach`, the incident ends at `end`, and the node is back to normal at
    `recovered`. `shape` indexes SHAPES (smooth wherever it is not given).
    """

    kind: NDArray[np.int64]
    start: NDArray[np.float64]
    breach: NDArray[np.float64]
    end: NDArray[np.float64]
    recovered: NDArray[np.float64]
    shape: NDArray[np.int64] = field(default_factory=lambda: np.zeros((1, 1), dtype=np.int64))

    def override(self, mask: NDArray[np.bool_], other: Incidents) -> Incidents:
        """Where `mask` holds, take `other`'s incident instead of this one."""
        return Incidents(
            *(np.where(mask, b, a) for a, b in zip(self.astuple(), other.astuple(), strict=True))
        )

    def astuple(self) -> tuple[NDArray, ...]:
        """The six arrays in field order."""
        return (self.kind, self.start, self.breach, self.end, self.recovered, self.shape)


def _slot_incidents(fleet: Fleet, slot: NDArray[np.int64], rate: float) -> Incidents:
    """The incident drawn for each node and 12-hour `slot` (kind -1 where none is drawn)."""
    key = fleet.node_keys.reshape(-1, *([1] * (slot.ndim - 1))) ^ np.uint64(
        rng.stream_key(fleet.seed, "incident")
    )
    base = slot * 8
    exists = rng.uniform(key, base) < rate * INCIDENT_SLOT * STEP / DAY
    kind = np.minimum((rng.uniform(key, base + 1) * len(INCIDENT_KINDS)).astype(np.int64), 3)
    precursor = np.zeros(kind.shape, dtype=np.int64)
    hold = np.zeros(kind.shape, dtype=np.int64)
    shape = np.zeros(kind.shape, dtype=np.int64)
    shape_u = rng.uniform(key, base + 5)
    for code, k in enumerate(INCIDENT_KINDS):
        is_kind = kind == code
        p_len = k.precursor[0] + (
            rng.uniform(key, base + 2) * (k.precursor[1] - k.precursor[0] + 1)
        )
        h_len = k.hold[0] + (rng.uniform(key, base + 3) * (k.hold[1] - k.hold[0] + 1))
        precursor = np.where(is_kind, p_len.astype(np.int64), precursor)
        hold = np.where(is_kind, h_len.astype(np.int64), hold)
        drawn = np.searchsorted(np.cumsum(SHAPE_MIX[k.name])[:-1], shape_u, side="right")
        shape = np.where(is_kind, drawn, shape)
    precursor = np.where(shape == SUDDEN, 1, precursor)
    room = INCIDENT_SLOT - precursor - hold - RECOVERY_STEPS
    start = slot * INCIDENT_SLOT + (rng.uniform(key, base + 4) * (room + 1)).astype(np.int64)
    breach = start + precursor
    end = breach + hold
    return Incidents(
        np.where(exists, kind, -1),
        (start * STEP).astype(np.float64),
        (breach * STEP).astype(np.float64),
        (end * STEP).astype(np.float64),
        ((end + RECOVERY_STEPS) * STEP).astype(np.float64),
        shape,
    )


def scheduled_incidents(fleet: Fleet, steps: NDArray[np.int64], rate: float) -> Incidents:
    """The scheduled incident at or just ahead of each (node, step), shape (nodes, steps).

    Kind -1 where no incident is in progress and none starts within CALM_BEFORE; callers
    compare the times themselves to tell the calm lead-in, the precursor and the aftermath apart.
    """
    steps2 = np.broadcast_to(steps, (fleet.size, steps.shape[-1]))
    slot = np.floor_divide(steps2, INCIDENT_SLOT)
    t = steps2 * float(STEP)
    current = _slot_incidents(fleet, slot, rate)
    upcoming = _slot_incidents(fleet, slot + 1, rate)
    in_current = (current.kind >= 0) & (t >= current.start - CALM_BEFORE) & (t < current.recovered)
    in_upcoming = (upcoming.kind >= 0) & (t >= upcoming.start - CALM_BEFORE)
    chosen = current.override(~in_current & in_upcoming, upcoming)
    covered = in_current | in_upcoming
    return Incidents(np.where(covered, chosen.kind, -1), *chosen.astuple()[1:])


def incident_table(fleet: Fleet, first_step: int, last_step: int, rate: float) -> list[dict]:
    """Every scheduled incident whose precursor starts in [first_step, last_step], as records."""
    slots = np.arange(first_step // INCIDENT_SLOT, last_step // INCIDENT_SLOT + 1)
    drawn = _slot_incidents(fleet, np.broadcast_to(slots, (fleet.size, slots.size)), rate)
    records = []
    for n, s in zip(*np.nonzero(drawn.kind >= 0), strict=True):
        if not first_step * STEP <= drawn.start[n, s] <= last_step * STEP:
            continue
        kind = INCIDENT_KINDS[drawn.kind[n, s]]
        records.append(
            {
                "instance": fleet.nodes[n],
                "kind": kind.name,
                "quantity": kind.quantity,
                "threshold": kind.threshold,
                "precursor_start": float(drawn.start[n, s]),
                "breach": float(drawn.breach[n, s]),
                "end": float(drawn.end[n, s]),
                "shape": SHAPES[drawn.shape[n, s]],
                "source": "schedule",
            }
        )
    return sorted(records, key=lambda r: (r["precursor_start"], r["instance"]))
