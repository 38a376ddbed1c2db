"""The ramp outlook: a local linear trend of a series' deviation from its usual day, projected.

Leaks and fills are ramps that the TFT, trained mostly on healthy windows, smooths back
towards normal (docs/EVALUATION.md). `ramp_forecast` extrapolates them instead:

* the usual day is the median of the same time of day over the last `seasons` days that the
  window holds (1 to `seasons` of them; gaps forward-filled). Where the window holds no
  earlier day for every step needed, the usual level is 0: a plain linear trend on the value;
* the deviation from it over the last `window` steps is fitted by least squares;
* the forecast at step k is the usual day at k plus the fitted line extended to k, with the
  least-squares prediction interval: sd_k = s * sqrt(1 + 1/n + (x_k - mean x)^2 / Sxx), s the
  residual standard deviation (at least `min_sd`), so the band widens with the distance from
  the fitted window and with the slope's own uncertainty.

A series with fewer than half its window observed gets NaN (no ramp outlook).

`ramp_takeover` is how the service uses it (configuration `early_warning`, per capacity
quantity): where a series has been observed for a day (`WARMUP_STEPS`), its last value is above
the rule's level, its last hour still rises (the pace gate) and the projection sees a breach of
the critical threshold within 8 h as more likely than both the served forecast and the warning
probability, the ramp's fan is served instead (method "ramp"), so that the breach probability,
the time to breach and the fan a user sees all tell the same story. Alone the projection is no
better than predict_linear; the gates are what lift its precision (docs/RAMP-study.md).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from forecaster.config import Config
from forecaster.grid import SEASON_STEPS, STEP_SECONDS
from forecaster.heuristic import forward_fill
from forecaster.risk import breach_outlook

MIN_SD = 1e-3
"""Floor of the residual standard deviation, in base units (a ratio: 0.1 percentage point)."""
WARMUP_STEPS = SEASON_STEPS
"""The ramp serves only for a series observed at least this long (a day): in its first hours a
host's morning rise or background episode cannot be told from a leak's start by anything the
service holds, and a user's first day must not page (docs/RAMP-study.md, stop 23)."""


def ramp_forecast(
    y: np.ndarray,
    horizon: int,
    quantiles: Sequence[float],
    *,
    window: int,
    season: int = SEASON_STEPS,
    seasons: int = 3,
    min_sd: float = MIN_SD,
) -> np.ndarray:
    """(N, horizon, len(quantiles)) ramp projections of the (N, L) histories `y` (oldest
    first, NaN where not observed); see the module docstring."""
    y = np.asarray(y, dtype=np.float64)
    n, length = y.shape
    out = np.full((n, horizon, len(quantiles)), np.nan)
    width = min(window, length)
    if n == 0 or width < 3:
        return out
    if seasons > 0:
        usual = _usual_day(y, horizon, season, seasons)  # (N, L + horizon), NaN where unknown
    else:  # no detrending: a plain linear trend on the value
        usual = np.zeros((n, length + horizon))
    tail = slice(length - width, length + horizon)
    known = np.isfinite(usual[:, tail]).all(axis=1)
    usual = np.where(known[:, None], usual, 0.0)
    x = np.arange(width, dtype=np.float64)
    deviation = y[:, length - width :] - usual[:, length - width : length]
    seen = np.isfinite(deviation)
    count = seen.sum(axis=1).astype(np.float64)
    safe = np.maximum(count, 1.0)
    d = np.where(seen, deviation, 0.0)
    x_mean = (seen * x).sum(axis=1) / safe
    d_mean = d.sum(axis=1) / safe
    dx = np.where(seen, x[None, :] - x_mean[:, None], 0.0)
    sxx = (dx * dx).sum(axis=1)
    slope = np.divide((dx * (d - d_mean[:, None])).sum(axis=1), sxx, out=np.zeros(n), where=sxx > 0)
    fitted = d_mean[:, None] + slope[:, None] * dx
    residual = np.where(seen, d - fitted, 0.0)
    dof = np.maximum(count - 2.0, 1.0)
    sd = np.maximum(np.sqrt((residual * residual).sum(axis=1) / dof), min_sd)
    future = width - 1 + np.arange(1, horizon + 1, dtype=np.float64)
    lever = (future[None, :] - x_mean[:, None]) ** 2 / np.maximum(sxx, 1e-12)[:, None]
    spread = sd[:, None] * np.sqrt(1.0 + 1.0 / safe[:, None] + lever)
    centre = usual[:, length:] + d_mean[:, None] + slope[:, None] * (future - x_mean[:, None])
    z = np.array([NormalDist().inv_cdf(q) for q in quantiles])
    values = centre[:, :, None] + spread[:, :, None] * z[None, None, :]
    good = (count >= max(3, width // 2)) & (sxx > 0)
    out[good] = values[good]
    return out


@dataclass(frozen=True)
class RampRule:
    """The ramp outlook of one quantity as the service serves it (`ramp_takeover`)."""

    window_steps: int  # least-squares fit over this many steps
    level: float  # base units: the last observed value must be above it
    threshold: float  # base units: the critical threshold whose breach it looks for
    window: str = "8h"  # the breach window compared with the served forecast's
    z: float = 0.0  # the deviation from the usual day must be this unusual (0: no such gate)
    pace_steps: int = 0  # the last steps' own line must reach `threshold` within the horizon
    seasons: int = 3  # earlier days the usual day is the median of (0: fit the value itself)
    probability: float = 0.0  # it serves only where its breach probability is above this
    warmup_steps: int = WARMUP_STEPS  # it serves only for series observed at least this long


def ramp_rules(config: Config, step: int) -> dict[str, RampRule]:
    """The configured ramp outlooks (`early_warning.<quantity>.ramp_window` > 0)."""
    rules = {}
    for name, settings in config.early_warning.items():
        if settings.ramp_window > 0 and name in config.thresholds:
            critical = config.thresholds[name].critical
            pace = int(settings.ramp_pace // step)
            rules[name] = RampRule(
                window_steps=max(3, int(settings.ramp_window // step)),
                level=settings.ramp_level * critical,
                threshold=critical,
                pace_steps=max(2, pace) if pace else 0,
                seasons=3 if settings.ramp_detrend else 0,
                probability=settings.warning,
            )
    return rules


def ramp_takeover(
    y: np.ndarray, served: np.ndarray, rule: RampRule, quantiles: Sequence[float], step: int
) -> tuple[np.ndarray, np.ndarray]:
    """(ramp fan (N, H, Q), rows where it replaces `served`) for the (N, L) histories `y`:
    rows observed for at least `rule.warmup_steps`, whose last observed value is above
    `rule.level`, that pass the deviation and pace gates, and whose ramp breach probability in
    `rule.window` exceeds both that of `served` (NaN rows of `served` count as 0) and
    `rule.probability` (the warning's: the ramp serves only where it would warn, so its steep
    fan never replaces a better one for less; the alert sees the larger of the two
    probabilities either way). Only the rows past the cheap gates are projected; the fan is NaN
    for the others."""
    n, horizon = served.shape[0], served.shape[1]
    fan = np.full((n, horizon, len(quantiles)), np.nan)
    take = np.zeros(n, dtype=bool)
    with np.errstate(invalid="ignore"):
        gate = (_last_finite(y) > rule.level) & (observed_for(y) >= rule.warmup_steps)
        if rule.z > 0:
            gate &= deviation_z(y, recent=rule.window_steps) > rule.z
        if rule.pace_steps > 0:
            gate &= paced(y, rule.pace_steps, horizon, rule.threshold)
    rows = np.flatnonzero(gate)
    if rows.size == 0:
        return fan, take
    fan[rows] = ramp_forecast(
        y[rows], horizon, quantiles, window=rule.window_steps, seasons=rule.seasons
    )
    rows = rows[np.isfinite(fan[rows]).all(axis=(1, 2))]
    if rows.size == 0:
        return fan, take
    ramp_p, _ = breach_outlook(fan[rows], rule.threshold, step)
    base = np.where(np.isfinite(served[rows]), served[rows], -np.inf)
    served_p, _ = breach_outlook(base, rule.threshold, step)
    take[rows] = (ramp_p[rule.window] > served_p[rule.window]) & (
        ramp_p[rule.window] > rule.probability
    )
    return fan, take


def paced(y: np.ndarray, steps: int, horizon: int, threshold: float) -> np.ndarray:
    """(N,) whether `predict_linear` over the last `steps` reaches `threshold` within
    `horizon` steps of the end: a ramp that still rises, not a level that has settled."""
    if y.shape[1] == 0:
        return np.zeros(y.shape[0], dtype=bool)
    tail = np.asarray(y, dtype=np.float64)[:, -steps:]
    with np.errstate(invalid="ignore"):
        return predict_linear(tail, steps, float(horizon), step=1)[:, -1] > threshold


def deviation_z(
    y: np.ndarray, *, recent: int, season: int = SEASON_STEPS, seasons: int = 3, now: int = 3
) -> np.ndarray:
    """(N,) how unusual the last `now` steps' deviation from the usual day is: its mean minus
    the median deviation before the last `recent` steps, over their robust spread (1.4826 x
    MAD, at least `MIN_SD`). NaN where no earlier day or no reference is held."""
    y = np.asarray(y, dtype=np.float64)
    n, length = y.shape
    out = np.full(n, np.nan)
    if n == 0 or length <= recent + now:
        return out
    deviation = y - _usual_day(y, 0, season, seasons)[:, :length]
    reference = deviation[:, : length - recent]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: NaN, no warning
        centre = np.nanmedian(reference, axis=1)
        spread = 1.4826 * np.nanmedian(np.abs(reference - centre[:, None]), axis=1)
        latest = np.nanmean(deviation[:, -now:], axis=1)
    return (latest - centre) / np.maximum(np.nan_to_num(spread, nan=MIN_SD), MIN_SD)


def predict_linear(
    y: np.ndarray, window: int, ahead: float, step: int = STEP_SECONDS
) -> np.ndarray:
    """PromQL `predict_linear(v[window * step], ahead)` at every column of y (N, T).

    Least squares of value on time over the last `window` samples (the origin included; NaN
    samples left out), extrapolated `ahead` seconds past the origin; NaN with fewer than two
    samples, as PromQL returns nothing.
    """
    y = np.asarray(y, dtype=np.float64)
    w = np.isfinite(y).astype(np.float64)
    v = np.where(w > 0, y, 0.0)
    x = np.arange(y.shape[-1], dtype=np.float64)[None, :] - (y.shape[-1] - 1)  # small sums
    hi = np.arange(1, y.shape[-1] + 1)
    lo = np.maximum(hi - window, 0)

    def rolling(a: np.ndarray) -> np.ndarray:
        c = np.concatenate([np.zeros((a.shape[0], 1)), np.cumsum(a, axis=-1)], axis=-1)
        return c[:, hi] - c[:, lo]

    n, sx, sy = rolling(w), rolling(w * x), rolling(v)
    sxx, sxy = rolling(w * x * x), rolling(v * x)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = n * sxx - sx * sx
        slope = (n * sxy - sx * sy) / var
        intercept = (sy - slope * sx) / n  # value at x = 0
        at_origin = intercept + slope * x
        out = at_origin + slope * (ahead / step)
    return np.where((n >= 2) & (var > 1e-9), out, np.nan)


def observed_for(y: np.ndarray) -> np.ndarray:
    """(N,) steps from each row's first observed value to the end of `y` (0 for a row without
    any)."""
    seen = np.isfinite(np.asarray(y, dtype=np.float64))
    first = np.argmax(seen, axis=1)
    return np.where(seen.any(axis=1), seen.shape[1] - first, 0)


def _last_finite(y: np.ndarray) -> np.ndarray:
    """The last finite value of each row of `y` (NaN for a row without any)."""
    filled = forward_fill(np.asarray(y, dtype=np.float64))
    return filled[:, -1] if filled.shape[1] else np.full(filled.shape[0], np.nan)


def _usual_day(y: np.ndarray, horizon: int, season: int, seasons: int) -> np.ndarray:
    """(N, L + horizon): the median of the values 1..`seasons` seasons earlier, NaN where none
    lies inside the history."""
    n, length = y.shape
    filled = forward_fill(y)
    targets = np.arange(length + horizon)
    earlier = np.full((seasons, n, length + horizon), np.nan)
    for k in range(1, seasons + 1):
        source = targets - k * season
        inside = (source >= 0) & (source < length)
        earlier[k - 1][:, inside] = filled[:, source[inside]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: NaN, no warning
        return np.nanmedian(earlier, axis=0)
