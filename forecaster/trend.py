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
With `RampRule.knee_steps`, the fan served where the line took over is the line with one
bend's (`hinge_fit`) where that warns too: the line through a leak that began inside its
window starts below the current value and rises too slowly; the bent one follows the ramp's
recent pace, while the decision, and so the alerts, stay the straight line's.
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
    knee: int = 0,
) -> np.ndarray:
    """(N, horizon, len(quantiles)) ramp projections of the (N, L) histories `y` (oldest
    first, NaN where not observed); see the module docstring. `knee` > 0 fits a line with one
    bend instead where it explains the window better (`hinge_fit`): the last `knee` steps at
    least lie after the bend."""
    y = np.asarray(y, dtype=np.float64)
    n, length = y.shape
    out = np.full((n, horizon, len(quantiles)), np.nan)
    width = min(window, length)
    if n == 0 or width < 3:
        return out
    if knee > 0:
        return _hinge_forecast(
            y,
            horizon,
            quantiles,
            width=width,
            knee=knee,
            season=season,
            seasons=seasons,
            min_sd=min_sd,
        )
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
    knee_steps: int = 0  # > 0: the fan served is the bent line's (`hinge_fit`), where it warns


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
                knee_steps=int(settings.ramp_knee // step),
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
    if rule.knee_steps > 0:
        _bend(y, fan, take, rule, quantiles=quantiles, step=step)
    return fan, take


def _bend(
    y: np.ndarray,
    fan: np.ndarray,
    take: np.ndarray,
    rule: RampRule,
    *,
    quantiles: Sequence[float],
    step: int,
) -> None:
    """Where the straight line took over, serve the bent line's fan instead (in place) if it
    warns too: it starts at the current level and follows the ramp's recent pace, where the
    line through a hockey stick starts below the current value and rises too slowly. Which
    rows take over is the straight line's decision (the bent line alone raised twenty times
    the false alerts, docs/RAMP-study.md, stop 24), so the warnings are the same either way."""
    rows = np.flatnonzero(take)
    if rows.size == 0:
        return
    bent = ramp_forecast(
        y[rows],
        fan.shape[1],
        quantiles,
        window=rule.window_steps,
        seasons=rule.seasons,
        knee=rule.knee_steps,
    )
    finite = np.isfinite(bent).all(axis=(1, 2))
    bent_p, _ = breach_outlook(np.where(finite[:, None, None], bent, -np.inf), rule.threshold, step)
    use = finite & (bent_p[rule.window] > rule.probability)
    fan[rows[use]] = bent[use]


def hinge_fit(
    d: np.ndarray, knee: int, *, every: int = 3
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The better of a line and a line with one bend, fitted to each row of `d` (N, W; NaN
    where not observed), by the Bayesian information criterion.

    The bend model is y = a + b x + c max(0, x - k) (continuous, 4 parameters with the bend k
    searched every `every` steps such that at least `knee` steps lie after it, and `knee`
    before it); the line is y = a + b x (2 parameters). Returns (beta (N, 3): a, b, c; the
    bend k (N,), `W` for the line, where c = 0; the inverse of X'X (N, 3, 3) for the interval;
    the residual sum of squares (N,)). A leak that began inside the window is a hockey stick:
    the line through it is too shallow and starts below the current value, the bend is not.
    """
    d = np.asarray(d, dtype=np.float64)
    n, width = d.shape
    seen = np.isfinite(d)
    w = seen.astype(np.float64)
    v = np.where(seen, d, 0.0)
    x = np.arange(width, dtype=np.float64)
    knees = np.arange(knee, width - knee + 1, every, dtype=np.float64)
    bends = np.concatenate([knees, [float(width)]])  # the last "bend" is the plain line
    h = np.maximum(0.0, x[None, :] - bends[:, None])  # (K, W)
    design = np.stack([np.ones_like(h), np.broadcast_to(x, h.shape), h], axis=-1)  # (K, W, 3)
    xtx = np.einsum("nw,kwi,kwj->nkij", w, design, design)
    xty = np.einsum("nw,kwi->nki", v, design)
    line = xtx.shape[1] - 1
    xtx[:, line, 2, 2] = 1.0  # the line has no bend term: c = 0 via an identity row
    xtx[:, line, 2, :2] = xtx[:, line, :2, 2] = 0.0
    xty[:, line, 2] = 0.0
    det = np.linalg.det(xtx)
    usable = np.abs(det) > 1e-9
    safe = np.where(usable[..., None, None], xtx, np.eye(3))
    inverse = np.linalg.inv(safe)
    beta = np.einsum("nkij,nkj->nki", inverse, xty)
    fitted = np.einsum("kwi,nki->nkw", design, beta)
    rss = (w[:, None, :] * (v[:, None, :] - fitted) ** 2).sum(axis=-1)
    count = np.maximum(w.sum(axis=1), 1.0)
    params = np.where(np.arange(bends.size) == line, 2.0, 4.0)
    bic = count[:, None] * np.log(np.maximum(rss, 1e-18) / count[:, None]) + params * np.log(
        count[:, None]
    )
    bic = np.where(usable, bic, np.inf)
    best = np.argmin(bic, axis=1)
    rows = np.arange(n)
    return beta[rows, best], bends[best], inverse[rows, best], rss[rows, best]


def _hinge_forecast(
    y: np.ndarray,
    horizon: int,
    quantiles: Sequence[float],
    *,
    width: int,
    knee: int,
    season: int,
    seasons: int,
    min_sd: float,
) -> np.ndarray:
    """`ramp_forecast` with `hinge_fit` in place of the straight line: the forecast follows the
    slope after the bend, with the least-squares prediction interval of the bend model
    (sd_k = s * sqrt(1 + f_k' (X'X)^-1 f_k), the bend taken as known)."""
    n, length = y.shape
    out = np.full((n, horizon, len(quantiles)), np.nan)
    if seasons > 0:
        usual = _usual_day(y, horizon, season, seasons)
        tail = slice(length - width, length + horizon)
        known = np.isfinite(usual[:, tail]).all(axis=1)
        usual = np.where(known[:, None], usual, 0.0)
    else:
        usual = np.zeros((n, length + horizon))
    deviation = y[:, length - width :] - usual[:, length - width : length]
    beta, bend, inverse, rss = hinge_fit(deviation, min(knee, max(1, width // 3)))
    count = np.isfinite(deviation).sum(axis=1).astype(np.float64)
    params = np.where(bend < width, 3.0, 2.0)
    sd = np.maximum(np.sqrt(rss / np.maximum(count - params, 1.0)), min_sd)
    future = width - 1 + np.arange(1, horizon + 1, dtype=np.float64)
    rows = np.stack(
        [
            np.ones((n, horizon)),
            np.broadcast_to(future, (n, horizon)),
            np.maximum(0.0, future[None, :] - bend[:, None]),
        ],
        axis=-1,
    )  # (N, H, 3)
    centre = usual[:, length:] + np.einsum("nhi,ni->nh", rows, beta)
    lever = np.einsum("nhi,nij,nhj->nh", rows, inverse, rows)
    spread = sd[:, None] * np.sqrt(1.0 + np.maximum(lever, 0.0))
    z = np.array([NormalDist().inv_cdf(q) for q in quantiles])
    values = centre[:, :, None] + spread[:, :, None] * z[None, None, :]
    good = count >= max(3, width // 2)
    out[good] = values[good]
    return out


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
