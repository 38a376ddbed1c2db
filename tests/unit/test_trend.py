"""The ramp outlook (`forecaster.trend`): the projection, its takeover and its configuration."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from pydantic import ValidationError

from forecaster.config import DEFAULT_EARLY_WARNING, Config, parse_duration
from forecaster.grid import SEASON_STEPS
from forecaster.risk import breach_outlook
from forecaster.trend import (
    MIN_SD,
    WARMUP_STEPS,
    RampRule,
    hinge_fit,
    observed_for,
    ramp_forecast,
    ramp_rules,
    ramp_takeover,
)

QUANTILES = (0.1, 0.5, 0.9)


def _daily(days: int, level: float = 0.5, swing: float = 0.1) -> np.ndarray:
    t = np.arange(days * SEASON_STEPS)
    return level + swing * np.sin(2 * np.pi * t / SEASON_STEPS)


def test_a_linear_ramp_is_extended_with_its_slope() -> None:
    y = 0.4 + 0.002 * np.arange(200)[None, :]
    out = ramp_forecast(y, 96, QUANTILES, window=72)
    expected = 0.4 + 0.002 * (199 + np.arange(1, 97))
    np.testing.assert_allclose(out[0, :, 1], expected, atol=1e-9)
    assert np.all(np.diff(out[0, :, 2] - out[0, :, 0]) >= -1e-12)  # the band never narrows
    assert out[0, 0, 2] - out[0, 0, 1] >= MIN_SD * 1.28  # the floor holds on a noiseless line


def test_the_usual_day_is_not_a_trend() -> None:
    """A daily swing seen on earlier days is followed, not extrapolated as a ramp."""
    y = _daily(3)[None, :]
    y = y[:, : 2 * SEASON_STEPS + 100]  # the window ends on the rising flank
    out = ramp_forecast(y, 96, QUANTILES, window=72)
    t = np.arange(y.shape[1], y.shape[1] + 96)
    usual = 0.5 + 0.1 * np.sin(2 * np.pi * t / SEASON_STEPS)
    np.testing.assert_allclose(out[0, :, 1], usual, atol=1e-6)


def test_a_leak_on_top_of_the_usual_day_is_projected() -> None:
    y = _daily(3)[None, : 2 * SEASON_STEPS + 100].copy()
    y[0, -60:] += 0.003 * np.arange(1, 61)  # 5 h of leak
    out = ramp_forecast(y, 96, QUANTILES, window=72)
    t = np.arange(y.shape[1], y.shape[1] + 96)
    usual = 0.5 + 0.1 * np.sin(2 * np.pi * t / SEASON_STEPS)
    excess = out[0, :, 1] - usual
    assert excess[-1] > excess[0] > 0.15  # still rising over the horizon


def test_too_little_history_or_no_rows_give_nan_not_errors() -> None:
    y = np.full((2, 50), np.nan)
    y[0, -10:] = 0.5  # 10 of 72 steps observed: under half
    assert np.isnan(ramp_forecast(y, 12, QUANTILES, window=72)).all()
    assert ramp_forecast(np.zeros((0, 50)), 12, QUANTILES, window=72).shape == (0, 12, 3)
    assert np.isnan(ramp_forecast(np.zeros((1, 2)), 12, QUANTILES, window=72)).all()


def _hockey_stick(flat: int, rising: int, slope: float, noise: float = 0.002) -> np.ndarray:
    """(1, flat + rising): level 0.6 with a little noise, then a ramp of `slope` per step."""
    rng = np.random.default_rng(3)
    y = 0.6 + noise * rng.standard_normal(flat + rising)
    y[flat:] += slope * np.arange(1, rising + 1)
    return y[None, :]


def test_the_bent_line_finds_where_a_ramp_began_and_follows_its_pace() -> None:
    y = _hockey_stick(60, 12, 0.0125)  # 5 h level, then 1 h rising 0.15 per hour
    beta, bend, _, _ = hinge_fit(y, 6)
    assert 57 <= bend[0] <= 63
    assert beta[0, 1] + beta[0, 2] == pytest.approx(0.0125, rel=0.15)  # the pace after the bend
    bent = ramp_forecast(y, 96, QUANTILES, window=72, seasons=0, knee=12)
    line = ramp_forecast(y, 96, QUANTILES, window=72, seasons=0)
    last = y[0, -1]
    assert abs(bent[0, 0, 1] - last) < 0.02 < last - line[0, 0, 1]  # the line starts below
    assert bent[0, 11, 1] == pytest.approx(last + 12 * 0.0125, abs=0.02)


def test_a_straight_ramp_keeps_the_straight_line_and_gaps_are_left_out() -> None:
    y = 0.4 + 0.002 * np.arange(72)[None, :]
    _, bend, _, _ = hinge_fit(y + 1e-4 * np.sin(np.arange(72)), 6)
    assert bend.tolist() == [72.0]  # no bend pays for its two parameters
    gappy = _hockey_stick(60, 12, 0.0125)
    gappy[0, 10:30] = np.nan
    bent = ramp_forecast(gappy, 24, QUANTILES, window=72, seasons=0, knee=12)
    assert np.isfinite(bent).all() and np.all(np.diff(bent[0], axis=-1) > 0)
    unseen = np.full((1, 72), np.nan)
    assert np.isnan(ramp_forecast(unseen, 24, QUANTILES, window=72, knee=12)).all()


def test_with_a_knee_the_same_rows_take_over_and_the_fan_starts_at_the_current_value() -> None:
    y = np.hstack([np.full((1, 2 * SEASON_STEPS), 0.6), _hockey_stick(40, 36, 0.008)])
    rule = RampRule(window_steps=72, level=0.0, threshold=0.95, pace_steps=12, probability=0.9)
    served = np.full((1, 96, 3), 0.6)
    line, take = ramp_takeover(y, served, rule, QUANTILES, 300)
    bent, bent_take = ramp_takeover(y, served, replace(rule, knee_steps=12), QUANTILES, 300)
    assert take.tolist() == bent_take.tolist() == [True]  # the line decides; the alerts agree
    last = y[0, -1]
    assert abs(bent[0, 0, 1] - last) < 0.02 < last - line[0, 0, 1]
    p_bent, ttb_bent = breach_outlook(bent, 0.95, 300)
    _, ttb_line = breach_outlook(line, 0.95, 300)
    assert p_bent["8h"][0] > 0.9 and ttb_bent[0] < ttb_line[0]  # the ramp's own pace: sooner
    actual = (0.95 - last) / 0.008 * 300  # seconds until this ramp passes 0.95
    assert abs(ttb_bent[0] - actual) <= 900


RULE = RampRule(window_steps=72, level=0.8, threshold=0.95)


def _leaking(level_at_origin: float) -> np.ndarray:
    """Three usual days, then 5 h rising to `level_at_origin` (NaN-free, one row)."""
    y = _daily(3, level=0.55, swing=0.05)[None, : 2 * SEASON_STEPS + 200].copy()
    rise = level_at_origin - y[0, -1]
    y[0, -60:] += rise * np.arange(1, 61) / 60
    return y


def _flat_served(y: np.ndarray) -> np.ndarray:
    """A served forecast that stays at the last value with a narrow band (mean reversion)."""
    last = y[:, -1:, None]
    return np.broadcast_to(last + np.array([-0.02, 0.0, 0.02]), (y.shape[0], 96, 3)).copy()


def test_the_ramp_takes_over_a_flat_forecast_of_a_leak_above_the_level() -> None:
    y = _leaking(0.85)
    fan, take = ramp_takeover(y, _flat_served(y), RULE, QUANTILES, 300)
    assert take.tolist() == [True]
    assert fan[0, -1, 1] > 0.95  # the projection passes the threshold within 8 h


def test_below_the_level_the_served_forecast_stays() -> None:
    y = _leaking(0.75)
    fan, take = ramp_takeover(y, _flat_served(y), RULE, QUANTILES, 300)
    assert take.tolist() == [False]
    assert np.isnan(fan).all()  # not projected: the level gate comes first


def test_a_served_forecast_that_already_sees_the_breach_stays() -> None:
    y = _leaking(0.85)
    served = np.full((1, 96, 3), 0.99)  # certain breach from the first step
    _, take = ramp_takeover(y, served, RULE, QUANTILES, 300)
    assert take.tolist() == [False]


def test_the_ramp_serves_only_where_its_probability_passes_the_warning() -> None:
    unfloored = replace(RULE, level=0.0)
    floored = replace(unfloored, probability=0.5)
    barely = _leaking(0.65)  # a breach in 8 h is possible but far from likely
    fan, take = ramp_takeover(barely, _flat_served(barely), unfloored, QUANTILES, 300)
    assert 0.0 < breach_outlook(fan, RULE.threshold, 300)[0]["8h"][0] < 0.5
    assert take.tolist() == [True]  # more than the flat forecast's zero
    assert ramp_takeover(barely, _flat_served(barely), floored, QUANTILES, 300)[1].tolist() == [
        False
    ]
    likely = _leaking(0.7)
    assert ramp_takeover(likely, _flat_served(likely), floored, QUANTILES, 300)[1].tolist() == [
        True
    ]
    config = Config()
    for name, rule in ramp_rules(config, 300).items():
        assert rule.probability == config.early_warning[name].warning


def test_missing_served_rows_and_short_histories_do_not_take_over_or_fail() -> None:
    y = np.vstack([_leaking(0.85), np.full((1, _leaking(0.85).shape[1]), np.nan)])
    served = np.full((2, 96, 3), np.nan)
    _, take = ramp_takeover(y, served, RULE, QUANTILES, 300)
    assert take.tolist() == [True, False]  # a NaN served forecast counts as no breach
    _, none = ramp_takeover(np.zeros((0, 10)), np.zeros((0, 96, 3)), RULE, QUANTILES, 300)
    assert none.shape == (0,)


def test_configured_ramp_rules_follow_the_critical_threshold() -> None:
    config = Config(
        thresholds={"memory_utilisation": {"warning": 0.8, "critical": 0.9}},
        early_warning={"filesystem_utilisation": {"ramp_window": "0s"}},
    )
    rules = ramp_rules(config, 300)
    assert set(rules) == {"memory_utilisation"}  # filesystem switched off
    rule = rules["memory_utilisation"]
    default = DEFAULT_EARLY_WARNING["memory_utilisation"]
    assert rule.window_steps == parse_duration(default["ramp_window"]) // 300
    assert rule.threshold == 0.9
    assert rule.level == pytest.approx(default["ramp_level"] * 0.9)  # the default laid under


def test_a_configured_pace_gate_keeps_a_level_that_settled_from_taking_over() -> None:
    config = Config(early_warning={"memory_utilisation": {"ramp_level": 0.8, "ramp_pace": "1h"}})
    rule = ramp_rules(config, 300)["memory_utilisation"]
    assert rule.pace_steps == 12
    settled = _leaking(0.9)
    settled = np.hstack([settled, np.full((1, 24), settled[0, -1])])  # flat for the last 2 h
    served = np.full((1, 96, 3), 0.5)
    assert ramp_takeover(_leaking(0.9), served, rule, QUANTILES, 300)[1].tolist() == [True]
    unpaced = ramp_takeover(settled, served, replace(rule, pace_steps=0), QUANTILES, 300)[1]
    assert ramp_takeover(settled, served, rule, QUANTILES, 300)[1].tolist() == [False]
    assert unpaced.tolist() == [True]  # the 6 h fit alone still sees the earlier rise


def test_a_ramp_without_a_threshold_is_a_configuration_error() -> None:
    with pytest.raises(ValidationError, match="a ramp needs thresholds"):
        Config(
            thresholds={"cpu_utilisation": {"warning": 0.9, "critical": 0.95}},
            early_warning={"memory_utilisation": {"ramp_window": "6h"}},
        )


def test_a_default_ramp_of_a_quantity_without_thresholds_is_left_out() -> None:
    config = Config(thresholds={"cpu_utilisation": {"warning": 0.9, "critical": 0.95}})
    assert ramp_rules(config, 300) == {}


def test_in_its_first_day_a_series_gets_no_ramp() -> None:
    """Warm-up: in a host's first day its rises cannot be told from a leak's start, so the ramp
    does not serve (nor warn); from a day on the same history takes over."""
    y = _leaking(0.9)
    rule = replace(RULE, level=0.0, pace_steps=12)
    served = np.full((1, 96, 3), 0.5)
    assert ramp_takeover(y, served, rule, QUANTILES, 300)[1].tolist() == [True]
    young = y.copy()
    young[0, : -(WARMUP_STEPS - 1)] = np.nan  # first observed WARMUP_STEPS - 1 steps ago
    assert observed_for(young).tolist() == [WARMUP_STEPS - 1]
    fan, take = ramp_takeover(young, served, rule, QUANTILES, 300)
    assert take.tolist() == [False] and np.isnan(fan).all()  # gated before the projection
    young[0, -WARMUP_STEPS] = y[0, -WARMUP_STEPS]
    assert ramp_takeover(young, served, rule, QUANTILES, 300)[1].tolist() == [True]
    assert observed_for(np.full((1, 5), np.nan)).tolist() == [0]


def test_a_healthy_simulated_fleet_in_its_first_day_gets_no_ramp_at_any_hour() -> None:
    """The stack tests' fleet (seed 42, 20 nodes, no incidents) with the 4 h they backfill, at
    every hour of a Monday: the shipped ramp rules never take over, so nothing warns. Before the
    warm-up gate, pprisk001's Monday-morning rise (0.58 to 0.85 from 08:00 to 11:00 UTC) took
    over at 11:00 and failed the end-to-end alert test at that hour. With three days held the
    same fleet still shows 7 such episodes in 14 days (docs/RAMP-study.md, stop 23)."""
    from simulator import signals as sim
    from simulator.fleet import build_fleet

    fleet = build_fleet(servers=20, seed=42)
    monday = 1_800_000_000 // 86_400 * 86_400 + 3 * 86_400
    rules = ramp_rules(Config(), 300)
    assert set(rules) == {"memory_utilisation", "filesystem_utilisation"}
    held = 4 * 12
    ends = np.arange(monday, monday + 86_400, 3_600) // 300
    steps = np.arange(ends[0] - held + 1, ends[-1] + 1)
    values = sim.evaluate(fleet, steps, None, 0.0)
    for end in ends:
        columns = slice(int(end - held + 1 - steps[0]), int(end - steps[0] + 1))
        for name, rule in rules.items():
            y = values[name][:, columns]
            served = np.full((y.shape[0], 96, 3), np.nan)
            take = ramp_takeover(y, served, rule, QUANTILES, 300)[1]
            assert not take.any(), (name, int(end) * 300, np.flatnonzero(take))
