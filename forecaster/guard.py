"""The forecast guard: per series, serve what has forecast that series best.

A model trained on one kind of data can do worse than the simplest baselines on another (real
servers are noisier than the simulator, and most hosts lack some inputs). The guard makes the
service hold on any data by construction: for every instance and target quantity it keeps
score of each candidate method on that series' own recent history, serves a combination
weighted by those scores, and recalibrates the served band on the same series' errors.

Candidates (`METHODS`): the TFT where it serves; the seasonal mean (the same time of day over
the last three days) once two seasons are held; seasonal naive (24 h) once one season plus
`MIN_ERRORS` seasonal pairs are; the heuristic's non-seasonal method (damped trend or last
value), which always serves. Each is a full quantile forecast.

Scores come from two sources that run through the same code:

* a backtest on the history the service holds: when the guard first sees a fleet it queues
  `bootstrap_origins` past origins (every `spacing_steps`, newest first) and the engine
  forecasts the window truncated at up to `bootstrap_per_cycle` of them per cycle;
* online: every `spacing_steps` the cycle's own candidate forecasts are recorded.

A record also holds the served combination (before calibration) of that origin. It is scored
at the steps of `SCORE_STEPS` (1, 2, 3, 4, 6, 8, 12, ... the horizon) as soon as an observed actual
value for its target time is in the window. Each scored step goes into a ring buffer of
`memory` samples per (series, horizon band), one slot for all methods, holding each method's
quantile loss (mean pinball over p10/p50/p90) and its residuals against p10 and p90. Bands are
the exported horizons: a step belongs to the first label whose steps reach it (5m: 1; 30m:
2-6; 1h: 7-12; 2h: 13-24; 4h: 25-48; 8h: 49-96).

Weights, per series and band, from the summed losses L over the slots that every eligible
method (serving now, at least `min_samples` scores) has scored, so that all are judged on the
same targets: the model against the pool of baselines, odds `(L_model / L_best) **
-model_power` to 1 (near selection: on the simulator the model wins almost everywhere, on real
series it seldom does), and the baselines' share among them by `L ** -power` (a soft average:
their errors differ, and averaging them beats picking one). Without two eligible methods the
first available in `METHODS` order serves alone (the service's behaviour before the guard).
Weights between band horizons are interpolated linearly in sqrt(h), so the served path has no
jump; the served forecast is the weighted average of the quantiles.

Bands: split-conformal, per series and band, on the served combination's own residuals: the
p10 is moved by the floor(0.1 (n + 1))-th smallest of (actual - p10) and the p90 by the
ceil(0.9 (n + 1))-th of (actual - p90), so that about a tenth of the recent outcomes fell
below and a tenth above; the p50 is never moved. A band with fewer than `min_samples`
residuals keeps the combination's band. Arrays follow `forecaster.engine`: forecasts
(N, horizon, 3), p10/p50/p90.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from exporter.snapshot import CANDIDATE_METHODS, HORIZONS, QUANTILES
from forecaster.grid import HORIZON_STEPS, STEP_SECONDS

METHODS = CANDIDATE_METHODS
_SCORE_GRID = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
SCORE_STEPS = np.array([*(s for s in _SCORE_GRID if s < HORIZON_STEPS), HORIZON_STEPS])
_LABELS = tuple(sorted(HORIZONS, key=HORIZONS.__getitem__))
_BAND_STEPS = np.array([HORIZONS[label] for label in _LABELS])
_PROBS = np.asarray(QUANTILES, dtype=np.float64)
_SERVED = len(METHODS)  # the score slot of the served combination, before its calibration


def band_of(steps: np.ndarray) -> np.ndarray:
    """The horizon band (index into the exported horizon labels) of each step ahead."""
    return np.searchsorted(_BAND_STEPS, np.asarray(steps), side="left")


@dataclass(frozen=True)
class GuardParams:
    """The guard's knobs in grid steps (see the module docstring). The defaults and their
    meaning live in one place, `forecaster.config.GuardSettings`; `guard_params` maps them."""

    spacing_steps: int
    memory: int
    min_samples: int
    power: float
    model_power: float
    per_slot: bool
    calibration_prior: float
    half_life_steps: int  # > 0: losses weighted 0.5 ** (age / half life); 0: equal
    bootstrap_origins: int
    bootstrap_per_cycle: int


def default_params(step_seconds: int = STEP_SECONDS, **overrides: Any) -> GuardParams:
    """The configuration's defaults as `GuardParams`, with `overrides` (tests, replays)."""
    from forecaster.config import GuardSettings

    return replace(guard_params(GuardSettings(), step_seconds), **overrides)


def guard_params(settings: object, step_seconds: int) -> GuardParams:
    """`GuardParams` from the service's `GuardSettings` (durations in seconds)."""
    return GuardParams(
        spacing_steps=max(1, int(settings.spacing // step_seconds)),  # type: ignore[attr-defined]
        memory=settings.memory,  # type: ignore[attr-defined]
        min_samples=settings.min_samples,  # type: ignore[attr-defined]
        power=settings.power,  # type: ignore[attr-defined]
        model_power=settings.model_power,  # type: ignore[attr-defined]
        half_life_steps=int(settings.half_life // step_seconds),  # type: ignore[attr-defined]
        per_slot=settings.per_slot,  # type: ignore[attr-defined]
        calibration_prior=settings.calibration_prior,  # type: ignore[attr-defined]
        bootstrap_origins=settings.bootstrap_origins,  # type: ignore[attr-defined]
        bootstrap_per_cycle=settings.bootstrap_per_cycle,  # type: ignore[attr-defined]
    )


@dataclass
class _Record:
    """Candidate forecasts of one origin at `SCORE_STEPS`, and which cells are scored."""

    origin: int
    rows: np.ndarray  # state rows of the record's instances
    forecasts: np.ndarray  # (N, M, len(SCORE_STEPS), 3) float32, NaN where a method did not serve
    scored: np.ndarray  # (N, len(SCORE_STEPS)) bool


@dataclass
class _State:
    """Per quantity: the ring buffers of every series the guard has seen."""

    memory: int
    index: dict[str, int] = field(default_factory=dict)
    loss: np.ndarray = field(default=None)  # (S, B, R, M) float32
    low: np.ndarray = field(default=None)  # actual - p10, same shape
    high: np.ndarray = field(default=None)  # actual - p90
    scale: np.ndarray = field(default=None)  # (S, B, R) |actual|
    when: np.ndarray = field(default=None)  # (S, B, R) target time of the slot
    pos: np.ndarray = field(default=None)  # (S, B) next slot
    chosen: np.ndarray = field(default=None)  # (S, B) method index, -1 none yet

    def __post_init__(self) -> None:
        bands, methods = len(_LABELS), len(METHODS) + 1
        self.loss = np.full((0, bands, self.memory, methods), np.nan, dtype=np.float32)
        self.low = self.loss.copy()
        self.high = self.loss.copy()
        self.scale = np.full((0, bands, self.memory), np.nan, dtype=np.float32)
        self.when = np.full((0, bands, self.memory), -np.inf)
        self.pos = np.zeros((0, bands), dtype=np.int64)
        self.chosen = np.zeros((0, bands), dtype=np.int8)

    def rows(self, instances: Sequence[str]) -> np.ndarray:
        """State rows of `instances`, adding rows for new ones."""
        new = [name for name in instances if name not in self.index]
        if new:
            start = len(self.index)
            self.index.update({name: start + k for k, name in enumerate(new)})
            grow = len(new)
            self.loss = _grow(self.loss, grow, np.nan)
            self.low = _grow(self.low, grow, np.nan)
            self.high = _grow(self.high, grow, np.nan)
            self.scale = _grow(self.scale, grow, np.nan)
            self.when = _grow(self.when, grow, -np.inf)
            self.pos = _grow(self.pos, grow, 0)
            self.chosen = _grow(self.chosen, grow, -1)
        return np.array([self.index[name] for name in instances], dtype=np.int64)


@dataclass(frozen=True)
class Served:
    """What the guard serves for one quantity: forecasts, method per row, scores per method."""

    forecasts: np.ndarray  # (N, horizon, 3)
    methods: np.ndarray  # (N,) method names
    scores: np.ndarray  # (N, M) NQL of each method over its scored samples, NaN if none
    samples: np.ndarray  # (N, M) scored samples per method


class Guard:
    """Scores, choice and band calibration per series (see the module docstring)."""

    def __init__(self, params: GuardParams | None = None, step_seconds: int = STEP_SECONDS) -> None:
        self.params = params or default_params(step_seconds)
        self.step = step_seconds
        self._states: dict[str, _State] = {}
        self._records: dict[str, dict[int, _Record]] = {}
        self._last_recorded: int | None = None
        self._bootstrap: list[int] = []
        self._bootstrapped = False
        self.switches = 0

    # --- what the cycle asks ------------------------------------------------------------

    def bootstrap_due(self, end: int, usable_steps: int) -> list[int]:
        """Past origins (unix seconds) to backtest in this cycle, newest first; queued once."""
        if not self._bootstrapped:
            self._bootstrapped = True
            spacing = self.params.spacing_steps * self.step
            count = min(
                self.params.bootstrap_origins, (usable_steps - 1) // self.params.spacing_steps
            )
            self._bootstrap = [end - k * spacing for k in range(1, count + 1)]
        due = self._bootstrap[: self.params.bootstrap_per_cycle]
        del self._bootstrap[: len(due)]
        return due

    def record_due(self, origin: int) -> bool:
        """True when this origin is `spacing_steps` past the last recorded one."""
        last = self._last_recorded
        return last is None or origin - last >= self.params.spacing_steps * self.step

    def record(
        self,
        origin: int,
        instances: Sequence[str],
        candidates: Mapping[str, Mapping[str, np.ndarray]],
        *,
        online: bool = True,
    ) -> None:
        """Keep the candidate forecasts (quantity -> method -> (N, horizon, 3)) of `origin`."""
        if online:
            self._last_recorded = origin
        for quantity, by_method in candidates.items():
            state = self._state(quantity)
            rows = state.rows(instances)
            full, available = _stack(by_method)
            per_band = self._weights(state, rows, available, update=False)
            combined = _combine(full, _band_weights(per_band, np.arange(1, full.shape[2] + 1)))
            horizon = full.shape[2]
            steps = SCORE_STEPS[horizon >= SCORE_STEPS]
            stacked = np.full((len(rows), _SERVED + 1, len(SCORE_STEPS), 3), np.nan, np.float32)
            stacked[:, :_SERVED, : len(steps)] = full[:, :, steps - 1, :]
            stacked[:, _SERVED, : len(steps)] = combined[:, steps - 1, :]
            scored = np.zeros((len(rows), len(SCORE_STEPS)), dtype=bool)
            scored[:, len(steps) :] = True
            self._records.setdefault(quantity, {})[origin] = _Record(origin, rows, stacked, scored)

    def observe(
        self,
        quantity: str,
        instances: Sequence[str],
        end: int,
        values: np.ndarray,
        observed: np.ndarray,
    ) -> int:
        """Score recorded forecasts against the window's actual values; return how many cells.

        `values`/`observed` are (N, L) with column L-1 at time `end` (as `forecaster.clean`).
        """
        records = self._records.get(quantity)
        if not records:
            return 0
        state = self._state(quantity)
        width = values.shape[1]
        position = {row: r for r, row in enumerate(state.rows(instances))}
        count = 0
        for origin in sorted(records):
            record = records[origin]
            column = width - 1 - (end - (origin + SCORE_STEPS * self.step)) // self.step
            target_rows = np.array([position.get(int(row), -1) for row in record.rows])
            for g in np.flatnonzero((column >= 0) & (column < width)):
                todo = np.flatnonzero(~record.scored[:, g] & (target_rows >= 0))
                if not todo.size:
                    continue
                where = target_rows[todo]
                seen = observed[where, column[g]]
                todo, where = todo[seen], where[seen]
                if not todo.size:
                    continue
                y = values[where, column[g]].astype(np.float64)
                target = origin + int(SCORE_STEPS[g]) * self.step
                self._push(
                    state, record.rows[todo], (g, target), y, record.forecasts[todo, :, g, :]
                )
                record.scored[todo, g] = True
                count += todo.size
            if record.scored.all() or end - origin > (int(SCORE_STEPS[-1]) + 12) * self.step:
                del records[origin]
        return count

    def serve(
        self,
        quantity: str,
        instances: Sequence[str],
        candidates: Mapping[str, np.ndarray],
    ) -> Served:
        """The forecast to serve per row, weighted and calibrated (see the module docstring)."""
        state = self._state(quantity)
        rows = state.rows(instances)
        stacked, available = _stack(candidates)
        weights = _band_weights(
            self._weights(state, rows, available, update=True), np.arange(1, stacked.shape[2] + 1)
        )
        served = self._calibrate(state, rows, _combine(stacked, weights))
        primary = np.argmax(weights.sum(axis=1), axis=1)
        scores, samples = self._scores(state, rows)
        return Served(served, np.asarray(METHODS)[primary], scores, samples)

    def _scores(self, state: _State, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """NQL per row and method, on the slots that every method with a score has scored
        (so the figures compare; each method's own slots where fewer than `min_samples`
        are shared), and each method's count of scored slots."""
        loss = state.loss[rows][..., :_SERVED].astype(np.float64)
        finite = np.isfinite(loss)
        samples = finite.sum(axis=(1, 2))  # (n, M)
        shared = (finite | (samples == 0)[:, None, None, :]).all(axis=-1)  # (n, B, R)
        enough = shared.sum(axis=(1, 2)) >= self.params.min_samples
        used = np.where(enough[:, None, None, None], shared[..., None] & finite, finite)
        scale = np.where(used, state.scale[rows][..., None], 0.0).sum(axis=(1, 2))
        total = np.where(used, loss, 0.0).sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            scores = np.where((samples > 0) & (scale > 0), 2.0 * total / scale, np.nan)
        return scores, samples

    # --- internals ------------------------------------------------------------------------

    def _state(self, quantity: str) -> _State:
        if quantity not in self._states:
            self._states[quantity] = _State(self.params.memory)
        return self._states[quantity]

    def _push(
        self,
        state: _State,
        rows: np.ndarray,
        at: tuple[int, int],
        y: np.ndarray,
        forecasts: np.ndarray,
    ) -> None:
        """One scored step per row: every method's loss and residuals into the band's ring."""
        g, target = at
        band = int(band_of(SCORE_STEPS[g]))
        slot = state.pos[rows, band] % state.memory
        state.pos[rows, band] += 1
        error = y[:, None, None] - forecasts.astype(np.float64)  # (n, M, 3)
        pinball = np.maximum(_PROBS * error, (_PROBS - 1.0) * error).mean(axis=-1)
        state.loss[rows, band, slot] = pinball
        state.low[rows, band, slot] = error[..., 0]
        state.high[rows, band, slot] = error[..., -1]
        state.scale[rows, band, slot] = np.abs(y)
        state.when[rows, band, slot] = target

    def _weights(
        self, state: _State, rows: np.ndarray, available: np.ndarray, *, update: bool
    ) -> np.ndarray:
        """Weights (n, B, M) per row and band: loss ** -`power`, normalised, over the slots
        every eligible method scored; one-hot on the first available method without them."""
        loss = state.loss[rows][..., :_SERVED].astype(np.float64)  # (n, B, R, M)
        finite = np.isfinite(loss)
        samples = finite.sum(axis=2)  # (n, B, M)
        eligible = available[:, None, :] & (samples >= self.params.min_samples)
        common = (finite | ~eligible[:, :, None, :]).all(axis=-1)  # (n, B, R)
        enough = common.sum(axis=2) >= self.params.min_samples
        decay = np.ones(common.shape)
        if self.params.half_life_steps > 0:
            when = state.when[rows]
            newest = when.max(axis=(1, 2), keepdims=True)
            age = (newest - when) / (self.params.half_life_steps * self.step)
            decay = np.where(np.isfinite(age), 0.5**age, 0.0)
        used = common[..., None] & finite
        if self.params.per_slot:  # each scored target counts alike: loss over the slot's mean
            mean = np.where(used, loss, 0.0).sum(axis=-1) / np.maximum(used.sum(axis=-1), 1)
            loss = loss / np.maximum(mean, 1e-12)[..., None]
        totals = np.where(used, loss * decay[..., None], 0.0).sum(axis=2)  # (n, B, M)
        decided = enough & (eligible.sum(axis=2) >= 2)
        weights = _pooled_weights(
            totals, eligible & decided[..., None], self.params.power, self.params.model_power
        )
        fallback = np.eye(len(METHODS))[np.argmax(available, axis=1)][:, None, :]
        weights = np.where(weights.sum(axis=2, keepdims=True) > 0, weights, fallback)
        if update:
            primary = np.argmax(weights, axis=2)
            incumbent = state.chosen[rows]
            self.switches += int(np.count_nonzero((incumbent >= 0) & (primary != incumbent)))
            state.chosen[rows] = primary
        return weights

    def _calibrate(self, state: _State, rows: np.ndarray, combined: np.ndarray) -> np.ndarray:
        """The combination's p10 and p90 moved by its own recent residual quantiles, per band.

        Split-conformal with the finite-sample rank: of n residuals the lower shift is the
        floor(0.1 (n + 1))-th smallest (at least the first) and the upper the ceil(0.9 (n + 1))-th
        (at most the last). Fewer than `min_samples` residuals: no shift.
        """
        low = state.low[rows][..., _SERVED].astype(np.float64)  # (n, B, R)
        high = state.high[rows][..., _SERVED].astype(np.float64)
        count = np.isfinite(low).sum(axis=-1)
        shift_low = _rank(low, count, np.floor(0.1 * (count + 1)).astype(np.int64))
        shift_high = _rank(high, count, np.ceil(0.9 * (count + 1)).astype(np.int64))
        ok = count >= self.params.min_samples
        trust = count / (count + self.params.calibration_prior)  # few residuals: small moves
        steps = np.arange(1, combined.shape[1] + 1)
        shift_low = _interpolate(np.where(ok, shift_low * trust, 0.0), steps)
        shift_high = _interpolate(np.where(ok, shift_high * trust, 0.0), steps)
        out = combined.copy()
        out[..., 0] = np.minimum(combined[..., 0] + shift_low, combined[..., 1])
        out[..., 2] = np.maximum(combined[..., 2] + shift_high, combined[..., 1])
        return out


def _pooled_weights(
    totals: np.ndarray, eligible: np.ndarray, power: float, model_power: float
) -> np.ndarray:
    """Weights (n, B, M) from summed losses: the model against the pool of baselines (the
    best one's loss), `(L_model / L_best) ** -model_power` to 1, then the baselines' share
    among them by `L ** -power`. All zero where nothing is eligible."""
    worst = np.where(eligible, totals, 0.0).max(axis=2, keepdims=True)
    relative = np.where(eligible, np.maximum(totals / np.where(worst > 0, worst, 1.0), 1e-6), 0.0)
    model = METHODS.index("tft")
    baseline = np.ones(len(METHODS), dtype=bool)
    baseline[model] = False
    within = np.where(eligible & baseline, np.where(relative > 0, relative, 1.0) ** -power, 0.0)
    share = within.sum(axis=2, keepdims=True)
    within = np.where(share > 0, within / np.where(share > 0, share, 1.0), 0.0)
    best = np.where(eligible & baseline, relative, np.inf).min(axis=2)
    usable = eligible[..., model] & np.isfinite(best)
    ratio = np.where(usable, relative[..., model], 1.0) / np.where(usable, best, 1.0)
    odds = np.where(usable, ratio**-model_power, 0.0)
    has_pool = share[..., 0] > 0
    model_weight = np.where(has_pool, odds / (1.0 + odds), eligible[..., model].astype(float))
    weights = within * (1.0 - model_weight)[..., None]
    weights[..., model] = model_weight
    return weights


def _stack(candidates: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Candidates as (n, M, horizon, 3) in `METHODS` order (NaN where absent), and which rows
    each method serves (n, M)."""
    first = next(iter(candidates.values()))
    stacked = np.full((first.shape[0], len(METHODS), *first.shape[1:]), np.nan)
    for m, method in enumerate(METHODS):
        if method in candidates:
            stacked[:, m] = candidates[method]
    return stacked, np.isfinite(stacked).all(axis=(2, 3))


def _combine(stacked: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted quantile average (n, horizon, 3) of the candidates by per-step weights
    (n, horizon, M); NaN where none serves."""
    safe = np.where(np.isfinite(stacked), stacked, 0.0)
    combined = np.sort(np.einsum("nhm,nmhq->nhq", weights, safe), axis=-1)
    served_any = np.isfinite(stacked).all(axis=(2, 3)).any(axis=1)
    combined[~served_any] = np.nan
    return combined


def _rank(values: np.ndarray, count: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """The `rank`-th smallest finite value along the last axis (1-based, clipped to 1..count);
    NaN where there is none."""
    ordered = np.sort(values, axis=-1)  # NaN last
    index = np.clip(rank, 1, np.maximum(count, 1)) - 1
    picked = np.take_along_axis(ordered, index[..., None], axis=-1)[..., 0]
    return np.where(count > 0, picked, np.nan)


def _band_weights(per_band: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """(n, B, M) weights at the band horizons to per-step weights (n, len(steps), M), linear
    in sqrt(h) in between, so the served path has no jump where bands meet."""
    n, bands, methods = per_band.shape
    flat = np.moveaxis(per_band, -1, 1).reshape(n * methods, bands)
    return np.moveaxis(_interpolate(flat, steps).reshape(n, methods, steps.size), 1, -1)


def _interpolate(per_band: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """(n, B) values at the band horizons to (n, len(steps)), linear in sqrt(h), flat beyond."""
    root = np.sqrt(_BAND_STEPS.astype(np.float64))
    at = np.clip(np.sqrt(steps.astype(np.float64)), root[0], root[-1])
    upper = np.clip(np.searchsorted(root, at), 1, root.size - 1)
    weight = (at - root[upper - 1]) / (root[upper] - root[upper - 1])
    low, high = per_band[:, upper - 1], per_band[:, upper]
    return low + (high - low) * weight[None, :]


def _grow(array: np.ndarray, rows: int, fill: float) -> np.ndarray:
    extra = np.full((rows, *array.shape[1:]), fill, dtype=array.dtype)
    return np.concatenate([array, extra], axis=0)
