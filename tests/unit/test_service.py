"""The forecast cycle against a fake source: incremental fetches, shards, faults, new hosts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from exporter.snapshot import ServiceState, Snapshot
from forecaster.config import load_config
from forecaster.persist import load_snapshot, save_snapshot
from forecaster.service import Service, shard_of
from forecaster.serving import LoadedModel, ModelHolder
from forecaster.window import HistoryWindow
from tests.service_fakes import T0, FakeSource

FLEET = ["ppdb001", "ppdb002", "ppweb001", "ppml001", "ppgen001", "node-a:9100"]
TARGETS = (
    "cpu_utilisation",
    "memory_utilisation",
    "filesystem_utilisation",
    "disk_io",
    "request_latency_p95",
)


NO_GUARD = ("--guard.enabled", "false")
NO_RAMPS = Path(__file__).parent.parent / "golden" / "config-no-ramps.yml"
PLAIN = (*NO_GUARD, "--config.file", str(NO_RAMPS))  # neither reads back further than 24 h


def make_service(source, argv=(), holder=None):
    config = load_config(["--state.dir", "", *argv], {})
    published: list[tuple[Snapshot, ServiceState]] = []
    service = Service(
        config,
        source,
        holder,
        lambda s, st: published.append((s, st)),
        clock=lambda: source.now_value,
    )
    return service, published


def advance(source: FakeSource, seconds: float) -> None:
    source.now_value += seconds


@pytest.mark.fault("C1")
def test_first_cycle_serves_baseline_forecasts_for_every_instance_and_target():
    source = FakeSource(FLEET)
    service, published = make_service(source)
    assert service.run_cycle()
    snapshot, state = published[-1]
    assert sorted(snapshot.instances) == sorted(FLEET)
    assert state.source_up and state.cycles_total == 1 and not state.model_loaded
    for item in snapshot.instances.values():
        assert set(item.forecasts) == set(TARGETS)
        for forecast in item.forecasts.values():
            assert forecast.method in ("seasonal_naive", "heuristic")  # no model loaded
            assert forecast.quantiles.shape == (96, 3)
            assert np.isfinite(forecast.quantiles).all()
            assert (np.diff(forecast.quantiles, axis=1) >= 0).all()
        assert item.origin % 300 == 0
        assert 0 <= item.risk.score <= 100


def test_second_cycle_fetches_only_the_new_steps():
    source = FakeSource(FLEET)
    service, _ = make_service(source, PLAIN)
    service.run_cycle()
    full = {(s, e) for _, s, e in source.requests}
    assert all((e - s) / 300 + 1 == 288 for s, e in full)
    source.requests.clear()
    advance(source, 300)
    service.run_cycle()
    steps = {(e - s) / 300 + 1 for _, s, e in source.requests}
    assert steps == {4.0}  # the new step plus two overlapping ones, inclusive


def test_gap_longer_than_the_window_refetches_everything():
    source = FakeSource(FLEET)
    service, _ = make_service(source, PLAIN)
    service.run_cycle()
    source.requests.clear()
    advance(source, 25 * 3600)
    service.run_cycle()
    assert {(e - s) / 300 + 1 for _, s, e in source.requests} == {288.0}


def test_older_history_is_backfilled_in_chunks_until_the_guard_window_is_held():
    source = FakeSource(FLEET, first=float(T0 - 3 * 86_400))
    service, _ = make_service(source, ["--guard.backfill-chunk", "12h"])
    service.run_cycle()
    first = sorted({(s, e) for _, s, e in source.requests})
    assert [(e - s) / 300 + 1 for s, e in first] == [144.0, 288.0]  # 24 h, then 12 h older
    held = []
    for _ in range(4):
        source.requests.clear()
        advance(source, 300)
        service.run_cycle()
        held.append(service.window.frame()["timestamp"].nunique())
    assert held[-1] == 864  # 3 days, the guard's history
    assert {(e - s) / 300 + 1 for _, s, e in source.requests} == {4.0}  # only new steps now
    assert held == sorted(held)


@pytest.mark.fault("A2")
def test_source_down_keeps_the_last_snapshot_and_marks_the_source_down():
    source = FakeSource(FLEET)
    service, published = make_service(source)
    service.run_cycle()
    good = published[-1][0]
    source.fail_with = "connection"
    advance(source, 60)
    assert not service.run_cycle()
    snapshot, state = published[-1]
    assert snapshot is good
    assert not state.source_up
    assert state.cycle_failures == {"connection": 1}
    source.fail_with = None
    advance(source, 300)
    assert service.run_cycle()
    snapshot, state = published[-1]
    assert state.source_up and snapshot is not good
    assert snapshot.generated_at > good.generated_at


def test_two_shards_cover_disjoint_sets_whose_union_is_the_fleet():
    fleet = [f"host{i:03d}" for i in range(40)]
    seen = []
    for index in range(2):
        source = FakeSource(fleet)
        service, published = make_service(
            source, ["--shard.count", "2", "--shard.index", str(index)]
        )
        service.run_cycle()
        seen.append(set(published[-1][0].instances))
    assert seen[0].isdisjoint(seen[1])
    assert seen[0] | seen[1] == set(fleet)
    assert seen[0] and seen[1]
    assert all(shard_of(name, 2) == 0 for name in seen[0])


def test_after_a_shard_count_change_the_replicas_share_the_fleet_anew_and_serve_no_instance_twice():
    from forecaster.__main__ import _own_share
    from tests.exporter_fixtures import fixed_snapshot

    fleet = [f"host{i:03d}" for i in range(60)]
    seen = []
    for index in range(3):  # 2 -> 3 replicas: each restarted with the new count
        source = FakeSource(fleet)
        service, published = make_service(
            source, ["--shard.count", "3", "--shard.index", str(index)]
        )
        service.run_cycle()
        seen.append(set(published[-1][0].instances))
    assert sum(len(s) for s in seen) == len(fleet) and set().union(*seen) == set(fleet)
    # before its first cycle a restarted replica serves its persisted snapshot, cut to its share
    persisted = fixed_snapshot()  # written by one replica of a smaller count: every instance
    assert _own_share(persisted, 0, 1) is persisted
    shares = [set(_own_share(persisted, i, 3).instances) for i in range(3)]
    assert set().union(*shares) == set(persisted.instances)
    assert sum(len(s) for s in shares) == len(persisted.instances)
    assert all(shard_of(name, 3) == i for i, share in enumerate(shares) for name in share)


@pytest.mark.fault("B8", "C6")
def test_new_instance_is_forecast_at_the_next_cycle():
    source = FakeSource(FLEET)
    service, published = make_service(source)
    service.run_cycle()
    source.instances = [*FLEET, "zzq001"]
    source.first = source.now_value - 3600  # an hour of history so far
    advance(source, 300)
    service.run_cycle()
    snapshot = published[-1][0]
    assert "zzq001" in snapshot.instances
    new = snapshot.instances["zzq001"]
    assert new.profile == "generic"
    assert new.method == "heuristic"
    assert new.warmup_steps < new.warmup_required


@pytest.mark.fault("B8")
def test_vanished_instance_disappears_after_stale_after():
    source = FakeSource(FLEET)
    service, published = make_service(source, ["--cycle.stale-after", "10m"])
    service.run_cycle()
    source.instances = FLEET[1:]
    for _ in range(3):
        advance(source, 300)
        service.run_cycle()
    assert FLEET[0] not in published[-1][0].instances
    assert set(published[-1][0].instances) == set(FLEET[1:])


def test_host_without_a_quantity_gets_no_forecast_for_it():
    source = FakeSource(FLEET, missing={"request_latency_p95": {"node-a:9100"}})
    service, published = make_service(source)
    service.run_cycle()
    item = published[-1][0].instances["node-a:9100"]
    assert "request_latency_p95" not in item.forecasts
    assert "request_latency_p95" not in item.breaches
    assert set(item.forecasts) == set(TARGETS) - {"request_latency_p95"}


def test_risk_rises_for_a_host_heading_for_saturation():
    source = FakeSource(FLEET, override={("ppdb001", "cpu_utilisation"): 0.97})
    service, published = make_service(source)
    service.run_cycle()
    snapshot = published[-1][0]
    hot = snapshot.instances["ppdb001"]
    assert hot.risk.cpu_risk >= 30
    assert hot.breaches["cpu_utilisation"].probability["30m"] > 0.5
    assert hot.breaches["cpu_utilisation"].time_to_breach == 300
    assert "CPU" in hot.risk.message
    others = [i for n, i in snapshot.instances.items() if n != "ppdb001"]
    assert all(i.risk.score == 0 for i in others)


def test_the_fleet_outlook_counts_only_instances_past_their_warm_up():
    """A host at 97 % CPU raises the fleet's incident probability once it is warm; in its
    first hours (fewer than `cycle.warmup_steps` steps held) its forecast is still served and
    scored, but the fleet figures leave it out, so a fresh start cannot raise them."""
    hot = {("ppdb001", "cpu_utilisation"): 0.97}
    warm, published_warm = make_service(FakeSource(FLEET, override=hot))
    warm.run_cycle()
    assert published_warm[-1][0].environment.prob_30m > 0
    young = FakeSource(FLEET, override=hot)
    young.first_of = {"ppdb001": young.now_value - 3600}  # 1 h of history: in warm-up
    service, published = make_service(young)
    service.run_cycle()
    snapshot = published[-1][0]
    item = snapshot.instances["ppdb001"]
    assert item.warmup_progress < 1 and item.risk.cpu_risk >= 30  # served, not hidden
    assert snapshot.environment.prob_30m == 0.0 and snapshot.environment.high_risk_servers == 0
    assert snapshot.environment.total_servers == len(FLEET)


@pytest.mark.fault("B7")
def test_pushed_records_are_forecast_like_scraped_hosts():
    source = FakeSource(FLEET)
    service, published = make_service(source)
    service.run_cycle()
    end = int(source.now_value // 300) * 300
    records = [
        {"server_name": "pushed01", "timestamp": end - 300 * k, "cpu_pct": 40.0, "mem_pct": 50}
        for k in range(48)
    ]
    records.append({"server_name": "bad name!", "timestamp": end, "cpu_pct": 1})
    accepted, errors = service.ingest(records)
    assert accepted == 48
    assert errors == [(48, "invalid_server_name")]
    advance(source, 60)
    service.run_cycle()
    item = published[-1][0].instances["pushed01"]
    assert set(item.forecasts) == {"cpu_utilisation", "memory_utilisation"}
    assert item.forecasts["cpu_utilisation"].current == pytest.approx(0.40)


def test_online_accuracy_is_published_once_actuals_arrive():
    source = FakeSource(FLEET)
    service, published = make_service(source)
    service.run_cycle()
    for _ in range(7):
        advance(source, 300)
        service.run_cycle()
    accuracy = {(a.quantity, a.horizon): a for a in published[-1][0].accuracy}
    assert ("cpu_utilisation", "5m") in accuracy
    assert ("cpu_utilisation", "30m") in accuracy
    assert accuracy[("cpu_utilisation", "5m")].samples == 7 * len(FLEET)
    assert 0 <= accuracy[("cpu_utilisation", "5m")].coverage <= 1


def test_persisted_snapshot_round_trips(tmp_path: Path):
    source = FakeSource(FLEET)
    service, published = make_service(source)
    service.run_cycle()
    snapshot = published[-1][0]
    save_snapshot(snapshot, tmp_path)
    loaded = load_snapshot(tmp_path)
    assert loaded is not None
    assert loaded.generated_at == snapshot.generated_at
    assert loaded.environment == snapshot.environment
    for name, item in snapshot.instances.items():
        other = loaded.instances[name]
        assert other.risk == item.risk and other.drivers == item.drivers
        for q, f in item.forecasts.items():
            np.testing.assert_array_equal(other.forecasts[q].quantiles, f.quantiles)
        assert other.breaches == item.breaches


def test_unreadable_persisted_snapshot_is_ignored(tmp_path: Path):
    (tmp_path / "snapshot.npz").write_bytes(b"not a zip file")
    assert load_snapshot(tmp_path) is None


def test_window_plan_overlaps_two_steps_and_merges_newest_value():
    window = HistoryWindow(("cpu_utilisation",), context_steps=10)
    plan = window.plan(3000)
    assert plan.full and plan.start == 3000 - 9 * 300
    assert window.plan(3000).steps == 10


class _Loader:
    def __init__(self, broken=()):
        self.calls: list[str] = []
        self.broken = set(broken)

    def __call__(self, registry, version, contract, settings):
        from forecaster.registry import RegistryError

        self.calls.append(version)
        if version in self.broken:
            raise RegistryError("checksum", f"{version}: hash mismatch")
        return LoadedModel(version, predictor=object(), device="cpu")


def _point(root: Path, version: str) -> None:
    (root / "current.json").write_text(json.dumps({"version": version, "previous": None}))


@pytest.mark.fault("C1", "D6")
def test_model_holder_hot_reloads_a_newly_promoted_version(tmp_path: Path):
    config = load_config(["--model.dir", str(tmp_path)], {})
    loader = _Loader()
    holder = ModelHolder(config.model, "1.0.0", loader=loader)
    assert holder.check() is None
    assert holder.failures["no_model"] == 1
    _point(tmp_path, "v1")
    assert holder.check().version == "v1"
    assert holder.check().version == "v1"
    assert loader.calls == ["v1"]
    _point(tmp_path, "v2")
    assert holder.check().version == "v2"


@pytest.mark.fault("C2", "C3")
def test_model_holder_keeps_serving_when_a_new_version_is_refused(tmp_path: Path):
    config = load_config(["--model.dir", str(tmp_path)], {})
    loader = _Loader(broken={"v2"})
    holder = ModelHolder(config.model, "1.0.0", loader=loader)
    _point(tmp_path, "v1")
    holder.check()
    _point(tmp_path, "v2")
    assert holder.check().version == "v1"
    assert holder.failures["checksum"] == 1
    holder.check()
    assert loader.calls == ["v1", "v2"]  # a refused version is not retried every poll
    holder.reload_now()
    holder.check()
    assert loader.calls == ["v1", "v2", "v2"]


@pytest.mark.torch
def test_shipped_model_serves_every_warm_instance_with_drivers():
    root = Path(__file__).resolve().parents[2] / "models"
    config = load_config(["--model.dir", str(root), "--model.device", "cpu"], {})
    holder = ModelHolder(config.model, "1.0.0")
    assert holder.check() is not None
    source = FakeSource(FLEET)
    source.instances = [*FLEET, "zzq001"]
    source.missing = {}
    argv = ["--model.dir", str(root), *NO_GUARD]  # the model path itself, the guard aside
    service, published = make_service(source, argv, holder=holder)
    service.run_cycle()
    snapshot, state = published[-1]
    assert state.model_loaded and state.model_version == holder.current.version
    for item in snapshot.instances.values():
        assert item.method == "tft", item.instance
        assert item.drivers and all(w >= 0 for _, w in item.drivers)
        names = [n for n, _ in item.drivers]
        assert "relative_time_idx" not in names
        for forecast in item.forecasts.values():
            assert np.isfinite(forecast.quantiles).all()
            assert (np.diff(forecast.quantiles, axis=1) >= 0).all()
    short = FakeSource(["ppdb009"], first=source.now_value - 2 * 3600)
    service, published = make_service(short, ["--model.dir", str(root)], holder=holder)
    service.run_cycle()
    assert published[-1][0].instances["ppdb009"].method == "heuristic"  # 2 h < 3 h warm-up


def test_an_internal_error_is_counted_and_the_last_snapshot_keeps_serving(monkeypatch):
    source = FakeSource(FLEET)
    service, published = make_service(source)
    service.run_cycle()
    good = published[-1][0]

    def broken(*args, **kwargs):
        raise ValueError("a bug")

    monkeypatch.setattr(service.window, "merge", broken)
    advance(source, 300)
    assert not service.run_cycle()
    snapshot, state = published[-1]
    assert snapshot is good
    assert state.cycle_failures == {"internal": 1}
    monkeypatch.undo()
    advance(source, 300)
    assert service.run_cycle()


def test_a_percentage_fed_as_a_ratio_is_named_once_in_the_log_and_in_status(caplog):
    source = FakeSource(FLEET, override={("ppdb001", "cpu_utilisation"): 37.5})
    service, published = make_service(source, NO_GUARD)
    with caplog.at_level("WARNING", logger="forecaster.service"):
        service.run_cycle()
        advance(source, 300)
        service.run_cycle()
    lines = [r.getMessage() for r in caplog.records if "ppdb001/cpu_utilisation" in r.getMessage()]
    assert len(lines) == 1 and "percent instead of a ratio" in lines[0], lines
    state = published[-1][1]
    assert set(state.input_warnings) == {"ppdb001/cpu_utilisation"}
    source.override.clear()
    advance(source, 2 * 86_400)  # a gap: the whole window is refetched, now in range
    service.run_cycle()
    assert published[-1][1].input_warnings == {}


@pytest.mark.torch
@pytest.mark.slow
def test_the_guard_weighs_the_shipped_model_against_the_baselines_on_each_series():
    root = Path(__file__).resolve().parents[2] / "models"
    config = load_config(["--model.dir", str(root), "--model.device", "cpu"], {})
    holder = ModelHolder(config.model, "1.0.0")
    assert holder.check() is not None
    source = FakeSource(FLEET[:3], first=float(T0 - 2 * 86_400))
    argv = ["--model.dir", str(root), "--guard.bootstrap-per-cycle", "24"]
    service, published = make_service(source, argv, holder=holder)
    for _ in range(3):  # 24 h, then the older history, then every backtest origin is scored
        service.run_cycle()
        advance(source, 300)
    snapshot, _ = published[-1]
    methods = {"tft", "seasonal_mean", "seasonal_naive", "heuristic"}
    for item in snapshot.instances.values():
        for forecast in item.forecasts.values():
            assert forecast.method in methods
            assert set(forecast.scores) <= methods and "tft" in forecast.scores, forecast.scores
            assert all(np.isfinite(v) and v >= 0 for v in forecast.scores.values())
            assert np.isfinite(forecast.quantiles).all()
            assert (np.diff(forecast.quantiles, axis=1) >= 0).all()


def test_a_ramp_only_the_model_extrapolates_still_warns_under_the_guard():
    from forecaster.engine import ForecastSet

    service, _ = make_service(FakeSource(FLEET))
    steps = np.arange(1, 97)
    flat = np.stack([np.full(96, 0.45), np.full(96, 0.5), np.full(96, 0.55)], axis=-1)
    ramp_p50 = 0.5 + 0.5 * steps / 96  # passes 0.95 at step 87
    ramp = np.stack([ramp_p50 - 0.02, ramp_p50, ramp_p50 + 0.02], axis=-1)
    served = np.stack([flat, flat])
    model = np.stack([ramp, np.full((96, 3), np.nan)])  # the model does not serve row 1
    result = ForecastSet(
        origin=0,
        instances=("a", "b"),
        profiles=("generic", "generic"),
        lengths=np.array([288, 288]),
        forecasts={"memory_utilisation": served},
        methods={"memory_utilisation": np.array(["seasonal_mean", "seasonal_mean"])},
        available={"memory_utilisation": np.array([True, True])},
        current={"memory_utilisation": np.array([0.5, 0.5])},
        trend={"memory_utilisation": np.array([0.0, 0.0])},
        drivers=((), ()),
        candidates={"memory_utilisation": {"tft": model, "seasonal_mean": served}},
    )
    probabilities, ttb, earliest = service._outlook(result, "memory_utilisation", served, 0.95)
    assert probabilities["8h"][0] > 0.5 and probabilities["8h"][1] < 0.01
    assert probabilities["30m"][0] < 0.01  # the ramp is hours away
    assert ttb[0] == 87 * 300 and np.isnan(ttb[1])
    first_p90 = int(np.argmax(ramp[:, 2] > 0.95)) + 1  # the band's early end: the p90's crossing
    assert earliest[0] == first_p90 * 300 < ttb[0] and np.isnan(earliest[1])
