"""Early-warning evaluation: `for:`, episodes, catches, lead times, precision, rule parsing."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from forecaster.config import DEFAULT_EARLY_WARNING, Config
from forecaster.trend import predict_linear
from training.evaluation import alerts as ar

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "prometheus" / "rules" / "alerts.yml"
STEP = 300
T0 = 1_795_000_000 - 1_795_000_000 % STEP


def _times(n: int) -> np.ndarray:
    return T0 + STEP * np.arange(n, dtype=np.int64)


def _incidents(*items: tuple[int, int, int]) -> ar.Events:
    """(row, breach step, end step) each."""
    rows, breach, end = zip(*items, strict=True) if items else ((), (), ())
    return ar.Events(
        np.array(rows, dtype=np.int64),
        T0 + STEP * np.array(breach, dtype=np.int64),
        T0 + STEP * np.array(end, dtype=np.int64),
    )


def test_for_needs_the_condition_at_every_origin_of_its_duration():
    condition = np.array([[0, 1, 1, 0, 1, 1, 1, 1, 0]], dtype=bool)
    assert ar.evaluations(0, STEP) == 1
    assert ar.evaluations(300, STEP) == 2
    assert ar.evaluations(600, STEP) == 3
    assert ar.evaluations(420, STEP) == 3  # 7m: the condition changes only once per 5 min
    assert ar.hold_for(condition, 2).astype(int).tolist() == [[0, 0, 1, 0, 0, 1, 1, 1, 0]]
    # two true origins are 5 minutes: not enough for `for: 10m`, three are
    assert ar.hold_for(condition, 3).astype(int).tolist() == [[0, 0, 0, 0, 0, 0, 1, 1, 0]]


def test_ramp_is_caught_with_the_lead_time_from_the_first_firing_origin():
    times = _times(200)
    ramp = np.clip((np.arange(200) - 40) / 100, 0, None)[None, :]  # crosses 0.5 at step 90
    firing = ar.hold_for(ramp > 0.3, ar.evaluations(600, STEP))  # > 0.3 from 71, fires at 73
    score = ar.score(firing, times, _incidents((0, 150, 160)), lookback=8 * 3600)
    assert score.incidents == 1
    assert score.caught == 1
    assert score.leads.tolist() == [(150 - 73) * STEP]
    assert score.true == 1 and score.false == 0


def test_episode_without_a_breach_within_8h_is_false_and_counted_per_node_day():
    n = 2 * 288 + 96
    times = _times(n)
    firing = np.zeros((2, n), dtype=bool)
    firing[0, 100:110] = True  # nothing follows on instance 0
    firing[1, 200:205] = True  # instance 1 breaches 8 h 5 min after the start: too late
    score = ar.score(firing, times, _incidents((1, 200 + 97, 300)), lookback=3600)
    assert (score.episodes, score.true, score.late, score.false) == (2, 0, 0, 2)
    assert score.caught == 0
    assert score.node_days == pytest.approx(2 * 2.0)
    assert score.false_per_node_day == pytest.approx(0.5)
    assert score.precision == 0.0


def test_alert_at_the_breach_is_not_caught_and_after_it_is_late_not_false():
    times = _times(400)
    firing = np.zeros((1, 400), dtype=bool)
    firing[0, 150:160] = True  # starts exactly at the breach
    incidents = _incidents((0, 150, 170))
    score = ar.score(firing, times, incidents, lookback=3600)
    assert score.caught == 0 and score.true == 1  # a breach at its start: true, not early
    firing[0, 150:160] = False
    firing[0, 165:175] = True  # during the breach phase
    score = ar.score(firing, times, incidents, lookback=3600)
    assert (score.caught, score.true, score.late, score.false) == (0, 0, 1, 0)
    assert score.precision == 1.0


def test_only_episodes_started_within_the_lookback_catch_and_the_first_one_sets_the_lead():
    times = _times(400)
    firing = np.zeros((2, 400), dtype=bool)
    firing[0, 10:20] = True  # more than 8 h before the breach at 300: does not catch
    firing[0, 250:255] = True
    firing[0, 280:300] = True
    firing[1, 250:300] = True  # another instance: does not catch instance 0's incident
    lead = ar.match_incidents(ar.episodes(firing, times), _incidents((0, 300, 310)))
    assert lead.tolist() == [50 * STEP]


def test_unscored_incidents_leave_recall_but_still_make_nearby_alerts_true_or_late():
    times = _times(400)
    firing = np.zeros((2, 400), dtype=bool)
    firing[0, 100:110] = True  # before row 0's gradual breach at 150: caught
    firing[1, 250:260] = True  # during row 1's sudden breach (245 to 270): late
    both = _incidents((0, 150, 160), (1, 245, 270))
    sudden_left_out = ar.Events(both.row, both.start, both.end, np.array([True, False]))
    score = ar.score(firing, times, sudden_left_out, lookback=8 * 3600)
    assert (score.incidents, score.caught, score.excluded_incidents) == (1, 1, 0)
    assert (score.true, score.late, score.false) == (1, 1, 0)
    only_sudden = ar.Events(both.row, both.start, both.end, np.array([False, True]))
    alone = ar.score(firing, times, only_sudden, lookback=8 * 3600)
    assert (alone.incidents, alone.caught) == (1, 0)  # a late alert does not catch it


def test_episodes_are_maximal_runs_per_row():
    firing = np.array([[1, 1, 0, 1], [0, 0, 0, 0], [0, 1, 1, 1]], dtype=bool)
    found = ar.episodes(firing, _times(4))
    assert found.row.tolist() == [0, 0, 2]
    assert ((found.start - T0) // STEP).tolist() == [0, 3, 1]
    assert ((found.end - T0) // STEP).tolist() == [1, 3, 3]


def test_real_alert_rules_yield_eight_forecast_rules_with_their_windows_and_for():
    rules, skipped = ar.parse_forecast_rules(RULES)
    assert len(rules) == 8
    assert {r.quantity for r in rules} == {
        "cpu_utilisation",
        "memory_utilisation",
        "filesystem_utilisation",
        "request_latency_p95",
    }
    for r in rules:
        assert r.alert.startswith("NodeForecast")
        configured = getattr(Config().alerting(r.quantity), r.severity)
        assert (r.op, r.threshold) == (">", configured)
        # the warnings of the ramp-served quantities hold for 5m as tuned (docs/RAMP-study.md)
        ramped = Config().alerting(r.quantity).ramp_window > 0
        warning_for = 300.0 if ramped else 600.0
        expected = {"8h": ("warning", warning_for), "30m": ("critical", 300.0)}[r.window]
        assert (r.severity, r.for_seconds) == expected
    assert all("NodeForecastRiskHigh" in s for s in skipped) and skipped


def test_forecast_rules_read_the_configured_alert_probability():
    config = Config(early_warning={"cpu_utilisation": {"warning": 0.7}})
    rules, _ = ar.parse_forecast_rules(RULES, config)
    by = {(r.quantity, r.severity): r.threshold for r in rules}
    assert by[("cpu_utilisation", "warning")] == 0.7
    # the fields not set are the defaults', laid under field by field
    assert (
        by[("cpu_utilisation", "critical")] == DEFAULT_EARLY_WARNING["cpu_utilisation"]["critical"]
    )
    default = DEFAULT_EARLY_WARNING["memory_utilisation"]["warning"]
    assert by[("memory_utilisation", "warning")] == default


def test_a_forecast_rule_of_another_shape_fails_loudly(tmp_path):
    path = tmp_path / "alerts.yml"
    path.write_text(
        textwrap.dedent(
            """
            groups:
              - name: g
                rules:
                  - alert: NodeForecastOdd
                    expr: avg(forecaster_breach_probability{window="8h"}) > 0.5
                    for: 10m
            """
        )
    )
    with pytest.raises(ValueError, match="unexpected expression shape"):
        ar.parse_forecast_rules(path)


def test_predict_linear_is_least_squares_extrapolated_from_the_origin():
    rng = np.random.default_rng(3)
    y = np.cumsum(rng.normal(size=(3, 50)), axis=1)
    y[1, 20] = np.nan
    out = predict_linear(y, window=12, ahead=3600, step=STEP)
    for row in range(3):
        x = np.arange(50 - 12, 50)
        keep = np.isfinite(y[row, x])
        slope, intercept = np.polyfit(x[keep], y[row, x][keep], 1)
        assert out[row, -1] == pytest.approx(intercept + slope * (49 + 12), rel=1e-9, abs=1e-9)
    assert np.isnan(out[:, 0]).all()  # one sample: no line


def test_select_takes_the_highest_recall_at_the_target_precision_else_f1():
    def make(caught, true, false):
        return ar.Score(10, caught, np.full(caught, 3600.0), true + false, true, 0, false, 1.0)

    candidates = [make(10, 8, 2), make(8, 9, 1), make(7, 10, 0)]
    assert ar.select(candidates) == 1  # 0.9 precision, recall 0.8 beats 0.7
    assert ar.select([make(10, 5, 5), make(4, 4, 4)]) == 0  # none at 0.9: best F1


def test_replay_cache_round_trips_without_pickles(tmp_path):
    from collections import Counter

    from training.replay import Replay

    state = Replay(
        instances=("a", "b"),
        times=_times(3),
        skipped_origins=35,
        probability={
            "cpu_utilisation": {"8h": np.arange(6.0).reshape(2, 3), "30m": np.zeros((2, 3))}
        },
        calibration={"cpu_utilisation": np.ones((4, 96))},
        fans={"cpu_saturation|a|1": np.zeros((2, 96, 3))},
        fan_times={"cpu_saturation|a|1": _times(2)},
        methods=Counter({"cpu_utilisation:tft": 6}),
        seconds=1.5,
    )
    state.save(tmp_path / "r.npz")
    back = Replay.load(tmp_path / "r.npz")
    assert back.instances == ("a", "b") and back.cached and back.skipped_origins == 35
    assert np.array_equal(back.probability["cpu_utilisation"]["8h"], np.arange(6.0).reshape(2, 3))
    assert back.fans["cpu_saturation|a|1"].shape == (2, 96, 3)
    assert back.methods == state.methods and back.seconds == 1.5


@pytest.mark.torch
@pytest.mark.slow
def test_evaluation_runs_end_to_end_on_a_tiny_history(tmp_path):
    pytest.importorskip("torch")
    from simulator.fleet import build_fleet
    from simulator.history import HistorySpec, write_history
    from training.evaluation.early_warning import main

    last, steps = 1_797_000_000 // STEP, 432  # 36 h of 2 servers
    for name, seed in (("eval", 5), ("tune", 6)):
        spec = HistorySpec(last - steps, last, (last - steps) * float(STEP), incident_rate=3)
        write_history(build_fleet(2, seed=seed), spec, tmp_path / name)
    report = tmp_path / "docs" / "EVALUATION.md"
    args = ["--data", str(tmp_path / "eval"), "--tune-data", str(tmp_path / "tune")]
    args += ["--models.dir", str(ROOT / "models"), "--report", str(report), "--rules", str(RULES)]
    assert main([*args, "--service-check", "1"]) == 0
    result = json.loads((report.parent / "evaluation.json").read_text())
    assert result["replay"]["skipped_origins"] == 35
    assert result["replay"]["origins"] == steps - 35
    assert result["replay"]["service_check"]["max_abs_difference"] < 1e-9
    methods = result["methods"]
    assert {"forecast_rules", "static_threshold", "predict_linear_6h_4h"} <= set(methods)
    assert methods["forecast_rules"]["overall"]["incidents"] >= 1
    shapes = methods["forecast_rules"]["per_shape"]
    counted = sum(m["incidents"] for per in shapes.values() for m in per.values())
    assert counted >= methods["forecast_rules"]["overall"]["incidents"]  # sudden ones too
    assert "## Per precursor shape" in report.read_text()
    assert set(result["replay"]["calibration"]) >= {"cpu_utilisation", "request_latency_p95"}
    assert result["data"]["seed"] == 5 and result["git_revision"]
    assert "Early warning" in report.read_text()
    assert sorted(p.name for p in (report.parent / "img").glob("evaluation_*.png"))
