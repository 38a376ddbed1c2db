"""Behaviour of the simulator's signal model: baselines, states, patterns, incidents."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from simulator import schedule as sch
from simulator.fleet import PROFILE_BY_NAME, PROFILES, build_fleet, fleet_counts, node_names
from simulator.signals import LATENCY_BUCKETS, _share, evaluate, histogram_quantile

START = 1_795_305_600 // sch.STEP  # 2026-11-22T00:00Z, a Sunday
DAYS = 28


@pytest.fixture(scope="module")
def month():
    """Four weeks of the default fleet at twice the default incident rate."""
    fleet = build_fleet(20, seed=7)
    steps = np.arange(START - DAYS * 288, START)
    return fleet, steps, evaluate(fleet, steps, incident_rate=1.0)


def test_fleet_has_the_seed_profile_mix_and_scales_it():
    assert node_names(20)[:4] == ["ppml001", "ppml002", "ppml003", "ppdb001"]
    assert fleet_counts(20) == {p.name: p.seed_count for p in PROFILES}
    counts = fleet_counts(1000)
    assert sum(counts.values()) == 1000
    assert counts["web_api"] == 250 and counts["generic"] == 50
    assert len(set(node_names(1000))) == 1000


def test_healthy_business_hours_means_are_within_10_percent_of_the_seed_baselines(month):
    fleet, steps, values = month
    t = steps * float(sch.STEP)
    hour, weekday = sch.hour_of_day(t), sch.day_of_week(t) < 5
    business = (hour >= 9) & (hour < 17) & weekday
    calm = (values["state"] == sch.HEALTHY) & (values["incident_phase"] == 0) & business
    profiles = np.array(fleet.profiles)
    for profile in PROFILES:
        rows = profiles == profile.name
        for column, baseline in [
            ("cpu_utilisation", profile.cpu),
            ("memory_utilisation", profile.memory),
            ("disk_io", profile.disk_io),
            ("request_latency_p95", profile.latency_p95),
        ]:
            mean = values[column][rows][calm[rows]].mean()
            assert mean == pytest.approx(baseline, rel=0.10), (profile.name, column)


def test_state_multipliers_scale_load_as_in_the_seed(month):
    fleet, steps, values = month
    t = np.broadcast_to(steps * float(sch.STEP), values["disk_io"].shape)
    _, io_batch = sch.batch_factors(fleet, t)
    nominal = fleet["disk_io"][:, None] * sch.load_factor(fleet, t) * io_batch
    ratio = values["disk_io"] / nominal
    outside_incidents = values["incident_phase"] == 0
    for code, multiplier in enumerate(sch.STATE_MULTIPLIER):
        cells = (values["state"] == code) & outside_incidents
        assert cells.sum() > 100, sch.STATES[code]
        assert ratio[cells].mean() == pytest.approx(multiplier, rel=0.05), sch.STATES[code]
    assert list(sch.STATE_MULTIPLIER) == [1.0, 1.3, 1.5, 1.8, 2.2, 1.2]


def test_every_seed_state_occurs_and_healthy_dominates(month):
    _, _, values = month
    shares = np.bincount(values["state"].ravel(), minlength=6) / values["state"].size
    assert shares[sch.HEALTHY] > 0.7
    assert (shares > 0).all()


def test_diurnal_curve_follows_the_seed_table():
    hours = np.arange(0, 24, 0.25)
    curve = sch.diurnal(hours * 3600)
    business = (hours >= 9) & (hours < 17)
    assert curve[business].mean() == pytest.approx(1.0, abs=0.01)
    assert curve[(hours < 6)].min() >= 0.4 and curve[(hours < 6)].max() <= 0.6
    assert curve[business].min() >= 0.9 and curve[business].max() <= 1.1
    assert curve[(hours >= 22)].max() <= 0.7
    morning = curve[(hours >= 6) & (hours <= 9)]
    assert np.all(np.diff(morning) > 0)


def test_observed_cpu_is_low_at_night_and_lower_on_weekends(month):
    _, steps, values = month
    t = steps * float(sch.STEP)
    hour, weekday = sch.hour_of_day(t), sch.day_of_week(t) < 5
    cpu = values["cpu_utilisation"]
    night = cpu[:, (hour >= 2) & (hour < 5) & weekday].mean()
    day = cpu[:, (hour >= 10) & (hour < 16) & weekday].mean()
    weekend = cpu[:, (hour >= 10) & (hour < 16) & ~weekday].mean()
    assert night < 0.6 * day
    assert weekend < 0.9 * day


def test_values_are_a_pure_function_of_seed_node_and_step(month):
    fleet, steps, values = month
    window = steps[1000:1010]
    again = evaluate(fleet, window, incident_rate=1.0)
    subset = build_fleet(seed=7, nodes=["ppweb003", "ppdb002"])
    alone = evaluate(subset, window[3:4], incident_rate=1.0)
    for column in ("cpu_utilisation", "memory_utilisation", "request_latency_p95", "state"):
        np.testing.assert_array_equal(again[column], values[column][:, 1000:1010])
        for row, node in enumerate(subset.nodes):
            assert alone[column][row, 0] == values[column][fleet.index(node), 1003]
    other = evaluate(build_fleet(20, seed=8), window, incident_rate=1.0)
    assert not np.array_equal(other["cpu_utilisation"], again["cpu_utilisation"])


def test_without_an_incident_no_quantity_reaches_a_breach_threshold(month):
    _, _, values = month
    quiet = values["incident"] < 0
    for kind in sch.INCIDENT_KINDS:
        assert values[kind.quantity][quiet].max() < kind.threshold, kind.name


def test_each_labelled_breach_happens_exactly_at_its_time(month):
    fleet, steps, values = month
    records = sch.incident_table(fleet, int(steps[0]) + 30, int(steps[-1]) - 30, 1.0)
    assert {r["kind"] for r in records} == set(sch.KIND_BY_NAME)
    for r in records:
        series = values[r["quantity"]][fleet.index(r["instance"])]
        j = int(r["breach"] // sch.STEP - steps[0])
        assert series[j - 1] < r["threshold"] <= series[j], r
        assert (series[j : int(r["end"] // sch.STEP - steps[0])] >= r["threshold"]).all(), r


def test_precursor_30_minute_mean_rises_monotonically_before_every_smooth_breach(month):
    fleet, steps, values = month
    records = sch.incident_table(fleet, int(steps[0]) + 120, int(steps[-1]) - 30, 1.0)
    assert len(records) > 300
    for r in (r for r in records if r["shape"] == "smooth"):
        series = pd.Series(values[r["quantity"]][fleet.index(r["instance"])])
        rolling = series.rolling(6).mean().to_numpy()
        j = int(r["breach"] // sch.STEP - steps[0])
        lead = 24 if r["kind"] in ("memory_leak", "filesystem_fill") else 6
        assert np.all(np.diff(rolling[j - lead : j + 1]) > 0), r


def test_precursor_lengths_follow_the_incident_kinds(month):
    fleet, steps, _ = month
    records = sch.incident_table(fleet, int(steps[0]), int(steps[-1]), 1.0)
    for r in records:
        hours = (r["breach"] - r["precursor_start"]) / 3600
        if r["shape"] == "sudden":
            assert hours == sch.STEP / 3600, r
        elif r["kind"] in ("memory_leak", "filesystem_fill"):
            assert 2 <= hours <= 8, r
        else:
            assert 0.5 <= hours <= 2, r


def test_incident_shapes_follow_the_mix_and_look_as_named(month):
    fleet, steps, values = month
    records = sch.incident_table(fleet, int(steps[0]) + 120, int(steps[-1]) - 30, 1.0)
    for kind, mix in sch.SHAPE_MIX.items():
        assert sum(mix) == pytest.approx(1.0)
        drawn = {r["shape"] for r in records if r["kind"] == kind}
        assert drawn == {s for s, share in zip(sch.SHAPES, mix, strict=True) if share > 0}, kind
    for r in records:
        series = values[r["quantity"]][fleet.index(r["instance"])]
        start = int(r["precursor_start"] // sch.STEP - steps[0])
        breach = int(r["breach"] // sch.STEP - steps[0])
        ramp = np.diff(series[start:breach])
        rise = series[breach - 1] - series[start]
        if r["shape"] == "sudden":  # normal one step before the breach
            assert breach - start == 1 and series[breach - 1] < 0.9 * r["threshold"], r
        elif r["shape"] == "stepped":  # plateaus: most steps flat, a few large jumps
            assert np.mean(np.abs(ramp) < 0.02 * rise) > 0.8, r
            assert np.count_nonzero(ramp > 0.15 * rise) >= sch.RAMP_CYCLES - 2, r
        elif r["shape"] == "sawtooth":  # falls back several times on the way up
            assert np.count_nonzero(ramp < -0.2 * rise) >= sch.RAMP_CYCLES - 2, r
            assert rise > 0, r


def test_latency_degradation_is_preceded_by_rising_gc_pauses_and_errors(month):
    fleet, steps, values = month
    records = sch.incident_table(fleet, int(steps[0]) + 60, int(steps[-1]) - 30, 1.0)
    chosen = (r for r in records if r["kind"] == "latency_degradation" and r["shape"] != "sudden")
    for r in chosen:
        n = fleet.index(r["instance"])
        start = int(r["precursor_start"] // sch.STEP - steps[0])
        breach = int(r["breach"] // sch.STEP - steps[0])
        for column in ("gc_pause", "http_error_ratio"):
            before = values[column][n, start - 6 : start].mean()
            assert values[column][n, breach - 2 : breach].mean() > 1.5 * before, (column, r)


def test_histogram_quantile_matches_prometheus_interpolation():
    bounds = (0.1, 0.2, 0.5)
    cumulative = np.array([[10.0, 50.0, 90.0, 100.0], [0.0, 0.0, 0.0, 0.0]])
    result = histogram_quantile(0.5, bounds, cumulative)
    assert result[0] == pytest.approx(0.1 + 0.1 * (50 - 10) / 40)
    assert np.isnan(result[1])
    # The rank falls in the +Inf bucket: Prometheus returns the highest finite bound.
    assert histogram_quantile(0.99, bounds, cumulative[:1])[0] == pytest.approx(0.5)


def test_latency_histogram_estimate_stays_close_to_the_true_p95():
    true_p95 = np.geomspace(0.006, 0.7, 200)
    median = true_p95 / np.exp(1.6448536269514722 * 0.5)
    shares = np.stack([_share(le, median) for le in LATENCY_BUCKETS] + [np.ones(200)], -1)
    estimate = histogram_quantile(0.95, LATENCY_BUCKETS, shares)
    assert np.all(estimate >= true_p95 * 0.999) and np.all(estimate <= true_p95 * 1.10)


def test_scenarios_affect_a_quarter_of_the_fleet():
    fleet = build_fleet(20, seed=42)
    assert sch.affected_nodes(fleet).sum() == 5
    assert sch.SCENARIOS == {"healthy": 1.0, "degrading": 1.15, "critical": 1.6}
    assert PROFILE_BY_NAME["database"].cpu == 0.40


def test_latency_bucket_counters_grow_by_more_than_their_rounding_step_during_an_incident():
    """A bucket share of about 0 (the lowest buckets while latency is degraded) once made the
    history's and the live integration differ in the last place: a counter reset in Prometheus."""
    from simulator.series import channel_rates
    from simulator.signals import SHARE_FLOOR

    fleet = build_fleet(20, 42)
    node = fleet.nodes.index("ppetl002")
    start = pd.Timestamp("2026-12-02T15:00:00Z").value // 10**9 // 300
    values = evaluate(fleet, np.arange(start, start + 12))
    assert values["request_latency_p95"][node].max() > 0.5  # the incident is in this window
    assert values["latency_shares"].min() >= SHARE_FLOOR
    increments = channel_rates(values)[node] * 300
    assert (increments > np.spacing(1e9)).all()
