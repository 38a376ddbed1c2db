"""The retrainer's pure core: history windows, the train/holdout split and the promotion gate.

A candidate is promoted only if, on the same held-out origins (RELIABILITY.md D3, D4, D8):

* its quantiles are finite and ordered (`non_finite_quantiles`, `crossing_quantiles`);
* at every scored horizon (30m, 2h, 8h, all) its NQL, averaged over the targets both models
  forecast, is at most `(1 + tolerance)` x the current model's (`worse_than_current`) and at
  most `(1 + baseline_tolerance)` x the baseline's, seasonal naive by default
  (`worse_than_baseline`);
* its p10-p90 coverage over all horizons, averaged over targets, lies inside the band
  (`coverage_out_of_band`).

Without a usable current model only the absolute rules apply. Every reason is one of
`REJECTIONS`, a bounded label set for `forecaster_retrain_rejections_total{reason}`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from forecaster.grid import CONTEXT_STEPS, DAY_STEPS, HORIZON_STEPS, SEASON_STEPS, STEP_SECONDS

REJECTIONS = (
    "worse_than_current",
    "worse_than_baseline",
    "non_finite_quantiles",
    "crossing_quantiles",
    "coverage_out_of_band",
    "no_scores",
)
GATE_HORIZONS = ("30m", "2h", "8h", "all")
TFT = "tft"  # the model's key in a backtest's scores (training.backtest.TFT)
BACKTEST_CONTEXT = 2 * SEASON_STEPS
"""Steps of history the backtest hands its baselines: two seasons (the seasonal mean's)."""


@dataclass(frozen=True)
class GateSpec:
    """Thresholds of the promotion gate."""

    tolerance: float = 0.05
    baseline: str = "seasonal_naive_24h"
    baseline_tolerance: float = 0.0
    coverage: tuple[float, float] = (0.70, 0.90)


@dataclass(frozen=True)
class Health:
    """Counts of bad forecast vectors (one vector = the quantiles of one step ahead)."""

    vectors: int
    non_finite: int
    crossing: int


@dataclass(frozen=True)
class Verdict:
    """The gate's decision with the figures it was based on (JSON-ready via `to_json`)."""

    passed: bool
    reasons: tuple[str, ...]
    details: tuple[str, ...]
    nql: dict[str, float | None]
    current_nql: dict[str, float | None] | None
    baseline_nql: dict[str, float | None]
    ratios: dict[str, float]  # candidate / current, per horizon
    coverage: float | None
    health: Health
    spec: GateSpec
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types only."""
        return {
            "passed": self.passed,
            "reasons": list(self.reasons),
            "details": list(self.details),
            "nql": self.nql,
            "current_nql": self.current_nql,
            "baseline_nql": self.baseline_nql,
            "nql_ratio_vs_current": self.ratios,
            "coverage_p10_p90": self.coverage,
            "health": vars(self.health),
            "thresholds": {
                "tolerance": self.spec.tolerance,
                "baseline": self.spec.baseline,
                "baseline_tolerance": self.spec.baseline_tolerance,
                "coverage": list(self.spec.coverage),
            },
            **self.extra,
        }


def quantile_health(forecasts: np.ndarray) -> Health:
    """Non-finite and crossing quantile vectors in forecasts shaped (..., quantiles)."""
    values = np.asarray(forecasts, dtype=float)
    vectors = values.reshape(-1, values.shape[-1])
    finite = np.isfinite(vectors).all(axis=1)
    crossing = finite & (np.diff(vectors, axis=1) < 0).any(axis=1)
    return Health(len(vectors), int((~finite).sum()), int(crossing.sum()))


def mean_nql(scores: dict[str, Any], targets: list[str], horizon: str) -> float | None:
    """Mean NQL over `targets` at `horizon`; None when any of them has no score."""
    values = [scores.get(t, {}).get(horizon, {}).get("nql") for t in targets]
    if not values or any(v is None or not np.isfinite(v) for v in values):
        return None
    return float(np.mean(values))


def judge(
    candidate: dict[str, Any],
    current: dict[str, Any] | None,
    health: Health,
    spec: GateSpec,
) -> Verdict:
    """The gate on backtest results (`training.backtest.run_backtest` dictionaries).

    `candidate` holds the candidate's scores and the baseline's; `current` the current model's
    scores on the same origins, or None when there is no usable current model.
    """
    reasons: list[str] = []
    details: list[str] = []

    def reject(reason: str, detail: str) -> None:
        if reason not in reasons:
            reasons.append(reason)
        details.append(detail)

    if health.non_finite:
        reject("non_finite_quantiles", f"{health.non_finite} of {health.vectors} non-finite")
    if health.crossing:
        reject("crossing_quantiles", f"{health.crossing} of {health.vectors} crossing")
    scores = candidate["scores"]
    targets = sorted(scores[TFT])
    if current is not None:
        targets = sorted(set(targets) & set(current["scores"][TFT]))
    nql = {h: mean_nql(scores[TFT], targets, h) for h in GATE_HORIZONS}
    base = scores.get(spec.baseline, {})
    baseline_nql = {h: mean_nql(base, targets, h) for h in GATE_HORIZONS}
    current_nql = (
        None
        if current is None
        else {h: mean_nql(current["scores"][TFT], targets, h) for h in GATE_HORIZONS}
    )
    ratios: dict[str, float] = {}
    for h in GATE_HORIZONS:
        mine = nql[h]
        if mine is None:
            reject("no_scores", f"no NQL at {h} over {targets}")
            continue
        if current_nql is not None and current_nql[h]:
            ratios[h] = mine / current_nql[h]
            if ratios[h] > 1 + spec.tolerance:
                reject(
                    "worse_than_current",
                    f"NQL {h} {mine:.4g} > (1 + {spec.tolerance}) x current {current_nql[h]:.4g}",
                )
        limit = baseline_nql[h]
        if limit is not None and mine > (1 + spec.baseline_tolerance) * limit:
            reject(
                "worse_than_baseline",
                f"NQL {h} {mine:.4g} > (1 + {spec.baseline_tolerance}) x {spec.baseline} "
                f"{limit:.4g}",
            )
    coverage = _coverage(scores[TFT], targets)
    low, high = spec.coverage
    if coverage is None or not low <= coverage <= high:
        reject("coverage_out_of_band", f"p10-p90 coverage {coverage} outside [{low}, {high}]")
    return Verdict(
        passed=not reasons,
        reasons=tuple(reasons),
        details=tuple(details),
        nql=nql,
        current_nql=current_nql,
        baseline_nql=baseline_nql,
        ratios=ratios,
        coverage=coverage,
        health=health,
        spec=spec,
        extra={"targets": targets},
    )


def _coverage(scores: dict[str, Any], targets: list[str]) -> float | None:
    values = [scores[t]["all"]["coverage"] for t in targets]
    if not values or any(v is None for v in values):
        return None
    return float(np.mean(values))


# --- history windows ------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """How much history one run needs, in grid steps (the model's shape: `TFTConfig`'s)."""

    encoder: int = CONTEXT_STEPS
    horizon: int = HORIZON_STEPS
    validation: int = DAY_STEPS  # training.train holds out its last day for validation
    context: int = BACKTEST_CONTEXT  # steps before the holdout that the backtest's baselines read
    holdout: int = DAY_STEPS

    @property
    def minimum(self) -> int:
        """Steps of history a run needs: one training window plus validation, and the
        backtest's context, before the holdout."""
        return max(self.encoder + self.horizon + self.validation, self.context) + self.holdout


def history_problem(wide: pd.DataFrame, window: Window) -> str | None:
    """Why `wide` cannot feed a run (None when it can): empty, or spanning too few steps."""
    if wide.empty or "timestamp" not in wide:
        return "the history is empty"
    span = int((wide["timestamp"].max() - wide["timestamp"].min()).total_seconds())
    steps = span // STEP_SECONDS + 1
    if steps < window.minimum:
        return (
            f"the history spans {steps} steps ({steps * STEP_SECONDS / 3600:.1f} h); a run needs "
            f"{window.minimum}: max(encoder {window.encoder} + horizon {window.horizon} + "
            f"validation {window.validation}, backtest context {window.context}) + holdout "
            f"{window.holdout}"
        )
    return None


def holdout_start(wide: pd.DataFrame, window: Window) -> pd.Timestamp:
    """Timestamp of the holdout's first step: the latest `window.holdout` steps are held out."""
    return wide["timestamp"].max() - pd.Timedelta(seconds=(window.holdout - 1) * STEP_SECONDS)


def split_history(wide: pd.DataFrame, window: Window) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, gate rows): training ends before the holdout's first step; the gate
    frame is the holdout plus `context` steps before it, so origins start at the holdout."""
    start = holdout_start(wide, window)
    gate_start = start - pd.Timedelta(seconds=window.context * STEP_SECONDS)
    train = wide[wide["timestamp"] < start].reset_index(drop=True)
    gate = wide[wide["timestamp"] >= gate_start].reset_index(drop=True)
    return train, gate
