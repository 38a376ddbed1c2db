"""Rows of the fault catalogue (docs/RELIABILITY.md) that no other module exercised.

Every fault is injected in-process and deterministically: a fake Prometheus behind
`httpx.MockTransport`, fake clocks, and fault hooks in place of a full or read-only disk (the
tests may run as root, for whom a chmod-ed directory is still writable). No test sleeps for
more than a fraction of a second. A test marked `xfail(strict=True)` states a behaviour the
catalogue asks for and the code does not have yet; it starts to fail (XPASS) once it does.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import os
import pathlib
import signal
import threading
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

import forecaster.__main__ as forecaster_main
from exporter.collector import render
from exporter.hub import Hub
from forecaster.__main__ import CycleLoop, _lock_state_dir, _publish_persisted
from forecaster.config import PrometheusSettings, load_config
from forecaster.features import calendar
from forecaster.persist import FILENAME, load_snapshot, save_snapshot
from forecaster.service import Service
from forecaster.source import PrometheusSource, SourceError
from stack.ports import pick_free_ports
from tests.service_fakes import FLEET, FakeClock, FakePrometheus, FakeSource

with warnings.catch_warnings():  # starlette's note about httpx vs httpx2
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

STEP = 300


# --- a fake Prometheus and a service around it ---------------------------------------------------


def rig(*argv: str, skew: float = 0.0):
    """(fake, clock, source, service, published): the real client against the fake."""
    fake, clock = FakePrometheus(), FakeClock()
    config = load_config(
        ["--state.dir", "", "--prometheus.url", "http://prometheus.test", *argv], {}
    )
    source = PrometheusSource(
        config.prometheus, transport=httpx.MockTransport(fake), sleep=clock.sleep, clock=clock
    )
    published: list = []
    service = Service(
        config,
        source,
        None,
        lambda s, st: published.append((s, st)),
        clock=lambda: fake.now + skew,
    )
    return fake, clock, source, service, published


# --- A3: a slow source never makes cycles overlap -----------------------------------------------


class BlockingSource(FakeSource):
    """A FakeSource whose first `now()` blocks until released; counts concurrent calls."""

    def __init__(self, instances: list[str]) -> None:
        super().__init__(instances)
        self.entered = threading.Event()
        self.release = threading.Event()
        self.active = 0
        self.peak = 0
        self.calls = 0
        self._count = threading.Lock()

    def now(self) -> float:
        with self._count:
            self.active += 1
            self.calls += 1
            self.peak = max(self.peak, self.active)
            first = self.calls == 1
        try:
            if first:
                self.entered.set()
                assert self.release.wait(10), "the test never released the slow answer"
            return super().now()
        finally:
            with self._count:
                self.active -= 1


@pytest.mark.fault("A3")
def test_a_slow_source_never_makes_two_cycles_overlap():
    source = BlockingSource(FLEET)
    config = load_config(["--state.dir", "", "--guard.enabled", "false"], {})
    published: list = []
    service = Service(
        config, source, None, lambda s, st: published.append(s), clock=lambda: source.now_value
    )
    results: list[bool] = []
    first = threading.Thread(target=lambda: results.append(service.run_cycle()))
    first.start()
    assert source.entered.wait(10)
    second = threading.Thread(target=lambda: results.append(service.run_cycle()))
    second.start()
    second.join(0.3)
    assert second.is_alive() and source.calls == 1  # waiting for the first cycle, not fetching
    source.release.set()
    first.join(10)
    second.join(10)
    assert results == [True, True] and source.peak == 1 and len(published) == 2
    assert config.prometheus.timeout == 30  # the client's timeout when Prometheus is slow


# --- A7: Thanos-style partial responses ---------------------------------------------------------


@pytest.mark.parametrize("mode", ["thanos_partial", "thanos_flag"])
@pytest.mark.fault("A7")
def test_a_thanos_partial_response_is_published_and_flagged_in_the_metrics(mode):
    fake, _, source, service, published = rig()
    fake.mode = mode
    assert service.run_cycle()
    snapshot, state = published[-1]
    assert state.input_partial and sorted(snapshot.instances) == sorted(FLEET)
    text = render(snapshot, state, now=fake.now, stale_after=1800.0).decode()
    assert "forecaster_input_partial 1.0" in text
    fake.mode = "ok"
    fake.now += STEP
    assert service.run_cycle()
    assert (
        "forecaster_input_partial 0.0"
        in render(*published[-1], now=fake.now, stale_after=1800.0).decode()
    )
    source.close()


# --- A9: Prometheus restarting (`/-/ready` 503 during WAL replay) ------------------------------


@pytest.mark.fault("A9")
def test_a_restarting_prometheus_is_backed_off_and_the_first_cycle_after_ready_is_fresh():
    fake, clock, source, service, published = rig()
    assert service.run_cycle()
    good = published[-1][0]
    fake.mode = "restarting"
    assert not source.ready()
    for _ in range(3):
        fake.now += 60
        requests, waits = len(fake.requests), len(clock.waits)
        assert not service.run_cycle()
        snapshot, state = published[-1]
        assert snapshot is good and not state.source_up
        assert len(fake.requests) - requests == 1 + service.config.prometheus.retries
        backoff = clock.waits[waits:]
        assert backoff and all(w >= 0 for w in backoff) and sum(backoff) > 0
    assert not source.ready()
    fake.mode = "ok"  # WAL replay done
    assert source.ready()
    fake.now += 60  # the next cycle
    assert service.run_cycle()
    snapshot, state = published[-1]
    assert state.source_up and snapshot is not good
    assert snapshot.generated_at == fake.now and sorted(snapshot.instances) == sorted(FLEET)
    source.close()


# --- B8: the series cap ---------------------------------------------------------------------------


@pytest.mark.fault("B8")
def test_instances_over_max_series_are_dropped_and_counted(caplog):
    fleet = [f"host{i:03d}" for i in range(6)]
    source = FakeSource(fleet)
    config = load_config(["--state.dir", "", "--cycle.max-series", "4"], {})
    published: list = []
    service = Service(
        config, source, None, lambda s, st: published.append((s, st)), clock=source.now
    )
    with caplog.at_level(logging.WARNING, logger="forecaster.service"):
        assert service.run_cycle()
        source.now_value += 300
        assert service.run_cycle()
    snapshot, state = published[-1]
    assert len(snapshot.instances) == 4
    assert state.dropped_series["max_series"] == 4  # 2 a cycle
    text = render(snapshot, state, now=source.now_value, stale_after=1800.0).decode()
    assert 'forecaster_dropped_series_total{reason="max_series"} 4.0' in text
    over = [r.getMessage() for r in caplog.records if "over capacity" in r.getMessage()]
    assert over == [
        "over capacity: 6 instances, cycle.max_series 4; 2 not forecast "
        '(forecaster_dropped_series_total{reason="max_series"}); shard the fleet '
        "(--shard.index/--shard.count, docs/SCALING.md) or raise the limit"
    ], "one line when it starts, not one per cycle"


# --- B9: a counter reset (simulator restart) -------------------------------------------------

RESET_TEST = """
rule_files: []
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'node_disk_read_bytes_total{instance="ppdb001",device="sda"}'
        values: '0+60000x30 0+60000x30'
      - series: 'node_disk_written_bytes_total{instance="ppdb001",device="sda"}'
        values: '0+30000x60'
    promql_expr_test:
      - expr: min_over_time(deriv(node_disk_read_bytes_total[2m])[30m:1m]) < bool 0
        eval_time: 55m
        exp_samples:
          - labels: '{device="sda",instance="ppdb001"}'
            value: 1
      - expr: min_over_time(({expr})[30m:1m]) >= bool 0
        eval_time: 55m
        exp_samples:
          - labels: '{instance="ppdb001"}'
            value: 1
      - expr: max_over_time(({expr})[30m:1m]) / min_over_time(({expr})[30m:1m]) < bool 1.3
        eval_time: 55m
        exp_samples:
          - labels: '{instance="ppdb001"}'
            value: 1
"""


@pytest.mark.prometheus
@pytest.mark.fault("B9")
def test_a_counter_reset_gives_no_negative_or_spiking_rate_through_the_contract(tmp_path):
    """The raw counter drops (its derivative is negative at the reset); the contract's
    `rate()` expression that the forecaster ingests stays positive and within 30 % of its
    level, so the forecaster sees no negative spike."""
    from forecaster.contract import load_contract
    from tests.unit.test_repo_rules import assert_ok, run, system_tool

    expr = load_contract()["disk_io"].expr
    path = tmp_path / "reset_test.yml"
    path.write_text(RESET_TEST.replace("{expr}", expr))
    assert_ok(run([system_tool("promtool", "prometheus"), "test", "rules", str(path)], 60))


# --- B10: calendar features in UTC whatever the local time zone ----------------------------------


@pytest.fixture
def local_zone(monkeypatch):
    """Sets TZ for the test (time.tzset), and restores the process's zone afterwards."""

    def use(zone: str | None) -> None:
        if zone is None:
            monkeypatch.delenv("TZ", raising=False)
        else:
            monkeypatch.setenv("TZ", zone)
        time.tzset()

    yield use
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("day", ["2026-03-29", "2026-10-25"])  # Europe/Berlin's DST changes
@pytest.mark.fault("B10")
def test_calendar_features_are_utc_across_a_dst_change_and_any_tz(local_zone, day):
    start = int(datetime.fromisoformat(f"{day}T00:00:00+00:00").timestamp())
    seconds = np.arange(start - 86_400, start + 2 * 86_400, STEP)
    results = []
    for zone in ("Europe/Berlin", None, "Mars/Olympus_Mons", "UTC"):
        local_zone(zone)
        results.append(calendar(seconds))
    for other in results[1:]:
        for name, values in results[0].items():
            np.testing.assert_array_equal(values, other[name])
    features = results[0]
    hours = np.mod(np.arctan2(features["hour_sin"], features["hour_cos"]) * 24 / (2 * math.pi), 24)
    stamps = [datetime.fromtimestamp(int(t), tz=UTC) for t in seconds]
    expected = [d.hour + d.minute / 60 for d in stamps]
    np.testing.assert_allclose(hours, expected, atol=1e-9)
    whole = np.floor(hours + 1e-9).astype(int) % 24
    assert np.bincount(whole, minlength=24).tolist() == [3 * 12] * 24  # no hour twice, none lost


# --- E1, E2: a full or read-only state directory ------------------------------------------------


@pytest.fixture
def served(tmp_path):
    """(service, published, state_dir): one good cycle, its snapshot persisted in state_dir."""
    source = FakeSource(FLEET)
    config = load_config(["--state.dir", "", "--guard.enabled", "false"], {})
    published: list = []
    service = Service(
        config, source, None, lambda s, st: published.append((s, st)), clock=source.now
    )
    assert service.run_cycle()
    state_dir = tmp_path / "state"
    save_snapshot(service.snapshot, state_dir)
    return service, source, published, state_dir


def disk_fault(monkeypatch, directory: Path, error: int, budget: int = 0) -> None:
    """Files opened for writing under `directory` fail: at once (EROFS) or after `budget`
    bytes (ENOSPC), as a read-only mount or a full tmpfs would."""
    real_open = pathlib.Path.open

    class Full:
        def __init__(self, handle) -> None:
            self.handle, self.left = handle, budget

        def write(self, data) -> int:
            if len(data) > self.left:
                raise OSError(error, os.strerror(error))
            self.left -= len(data)
            return self.handle.write(data)

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.handle.close()

    def faulty_open(self, mode="r", *args, **kwargs):
        writing = any(flag in mode for flag in "wax+")
        if writing and Path(self).resolve().is_relative_to(directory.resolve()):
            if error == errno.EROFS:
                raise OSError(error, os.strerror(error), str(self))
            return Full(real_open(self, mode, *args, **kwargs))
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", faulty_open)


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EROFS], ids=["full", "read_only"])
@pytest.mark.fault("E1", "E2")
def test_a_failed_snapshot_write_keeps_the_old_file_and_serving_continues(
    served, monkeypatch, caplog, error
):
    service, source, published, state_dir = served
    before = (state_dir / FILENAME).read_bytes()
    source.now_value += STEP
    assert service.run_cycle()
    disk_fault(monkeypatch, state_dir, error, budget=4096)
    loop = CycleLoop(service, 60.0, state_dir)
    with caplog.at_level(logging.WARNING, logger="forecaster"):
        loop.persist()  # logged and counted, never raised
        loop.persist()
    assert loop._persist_errors == 2
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING"]
    assert os.strerror(error) in caplog.records[0].getMessage()
    assert sorted(p.name for p in state_dir.iterdir()) == [FILENAME]  # the temp file is gone
    assert (state_dir / FILENAME).read_bytes() == before
    source.now_value += STEP
    assert service.run_cycle() and published[-1][1].source_up  # serving continues
    monkeypatch.undo()
    assert load_snapshot(state_dir) is not None


@pytest.mark.fault("E2")
def test_a_read_only_state_directory_still_serves_the_persisted_snapshot(served, monkeypatch):
    service, _, _, state_dir = served
    disk_fault(monkeypatch, state_dir, errno.EROFS)
    with pytest.raises(OSError):
        save_snapshot(service.snapshot, state_dir)
    config = load_config(["--state.dir", str(state_dir)], {})
    hub = Hub(stale_after=1e9)
    _publish_persisted(hub, config)
    assert hub.current.ready
    assert sorted(hub.current.snapshot.instances) == sorted(FLEET)


@pytest.mark.fault("E1", "E2")
def test_failed_persists_are_exported_as_a_counter(served, monkeypatch):
    service, _, _, state_dir = served
    disk_fault(monkeypatch, state_dir, errno.ENOSPC)
    loop = CycleLoop(service, 60.0, state_dir)
    loop.persist()
    assert loop._persist_errors == 1
    text = render(service.snapshot, service.state, now=time.time(), stale_after=1800.0).decode()
    assert "forecaster_persist_errors_total 1.0" in text


@pytest.mark.fault("E2")
def test_a_read_only_state_directory_does_not_stop_the_start(served, monkeypatch, caplog):
    """No lock and one warning instead of an OSError: `main` starts, persists nothing and
    serves the snapshot the directory holds (the test above)."""
    _, _, _, state_dir = served
    disk_fault(monkeypatch, state_dir, errno.EROFS)
    with caplog.at_level(logging.WARNING, logger="forecaster"):
        assert _lock_state_dir(state_dir) is None
    [record] = caplog.records
    assert record.levelname == "WARNING"
    message = record.getMessage()
    assert f"state directory {state_dir} is not writable" in message
    assert os.strerror(errno.EROFS) in message
    assert "snapshots will not be persisted" in message
    assert "two forecasters cannot be kept apart" in message


@pytest.mark.parametrize("error", [errno.EACCES, errno.ENOSPC], ids=["not_ours", "full"])
@pytest.mark.fault("E2")
def test_a_lock_file_that_cannot_be_created_does_not_stop_the_start(
    tmp_path, monkeypatch, caplog, error
):
    real_open = pathlib.Path.open

    def refused(self, mode="r", *args, **kwargs):
        if self.name == "lock":
            raise OSError(error, os.strerror(error), str(self))
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", refused)
    with caplog.at_level(logging.WARNING, logger="forecaster"):
        assert _lock_state_dir(tmp_path / "state") is None
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert os.strerror(error) in caplog.records[0].getMessage()


@pytest.mark.fault("E1", "G4")
def test_a_full_disk_after_the_lock_is_taken_keeps_the_lock(served, monkeypatch, caplog):
    _, _, _, state_dir = served
    disk_fault(monkeypatch, state_dir, errno.ENOSPC)  # the pid cannot be written
    with caplog.at_level(logging.WARNING, logger="forecaster"):
        handle = _lock_state_dir(state_dir)
    assert handle is not None
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    with pytest.raises(SystemExit, match="another forecaster is using"):
        _lock_state_dir(state_dir)
    handle.close()


# --- E3: clock skew against Prometheus ----------------------------------------------------------


@pytest.mark.parametrize("skew", [-600.0, 600.0])
@pytest.mark.fault("E3")
def test_windows_follow_prometheus_time_whatever_the_local_clock(skew):
    fake, _, source, service, published = rig(skew=skew)
    for _ in range(2):
        assert service.run_cycle()
        snapshot, _ = published[-1]
        end = fake.now // STEP * STEP
        assert max(fake.range_ends()) == end  # anchored to Prometheus' time(), not ours
        assert sorted(snapshot.instances) == sorted(FLEET)
        for item in snapshot.instances.values():
            assert item.origin == end and item.forecasts
            assert all(np.isfinite(f.quantiles).all() for f in item.forecasts.values())
        fake.now += STEP
    source.close()


# --- E4: the wall clock stepped back an hour ----------------------------------------------------


@pytest.mark.fault("E4")
def test_the_cycle_schedule_ignores_a_wall_clock_stepped_back(monkeypatch):
    clocks = SimpleNamespace(mono=1000.0, wall=1_795_000_000.0)
    monkeypatch.setattr(
        forecaster_main,
        "time",
        SimpleNamespace(monotonic=lambda: clocks.mono, time=lambda: clocks.wall),
    )
    cycles: list[float] = []

    class Service:
        snapshot = SimpleNamespace(generated_at=0.0)  # nothing to persist

        def run_cycle(self) -> bool:
            cycles.append(clocks.wall)
            clocks.mono += 2.0  # the cycle takes 2 s
            clocks.wall += 2.0
            if len(cycles) == 3:
                clocks.wall -= 3600.0  # the wall clock is stepped back an hour
            return True

    loop = CycleLoop(Service(), 60.0, None)
    waits: list[float] = []

    class Wake:
        def wait(self, timeout: float) -> bool:
            waits.append(timeout)
            clocks.mono += timeout
            clocks.wall += timeout
            if len(waits) == 6:
                loop.stop.set()
            return False

        def clear(self) -> None:
            pass

    loop.wake = Wake()  # type: ignore[assignment]
    loop._run()
    assert len(cycles) == 6  # no double run, no stall
    assert waits == [58.0] * 6


# --- E5: failed connections leave no descriptors or threads behind ------------------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.fault("E5")
def test_ten_thousand_failed_connections_leave_fds_and_threads_at_baseline():
    port = pick_free_ports(1)[0]  # nothing listens there
    settings = PrometheusSettings(url=f"http://127.0.0.1:{port}", retries=0, timeout=1)
    with PrometheusSource(settings, sleep=lambda s: None) as source:
        source.ready()
        fds, threads = _open_fds(), threading.active_count()
        for _ in range(10_000):
            with pytest.raises(SourceError) as failed:
                source.now()
            assert failed.value.reason == "connection"
        assert abs(_open_fds() - fds) <= 2 and abs(threading.active_count() - threads) <= 2


@pytest.mark.fault("E5")
def test_many_websocket_connects_and_disconnects_release_every_client():
    hub = Hub(stale_after=1800.0)
    from exporter.app import build_app

    app = build_app(hub, ws_max_clients=4)
    with TestClient(app) as client:
        with client.websocket_connect("/ws"):
            pass
        fds, threads = _open_fds(), threading.active_count()
        for _ in range(300):
            with client.websocket_connect("/ws"):
                pass
        assert app.state.broadcaster.clients == set()
        assert abs(_open_fds() - fds) <= 2 and abs(threading.active_count() - threads) <= 2


# --- F3: WebSocket fan-out to 250 clients, 10 of which never read ------------------------------


class RecordingSocket:
    """A WebSocket whose client reads everything (arrival times kept, as the thread's CPU
    time) or never reads."""

    def __init__(self, reads: bool) -> None:
        self.reads = reads
        self.arrivals: list[float] = []
        self.closed_with: int | None = None
        self._never = asyncio.Event()

    async def send_text(self, message: str) -> None:
        if not self.reads:
            await self._never.wait()
        self.arrivals.append(time.thread_time())

    async def receive(self) -> dict:
        await self._never.wait()
        return {"type": "websocket.disconnect"}

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed_with = code


@pytest.mark.fault("F3")
def test_fan_out_to_250_clients_reaches_every_reader_and_drops_only_the_stalled_ones():
    from exporter.hub import Broadcaster
    from exporter.websocket import serve_client

    messages, payload = 20, "x" * 20_000  # 20 KB each; 2/s in the catalogue, back to back here
    # Correctness only: the fan-out's latency is a benchmark figure (`python -m bench`,
    # docs/BENCHMARKS.md), never a test assertion on a shared machine.

    async def scenario():
        broadcaster = Broadcaster(max_clients=250, queue_size=8)
        sockets = [RecordingSocket(reads=k >= 10) for k in range(250)]
        tasks = [
            asyncio.create_task(serve_client(socket, broadcaster.register())) for socket in sockets
        ]
        refused = broadcaster.register()  # the 251st: the route closes it with 1013
        readers = [socket for socket in sockets if socket.reads]
        for sequence in range(1, messages + 1):
            broadcaster.broadcast(sequence, payload)
            for _ in range(10_000):
                if all(len(r.arrivals) >= sequence for r in readers):
                    break
                await asyncio.sleep(0)
        stalled = tasks[:10]
        await asyncio.wait_for(asyncio.gather(*stalled), 5)
        for task in tasks[10:]:
            task.cancel()
        await asyncio.gather(*tasks[10:], return_exceptions=True)
        return sockets, refused, broadcaster

    sockets, refused, broadcaster = asyncio.run(scenario())
    assert refused is None
    assert all(len(s.arrivals) == messages for s in sockets[10:])
    assert [s.closed_with for s in sockets[:10]] == [1008] * 10 and broadcaster.dropped_total == 10


# --- F4: a REST flood -----------------------------------------------------------------------------


@pytest.mark.fault("F4")
def test_a_rest_flood_gets_bounded_answers_and_the_service_keeps_serving():
    from exporter.app import build_app
    from tests.exporter_fixtures import NOW, fixed_snapshot, fixed_state

    hub = Hub(stale_after=1800.0, clock=lambda: NOW)
    hub.publish(fixed_snapshot(), fixed_state(), NOW)

    def ingest(records: list) -> tuple[int, list[tuple[int, str]]]:
        return len(records), []

    app = build_app(hub, clock=lambda: NOW, stale_after=1800.0, ingest=ingest)
    calls = [
        ("GET", "/predictions/current", None),
        ("GET", "/predict/ppdb001", None),
        ("GET", "/predict/nosuchhost", None),
        ("GET", "/metrics", None),
        ("GET", "/alerts/active", None),
        ("POST", "/feed/data", [{"instance": "a"}]),
    ]
    statuses: list[int] = []
    lock = threading.Lock()
    with TestClient(app) as client:
        body = client.get("/metrics").content

        def flood(worker: int) -> None:
            for k in range(200):
                method, path, payload = calls[(worker + k) % len(calls)]
                response = client.request(method, path, json=payload)
                with lock:
                    statuses.append(response.status_code)

        workers = [threading.Thread(target=flood, args=(n,)) for n in range(8)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert client.get("/-/healthy").status_code == 200
        assert client.get("/metrics").content == body
    assert len(statuses) == 1600 and set(statuses) <= {200, 404, 429}


# --- G3: `/-/reload` of the configuration -------------------------------------------------------


def reloadable(tmp_path, text: str):
    """(YAML path, service, loop, app) of a forecaster built from `text`, nothing started."""
    path = tmp_path / "forecaster.yml"
    path.write_text(text)
    config = load_config(
        [
            "--config.file",
            str(path),
            "--state.dir",
            str(tmp_path / "state"),
            "--model.dir",
            str(tmp_path / "m"),
        ],
        {},
    )
    _, service, _, loop, app = forecaster_main.build(config, None)
    return path, service, loop, app


def sample(metrics: str, name: str) -> float:
    """The value of the unlabelled sample `name` in an exposition."""
    [line] = [line for line in metrics.splitlines() if line.startswith(f"{name} ")]
    return float(line.split(" ")[1])


@pytest.mark.fault("G3")
def test_a_reload_with_an_invalid_configuration_keeps_the_old_one(tmp_path, caplog):
    """Like Prometheus: 500 with the reason, the running configuration kept, one log line,
    `forecaster_config_last_reload_successful` 0 until a reload succeeds again."""
    path, service, loop, app = reloadable(tmp_path, "cycle:\n  interval: 2m\n")
    path.write_text("cycle:\n  interval: never\n")
    with caplog.at_level(logging.INFO, logger="forecaster"), TestClient(app) as client:
        assert "forecaster_config_last_reload_successful 1.0" in client.get("/metrics").text
        answer = client.post("/-/reload")
        metrics = client.get("/metrics").text
        assert answer.status_code == 500
        assert answer.json()["error"] == "reload_failed"
        assert "cycle.interval" in answer.json()["reason"]
        assert service.config.cycle.interval == 120 and loop.interval == 120
        assert "forecaster_config_last_reload_successful 0.0" in metrics
        logged = [r for r in caplog.records if r.name == "forecaster"]
        assert [r.levelname for r in logged] == ["ERROR"]
        assert "keeping the running configuration" in logged[0].getMessage()
        assert "cycle.interval" in logged[0].getMessage()

        path.write_text("cycle:\n  interval: 3m\n")  # fixed: the next reload succeeds
        assert client.post("/-/reload").status_code == 200
        metrics = client.get("/metrics").text
    assert service.config.cycle.interval == 180 and loop.interval == 180
    assert "forecaster_config_last_reload_successful 1.0" in metrics
    reloaded = sample(metrics, "forecaster_config_last_reload_success_timestamp_seconds")
    assert reloaded == service.state.config_reloaded_at >= service.state.started_at > 0


@pytest.mark.fault("G3")
def test_an_unreadable_configuration_file_answers_without_its_path(tmp_path):
    path, service, _, app = reloadable(tmp_path, "cycle:\n  interval: 2m\n")
    path.unlink()
    with TestClient(app) as client:
        answer = client.post("/-/reload")
    assert answer.status_code == 500 and str(tmp_path) not in answer.text
    assert answer.json()["reason"].startswith("config.file:")
    assert service.config.cycle.interval == 120 and not service.state.config_reload_successful


@pytest.mark.fault("G3")
def test_a_valid_reload_applies_what_can_change_and_keeps_what_needs_a_restart(tmp_path, caplog):
    path, service, loop, app = reloadable(tmp_path, "cycle:\n  interval: 2m\n")
    path.write_text(
        "cycle: {interval: 5m, max_series: 50, stale_after: 1h}\n"
        "thresholds:\n  memory_utilisation: {warning: 0.8, critical: 0.9}\n"
        "web: {listen_address: '127.0.0.1:9999'}\n"
        "log: {level: debug}\n"
    )
    root = logging.getLogger()
    level = root.level
    try:
        with caplog.at_level(logging.INFO, logger="forecaster"), TestClient(app) as client:
            answer = client.post("/-/reload")
            metrics = client.get("/metrics").text
        assert root.level == logging.DEBUG
    finally:
        root.setLevel(level)
    assert answer.status_code == 200
    config = service.config
    assert config.cycle.interval == 300 and loop.interval == 300  # from the next wait
    assert loop.wake.is_set()  # and a cycle at once, with the new thresholds
    assert config.cycle.max_series == 50
    assert config.thresholds["memory_utilisation"].critical == 0.9
    assert service.ramps["memory_utilisation"].threshold == 0.9  # the ramp outlook follows
    assert config.cycle.stale_after == 1800 and config.web.listen_address == "127.0.0.1:9465"
    [warning] = [r for r in caplog.records if r.name == "forecaster" and r.levelname == "WARNING"]
    assert "need a restart keep their running value: web, cycle.stale_after" in (
        warning.getMessage()
    )
    assert "forecaster_config_last_reload_successful 1.0" in metrics


@pytest.mark.fault("G3")
def test_a_reload_that_turns_a_ramp_outlook_on_grows_the_history_window(tmp_path):
    """Without the guard the window holds a day, unless a ramp outlook reads further back."""
    no_ramps = (
        "guard: {enabled: false}\nthresholds:\n  cpu_utilisation: {warning: 0.9, critical: 0.95}\n"
    )
    path, service, _, app = reloadable(tmp_path, no_ramps)
    grid = service.contract.grid
    assert not service.ramps and service.window.context_steps == grid.context_steps
    path.write_text("guard: {enabled: false}\n")  # the default thresholds: the default ramps
    with TestClient(app) as client:
        assert client.post("/-/reload").status_code == 200
    assert set(service.ramps) == {"memory_utilisation", "filesystem_utilisation"}
    held = service.config.guard.history // grid.step_seconds
    assert service.window.context_steps == held > grid.context_steps  # backfilled from now on


@pytest.mark.fault("G3")
def test_a_reload_that_changes_nothing_runs_no_extra_cycle(tmp_path):
    _, service, loop, app = reloadable(tmp_path, "cycle:\n  interval: 2m\n")
    before = service.config
    with TestClient(app) as client:
        assert client.post("/-/reload").status_code == 200
    assert service.config == before and not loop.wake.is_set()
    assert service.state.config_reload_successful and service.state.config_reloaded_at


@pytest.mark.fault("G3")
def test_sighup_reloads_in_a_thread_of_its_own():
    from exporter.app import ReloadError

    threads: list[str] = []
    done = threading.Event()

    def reload(fail: bool) -> None:
        threads.append(threading.current_thread().name)
        done.set()
        if fail:
            raise ReloadError("invalid")  # already logged: the handler's thread swallows it

    for fail in (False, True):
        done.clear()
        forecaster_main._in_background(lambda fail=fail: reload(fail))(signal.SIGHUP, None)
        assert done.wait(5)
    assert threads == ["config-reload", "config-reload"]


# --- G4: two forecasters racing for one state directory -----------------------------------------


@pytest.mark.fault("G4")
def test_two_forecasters_racing_for_one_state_directory_leave_exactly_one_running(tmp_path):
    state_dir = tmp_path / "state"
    barrier = threading.Barrier(2)
    handles, refusals = [], []

    def start() -> None:
        barrier.wait(5)
        try:
            handles.append(_lock_state_dir(state_dir))
        except SystemExit as refused:
            refusals.append(str(refused.code))

    racers = [threading.Thread(target=start) for _ in range(2)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(10)
    assert len(handles) == 1 and len(refusals) == 1
    assert refusals[0] == f"forecaster: another forecaster is using {state_dir}"
    assert (state_dir / "lock").read_text() == f"{os.getpid()}\n"
    handles[0].close()
    _lock_state_dir(state_dir).close()  # released with its holder: a restart takes it
