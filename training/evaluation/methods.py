"""The alerting methods compared by `training.evaluation`, their tuning, and their scores.

* `forecast_rules`: the `NodeForecast*` rules of alerts.yml on the replayed breach probabilities
  (warning and critical; `forecast_rules_critical_only` the critical ones alone), as written.
* Baselines on the history itself, each tuned per quantity on the tuning history by
  `alerts.select` over threshold = factor x the critical threshold and `for:` 5m or 10m:
  `static_threshold` (the current value, reactive) and `predict_linear_<W>_<H>`
  (`predict_linear(x[W], H) > threshold`, W 1h or 6h, H 1h or 4h).
* Optionally `forecast_rules_tuned_probability`: our rules with their probability threshold
  tuned the same way on a replay of the tuning history.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from forecaster.history_files import read_history
from forecaster.model.dataset import epoch_seconds
from forecaster.trend import predict_linear
from simulator.schedule import PRECURSOR_SHAPES, SHAPES
from training.backtest import Grid, to_grid
from training.evaluation import alerts as ar
from training.replay import FanRequest, Replay, first_origin

log = logging.getLogger(__name__)
OURS = "forecast_rules"
# Candidate thresholds = factor x the critical threshold: 0.40-1.50 by 0.01, then to 3.00 by 0.05
# (a 4 h extrapolation of a noisy series overshoots the threshold by far).
FACTORS = tuple(round(0.40 + 0.01 * i, 2) for i in range(111)) + tuple(
    round(1.55 + 0.05 * i, 2) for i in range(30)
)
PROBABILITIES = tuple(round(0.05 * i, 2) for i in range(1, 20))
FOR_OPTIONS = (300.0, 600.0)
# (name, window in steps, seconds ahead): predict_linear(x[1h|6h], 1h|4h)
PREDICT_LINEAR = (
    ("predict_linear_1h_1h", 12, 3600),
    ("predict_linear_1h_4h", 12, 4 * 3600),
    ("predict_linear_6h_1h", 72, 3600),
    ("predict_linear_6h_4h", 72, 4 * 3600),
)
FAN_QUANTILES = (0.25, 0.5, 0.75)  # incidents kept for fan charts: precursor-length quantiles


@dataclass(frozen=True)
class Dataset:
    """A history directory: the WIDE frame, its grid, its incidents and metadata."""

    path: Path
    wide: pd.DataFrame
    grid: Grid
    incidents: pd.DataFrame
    meta: dict[str, Any]

    def events(self, quantity: str, shapes: Collection[str] = PRECURSOR_SHAPES) -> ar.Events:
        """Incidents of `quantity` as events: start = breach, end = incident end; those of
        `shapes` are scored (by default every shape with a precursor: a sudden breach is not
        asked of an early warning, but an alert just before one is not false)."""
        rows = self.incidents[self.incidents["quantity"] == quantity]
        rows = rows[rows["instance"].isin(self.grid.instances)]
        index = pd.Index(self.grid.instances).get_indexer(rows["instance"])
        return ar.Events(
            index.astype(np.int64),
            epoch_seconds(rows["breach"]).astype(np.int64),
            epoch_seconds(rows["end"]).astype(np.int64),
            incident_shapes(rows).isin(list(shapes)).to_numpy(),
        )


def incident_shapes(incidents: pd.DataFrame) -> pd.Series:
    """Each incident's precursor shape (histories written before shapes existed: smooth)."""
    if "shape" in incidents:
        return incidents["shape"].astype(str)
    return pd.Series("smooth", index=incidents.index)


def gradual(incidents: pd.DataFrame) -> pd.DataFrame:
    """The incidents with a precursor (every shape but sudden)."""
    return incidents[incident_shapes(incidents).isin(PRECURSOR_SHAPES)]


def load_dataset(path: Path, names: list[str]) -> Dataset:
    """Read `server_metrics.parquet`, `incidents.parquet` and `metrics_metadata.json`."""
    wide = read_history(path, names)
    meta_path = path / "metrics_metadata.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    incidents = pd.read_parquet(path / "incidents.parquet")
    return Dataset(path, wide, to_grid(wide, names), incidents, meta)


@dataclass(frozen=True)
class Method:
    """One alerting method's firing (N, T) per quantity, and its parameters."""

    name: str
    label: str
    firing: dict[str, np.ndarray]
    params: dict[str, dict[str, Any]]
    tuning: dict[str, ar.Score] | None = None


def rule_firing(
    state: Replay,
    rules: tuple[ar.ForecastRule, ...],
    step: int,
    severity: str | None = None,
    threshold: Mapping[str, float] | None = None,
) -> dict[str, np.ndarray]:
    """Firing per quantity of the rules (optionally one severity, or other thresholds)."""
    shape = (len(state.instances), state.times.size)
    out = {}
    for quantity in dict.fromkeys(r.quantity for r in rules):
        chosen = [r for r in rules if r.quantity == quantity and severity in (None, r.severity)]
        if threshold is not None and quantity in threshold:
            chosen = [replace(r, threshold=threshold[quantity]) for r in chosen]
        conditions = [
            (r.condition(state.probability[quantity][r.window]), r.for_seconds) for r in chosen
        ]
        out[quantity] = ar.fire(conditions, step, shape)
    return out


Signal = Callable[[np.ndarray], np.ndarray]


def families(step: int) -> dict[str, tuple[str, Signal]]:
    """Baseline families: name -> (label, signal on a (N, T) grid column)."""
    out: dict[str, tuple[str, Signal]] = {
        "static_threshold": ("static threshold on the current value", lambda y: y)
    }
    for name, window, ahead in PREDICT_LINEAR:
        label = f"predict_linear(x[{window * step // 3600}h], {ahead // 3600}h)"
        out[name] = (label, lambda y, w=window, a=ahead: predict_linear(y, w, a, step))
    return out


def origin_columns(grid: Grid, times: np.ndarray) -> np.ndarray:
    """Grid column of each origin."""
    return np.searchsorted(grid.times, times)


def tune_family(
    signal: Signal, data: Dataset, times: np.ndarray, quantity: str, *, critical: float, step: int
) -> tuple[dict[str, Any], ar.Score]:
    """The (threshold, for) of one baseline on one quantity chosen by `select` on `data`."""
    values = signal(data.grid.column(quantity))[:, origin_columns(data.grid, times)]
    events = data.events(quantity)
    candidates, scores = [], []
    for factor in FACTORS:
        with np.errstate(invalid="ignore"):
            condition = values > factor * critical
        for for_seconds in FOR_OPTIONS:
            firing = ar.hold_for(condition, ar.evaluations(for_seconds, step))
            candidates.append({"threshold": round(factor * critical, 6), "for_s": for_seconds})
            scores.append(ar.score(firing, times, events))
    best = ar.select(scores)
    return candidates[best], scores[best]


def baseline_methods(
    tune: Dataset, data: Dataset, times: np.ndarray, thresholds: Mapping[str, float], warmup: int
) -> list[Method]:
    """Every baseline family tuned on `tune`, applied to `data` at `times`."""
    step = int(data.grid.times[1] - data.grid.times[0])
    tune_times = tune.grid.times[first_origin(tune.grid.times, warmup) :]
    methods = []
    for name, (label, signal) in families(step).items():
        firing, params, tuning = {}, {}, {}
        for quantity, critical in thresholds.items():
            chosen, tuning[quantity] = tune_family(
                signal, tune, tune_times, quantity, critical=critical, step=step
            )
            values = signal(data.grid.column(quantity))[:, origin_columns(data.grid, times)]
            with np.errstate(invalid="ignore"):
                condition = values > chosen["threshold"]
            firing[quantity] = ar.hold_for(condition, ar.evaluations(chosen["for_s"], step))
            params[quantity] = chosen
        methods.append(Method(name, label, firing, params, tuning))
        log.info("tuned %s: %s", name, params)
    return methods


def tuned_probability(tune_state: Replay, tune: Dataset, state: Replay, rules, step: int) -> Method:
    """Our rules with one probability threshold per quantity tuned on the tuning replay."""
    best: dict[str, float] = {}
    tuning: dict[str, ar.Score] = {}
    for quantity in dict.fromkeys(r.quantity for r in rules):
        scores = []
        for p in PROBABILITIES:
            firing = rule_firing(tune_state, rules, step, threshold={quantity: p})[quantity]
            scores.append(ar.score(firing, tune_state.times, tune.events(quantity)))
        pick = ar.select(scores)
        best[quantity], tuning[quantity] = PROBABILITIES[pick], scores[pick]
    firing = rule_firing(state, rules, step, threshold=best)
    params = {q: {"probability_threshold": p} for q, p in best.items()}
    label = (
        "forecast rules with one probability threshold per quantity tuned on a replay of the "
        "tuning history (if that is the model's training data, in-sample for the model)"
    )
    return Method(f"{OURS}_tuned_probability", label, firing, params, tuning)


def evaluate_method(method: Method, data: Dataset, times: np.ndarray, kinds: Mapping[str, str]):
    """Per kind and overall figures of one method on `data` (JSON-ready)."""
    scores = {q: ar.score(f, times, data.events(q)) for q, f in method.firing.items()}
    entry: dict[str, Any] = {
        "label": method.label,
        "params": method.params,
        "per_kind": {kinds[q]: s.summary() for q, s in scores.items()},
        "overall": ar.pooled(list(scores.values())).summary(),
        "per_shape": per_shape(method, data, times, kinds),
    }
    if method.tuning is not None:
        entry["tuning"] = {kinds[q]: s.summary() for q, s in method.tuning.items()}
        entry["tuning_overall"] = ar.pooled(list(method.tuning.values())).summary()
    return entry


def per_shape(method: Method, data: Dataset, times: np.ndarray, kinds: Mapping[str, str]):
    """Per kind and precursor shape: incidents, caught, recall and lead times (the episodes'
    figures are the kind's, so they are left out here)."""
    out: dict[str, dict[str, Any]] = {}
    present = set(incident_shapes(data.incidents))
    for quantity, firing in method.firing.items():
        rows: dict[str, Any] = {}
        for shape in (s for s in SHAPES if s in present):
            score = ar.score(firing, times, data.events(quantity, (shape,)))
            if score.incidents:
                brief = score.summary()
                rows[shape] = {k: brief[k] for k in ("incidents", "caught", "recall")} | {
                    "lead_minutes": brief["lead_minutes"]
                }
        out[kinds[quantity]] = rows
    return out


def fan_requests(data: Dataset, times: np.ndarray) -> tuple[FanRequest, ...]:
    """A few incidents per kind (by precursor length) whose forecasts the replay keeps."""
    rows = data.incidents.assign(
        b=epoch_seconds(data.incidents["breach"]),
        length=epoch_seconds(data.incidents["breach"])
        - epoch_seconds(data.incidents["precursor_start"]),
    )
    rows = rows[(rows.b >= times[0] + ar.LOOKBACK) & (rows.b + 2 * ar.HOUR <= times[-1])]
    rows = gradual(rows)
    out = []
    for kind, group in rows.sort_values(["length", "b"]).groupby("kind"):
        for q in FAN_QUANTILES:
            row = group.iloc[int(q * (len(group) - 1))]
            out.append(
                FanRequest(
                    f"{kind}|{row.instance}|{int(row.b)}",
                    str(row.instance),
                    str(row.quantity),
                    int(row.b) - 9 * ar.HOUR,
                    int(row.b) + ar.HOUR,
                )
            )
    return tuple(dict.fromkeys(out))


def window_agreement(state: Replay, level: float = 0.5) -> dict[str, dict[str, float]]:
    """Per quantity: how often the 8 h probability equals the 30 min one (the forecast's riskiest
    step lies in its first 30 min), and how many origins pass `level` in each window."""
    out = {}
    for quantity, per_window in state.probability.items():
        long, short = per_window["8h"], per_window["30m"]
        seen = np.isfinite(long) & np.isfinite(short)
        out[quantity] = {
            "equal_share": round(float(np.isclose(long, short)[seen].mean()), 4),
            "above_8h": int(np.count_nonzero(long[seen] > level)),
            "above_30m": int(np.count_nonzero(short[seen] > level)),
        }
    return out
