"""Online accuracy: earlier forecasts scored once against the actual values that arrived."""

from __future__ import annotations

import numpy as np
import pytest

from exporter.snapshot import Accuracy
from forecaster.accuracy import OnlineAccuracy

Q = "cpu_utilisation"
HORIZONS = {"5m": 1, "30m": 6}
NAN3 = [np.nan] * 3


def forecast(step1, step6, steps=6):
    """A (N, steps, 3) forecast with the given quantiles at steps 1 and 6 (NaN elsewhere)."""
    out = np.full((len(step1), steps, 3), np.nan)
    out[:, 0] = step1
    out[:, 5] = step6
    return out


def tracker(**kwargs):
    acc = OnlineAccuracy(horizons=HORIZONS, step_seconds=300, **kwargs)
    # origin 3000: a 5m (1, 2, 3) and 30m (1, 2, 4); b 5m (0.5, 1, 1.5), no 30m forecast
    acc.record(3000, ["a", "b"], {Q: forecast([[1, 2, 3], [0.5, 1, 1.5]], [[1, 2, 4], NAN3])})
    # origin 3300: a 5m (2, 3, 4); b 5m (1, 2, 3)
    acc.record(3300, ["a", "b"], {Q: forecast([[2, 3, 4], [1, 2, 3]], [NAN3, NAN3])})
    return acc


def first_window(acc):
    """Actuals at 3300 and 3600: a = 2.5, 5.0; b = 1.0, unobserved; zz is unknown."""
    values = np.array([[1.0, 0.0], [2.5, 5.0], [9.0, 9.0]])
    observed = np.array([[True, False], [True, True], [True, True]])
    return acc.observe(Q, ["b", "a", "zz"], 3600, values, observed)


def test_hand_computed_nql_and_coverage_per_horizon():
    acc = tracker()
    assert first_window(acc) == 3
    assert acc.observe(Q, ["a"], 4800, np.array([[3.0]]), np.array([[True]])) == 1
    # 5m: (a, 3000) y=2.5 vs (1, 2, 3): pinball 0.1*1.5=0.15, 0.5*0.5=0.25, 0.1*0.5=0.05, inside
    #     (b, 3000) y=1.0 vs (0.5, 1, 1.5): 0.05, 0, 0.05, inside
    #     (a, 3300) y=5.0 vs (2, 3, 4): 0.3, 1.0, 0.9, outside
    #     sums 0.5, 1.25, 1.0; sum |y| = 8.5 -> nql = mean(2 * sums / 8.5) = 5.5 / 25.5
    # 30m: (a, 3000) y=3 at 4800 vs (1, 2, 4): 0.2, 0.5, 0.1 -> mean(2 * . / 3) = 1.6 / 9
    five, thirty = acc.summary(now=4800)
    assert five == Accuracy(Q, "5m", pytest.approx(5.5 / 25.5), pytest.approx(2 / 3), 3)
    assert thirty == Accuracy(Q, "30m", pytest.approx(1.6 / 9), 1.0, 1)


def test_a_forecast_is_scored_once_in_overlapping_windows():
    acc = tracker()
    first_window(acc)
    before = acc.summary(now=3600)
    values = np.array([[2.5, 5.0, 7.0], [1.0, 0.0, 1.0]])  # 3300, 3600, 3900
    observed = np.array([[True, True, True], [True, False, True]])
    assert acc.observe(Q, ["a", "b"], 3900, values, observed) == 0
    assert acc.summary(now=3600) == before


def test_a_late_actual_is_scored_when_it_first_arrives():
    acc = tracker()
    first_window(acc)
    # b at 3600 arrives now: 2.0 vs (1, 2, 3): pinball 0.1, 0, 0.1, inside
    assert acc.observe(Q, ["b"], 3600, np.array([[2.0]]), np.array([[True]])) == 1
    (five,) = acc.summary(now=3600)
    # sums 0.6, 1.25, 1.1; sum |y| = 10.5; 3 of 4 inside
    assert five == Accuracy(Q, "5m", pytest.approx(2 * 2.95 / 10.5 / 3), 0.75, 4)


def test_a_repeated_origin_replaces_the_earlier_forecast():
    acc = OnlineAccuracy(horizons=HORIZONS)
    acc.record(3000, ["a"], {Q: forecast([[0, 0, 0]], [NAN3])})
    acc.record(3000, ["a"], {Q: forecast([[1, 2, 3]], [NAN3])})
    assert acc.records == 1
    acc.observe(Q, ["a"], 3300, np.array([[2.0]]), np.array([[True]]))
    # y = 2 vs (1, 2, 3): pinball 0.1, 0, 0.1 -> mean(2 * . / 2) = 0.2 / 3
    (five,) = acc.summary(now=3300)
    assert five == Accuracy(Q, "5m", pytest.approx(0.2 / 3), 1.0, 1)


def test_unseen_instances_unknown_quantities_and_unobserved_cells_are_ignored():
    acc = tracker()
    ones = np.ones((1, 2))
    assert acc.observe(Q, ["zz"], 3600, ones, ones.astype(bool)) == 0
    assert acc.observe("memory_utilisation", ["a"], 3600, ones, ones.astype(bool)) == 0
    assert acc.observe(Q, ["a"], 3600, np.array([[np.nan, 1.0]]), np.array([[True, False]])) == 0
    assert acc.summary(now=3600) == ()


def test_scores_outside_the_window_leave_the_summary():
    acc = tracker(window_seconds=600)
    first_window(acc)
    assert acc.summary(now=3600)[0].samples == 3  # targets 3300 and 3600 are inside (3000, 3600]
    assert acc.summary(now=3900)[0].samples == 1  # (3300, 3900]: only the target at 3600
    assert acc.summary(now=4200) == ()


def test_old_records_expire_and_memory_stays_bounded():
    acc = OnlineAccuracy(horizons=HORIZONS, late_seconds=600)
    for origin in range(0, 300 * 200, 300):
        acc.record(origin, ["a"], {Q: forecast([[1, 2, 3]], [[1, 2, 3]])})
    # kept: origins whose last target (origin + 1800) is within 600 s of the newest time
    assert acc.records == (1800 + 600) // 300 + 1
    acc.observe(Q, ["a"], 300 * 199, np.ones((1, 1)), np.ones((1, 1), dtype=bool))
    old = 300 * 100
    assert acc.observe(Q, ["a"], old, np.ones((1, 1)), np.ones((1, 1), dtype=bool)) == 0


def test_actuals_that_sum_to_zero_give_no_nql():
    acc = OnlineAccuracy(horizons=HORIZONS)
    acc.record(0, ["a"], {Q: forecast([[0, 0, 0]], [NAN3])})
    acc.observe(Q, ["a"], 300, np.zeros((1, 1)), np.ones((1, 1), dtype=bool))
    assert acc.summary(now=300) == ()


def test_forecasts_shorter_than_a_horizon_skip_it_and_bad_shapes_raise():
    acc = OnlineAccuracy(horizons=HORIZONS)
    acc.record(0, ["a"], {Q: np.ones((1, 3, 3))})  # 3 steps: no 30m forecast
    acc.observe(Q, ["a"], 1800, np.ones((1, 6)), np.ones((1, 6), dtype=bool))
    assert [a.horizon for a in acc.summary(now=1800)] == ["5m"]
    with pytest.raises(ValueError, match="expected"):
        acc.record(300, ["a", "b"], {Q: np.ones((1, 6, 3))})
    with pytest.raises(ValueError, match="unique"):
        acc.record(300, ["a", "a"], {Q: np.ones((2, 6, 3))})
