"""Online accuracy: forecasts made earlier, scored once the actual values arrived.

The service calls `OnlineAccuracy.record` with every forecast it makes and
`OnlineAccuracy.observe` with the actual values it fetched; `summary` gives the realised NQL and
p10-p90 coverage per (quantity, horizon) over the last `window_seconds` of target times, which
the exporter serves as `forecaster_realized_nql` and `forecaster_interval_coverage_ratio`.

Each forecast (origin, instance, quantity, horizon) is scored exactly once: when an observed,
finite actual value for its target time `origin + steps * step` is first seen. Scores are kept
as sums per (quantity, horizon, target time), so the summary is exact and memory is bounded by
`window_seconds / step` buckets per pair. A forecast record is kept only while its targets may
still arrive: until the newest known time passes its last target by `late_seconds`. Stored
quantiles are float32 (ample for accuracy figures; half the memory of float64).

NQL is the TFT paper's q-risk, as `training.metrics.nql`: for each quantile q,
`2 * sum(pinball_q) / sum(|y|)`, then the mean over the quantiles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from exporter.snapshot import HORIZONS, QUANTILES, Accuracy
from forecaster.grid import STEP_SECONDS

DEFAULT_WINDOW_SECONDS = 86_400.0
DEFAULT_LATE_SECONDS = 3_600.0
_PROBS = np.array(QUANTILES, dtype=np.float64)
# Per bucket: pinball sums per quantile, sum |y|, count inside [p10, p90], count.
_SUMS = len(QUANTILES) + 3


@dataclass
class _Record:
    """The exported horizons' quantiles of one forecast origin, and what is already scored."""

    origin: float
    instances: pd.Index
    quantiles: dict[str, np.ndarray]  # quantity -> (N, K, 3) float32, K = usable horizons
    scored: dict[str, np.ndarray]  # quantity -> (N, K) bool


@dataclass(frozen=True)
class _Actuals:
    """Actual values (N, L) right-aligned on the grid, which cells count, time of column 0."""

    values: np.ndarray
    seen: np.ndarray
    start: float


class OnlineAccuracy:
    """Realised accuracy of the forecasts this service made (see the module docstring).

    `horizons` maps a label to its steps ahead (1-based); times are unix seconds on the
    `step_seconds` grid. Instance names in one call must be unique (else `ValueError`).
    """

    def __init__(
        self,
        horizons: Mapping[str, int] = HORIZONS,
        step_seconds: int = STEP_SECONDS,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
        late_seconds: float = DEFAULT_LATE_SECONDS,
    ) -> None:
        self._labels = tuple(sorted(horizons, key=lambda label: horizons[label]))
        self._steps = np.array([horizons[label] for label in self._labels], dtype=np.int64)
        self._step = step_seconds
        self._window = float(window_seconds)
        self._late = float(late_seconds)
        self._records: dict[float, _Record] = {}
        self._buckets: dict[tuple[str, str, float], np.ndarray] = {}
        self._latest = -np.inf

    @property
    def records(self) -> int:
        """How many forecast origins are held."""
        return len(self._records)

    def record(
        self, origin: float, instances: Sequence[str], forecasts: Mapping[str, np.ndarray]
    ) -> None:
        """Keep the exported horizons of one cycle's forecasts (quantity -> (N, H, 3)).

        A repeated origin replaces the earlier record; NaN quantiles are kept and never scored.
        """
        origin = float(origin)
        index = self._shared_index(instances)
        quantiles, scored = {}, {}
        for quantity, forecast in forecasts.items():
            values = np.asarray(forecast)
            if values.ndim != 3 or values.shape[0] != len(index) or values.shape[2] != 3:
                raise ValueError(f"{quantity}: expected ({len(index)}, H, 3), got {values.shape}")
            usable = self._steps <= values.shape[1]
            quantiles[quantity] = values[:, self._steps[usable] - 1, :].astype(np.float32)
            scored[quantity] = np.zeros((len(index), int(usable.sum())), dtype=bool)
        self._records[origin] = _Record(origin, index, quantiles, scored)
        self._advance(origin)

    def observe(
        self,
        quantity: str,
        instances: Sequence[str],
        end: float,
        values: np.ndarray,
        observed: np.ndarray,
    ) -> int:
        """Score the forecasts whose targets lie among these actual values; return how many.

        `values` and `observed` are (N, L) on the grid, right-aligned: column L-1 is time `end`,
        column j is `end - (L - 1 - j) * step`. Only observed, finite cells count; instances
        never forecast are ignored.
        """
        actual = np.asarray(values, dtype=np.float64)
        seen = np.asarray(observed, dtype=bool) & np.isfinite(actual)
        if actual.ndim != 2 or seen.shape != actual.shape or actual.shape[0] != len(instances):
            raise ValueError(f"values and observed must be ({len(instances)}, L)")
        end = float(end)
        start = end - (actual.shape[1] - 1) * self._step
        target = pd.Index(list(instances))
        if not target.is_unique:
            raise ValueError("instances must be unique")
        actuals = _Actuals(actual, seen, start)
        indexers: dict[int, np.ndarray] = {}
        count = 0
        for record in self._records.values():
            if quantity not in record.quantiles:
                continue
            times = record.origin + self._steps[: record.scored[quantity].shape[1]] * self._step
            columns = np.flatnonzero((times >= start) & (times <= end))
            if not len(columns):
                continue
            key = id(record.instances)
            if key not in indexers:
                indexers[key] = target.get_indexer(record.instances)
            for k in columns:
                count += self._score(record, quantity, int(k), indexers[key], actuals)
        self._advance(end)
        return count

    def summary(self, now: float) -> tuple[Accuracy, ...]:
        """Accuracy per (quantity, horizon) over targets in (now - window, now], by horizon.

        Pairs with no sample are left out, and so are those whose actual values sum to 0
        (NQL undefined).
        """
        self._expire(now)
        totals: dict[tuple[str, str], np.ndarray] = {}
        for (quantity, label, time), sums in self._buckets.items():
            if now - self._window < time <= now:
                key = (quantity, label)
                totals[key] = totals.get(key, np.zeros(_SUMS)) + sums
        order = {label: i for i, label in enumerate(self._labels)}
        out = []
        for quantity, label in sorted(totals, key=lambda key: (key[0], order[key[1]])):
            sums = totals[quantity, label]
            pinball, abs_y, inside, samples = sums[:3], sums[3], sums[4], sums[5]
            if samples < 1 or abs_y <= 0:
                continue
            nql = float(np.mean(2.0 * pinball / abs_y))
            out.append(Accuracy(quantity, label, nql, float(inside / samples), int(samples)))
        return tuple(out)

    def _score(
        self, record: _Record, quantity: str, k: int, rows: np.ndarray, actuals: _Actuals
    ) -> int:
        """Score horizon column `k` of one record against the actual values; return the count.

        `rows` maps the record's instances to rows of the actual values (-1: not there).
        """
        actual, seen = actuals.values, actuals.seen
        time = record.origin + int(self._steps[k]) * self._step
        column = round((time - actuals.start) / self._step)
        forecast = record.quantiles[quantity][:, k, :].astype(np.float64)
        scored = record.scored[quantity][:, k]
        present = rows >= 0
        candidate = np.flatnonzero(present & ~scored)
        if not len(candidate):
            return 0
        hits = seen[rows[candidate], column] & np.isfinite(forecast[candidate]).all(axis=1)
        chosen = candidate[hits]
        if not len(chosen):
            return 0
        scored[chosen] = True
        y = actual[rows[chosen], column]
        f = np.sort(forecast[chosen], axis=1)
        error = y[:, None] - f
        pinball = np.maximum(_PROBS * error, (_PROBS - 1.0) * error).sum(axis=0)
        inside = np.count_nonzero((f[:, 0] <= y) & (y <= f[:, 2]))
        sums = np.concatenate([pinball, [np.abs(y).sum(), inside, len(chosen)]])
        key = (quantity, self._labels[k], time)
        self._buckets[key] = self._buckets.get(key, np.zeros(_SUMS)) + sums
        return len(chosen)

    def _shared_index(self, instances: Sequence[str]) -> pd.Index:
        """The instances as an index, shared with the newest record when equal (cheap lookups)."""
        index = pd.Index(list(instances))
        if not index.is_unique:
            raise ValueError("instances must be unique")
        if self._records:
            newest = self._records[max(self._records)].instances
            if newest.equals(index):
                return newest
        return index

    def _advance(self, time: float) -> None:
        self._latest = max(self._latest, time)
        self._expire(self._latest)

    def _expire(self, now: float) -> None:
        """Drop records whose last target is older than `late_seconds`, and old buckets."""
        keep_after = now - self._late - int(self._steps.max(initial=0)) * self._step
        for origin in [o for o in self._records if o < keep_after]:
            del self._records[origin]
        oldest = now - self._window
        for key in [key for key in self._buckets if key[2] <= oldest]:
            del self._buckets[key]
