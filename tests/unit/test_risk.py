"""Risk: the seed's score and priorities, breach outlook, fleet outlook and trends."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.snapshot import Environment
from forecaster.config import DEFAULT_THRESHOLDS, Levels, RiskSettings
from forecaster.risk import (
    breach_outlook,
    breach_probability,
    earliest_breach,
    fleet_environment,
    risk_message,
    risk_scores,
    trend_per_hour,
)

CPU, MEM, FS, LAT = (
    "cpu_utilisation",
    "memory_utilisation",
    "filesystem_utilisation",
    "request_latency_p95",
)
SETTINGS = RiskSettings()
THRESHOLDS = {name: Levels(**levels) for name, levels in DEFAULT_THRESHOLDS.items()}


def flat(values, steps=96):
    """An (N, steps, 3) forecast whose p90 is `values` (p10 and p50 a little lower) everywhere."""
    p90 = np.asarray(values, dtype=float)[:, None].repeat(steps, axis=1)
    return np.stack([p90 - 0.02, p90 - 0.01, p90], axis=-1)


def constant(p10, p50, p90, n=1, steps=96):
    """An (n, steps, 3) forecast with the same quantiles at every step."""
    return np.tile(np.array([p10, p50, p90], dtype=float), (n, steps, 1))


def test_seed_example_scores_27_points_and_priority_p3():
    # Seed 004 section 4: max p90 over 30 min 72.1 % CPU, 93.4 % memory, 245 ms latency.
    cpu = flat([0.50])
    cpu[0, 3, 2] = 0.721  # the peak inside the first 6 steps
    forecasts = {CPU: cpu, MEM: flat([0.934]), LAT: flat([0.245])}
    risk = risk_scores(forecasts, SETTINGS)
    assert (risk.cpu[0], risk.mem[0], risk.latency[0]) == (0.0, 12.0, 15.0)
    assert risk.score[0] == 27.0
    assert risk.priority[0] == "P3"
    assert risk_message(risk, SETTINGS) == [
        "Latency predicted to reach 245 ms in 30 minutes; "
        "Memory predicted to reach 93.4% in 30 minutes"
    ]


def test_message_names_the_component_like_the_seed():
    risk = risk_scores({CPU: flat([0.934])}, SETTINGS)
    assert risk_message(risk, SETTINGS) == ["CPU predicted to reach 93.4% in 30 minutes"]


def test_peak_after_the_30_minute_window_is_ignored():
    cpu = flat([0.5])
    cpu[0, 6, 2] = 0.99  # step 7 = 35 minutes
    assert risk_scores({CPU: cpu}, SETTINGS).score[0] == 0.0


@pytest.mark.parametrize(
    ("p90", "points"),
    [(0.90, 0), (0.9000001, 15), (0.95, 15), (0.951, 30), (0.98, 30), (0.981, 40), (1.5, 40)],
)
def test_cpu_tiers_need_strictly_more_than_the_threshold(p90, points):
    assert risk_scores({CPU: flat([p90])}, SETTINGS).cpu[0] == points


@pytest.mark.parametrize(("latency", "points"), [(0.1, 0), (0.101, 8), (0.2, 8), (0.5, 15)])
def test_latency_tiers_in_seconds(latency, points):
    assert risk_scores({LAT: flat([latency])}, SETTINGS).latency[0] == points


def test_score_is_capped_at_100_and_priorities_follow_p1_p2():
    worst = {CPU: flat([0.99, 0.99, 0.5]), MEM: flat([0.99, 0.5, 0.5]), LAT: flat([0.6] * 3)}
    risk = risk_scores(worst, SETTINGS)
    assert list(risk.score) == [100.0, 65.0, 25.0]  # 40 + 35 + 25; 40 + 25; 25
    assert list(risk.priority) == ["P1", "P2", "P3"]
    custom = SETTINGS.model_copy(update={"p1": 60.0, "p2": 20.0})
    assert list(risk_scores(worst, custom).priority) == ["P1", "P1", "P2"]


def test_missing_or_nan_quantities_score_zero_never_nan():
    cpu = flat([0.99, 0.99])
    cpu[1] = np.nan
    lat = flat([np.nan, 0.6])
    risk = risk_scores({CPU: cpu, LAT: lat}, SETTINGS)
    assert list(risk.cpu) == [40.0, 0.0]
    assert list(risk.latency) == [0.0, 25.0]
    assert list(risk.mem) == [0.0, 0.0]
    assert not np.isnan(risk.score).any()
    assert risk_message(risk, SETTINGS, indices=[0]) == [
        "CPU predicted to reach 99.0% in 30 minutes"
    ]
    assert risk_message(risk_scores({CPU: flat([0.1])}, SETTINGS), SETTINGS) == [
        "no risk predicted"
    ]


def test_no_forecasts_give_an_empty_result():
    risk = risk_scores({}, SETTINGS)
    assert len(risk) == 0 and risk_message(risk, SETTINGS) == []


def test_risk_arrays_convert_to_the_snapshot_risk():
    risk = risk_scores({MEM: flat([0.96])}, SETTINGS)
    snap = risk.at(0, "m")
    assert (snap.score, snap.priority, snap.mem_risk, snap.message) == (25.0, "P3", 25.0, "m")


def test_scores_scale_to_100k_instances():
    forecasts = {CPU: np.full((100_000, 6, 3), 0.5), MEM: np.full((100_000, 6, 3), 0.5)}
    forecasts[CPU][::2, 0, 2] = 0.99
    risk = risk_scores(forecasts, SETTINGS)
    assert risk.score.shape == (100_000,) and risk.score.sum() == 50_000 * 40


# --- breach probability ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("threshold", "expected"),
    [
        (0.5, 0.5),  # p50
        (0.4, 0.9),  # p10
        (0.7, 0.1),  # p90
        (0.45, 0.7),  # half-way p10-p50
        (0.6, 0.3),  # half-way p50-p90
        (0.3875, 1 - 0.1 * np.exp(-0.5)),  # lower tail: 1 - 0.1 exp(-4 x 0.0125 / 0.1)
        (0.375, 1 - 0.1 * np.exp(-1.0)),
        (0.2, 1 - 0.1 * np.exp(-8.0)),
        (0.725, 0.1 * np.exp(-0.5)),  # upper tail: 0.1 exp(-4 x 0.025 / 0.2)
        (0.75, 0.1 * np.exp(-1.0)),
        (0.8, 0.1 * np.exp(-2.0)),
    ],
)
def test_breach_probability_follows_the_cdf_with_exponential_tails(threshold, expected):
    forecast = constant(0.4, 0.5, 0.7)
    assert breach_probability(forecast, threshold)[0, 0] == pytest.approx(expected)


def test_point_mass_is_a_step_without_division_by_zero():
    forecast = constant(0.6, 0.6, 0.6, steps=2)
    with np.errstate(all="raise"):
        assert breach_probability(forecast, 0.59)[0, 0] == 1.0
        assert breach_probability(forecast, 0.6)[0, 0] == 0.0
        assert breach_probability(forecast, 0.61)[0, 0] == 0.0
    half = constant(0.5, 0.5, 0.7)  # p10 == p50: 0.5 of mass at 0.5
    assert breach_probability(half, 0.4999)[0, 0] == 1.0
    assert breach_probability(half, 0.6)[0, 0] == pytest.approx(0.3)


def test_non_finite_quantiles_breach_nothing():
    forecast = np.array([[[np.nan, 0.5, 0.9], [0.1, np.inf, 0.9], [0.1, 0.2, 0.3]]])
    assert list(breach_probability(forecast, 0.25)[0]) == [0.0, 0.0, pytest.approx(0.3)]


quantile = st.floats(-10, 10, allow_nan=False, allow_infinity=False)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(quantile, quantile, quantile), min_size=1, max_size=8),
    quantile,
    st.floats(0, 5),
)
def test_breach_probability_is_bounded_and_falls_as_the_threshold_rises(rows, low, gap):
    forecast = np.array(rows, dtype=float)[None]
    lower = breach_probability(forecast, low)
    higher = breach_probability(forecast, low + gap)
    assert ((lower >= 0) & (lower <= 1)).all()
    assert (higher <= lower + 1e-12).all()


def test_window_probability_is_the_riskiest_steps_and_ttb_the_first_median_breach():
    ramp = np.linspace(0.80, 0.99, 96)  # p50 rises 0.002 per step
    forecast = np.stack([ramp - 0.05, ramp, ramp + 0.05], axis=-1)[None]
    probabilities, ttb = breach_outlook(forecast, 0.95)
    steps = int(np.argmax(ramp > 0.95))  # first step index whose p50 passes
    assert ttb[0] == (steps + 1) * 300
    assert probabilities["8h"][0] == pytest.approx(breach_probability(forecast, 0.95).max())
    assert probabilities["30m"][0] < 1e-3  # p90 of step 6 = 0.86 + ... < 0.95: far in the tail


def test_window_probability_is_one_half_when_the_riskiest_median_meets_the_threshold():
    forecast = constant(0.3, 0.5, 0.6, n=2, steps=96)
    forecast[1, 10] = [0.4, 0.95, 0.99]  # only after 30 minutes
    probabilities, ttb = breach_outlook(forecast, np.array([0.5, 0.95]))
    assert probabilities["30m"][0] == pytest.approx(0.5)
    assert probabilities["30m"][1] < 1e-6  # p90 0.6 far below 0.95: deep in the tail
    assert probabilities["8h"][1] == pytest.approx(0.5)
    assert np.isnan(ttb).all()  # p50 equal to the threshold is not a breach


def test_nan_forecast_has_no_breach_and_no_time():
    probabilities, ttb = breach_outlook(np.full((1, 96, 3), np.nan), 0.9)
    assert probabilities["30m"].tolist() == probabilities["8h"].tolist() == [0.0]
    assert np.isnan(ttb[0])


def test_short_horizons_use_the_steps_they_have():
    probabilities, ttb = breach_outlook(constant(0.9, 0.97, 0.99, steps=3), 0.95)
    assert probabilities["8h"][0] == probabilities["30m"][0] > 0.5 and ttb[0] == 300


# --- fleet -------------------------------------------------------------------------------------


def test_fleet_environment_of_a_small_hand_made_fleet():
    quiet = constant(0.2, 0.3, 0.4, n=4)
    cpu = quiet.copy()
    cpu[0, :6] = [0.85, 0.91, 0.95]  # severe in 30 m (p50 > 0.90): +0.35, severe in 8 h: +0.25
    cpu[1, 50] = [0.80, 0.83, 0.93]  # only after 30 minutes: 8 h moderate (p50 > 0.82): +0.10
    mem = quiet.copy()
    mem[0, 2] = [0.80, 0.86, 0.90]  # 30 m moderate (p50 > 0.85): +0.15; 8 h moderate: +0.10
    lat = quiet.copy() * 0.1
    lat[2, 0] = [0.1, 0.25, 0.3]  # severe: p50 > warning 0.2: +0.35 and +0.25
    lat[3, 0] = [0.1, 0.15, 0.3]  # moderate: p90 > warning: +0.15 and +0.10
    forecasts = {CPU: cpu, MEM: mem, FS: quiet, LAT: lat}
    scores = np.array([75.0, 10.0, 70.0, 0.0])
    env = fleet_environment(forecasts, scores, THRESHOLDS, SETTINGS)
    assert env.prob_30m == pytest.approx((0.35 + 0.15 + 0 + 0.35 + 0.15) / 4)
    assert env.prob_8h == pytest.approx((0.25 + 0.10 + 0.10 + 0.25 + 0.10) / 4)
    assert (env.high_risk_servers, env.total_servers, env.fleet_health) == (2, 4, "healthy")


def test_fleet_risk_per_server_is_capped_and_drives_health():
    hot = constant(0.95, 0.99, 0.999, n=2)  # severe in every quantity: 4 x 0.35 -> capped at 1
    forecasts = {CPU: hot, MEM: hot, FS: hot, LAT: constant(0.6, 0.7, 0.8, n=2)}
    env = fleet_environment(forecasts, risk_scores(forecasts, SETTINGS), THRESHOLDS, SETTINGS)
    assert env == Environment(1.0, 1.0, 2, 2, "critical")
    quiet = constant(0.1, 0.2, 0.3)
    warm = {CPU: np.concatenate([hot[:1], quiet])}  # (0.35 + 0) / 2 = 0.175
    assert fleet_environment(warm, np.zeros(2), THRESHOLDS, SETTINGS).fleet_health == "healthy"
    both = np.concatenate([hot, quiet])
    mid = {CPU: both, MEM: both}  # (0.7 + 0.7 + 0) / 3 = 0.467
    assert fleet_environment(mid, np.zeros(3), THRESHOLDS, SETTINGS).fleet_health == "warning"


def test_empty_fleet_is_healthy_with_zeros():
    assert fleet_environment({}, np.zeros(0), THRESHOLDS, SETTINGS) == Environment(
        0.0, 0.0, 0, 0, "healthy"
    )


def test_fleet_environment_ignores_nan_and_missing_quantities():
    forecasts = {CPU: np.full((3, 96, 3), np.nan)}
    env = fleet_environment(forecasts, np.array([np.nan, 0, 0]), THRESHOLDS, SETTINGS)
    assert env == Environment(0.0, 0.0, 0, 3, "healthy")


# --- trend -------------------------------------------------------------------------------------


def test_trend_is_the_least_squares_slope_of_the_last_hour_per_hour():
    hours = np.arange(24) * 300 / 3600
    values = np.stack([0.5 + 0.12 * hours, 0.9 - 0.06 * hours, np.full(24, 0.3)])
    values[0, :12] = 99.0  # older than an hour: ignored
    trend = trend_per_hour(values, np.ones_like(values, dtype=bool))
    assert trend == pytest.approx([0.12, -0.06, 0.0])


def test_trend_skips_unobserved_and_nan_cells_and_needs_two_points():
    values = np.array([[np.nan, 1.0, 5.0, 2.0], [0.0, 0.0, 7.0, np.nan], [1.0, 2.0, 3.0, 4.0]])
    observed = np.array([[True, True, False, True], [False, False, True, True], [False] * 4])
    trend = trend_per_hour(values, observed, steps=4)
    # row 0: points (1, 1.0) and (3, 2.0) at 5-minute steps: slope 0.5 per step = 6 per hour
    assert trend == pytest.approx([6.0, 0.0, 0.0])
    assert not np.isnan(trend).any()


def test_earliest_breach_is_the_first_step_whose_p90_passes():
    ramp = np.linspace(0.80, 0.99, 96)
    forecast = np.stack([ramp - 0.05, ramp, ramp + 0.05], axis=-1)[None].repeat(2, axis=0)
    forecast[1] = 0.5  # never
    earliest = earliest_breach(forecast, 0.95)
    _, ttb = breach_outlook(forecast, 0.95)
    assert earliest[0] == (int(np.argmax(ramp + 0.05 > 0.95)) + 1) * 300 < ttb[0]
    assert np.isnan(earliest[1]) and np.isnan(ttb[1])
    assert np.isnan(earliest_breach(np.full((1, 4, 3), np.nan), 0.95)).all()
