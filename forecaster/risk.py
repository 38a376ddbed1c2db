"""Risk from quantile forecasts: the seed's score, breach outlook, fleet outlook and trends.

Everything here is pure and vectorised over N instances. A forecast is an (N, H, 3) array of
(p10, p50, p90) per step in the contract's base units; step k (0-based) is the value expected at
`origin + (k + 1) * step`. NaN marks an instance that lacks the quantity (or a step it lacks);
it never turns into a NaN output: a missing quantity scores 0 points and breaches nothing.

Seed 004 section 4, with its units converted once in config (percent -> ratio, ms -> s):

* per instance, `risk_scores`: for each component (CPU, memory, latency), the max p90 over its
  first `window_steps` steps against its tiers (strictly greater, like the seed's `>`; the
  highest threshold passed wins), summed and capped at 100; P1 / P2 / P3 from
  `RiskSettings.p1` / `p2`. The seed's latency read `load_average` by mistake; here it reads
  `request_latency_p95`.
* fleet-wide, `fleet_environment`: the seed's prob_30m / prob_8h (rules in `FleetRules`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from exporter.snapshot import WINDOWS, Environment, Risk
from forecaster.config import Levels, RiskComponent, RiskSettings
from forecaster.grid import STEP_SECONDS

FloatArray = NDArray[np.float64]
MAX_SCORE = 100.0
TREND_STEPS = 12  # the last hour on the 5-minute grid
_TINY = np.finfo(np.float64).tiny  # zero-width segments divide by this: a step, no warning
# Exponential tails beyond p10 and p90 whose density meets the adjacent segment's there
# (0.4 / width = 0.1 x rate / width): P(value > t) = 0.1 exp(-4 (t - p90) / (p90 - p50)).
TAIL_RATE = 4.0
CHUNK_ROWS = 8192  # rows per block in `breach_probability`, to stay in cache


@dataclass(frozen=True)
class RiskArrays:
    """The seed's risk score of N instances and its parts (points), with the peaks behind them.

    `*_peak` is the max p90 over the component's window in base units (-inf when the instance
    lacks the quantity); `priority` holds "P1", "P2" or "P3".
    """

    score: FloatArray
    cpu: FloatArray
    mem: FloatArray
    latency: FloatArray
    priority: NDArray[np.str_]
    cpu_peak: FloatArray
    mem_peak: FloatArray
    latency_peak: FloatArray

    def __len__(self) -> int:
        return len(self.score)

    def at(self, index: int, message: str = "") -> Risk:
        """The snapshot's `Risk` of instance `index`."""
        return Risk(
            score=float(self.score[index]),
            priority=str(self.priority[index]),
            cpu_risk=float(self.cpu[index]),
            mem_risk=float(self.mem[index]),
            latency_risk=float(self.latency[index]),
            message=message,
        )


@dataclass(frozen=True)
class FleetWindow:
    """One window of the seed's fleet outlook for the ratio quantities (base units).

    An instance earns `severe_weight` per quantity whose max p50 over the first `steps` steps
    exceeds `severe_p50` or whose max p90 exceeds `severe_p90`; otherwise `moderate_weight`
    under the moderate pair.
    """

    steps: int
    severe_p50: float
    severe_p90: float
    severe_weight: float
    moderate_p50: float
    moderate_p90: float
    moderate_weight: float


@dataclass(frozen=True)
class FleetRules:
    """The seed's fleet-wide rules (004 section 4), percent converted to ratios.

    Latency has no percent thresholds; it uses its configured `Levels` with each window's
    weights: severe when max p50 > warning or max p90 > critical, moderate when max p90 >
    warning. Fleet health is "critical" when prob_30m > `critical_above`, "warning" when >
    `warning_above`, else "healthy".
    """

    ratio_quantities: tuple[str, ...] = (
        "cpu_utilisation",
        "memory_utilisation",
        "filesystem_utilisation",
    )
    short: FleetWindow = FleetWindow(WINDOWS["30m"], 0.90, 0.98, 0.35, 0.85, 0.95, 0.15)
    long: FleetWindow = FleetWindow(WINDOWS["8h"], 0.88, 0.96, 0.25, 0.82, 0.92, 0.10)
    critical_above: float = 0.7
    warning_above: float = 0.4


DEFAULT_FLEET_RULES = FleetRules()


def risk_scores(forecasts: Mapping[str, np.ndarray], settings: RiskSettings) -> RiskArrays:
    """The seed's 0-100 risk score of every instance, with its parts and priority."""
    n = _count(forecasts)
    parts = {}
    for key, component in _components(settings):
        peak = _window_peak(forecasts.get(component.quantity), component.window_steps, 2, n)
        parts[key] = (peak, _tier_points(peak, component.tiers))
    score = np.minimum(parts["cpu"][1] + parts["mem"][1] + parts["latency"][1], MAX_SCORE)
    priority = np.where(score >= settings.p1, "P1", np.where(score >= settings.p2, "P2", "P3"))
    return RiskArrays(
        score=score,
        cpu=parts["cpu"][1],
        mem=parts["mem"][1],
        latency=parts["latency"][1],
        priority=priority,
        cpu_peak=parts["cpu"][0],
        mem_peak=parts["mem"][0],
        latency_peak=parts["latency"][0],
    )


def risk_message(
    risk: RiskArrays,
    settings: RiskSettings,
    indices: Sequence[int] | np.ndarray | None = None,
    step_seconds: int = STEP_SECONDS,
) -> list[str]:
    """A human message per instance (all, or those at `indices`), as in the seed.

    E.g. "CPU predicted to reach 93.4% in 30 minutes"; every component that earned points is
    named, most points first, joined by "; "; "no risk predicted" when the score is 0.
    """
    rows = range(len(risk)) if indices is None else [int(i) for i in indices]
    names = (("CPU", "%"), ("Memory", "%"), ("Latency", "ms"))
    columns = [
        (name, unit, getattr(risk, key), getattr(risk, f"{key}_peak"), component.window_steps)
        for (key, component), (name, unit) in zip(_components(settings), names, strict=True)
    ]
    messages = []
    for row in rows:
        parts = sorted(
            (
                (-points[row], _phrase(name, peak[row], unit, steps * step_seconds))
                for name, unit, points, peak, steps in columns
                if points[row] > 0
            ),
            key=lambda part: part[0],
        )
        messages.append("; ".join(text for _, text in parts) or "no risk predicted")
    return messages


def breach_probability(forecast: np.ndarray, threshold: float | np.ndarray) -> FloatArray:
    """P(value > threshold) per instance and step, (N, H), from the three quantiles.

    The CDF is piecewise linear through (p10, 0.1), (p50, 0.5), (p90, 0.9); beyond p10 and p90
    it has exponential tails whose density meets the adjacent segment's (`TAIL_RATE`), so a
    threshold far above p90 keeps a small, falling probability instead of none. That is, with
    t the threshold, P = 0.5 - 0.4 (t - p50) / (p50 - p10) between p10 and p50,
    0.5 - 0.4 (t - p50) / (p90 - p50) between p50 and p90, 0.1 exp(-4 (t - p90) / (p90 - p50))
    above p90 and 1 - 0.1 exp(-4 (p10 - t) / (p50 - p10)) below p10. A zero-width segment is
    a point mass at its point (a step, no division by zero): equal quantiles p give 1 below p
    and 0 from p on. Crossing
    quantiles are sorted first; a step with a non-finite quantile gives 0. `threshold` is a
    scalar or one per instance, (N,).
    """
    return _per_step(forecast, threshold)[0]


def _per_step(forecast: np.ndarray, threshold: float | np.ndarray) -> tuple[FloatArray, np.ndarray]:
    """(P(value > threshold), p50 > threshold) per instance and step, in blocks of rows."""
    values = np.asarray(forecast, dtype=np.float64)
    limit = np.asarray(threshold, dtype=np.float64)
    if limit.ndim == 1:
        limit = limit[:, None]
    survival = np.zeros(values.shape[:2])
    passed = np.zeros(values.shape[:2], dtype=bool)
    for lo in range(0, values.shape[0], CHUNK_ROWS):
        rows = slice(lo, lo + CHUNK_ROWS)
        survival[rows], passed[rows] = _survival(
            values[rows], limit[rows] if limit.ndim == 2 else limit
        )
    return survival, passed


def _survival(values: np.ndarray, limit: np.ndarray) -> tuple[FloatArray, np.ndarray]:
    """`_per_step` of one block of rows (see `breach_probability`)."""
    a, b, c = values[..., 0], values[..., 1], values[..., 2]
    low, high = np.minimum(a, b), np.maximum(a, b)
    p10, p50, p90 = np.minimum(low, c), np.maximum(low, np.minimum(high, c)), np.maximum(high, c)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore", under="ignore"):
        excess = limit - p50
        # below p50: linear through (p10, 0.9), then 1 - 0.1 exp(-4 (p10 - t) / (p50 - p10));
        # a zero width divides by _TINY: a step
        lower = np.maximum(p50 - p10, _TINY)
        below = np.where(
            limit >= p10,
            0.5 - 0.4 * excess / lower,
            1.0 - 0.1 * np.exp(-TAIL_RATE * (p10 - limit) / lower),
        )
        # from p50 on: linear through (p90, 0.1), then 0.1 exp(-4 (t - p90) / (p90 - p50));
        # a zero width: all mass is at p50
        width = p90 - p50
        tail = 0.1 * np.exp(-TAIL_RATE * (limit - p90) / np.maximum(width, _TINY))
        above = np.where(width > 0, np.where(limit <= p90, 0.5 - 0.4 * excess / width, tail), 0.0)
        finite = np.isfinite(p10) & np.isfinite(p90) & np.isfinite(limit)
        passed = (excess < 0) & finite  # p50 > limit
    return np.where(finite, np.where(passed, below, above), 0.0), passed


def breach_outlook(
    forecast: np.ndarray,
    threshold: float | np.ndarray,
    step_seconds: int = STEP_SECONDS,
    windows: Mapping[str, int] = WINDOWS,
) -> tuple[dict[str, FloatArray], FloatArray]:
    """Breach probability per window and time to breach, for an (N, H, 3) forecast.

    P(breach in a window) is the `breach_probability` of the riskiest step among the window's
    first steps: a lower bound of the probability that any step breaches (the union), exact
    when the steps move together. `time_to_breach` is the seconds from the origin to the first
    step whose p50 exceeds the threshold, `(k + 1) * step_seconds`, NaN when none within H.
    """
    values = np.asarray(forecast, dtype=np.float64)
    n, horizon = values.shape[0], values.shape[1]
    per_step, passed = _per_step(values, threshold)
    probabilities = {
        label: per_step[:, : min(steps, horizon)].max(axis=1, initial=0.0)
        for label, steps in windows.items()
    }
    found = passed.any(axis=1)
    first = np.argmax(passed, axis=1) if horizon else np.zeros(n, dtype=np.int64)
    time_to_breach = np.where(found, (first + 1.0) * step_seconds, np.nan)
    return probabilities, time_to_breach


def earliest_breach(
    forecast: np.ndarray, threshold: float | np.ndarray, step_seconds: int = STEP_SECONDS
) -> FloatArray:
    """Seconds from the origin to the first step whose p90 passes the threshold (the earliest
    plausible breach, with `breach_outlook`'s p50 crossing the band's other end), NaN when
    none does within the horizon."""
    values = np.asarray(forecast, dtype=np.float64)
    n, horizon = values.shape[0], values.shape[1]
    limit = np.asarray(threshold, dtype=np.float64)
    limit = limit[:, None] if limit.ndim == 1 else limit
    with np.errstate(invalid="ignore"):
        upper = np.max(values, axis=-1) if values.shape[-1] else np.full((n, horizon), np.nan)
        passed = np.isfinite(upper) & (upper > limit)
    found = passed.any(axis=1)
    first = np.argmax(passed, axis=1) if horizon else np.zeros(n, dtype=np.int64)
    return np.where(found, (first + 1.0) * step_seconds, np.nan)


def fleet_environment(
    forecasts: Mapping[str, np.ndarray],
    scores: RiskArrays | np.ndarray,
    thresholds: Mapping[str, Levels],
    settings: RiskSettings,
    rules: FleetRules = DEFAULT_FLEET_RULES,
) -> Environment:
    """The seed's fleet outlook: mean per-instance incident risk over 30 min and 8 h.

    Each instance's risk per window sums `FleetRules` weights over the ratio quantities and
    latency (with its `thresholds` levels; absent levels: latency is left out), capped at 1;
    `prob_*` is the mean over instances. `high_risk_servers` counts scores >= `settings.p1`.
    An empty fleet is healthy with zeros.
    """
    score = np.asarray(scores.score if isinstance(scores, RiskArrays) else scores, dtype=float)
    n = len(score)
    if n == 0:
        return Environment(0.0, 0.0, 0, 0, "healthy")
    latency = settings.latency.quantity
    probs = []
    for window in (rules.short, rules.long):
        risk = np.zeros(n)
        for quantity in rules.ratio_quantities:
            risk += _fleet_points(forecasts.get(quantity), window, n, None)
        if latency in thresholds and latency not in rules.ratio_quantities:
            risk += _fleet_points(forecasts.get(latency), window, n, thresholds[latency])
        probs.append(float(np.minimum(risk, 1.0).mean()))
    prob_30m, prob_8h = probs
    if prob_30m > rules.critical_above:
        health = "critical"
    elif prob_30m > rules.warning_above:
        health = "warning"
    else:
        health = "healthy"
    high = int(np.count_nonzero(np.nan_to_num(score, nan=0.0) >= settings.p1))
    return Environment(prob_30m, prob_8h, high, n, health)


def trend_per_hour(
    values: np.ndarray,
    observed: np.ndarray,
    step_seconds: int = STEP_SECONDS,
    steps: int = TREND_STEPS,
) -> FloatArray:
    """Least-squares slope of the last `steps` columns' observed values, in units per hour.

    `values` and `observed` are (N, L) on the grid, oldest column first. Cells not observed or
    not finite are left out; an instance with fewer than 2 points gets 0.
    """
    y = np.asarray(values, dtype=np.float64)[:, -steps:]
    mask = np.asarray(observed, dtype=bool)[:, -steps:] & np.isfinite(y)
    y = np.where(mask, y, 0.0)
    hours = np.arange(y.shape[1], dtype=np.float64) * (step_seconds / 3600.0)
    weight = mask.astype(np.float64)
    count = weight.sum(axis=1)
    safe = np.maximum(count, 1.0)
    x_mean = (weight * hours).sum(axis=1) / safe
    y_mean = y.sum(axis=1) / safe
    dx = (hours[None, :] - x_mean[:, None]) * weight
    sxx = (dx * dx).sum(axis=1)
    sxy = (dx * (y - y_mean[:, None])).sum(axis=1)
    slope = np.divide(sxy, sxx, out=np.zeros_like(sxy), where=(count >= 2) & (sxx > 0))
    return np.where(np.isfinite(slope), slope, 0.0)


def _components(settings: RiskSettings) -> tuple[tuple[str, RiskComponent], ...]:
    return (("cpu", settings.cpu), ("mem", settings.memory), ("latency", settings.latency))


def _count(forecasts: Mapping[str, np.ndarray]) -> int:
    sizes = {np.shape(array)[0] for array in forecasts.values()}
    if len(sizes) > 1:
        raise ValueError(f"forecasts disagree on the number of instances: {sorted(sizes)}")
    return sizes.pop() if sizes else 0


def _window_peak(forecast: np.ndarray | None, steps: int, column: int, n: int) -> FloatArray:
    """Max of one quantile column over the first `steps` steps; -inf where all are NaN."""
    if forecast is None:
        return np.full(n, -np.inf)
    window = np.asarray(forecast, dtype=np.float64)[:, :steps, column]
    return np.fmax.reduce(window, axis=1, initial=-np.inf)  # fmax skips NaN


def _tier_points(peak: FloatArray, tiers: tuple[tuple[float, float], ...]) -> FloatArray:
    """Points of the highest tier threshold that `peak` strictly exceeds (0 if none)."""
    points = np.zeros(len(peak))
    for threshold, value in sorted(tiers):
        points = np.where(peak > threshold, float(value), points)
    return points


def _fleet_points(
    forecast: np.ndarray | None, window: FleetWindow, n: int, levels: Levels | None
) -> FloatArray:
    """One quantity's contribution to each instance's fleet risk in one window."""
    if forecast is None:
        return np.zeros(n)
    p50 = _window_peak(forecast, window.steps, 1, n)
    p90 = _window_peak(forecast, window.steps, 2, n)
    if levels is None:
        severe = (p50 > window.severe_p50) | (p90 > window.severe_p90)
        moderate = (p50 > window.moderate_p50) | (p90 > window.moderate_p90)
    else:
        severe = (p50 > levels.warning) | (p90 > levels.critical)
        moderate = p90 > levels.warning
    return np.where(severe, window.severe_weight, np.where(moderate, window.moderate_weight, 0.0))


def _phrase(name: str, peak: float, unit: str, seconds: float) -> str:
    amount = f"{peak * 1000.0:.0f} ms" if unit == "ms" else f"{peak * 100.0:.1f}%"
    return f"{name} predicted to reach {amount} in {_duration(seconds)}"


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60.0)
    if minutes % 60 == 0 and minutes >= 60:
        hours = minutes // 60
        return f"{hours} hour" if hours == 1 else f"{hours} hours"
    return "1 minute" if minutes == 1 else f"{minutes} minutes"
