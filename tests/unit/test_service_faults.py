"""The cycle through the real PromQL client against a faulty fake Prometheus (RELIABILITY A).

Whatever the fake answers (refused, 5xx, 429, garbage, `status: error` inside a 200, partial
results), the service keeps the last good snapshot, says `source_up` 0, logs one line per
state change, and publishes fresh forecasts at the first cycle after recovery.
"""

from __future__ import annotations

import logging

import httpx
import pytest

from forecaster.config import load_config
from forecaster.service import Service
from forecaster.source import PrometheusSource
from tests.service_fakes import FLEET, FakePrometheus


@pytest.fixture
def rig():
    fake = FakePrometheus()
    config = load_config(["--state.dir", "", "--prometheus.url", "http://prometheus.test"], {})
    source = PrometheusSource(
        config.prometheus, transport=httpx.MockTransport(fake), sleep=lambda s: None
    )
    published = []
    service = Service(
        config, source, None, lambda s, st: published.append((s, st)), clock=lambda: fake.now
    )
    yield fake, service, published
    source.close()


@pytest.mark.parametrize("mode", ["refused", "5xx", "429", "garbage", "error_status"])
@pytest.mark.fault("A2", "A4", "A8")
def test_faulty_source_keeps_the_last_snapshot_then_recovers_in_one_cycle(rig, mode, caplog):
    fake, service, published = rig
    assert service.run_cycle()
    good = published[-1][0]
    fake.mode = mode
    with caplog.at_level(logging.INFO, logger="forecaster.service"):
        for _ in range(3):
            fake.now += 60
            assert not service.run_cycle()
            snapshot, state = published[-1]
            assert snapshot is good
            assert not state.source_up
        fake.mode = "ok"
        fake.now += 60
        assert service.run_cycle()
    snapshot, state = published[-1]
    assert state.source_up and snapshot is not good
    assert sorted(snapshot.instances) == sorted(FLEET)
    transitions = [r for r in caplog.records if "source" in r.getMessage()]
    assert [r.levelname for r in transitions] == ["WARNING", "INFO"]  # down once, up once
    assert sum(state.cycle_failures.values()) == 3


@pytest.mark.fault("A7")
def test_partial_answers_are_published_and_flagged(rig):
    fake, service, published = rig
    fake.mode = "partial"
    assert service.run_cycle()
    snapshot, state = published[-1]
    assert state.input_partial
    assert sorted(snapshot.instances) == sorted(FLEET)
    fake.mode = "ok"
    fake.now += 300
    service.run_cycle()
    assert not published[-1][1].input_partial


@pytest.mark.fault("A4")
def test_retries_are_bounded_per_request(rig):
    fake, service, _ = rig
    fake.mode = "5xx"
    service.run_cycle()
    assert len(fake.requests) == 1 + service.config.prometheus.retries  # the time() query gave up
