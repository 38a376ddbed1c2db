"""Per-step values of every simulated quantity, vectorised over (nodes, steps).

Rates (CPU, disk, network, requests, GC) are constant over each 5-minute step (t - 300, t];
gauges (memory, filesystem, load) hold the step's value. Counters integrate the rates, so
`rate(x[5m])` evaluated at a step boundary gives back exactly the step's value, and the exported
history (one row per step) equals what PromQL computes from the exposed counters.

Background load is soft-capped below the incident thresholds: only labelled incidents breach.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from simulator import rng
from simulator import schedule as sch
from simulator.fleet import Fleet

# Histogram buckets of http_request_duration_seconds: about 1.2x apart so that
# histogram_quantile's linear interpolation stays within 9 % of the true p95; the thresholds
# 0.1/0.2/0.5 s are bounds, so the estimate crosses them exactly when the true quantile does.
LATENCY_BUCKETS = (
    0.005,
    0.006,
    0.0075,
    0.009,
    0.011,
    0.0135,
    0.0165,
    0.02,
    0.025,
    0.03,
    0.0375,
    0.045,
    0.055,
    0.07,
    0.085,
    0.1,
    0.125,
    0.15,
    0.2,
    0.25,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
)
LATENCY_SIGMA = 0.5  # log-normal shape of request durations
_Z95 = 1.6448536269514722
BACKGROUND_CAP = 0.93  # ratios stay below this without an incident
LATENCY_CAP = 0.42  # seconds, p95 without an incident


def softcap(x: NDArray[np.float64], knee: float, cap: float) -> NDArray[np.float64]:
    """Identity below `knee`, then a smooth approach to `cap` (never reached)."""
    span = cap - knee
    return np.where(x <= knee, x, knee + span * np.tanh((x - knee) / span))


def _noise(fleet: Fleet, name: str, steps: NDArray[np.int64], width: int = 1) -> NDArray:
    key = fleet.node_keys[:, None] ^ np.uint64(rng.stream_key(fleet.seed, "noise", name))
    if width == 1:
        return rng.normal(key, steps)
    return rng.smooth_normal(key, steps, width)


SHARE_FLOOR = 1e-9
"""Smallest latency-bucket share: 1e-9 x 100 requests/s x 300 s is far above the rounding step
of a bucket counter of 1e8 (about 1.5e-8)."""


def _erf(z: NDArray[np.float64]) -> NDArray[np.float64]:
    """Vectorised error function (Numerical Recipes erfc, fractional error below 1.2e-7)."""
    a = np.abs(z)
    k = 1.0 / (1.0 + 0.5 * a)
    poly = (
        -a * a
        - 1.26551223
        + k
        * (
            1.00002368
            + k
            * (
                0.37409196
                + k
                * (
                    0.09678418
                    + k
                    * (
                        -0.18628806
                        + k
                        * (
                            0.27886807
                            + k
                            * (-1.13520398 + k * (1.48851587 + k * (-0.82215223 + k * 0.17087277)))
                        )
                    )
                )
            )
        )
    )
    erfc = k * np.exp(poly)
    return np.where(z >= 0, 1.0 - erfc, erfc - 1.0)


def histogram_quantile(
    q: float, bounds: tuple[float, ...], cumulative: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Prometheus' histogram_quantile over the last axis of cumulative bucket counts.

    `cumulative[..., i]` counts observations <= bounds[i]; the last entry is the +Inf bucket.
    Linear interpolation inside the bucket holding the rank, lower bound 0 for the first bucket.
    """
    total = cumulative[..., -1]
    rank = q * total
    index = np.argmax(cumulative >= rank[..., None], axis=-1)
    upper_bounds = np.array((*bounds, np.inf))
    lower_bounds = np.array((0.0, *bounds))
    below = np.where(
        index > 0,
        np.take_along_axis(cumulative, np.maximum(index - 1, 0)[..., None], -1)[..., 0],
        0.0,
    )
    inside = np.take_along_axis(cumulative, index[..., None], -1)[..., 0] - below
    upper = upper_bounds[index]
    lower = lower_bounds[index]
    frac = np.divide(rank - below, inside, out=np.ones_like(rank), where=inside > 0)
    value = np.where(np.isinf(upper), lower, lower + (upper - lower) * frac)
    return np.where(total > 0, value, np.nan)


@dataclass(frozen=True)
class Overrides:
    """What the REST API changes on top of the default schedule, per node."""

    scenario: NDArray[np.float64]  # load multiplier per node (1.0 = healthy)
    incidents: sch.Incidents | None = None  # injected incidents; kind -1 = keep the schedule


@dataclass
class Context:
    """Shared per-call inputs of the quantity functions."""

    fleet: Fleet
    steps: NDArray[np.int64]  # (nodes, steps)
    t: NDArray[np.float64]  # (nodes, steps), unix seconds at the end of each step
    load: NDArray[np.float64]  # demand multiplier
    state: NDArray[np.int64]
    multiplier: NDArray[np.float64]  # state x scenario
    incidents: sch.Incidents
    progress: NDArray[np.float64]  # 0 -> 1 over the precursor, 1 after the breach
    after: NDArray[np.float64]  # 0 -> 1 from breach to end
    phase: NDArray[np.int64]  # 0 none, 1 precursor, 2 breached, 3 recovering

    def active(self, kind: str, phase: int | None = None) -> NDArray[np.bool_]:
        """Mask of (node, step) inside an incident of `kind` (optionally in one phase)."""
        code = [k.name for k in sch.INCIDENT_KINDS].index(kind)
        mask = self.incidents.kind == code
        return mask & (self.phase == phase) if phase is not None else mask & (self.phase > 0)

    def at(self, a: NDArray, column: str) -> NDArray:
        """Per-node constant broadcast against the grid."""
        return np.broadcast_to(self.fleet[column][:, None], a.shape)


def _context(fleet: Fleet, steps: NDArray[np.int64], overrides: Overrides | None, rate: float):
    steps2 = np.broadcast_to(steps, (fleet.size, steps.shape[-1]))
    t = (steps2 * sch.STEP).astype(np.float64)
    incidents = sch.scheduled_incidents(fleet, steps2, rate)
    scenario = np.ones((fleet.size, 1))
    if overrides is not None:
        scenario = np.asarray(overrides.scenario, dtype=float)[:, None]
        if overrides.incidents is not None:
            injected = overrides.incidents
            incidents = incidents.override(injected.kind >= 0, injected)
    drawn = incidents.kind >= 0
    inside = drawn & (t >= incidents.start) & (t < incidents.recovered)
    # Background episodes pause from CALM_BEFORE ahead of an incident until it is over, so the
    # precursor is not masked by an episode ending just as it starts.
    calm = drawn & (t >= incidents.start - sch.CALM_BEFORE) & (t < incidents.recovered)
    incidents = sch.Incidents(np.where(inside, incidents.kind, -1), *incidents.astuple()[1:])
    precursor_len = np.maximum(incidents.breach - incidents.start, 1.0)
    hold_len = np.maximum(incidents.end - incidents.breach, 1.0)
    progress = np.clip((t - incidents.start) / precursor_len, 0.0, 1.0)
    after = np.clip((t - incidents.breach) / hold_len, 0.0, 1.0)
    phase = np.select(
        [~inside, t < incidents.breach, t < incidents.end], [0, 1, 2], default=3
    ).astype(np.int64)
    state = sch.background_states(fleet, steps2)
    incident_state = np.select(
        [phase == 1, phase == 2],
        [np.where(progress < 0.4, sch.HEAVY_LOAD, sch.DEGRADED), sch.CRITICAL],
        default=sch.RECOVERING,
    )
    state = np.where(inside, incident_state, np.where(calm, sch.HEALTHY, state))
    background = np.where(calm, 1.0, sch.STATE_MULTIPLIER[state])
    return Context(
        fleet,
        steps2,
        t,
        sch.load_factor(fleet, t),
        state,
        background * scenario,
        incidents,
        progress,
        after,
        phase,
    )


SAWTOOTH_DEPTH = 1.5  # a saw-tooth cycle falls back 1.5x what it gains net
RAMP_JITTER = 0.1  # a noisy ramp's jitter, as a share of the ramp's full amount


def _shaped(ctx: Context, exponent: float) -> NDArray[np.float64]:
    """Share of the ramp's amount reached at each step, after the incident's shape (each
    shape's curve computed only where an incident of that shape lies)."""
    p = ctx.progress
    shaped = p**exponent  # smooth, and the envelope of the others
    shape = np.broadcast_to(ctx.incidents.shape, p.shape)
    cycles = sch.RAMP_CYCLES
    if (stepped := shape == sch.STEPPED).any():
        shaped = np.where(stepped, (np.floor(p * cycles) / cycles) ** exponent, shaped)
    if (sawtooth := shape == sch.SAWTOOTH).any():
        # Position inside the current cycle, in (0, 1]: the cycle's peak lies on the smooth ramp.
        inside = p * cycles - np.ceil(p * cycles) + 1.0
        shaped = np.where(sawtooth, shaped - SAWTOOTH_DEPTH / cycles * (1.0 - inside), shaped)
    if (noisy := shape == sch.NOISY).any():
        shaped = np.where(
            noisy, shaped + RAMP_JITTER * _noise(ctx.fleet, "ramp", ctx.steps), shaped
        )
    return np.maximum(shaped, 0.0)


def _ramp_to(ctx: Context, kind: str, value, nominal_at_breach, exponent: float = 1.0):
    """Add a precursor ramp so `value` reaches the kind's threshold exactly at the breach."""
    spec = sch.KIND_BY_NAME[kind]
    pre = ctx.active(kind, 1)
    amount = np.maximum(spec.threshold + 0.004 * spec.threshold - nominal_at_breach, 0.0)
    ramped = np.minimum(value + amount * _shaped(ctx, exponent), spec.threshold * 0.998)
    return np.where(pre, ramped, value)


def _cpu(ctx: Context, cpu_batch) -> NDArray[np.float64]:
    fleet = ctx.fleet
    nominal = ctx.at(ctx.t, "cpu") * ctx.load * cpu_batch
    damp = np.where(ctx.active("cpu_saturation", 1), 1.0 - ctx.progress, 1.0)
    noisy = nominal * ctx.multiplier * np.exp(0.10 * damp * _noise(fleet, "cpu", ctx.steps) - 0.005)
    cpu = softcap(noisy, 0.7, BACKGROUND_CAP)
    load_at_breach = sch.load_factor(fleet, ctx.incidents.breach)
    breach_nominal = softcap(ctx.at(ctx.t, "cpu") * load_at_breach * cpu_batch, 0.7, BACKGROUND_CAP)
    cpu = _ramp_to(ctx, "cpu_saturation", cpu, breach_nominal, 1.3)
    held = (
        0.96
        + 0.03 * np.minimum(1.0, 3.0 * ctx.after)
        + 0.003 * _noise(fleet, "cpu_hold", ctx.steps)
    )
    return np.where(ctx.active("cpu_saturation", 2), np.clip(held, 0.951, 0.999), cpu)


def _memory(ctx: Context) -> NDArray[np.float64]:
    fleet = ctx.fleet
    shape = 0.85 + 0.15 * ctx.load
    base = ctx.at(ctx.t, "memory") * shape * (1.0 + 0.5 * (ctx.multiplier - 1.0))
    damp = np.where(ctx.active("memory_leak", 1), 1.0 - ctx.progress, 1.0)
    noise = 0.006 * damp * _noise(fleet, "memory", ctx.steps, 6)
    memory = softcap(base + noise, 0.7, BACKGROUND_CAP)
    breach_shape = 0.85 + 0.15 * sch.load_factor(fleet, ctx.incidents.breach)
    memory = _ramp_to(ctx, "memory_leak", memory, ctx.at(ctx.t, "memory") * breach_shape)
    held = 0.956 + 0.04 * ctx.after + 0.001 * _noise(fleet, "memory_hold", ctx.steps)
    return np.where(ctx.active("memory_leak", 2), np.clip(held, 0.951, 0.999), memory)


def _filesystem_nominal(fleet: Fleet, t: NDArray[np.float64]) -> NDArray[np.float64]:
    days = np.mod(t / sch.DAY - fleet["fs_cleanup_hour"][:, None] / 24.0, 1.0)
    return fleet["filesystem"][:, None] + fleet["fs_growth"][:, None] * days


def _filesystem(ctx: Context) -> NDArray[np.float64]:
    fleet = ctx.fleet
    nominal = _filesystem_nominal(fleet, ctx.t)
    fs = np.clip(nominal + 0.0005 * _noise(fleet, "fs", ctx.steps, 3), 0.01, BACKGROUND_CAP)
    fs = _ramp_to(ctx, "filesystem_fill", fs, _filesystem_nominal(fleet, ctx.incidents.breach))
    held = np.minimum(0.951 + 0.049 * 3.0 * ctx.after, 1.0)
    return np.where(ctx.active("filesystem_fill", 2), held, fs)


def _latency_p95(ctx: Context, cpu) -> NDArray[np.float64]:
    fleet = ctx.fleet

    def queueing(rho):
        return 1.0 / (1.0 - np.minimum(rho, 0.97))

    base = ctx.at(ctx.t, "latency_p95") * queueing(cpu) / queueing(ctx.at(ctx.t, "cpu"))
    noisy = base * np.sqrt(ctx.multiplier) * np.exp(0.08 * _noise(fleet, "latency", ctx.steps))
    latency = softcap(noisy, 0.25, LATENCY_CAP)
    breach_nominal = (
        ctx.at(ctx.t, "latency_p95")
        * queueing(ctx.at(ctx.t, "cpu") * sch.load_factor(fleet, ctx.incidents.breach))
        / queueing(ctx.at(ctx.t, "cpu"))
    )
    latency = _ramp_to(ctx, "latency_degradation", latency, breach_nominal, 2.0)
    held = 0.5 * (1.05 + 0.4 * np.minimum(1.0, 3.0 * ctx.after))
    return np.where(ctx.active("latency_degradation", 2), held, latency)


def evaluate(
    fleet: Fleet,
    steps: NDArray[np.int64],
    overrides: Overrides | None = None,
    incident_rate: float = sch.DEFAULT_INCIDENT_RATE,
) -> dict[str, NDArray]:
    """Every quantity for each node and step (arrays of shape (nodes, steps)).

    `steps` are step indices (unix time / 300); values describe the step ending at that time.
    """
    ctx = _context(fleet, np.asarray(steps, dtype=np.int64), overrides, incident_rate)
    cpu_batch, io_batch = sch.batch_factors(fleet, ctx.t)
    cpu = _cpu(ctx, cpu_batch)
    latency_target = _latency_p95(ctx, cpu)
    out: dict[str, NDArray] = {
        "state": ctx.state,
        "incident": np.where((ctx.phase == 1) | (ctx.phase == 2), ctx.incidents.kind, -1),
        "incident_phase": ctx.phase,
        "cpu_utilisation": cpu,
        "memory_utilisation": _memory(ctx),
        "filesystem_utilisation": _filesystem(ctx),
    }
    out.update(_throughput(ctx, io_batch))
    out.update(_requests(ctx, latency_target))
    out["load1"] = (
        ctx.at(cpu, "cpus")
        * (cpu + 5.0 * np.maximum(cpu - 0.8, 0.0))
        * np.exp(0.05 * _noise(fleet, "load1", ctx.steps))
    )
    return out


def _throughput(ctx: Context, io_batch) -> dict[str, NDArray]:
    """Disk and network byte rates; a filling filesystem adds its growth to the writes."""
    fleet, m = ctx.fleet, ctx.multiplier
    io = (
        ctx.at(ctx.t, "disk_io")
        * ctx.load
        * m
        * io_batch
        * np.exp(0.25 * _noise(fleet, "disk_io", ctx.steps) - 0.03125)
    )
    read = io * ctx.at(io, "read_fraction")
    write = io - read
    fill = ctx.active("filesystem_fill", 1)
    fill_rate = (
        (
            sch.KIND_BY_NAME["filesystem_fill"].threshold
            - _filesystem_nominal(fleet, ctx.incidents.start)
        )
        * ctx.at(io, "filesystem_bytes")
        / np.maximum(ctx.incidents.breach - ctx.incidents.start, 1.0)
    )
    write = write + np.where(fill, np.maximum(fill_rate, 0.0), 0.0)
    traffic = ctx.load * (1.0 + 0.2 * (m - 1.0))
    return {
        "disk_read": read,
        "disk_write": write,
        "disk_io": read + write,
        "network_receive": ctx.at(io, "net_rx")
        * traffic
        * np.exp(0.15 * _noise(fleet, "net_rx", ctx.steps) - 0.01125),
        "network_transmit": ctx.at(io, "net_tx")
        * traffic
        * np.exp(0.15 * _noise(fleet, "net_tx", ctx.steps) - 0.01125),
    }


def _requests(ctx: Context, latency_target) -> dict[str, NDArray]:
    """HTTP request and GC rates, the error ratio and the latency histogram's bucket shares."""
    fleet, m = ctx.fleet, ctx.multiplier
    requests = (
        ctx.at(ctx.t, "requests") * ctx.load * np.exp(0.05 * _noise(fleet, "requests", ctx.steps))
    )
    lat = ctx.active("latency_degradation", 1)
    errors = (
        ctx.at(ctx.t, "error_ratio")
        * m**3
        * np.exp(0.3 * _noise(fleet, "errors", ctx.steps) - 0.045)
    )
    errors = errors + np.where(lat, 0.04 * ctx.progress**1.5, 0.0)
    errors = np.where(ctx.active("latency_degradation", 2), errors + 0.05, errors)
    errors = np.where(ctx.active("cpu_saturation"), errors * (1.0 + 5.0 * ctx.progress), errors)
    gc_pause = ctx.at(ctx.t, "gc_pause") * m**0.7 * np.exp(0.15 * _noise(fleet, "gc", ctx.steps))
    gc_pause = np.where(
        lat | ctx.active("latency_degradation", 2), gc_pause * (1.0 + 6.0 * ctx.progress), gc_pause
    )
    gc_pause = np.where(
        ctx.active("memory_leak"), gc_pause * (1.0 + 2.0 * ctx.progress**2), gc_pause
    )
    median = latency_target / np.exp(_Z95 * LATENCY_SIGMA)
    shares = np.stack(
        [_share(le, median) for le in LATENCY_BUCKETS] + [np.ones_like(median)], axis=-1
    )
    return {
        "requests": requests,
        "http_error_ratio": np.clip(errors, 0.0, 0.5),
        "latency_shares": shares,  # (nodes, steps, buckets + 1), cumulative
        "latency_mean": median * np.exp(LATENCY_SIGMA**2 / 2.0),
        "request_latency_p95": histogram_quantile(0.95, LATENCY_BUCKETS, shares),
        "gc_rate": 0.2 + 0.6 * ctx.load,
        "gc_pause": gc_pause,
    }


def _share(le: float, median: NDArray[np.float64]) -> NDArray[np.float64]:
    """Share of requests at or below `le`, at least `SHARE_FLOOR`: a bucket whose share is
    about 0 (the lowest ones during a latency incident) would grow its counter by less than
    the counter's rounding step, and the history's and the live integration, which sum in a
    different order, could then differ by one unit in the last place: a counter reset."""
    z = (np.log(le) - np.log(median)) / (LATENCY_SIGMA * np.sqrt(2.0))
    return np.maximum(0.5 * (1.0 + _erf(z)), SHARE_FLOOR)
