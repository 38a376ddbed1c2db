"""The retrainer's own metrics, in a dedicated CollectorRegistry.

A sample of the exposition after one rejected run (weekly interval)::

    forecaster_retrain_runs_total{outcome="promoted"} 0.0
    forecaster_retrain_runs_total{outcome="rejected"} 1.0
    forecaster_retrain_runs_total{outcome="failed"} 0.0
    forecaster_retrain_rejections_total{reason="worse_than_current"} 1.0
    forecaster_retrain_last_success_timestamp_seconds 1.7953056e+09
    forecaster_retrain_last_run_timestamp_seconds 1.7953056e+09
    forecaster_retrain_duration_seconds 912.4
    forecaster_retrain_stage_duration_seconds{stage="train"} 880.1
    forecaster_retrain_running 0.0
    forecaster_retrain_gate_nql_ratio{horizon="8h"} 1.31
    forecaster_retrain_interval_seconds 604800.0
    forecaster_retrain_first_run_pending 0.0
    forecaster_retrain_history_available_seconds 1.2096e+06
    forecaster_retrain_shadow_cycles 0.0
    forecaster_retrain_shadow_decisions_total{decision="promoted"} 0.0

`last_success` is the end of the last run that completed the gate, promoted, rejected or
shadowed (the job worked, whatever it decided); until a first one it is the process start, so
a fresh install does not alert. The alert ForecasterRetrainFailing reads
`time() - forecaster_retrain_last_success_timestamp_seconds
> 2 * forecaster_retrain_interval_seconds`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from training.gates import GATE_HORIZONS, REJECTIONS

STAGES = ("fetch", "train", "backtest")
COMPLETED = ("promoted", "rejected", "shadowed")


class RetrainMetrics:
    """Counters and gauges of the retrain runs; `observe` one finished run's report."""

    def __init__(
        self,
        outcomes: Sequence[str],
        failures: Sequence[str],
        interval: float,
        decisions: Sequence[str] = (),
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.runs = Counter(
            "forecaster_retrain_runs", "Retrain runs by outcome.", ["outcome"], registry=r
        )
        self.rejections = Counter(
            "forecaster_retrain_rejections",
            "Gate rejections by reason (one run may count several reasons).",
            ["reason"],
            registry=r,
        )
        self.failures = Counter(
            "forecaster_retrain_failures", "Failed runs by reason.", ["reason"], registry=r
        )
        self.last_success = Gauge(
            "forecaster_retrain_last_success_timestamp_seconds",
            "End of the last run that completed the gate (promoted or rejected); "
            "the process start until then.",
            registry=r,
        )
        self.last_run = Gauge(
            "forecaster_retrain_last_run_timestamp_seconds",
            "End of the last run, whatever its outcome (0 before the first).",
            registry=r,
        )
        self.duration = Gauge(
            "forecaster_retrain_duration_seconds", "Wall time of the last run.", registry=r
        )
        self.stage_duration = Gauge(
            "forecaster_retrain_stage_duration_seconds",
            "Wall time of each stage of the last run that reached it.",
            ["stage"],
            registry=r,
        )
        self.running = Gauge(
            "forecaster_retrain_running", "1 while a retrain run is in progress.", registry=r
        )
        self.ratio = Gauge(
            "forecaster_retrain_gate_nql_ratio",
            "Candidate NQL / current model NQL on the holdout of the last gated run "
            "(absent when there was no current model).",
            ["horizon"],
            registry=r,
        )
        self.interval = Gauge(
            "forecaster_retrain_interval_seconds",
            "Configured time between scheduled runs.",
            registry=r,
        )
        self.interval.set(interval)
        self.first_run_pending = Gauge(
            "forecaster_retrain_first_run_pending",
            "1 while no run is recorded and the first waits for enough history (first_run_after).",
            registry=r,
        )
        self.history_available = Gauge(
            "forecaster_retrain_history_available_seconds",
            "History the last probe found, looking back at most first_run_after "
            "(0 before the first probe).",
            registry=r,
        )
        self.shadow_cycles = Gauge(
            "forecaster_retrain_shadow_cycles",
            "Counted shadow cycles of the candidate in shadow (0 without one).",
            registry=r,
        )
        self.shadow_decisions = Counter(
            "forecaster_retrain_shadow_decisions",
            "Ends of the shadow stage: promoted, rejected, or superseded (the serving model "
            "changed, or a newer candidate passed the gate).",
            ["decision"],
            registry=r,
        )
        for decision in decisions:
            self.shadow_decisions.labels(decision)
        for outcome in outcomes:
            self.runs.labels(outcome)
        for reason in REJECTIONS:
            self.rejections.labels(reason)
        for reason in failures:
            self.failures.labels(reason)

    def observe(self, report: dict[str, Any]) -> None:
        """Count one finished run."""
        outcome = report["outcome"]
        finished = float(report["finished_ts"])
        self.runs.labels(outcome).inc()
        self.last_run.set(finished)
        if outcome in COMPLETED:
            self.last_success.set(finished)
        if outcome == "failed":
            self.failures.labels(report["reason"]).inc()
        for reason in report.get("reasons", []):
            self.rejections.labels(reason).inc()
        self.duration.set(report["seconds"])
        for stage, seconds in report.get("stages", {}).items():
            self.stage_duration.labels(stage).set(seconds)
        if "gate" in report:
            self.ratio.clear()
            for horizon in GATE_HORIZONS:
                ratio = report["gate"]["nql_ratio_vs_current"].get(horizon)
                if ratio is not None:
                    self.ratio.labels(horizon).set(ratio)

    def restore(self, runs: Sequence[dict[str, Any]], started: float) -> None:
        """Timestamps from the persisted reports of earlier processes (counters restart)."""
        timed = [r for r in runs if "finished_ts" in r]
        finished = [float(r["finished_ts"]) for r in timed]
        completed = [float(r["finished_ts"]) for r in timed if r["outcome"] in COMPLETED]
        self.last_run.set(max(finished, default=0.0))
        self.last_success.set(max(completed, default=started))
