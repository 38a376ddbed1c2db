"""The retrainer's shadow stage (fault catalogue D10), with the shipped models and real backtests.

No candidate is trained here: the run's child trainer is replaced by a copy of the shipped
`default-v4` (the band-calibrated `default-v3`), and `default-v3` serves, so the gate and every
shadow cycle judge two real models on the same simulated fleet. The history file first ends
where the run's history ends; it is then rewritten with the same fleet 10 hours further, which
is the newer history the shadow cycles score the candidate on.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

import training.retrain.retrainer as retrainer_module
from forecaster.registry import Registry
from simulator.fleet import build_fleet
from simulator.history import HistorySpec, write_history
from training.retrain.config import load_config
from training.retrain.retrainer import Retrainer
from training.retrain.shadow import STATE

pytestmark = [pytest.mark.torch, pytest.mark.slow, pytest.mark.fault("D10")]
pytest.importorskip("pytorch_forecasting")

ROOT = Path(__file__).resolve().parents[2]
LAST = 1_795_305_600 // 300  # 2026-11-22 00:00 UTC, in steps
DAYS = 4
SERVING, CANDIDATE_SOURCE = "default-v3", "default-v4"
LATER_STEPS = 10 * 12  # the newer history: 10 hours, more than one 8 h horizon
RELAXED = ("--gate.coverage-min", "0.3", "--gate.coverage-max", "0.99", "--gate.tolerance", "0.5")


def _write(path: Path, extra_steps: int) -> Path:
    """The fleet's history from LAST - DAYS days to LAST + extra_steps (same values where the
    spans overlap: the simulator is a function of the fleet seed and the step)."""
    start = LAST - DAYS * 288
    spec = HistorySpec(start, LAST + extra_steps, start * 300.0)
    write_history(build_fleet(4, seed=1), spec, path)
    return path


@pytest.fixture
def setup(tmp_path, monkeypatch):
    models, data = tmp_path / "models", tmp_path / "history"
    models.mkdir()
    shipped = Registry(ROOT / "models")
    for version in (SERVING, CANDIDATE_SOURCE):
        shutil.copytree(shipped.path(version), models / version)
    Registry(models).promote(SERVING, "1.0.0")
    _write(data, 0)

    def train(self, candidate: str, work: Path) -> None:  # the child trainer's stand-in
        shutil.copytree(models / CANDIDATE_SOURCE, self.registry.path(candidate))

    monkeypatch.setattr(Retrainer, "_train", train)
    argv = [
        *("--data", str(data), "--models.dir", str(models), "--history", f"{DAYS}d"),
        *("--holdout", "1d", "--threads", "1", "--log.level", "warning"),
        *("--shadow.cycles", "2", *RELAXED),
    ]
    return models, data, load_config(argv, {})


def _value(retrainer: Retrainer, name: str, labels: dict | None = None) -> float | None:
    return retrainer.metrics.registry.get_sample_value(name, labels or {})


def test_a_candidate_past_the_gate_serves_only_after_its_shadow_cycles_on_newer_history(setup):
    models, data, config = setup
    retrainer = Retrainer(config, os.environ)
    report = retrainer.run("test")
    assert report["outcome"] == "shadowed", report
    candidate = report["candidate"]
    assert report["gate"]["passed"] is True
    assert retrainer.registry.pointer()["version"] == SERVING, "not promoted by the run"
    state = json.loads((models / STATE).read_text())
    assert state["candidate"] == candidate and state["current"] == SERVING
    assert _value(retrainer, "forecaster_retrain_runs_total", {"outcome": "shadowed"}) == 1

    waiting = retrainer.shadow_cycle()  # nothing newer than the run's history yet
    assert waiting == {**waiting, "counted": False, "reason": "waiting", "fresh_steps": 0}
    assert retrainer.status()["shadow"]["cycles_counted"] == 0

    _write(data, LATER_STEPS)
    restarted = Retrainer(config, os.environ)  # the stage survives a restart
    restarted.startup()
    first = restarted.shadow_cycle()
    assert first["counted"] and first["passed"], first
    assert first["fresh_steps"] == LATER_STEPS and first["origins"] >= 1
    assert set(first["nql_ratio_vs_current"]) == {"30m", "2h", "8h", "all"}
    assert restarted.registry.pointer()["version"] == SERVING, "one of two cycles: still shadow"
    assert _value(restarted, "forecaster_retrain_shadow_cycles") == 1

    restarted.shadow_cycle()
    assert restarted.registry.pointer() == {"version": candidate, "previous": SERVING}
    decision = restarted.runs[-1]
    assert decision["trigger"] == "shadow" and decision["outcome"] == "promoted"
    assert decision["shadow"] == {"decision": "promoted", "cycles_counted": 2}
    kept = json.loads((models / candidate / STATE).read_text())
    assert kept["decision"] == "promoted" and len(kept["cycles"]) == 3
    restarted.registry.verify(candidate, "1.0.0")  # attached under the manifest
    assert not (models / STATE).exists() and restarted.status()["shadow"] is None
    labels = {"decision": "promoted"}
    assert _value(restarted, "forecaster_retrain_shadow_decisions_total", labels) == 1
    assert _value(restarted, "forecaster_retrain_shadow_cycles") == 0
    assert restarted.shadow_cycle() is None, "no candidate in shadow: nothing to do"


def test_a_candidate_that_fails_on_the_newer_history_is_rejected_and_the_serving_model_stays(
    setup, monkeypatch
):
    models, data, config = setup
    real = retrainer_module.backtest_gate
    calls = []

    def gate(*args, **kwargs):  # the run's gate as it is; every shadow cycle judged worse
        verdict, backtest = real(*args, **kwargs)
        calls.append(verdict)
        if len(calls) == 1:
            return verdict, backtest
        return replace(verdict, passed=False, reasons=("worse_than_current",)), backtest

    monkeypatch.setattr(retrainer_module, "backtest_gate", gate)
    retrainer = Retrainer(config, os.environ)
    candidate = retrainer.run("test")["candidate"]
    _write(data, LATER_STEPS)
    assert retrainer.shadow_cycle()["passed"] is False
    retrainer.shadow_cycle()
    assert retrainer.registry.pointer() == {"version": SERVING, "previous": None}
    decision = retrainer.runs[-1]
    assert decision["outcome"] == "rejected" and decision["reasons"] == ["worse_than_current"]
    assert json.loads((models / candidate / STATE).read_text())["decision"] == "rejected"
    assert candidate in retrainer.registry.versions(), "kept for inspection"
    labels = {"decision": "rejected"}
    assert _value(retrainer, "forecaster_retrain_shadow_decisions_total", labels) == 1


def test_a_change_of_the_serving_model_during_the_shadow_stage_drops_the_candidate(setup):
    models, data, config = setup
    retrainer = Retrainer(config, os.environ)
    candidate = retrainer.run("test")["candidate"]
    retrainer.registry.promote(CANDIDATE_SOURCE, "1.0.0")  # an operator's manual promotion
    _write(data, LATER_STEPS)
    assert retrainer.shadow_cycle() is None
    assert retrainer.registry.current() == CANDIDATE_SOURCE
    decision = retrainer.runs[-1]
    assert decision["outcome"] == "rejected"
    assert decision["shadow"]["decision"] == "superseded"
    assert "the serving model is now default-v4" in decision["shadow"]["detail"]
    assert json.loads((models / candidate / STATE).read_text())["decision"] == "superseded"
    assert not (models / STATE).exists()
