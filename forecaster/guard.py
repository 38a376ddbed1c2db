"""The forecast guard: per series, serve the method that has forecast that series best.

A model trained on one kind of data can do worse than the simplest baselines on another (real
servers are noisier than the simulator, and most hosts lack some inputs). The guard makes the
service hold on any data by construction: for every instance and target quantity it keeps
score of each candidate method on that series' own recent history and serves the best one, its
band recalibrated on the same series' realised errors.

Candidates (`METHODS`): the TFT where it serves, seasonal naive (24 h) once the window holds a
season plus `MIN_ERRORS` seasonal pairs, and the heuristic's non-seasonal method (damped
trend or last value), which always serves. Each is a full quantile forecast.

Scores come from two sources that run through the same code:

* a backtest on the history the service holds: when the guard first sees a fleet it queues
  `bootstrap_origins` past origins (every `spacing_steps`, newest first) and forecasts the
  window truncated at up to `bootstrap_per_cycle` of them per cycle, with every candidate;
* online: every `spacing_steps` the cycle's own candidate forecasts are recorded.

A recorded forecast is scored at the steps of `SCORE_STEPS` (1, 2, 3, 4, 6, 8, 12, ... 96) as
soon as an observed actual value for its target time is in the window. Each scored step goes
into a ring buffer of `memory` samples per (series, horizon band), one slot for all methods,
holding each method's quantile loss (mean pinball over p10/p50/p90) and its residuals against
p10 and p90. Bands are the exported horizons: a step belongs to the first label whose steps
reach it (5m: 1; 30m: 2-6; 1h: 7-12; 2h: 13-24; 4h: 25-48; 8h: 49-96).

Choice, per series: among the methods that serve now and have at least `min_samples` scored
samples, compare the summed loss over the slots every one of them has scored (so they are
judged on the same targets); the incumbent is kept unless another's loss is lower by more than
`margin` (no flapping). Without an eligible comparison the order of preference is TFT, seasonal
naive, heuristic (the service's behaviour before the guard).

Bands: split-conformal, per series and band, on the served method's own residuals: the p10 is
moved by the 0.1 quantile of (actual - p10) and the p90 by the 0.9 quantile of (actual - p90),
so that a tenth of the recent outcomes fell below and a tenth above; the p50 is never moved.
A band with fewer than `min_samples` residuals keeps the method's own band. Offsets between
band horizons are interpolated linearly in sqrt(h). Arrays follow `forecaster.engine`:
forecasts (N, horizon, 3), p10/p50/p90.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from exporter.snapshot import HORIZONS, QUANTILES

METHODS = ("tft", "seasonal_naive", "heuristic")
SCORE_STEPS = np.array([1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96])
_LABELS = tuple(sorted(HORIZONS, key=HORIZONS.__getitem__))
_BAND_STEPS = np.array([HORIZONS[label] for label in _LABELS])
_PROBS = np.asarray(QUANTILES, dtype=np.float64)


def band_of(steps: np.ndarray) -> np.ndarray:
    """The horizon band (index into the exported horizon labels) of each step ahead."""
    return np.searchsorted(_BAND_STEPS, np.asarray(steps), side="left")


@dataclass(frozen=True)
class GuardParams:
    """The guard's knobs (see the module docstring); `forecaster.config.GuardSettings` maps here."""

    spacing_steps: int = 12
    memory: int = 48
    min_samples: int = 12
    margin: float = 0.1
    bootstrap_origins: int = 24
    bootstrap_per_cycle: int = 4


def guard_params(settings: object, step_seconds: int) -> GuardParams:
    """`GuardParams` from the service's `GuardSettings` (durations in seconds)."""
    return GuardParams(
        spacing_steps=max(1, int(settings.spacing // step_seconds)),  # type: ignore[attr-defined]
        memory=settings.memory,  # type: ignore[attr-defined]
        min_samples=settings.min_samples,  # type: ignore[attr-defined]
        margin=settings.margin,  # type: ignore[attr-defined]
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
    pos: np.ndarray = field(default=None)  # (S, B) next slot
    chosen: np.ndarray = field(default=None)  # (S,) method index, -1 none yet

    def __post_init__(self) -> None:
        bands, methods = len(_LABELS), len(METHODS)
        self.loss = np.full((0, bands, self.memory, methods), np.nan, dtype=np.float32)
        self.low = self.loss.copy()
        self.high = self.loss.copy()
        self.scale = np.full((0, bands, self.memory), np.nan, dtype=np.float32)
        self.pos = np.zeros((0, bands), dtype=np.int64)
        self.chosen = np.zeros(0, dtype=np.int8)

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

    def __init__(self, params: GuardParams = GuardParams(), step_seconds: int = 300) -> None:
        self.params = params
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
            horizon = next(iter(by_method.values())).shape[1]
            steps = SCORE_STEPS[horizon >= SCORE_STEPS]
            stacked = np.full((len(rows), len(METHODS), len(SCORE_STEPS), 3), np.nan, np.float32)
            for m, method in enumerate(METHODS):
                if method in by_method:
                    stacked[:, m, : len(steps)] = by_method[method][:, steps - 1, :]
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
                self._push(state, record.rows[todo], g, y, record.forecasts[todo, :, g, :])
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
        """The forecast to serve per row, chosen and calibrated (see the module docstring)."""
        state = self._state(quantity)
        rows = state.rows(instances)
        n = len(rows)
        horizon = next(iter(candidates.values())).shape[1]
        stacked = np.full((n, len(METHODS), horizon, 3), np.nan)
        for m, method in enumerate(METHODS):
            if method in candidates:
                stacked[:, m] = candidates[method]
        available = np.isfinite(stacked).all(axis=(2, 3))
        loss = state.loss[rows]  # (n, B, R, M)
        finite = np.isfinite(loss)
        samples = finite.sum(axis=(1, 2))
        eligible = available & (samples >= self.params.min_samples)
        choice = self._choose(state, rows, (loss, finite), eligible, available)
        served = stacked[np.arange(n), choice]
        served = self._calibrate(state, rows, choice, served)
        scale = np.nansum(np.where(finite, state.scale[rows][..., None], np.nan), axis=(1, 2))
        total = np.where(finite, loss, 0.0).sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            scores = np.where(samples > 0, 2.0 * total / scale, np.nan)
        return Served(served, np.asarray(METHODS)[choice], scores, samples)

    # --- internals ------------------------------------------------------------------------

    def _state(self, quantity: str) -> _State:
        if quantity not in self._states:
            self._states[quantity] = _State(self.params.memory)
        return self._states[quantity]

    def _push(
        self, state: _State, rows: np.ndarray, g: int, y: np.ndarray, forecasts: np.ndarray
    ) -> None:
        """One scored step per row: every method's loss and residuals into the band's ring."""
        band = int(band_of(SCORE_STEPS[g]))
        slot = state.pos[rows, band] % state.memory
        state.pos[rows, band] += 1
        error = y[:, None, None] - forecasts.astype(np.float64)  # (n, M, 3)
        pinball = np.maximum(_PROBS * error, (_PROBS - 1.0) * error).mean(axis=-1)
        state.loss[rows, band, slot] = pinball
        state.low[rows, band, slot] = error[..., 0]
        state.high[rows, band, slot] = error[..., -1]
        state.scale[rows, band, slot] = np.abs(y)

    def _choose(
        self,
        state: _State,
        rows: np.ndarray,
        scored: tuple[np.ndarray, np.ndarray],
        eligible: np.ndarray,
        available: np.ndarray,
    ) -> np.ndarray:
        """Method index per row: best on common slots with hysteresis, else the preference."""
        loss, finite = scored
        n = len(rows)
        preference = np.argmax(available, axis=1)  # first available in METHODS order
        common = (finite | ~eligible[:, None, None, :]).all(axis=-1)  # slots all eligible scored
        enough = common.sum(axis=(1, 2)) >= self.params.min_samples
        totals = np.where(common[..., None], np.where(finite, loss, 0.0), 0.0).sum(axis=(1, 2))
        totals = np.where(eligible, totals, np.inf)
        best = np.argmin(totals, axis=1)
        decided = enough & (eligible.sum(axis=1) >= 2)
        incumbent = state.chosen[rows].astype(np.int64)
        held = (incumbent >= 0) & available[np.arange(n), np.maximum(incumbent, 0)]
        keep_score = totals[np.arange(n), np.maximum(incumbent, 0)]
        beats = totals[np.arange(n), best] < keep_score * (1.0 - self.params.margin)
        choice = np.where(decided, np.where(held & ~beats, incumbent, best), preference)
        keep = ~decided & held & eligible[np.arange(n), np.maximum(incumbent, 0)]
        choice = np.where(keep, incumbent, choice)
        changed = (incumbent >= 0) & (choice != incumbent)
        self.switches += int(np.count_nonzero(changed))
        state.chosen[rows] = choice
        return choice

    def _calibrate(
        self, state: _State, rows: np.ndarray, choice: np.ndarray, served: np.ndarray
    ) -> np.ndarray:
        """Move p10 and p90 by the served method's recent residual quantiles, per band."""
        n, horizon = served.shape[:2]
        take = np.arange(n)
        low = state.low[rows][take, :, :, choice].astype(np.float64)  # (n, B, R)
        high = state.high[rows][take, :, :, choice].astype(np.float64)
        count = np.isfinite(low).sum(axis=-1)
        with np.errstate(all="ignore"):
            shift_low = _nan_quantile(low, 0.1)
            shift_high = _nan_quantile(high, 0.9)
        ok = count >= self.params.min_samples
        shift_low = np.where(ok, shift_low, 0.0)
        shift_high = np.where(ok, shift_high, 0.0)
        steps = np.arange(1, horizon + 1)
        shift_low = _interpolate(shift_low, steps)
        shift_high = _interpolate(shift_high, steps)
        out = served.copy()
        out[..., 0] = np.minimum(served[..., 0] + shift_low, served[..., 1])
        out[..., 2] = np.maximum(served[..., 2] + shift_high, served[..., 1])
        return out


def _nan_quantile(values: np.ndarray, q: float) -> np.ndarray:
    """Quantile along the last axis ignoring NaN; NaN where a row has none."""
    ordered = np.sort(values, axis=-1)
    count = np.isfinite(ordered).sum(axis=-1)
    last = np.maximum(count - 1, 0)
    position = q * last
    below = np.floor(position).astype(np.intp)
    low = np.take_along_axis(ordered, below[..., None], axis=-1)[..., 0]
    high = np.take_along_axis(ordered, np.minimum(below + 1, last)[..., None], axis=-1)[..., 0]
    return np.where(count > 0, low + (high - low) * (position - below), np.nan)


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
