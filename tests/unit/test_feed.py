"""Pushed records end to end: `POST /feed/data` into the history window, record by record."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest

from exporter.app import build_app
from exporter.hub import Hub
from forecaster.config import load_config
from forecaster.records import from_records
from forecaster.service import Service
from forecaster.window import PUSH_LEAD_SECONDS, HistoryWindow
from tests.service_fakes import FakeSource

with warnings.catch_warnings():  # starlette's note about httpx vs httpx2
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

STEP = 300


@pytest.fixture
def fed():
    """(service, client, end): a service after one cycle, its feed endpoint, the window's end."""
    source = FakeSource(["ppdb001", "ppweb001"])
    config = load_config(["--state.dir", "", "--guard.enabled", "false"], {})
    service = Service(config, source, None, lambda *_: None, clock=lambda: source.now_value)
    service.run_cycle()
    app = build_app(Hub(stale_after=1800.0), ingest=service.ingest)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield service, client, service.window.end


def pushed(service: Service, instance: str) -> pd.DataFrame:
    frame = service.window.frame()
    return frame[frame["instance"] == instance]


def good_records(end: int, count: int = 6) -> list[dict]:
    return [
        {"server_name": "pushed01", "timestamp": end - STEP * k, "cpu_pct": 40.0, "mem_pct": 50}
        for k in range(count)
    ]


@pytest.mark.parametrize("stamp", [10**400, -(10**400), 1e300, "9999-12-31T23:59:59Z"])
def test_a_timestamp_no_datetime_holds_costs_only_its_own_record(fed, stamp):
    service, client, end = fed
    records = good_records(end)
    records.insert(2, {"server_name": "pushed02", "timestamp": stamp, "cpu_pct": 1.0})
    response = client.post("/feed/data", json={"records": records})
    assert response.status_code == 422
    body = response.json()
    assert body["accepted"] == 6
    assert body["rejected"] == [{"index": 2, "reason": "invalid_timestamp"}]
    assert body["reason"] == "1 of 7 records refused: 1 invalid_timestamp"
    kept = pushed(service, "pushed01")
    assert len(kept) == 6 and (kept["cpu_utilisation"] == 0.4).all()
    assert pushed(service, "pushed02").empty


def test_an_impossible_ratio_is_refused_not_clipped_into_the_window(fed):
    service, client, end = fed
    records = [
        *good_records(end, 2),
        {"server_name": "pushed02", "timestamp": end, "cpu_pct": 1e308, "mem_pct": 50},
        {"server_name": "pushed03", "timestamp": end, "cpu_pct": 130.0},  # clipped later
    ]
    response = client.post("/feed/data", json=records)
    assert response.status_code == 422
    assert response.json()["rejected"] == [{"index": 2, "reason": "impossible_value"}]
    assert pushed(service, "pushed02").empty
    assert pushed(service, "pushed03")["cpu_utilisation"].tolist() == [1.3]
    assert len(pushed(service, "pushed01")) == 2


def test_a_body_not_declared_json_is_refused_before_anything_is_read(fed):
    service, client, end = fed
    before = service.window.frame()
    response = client.post(
        "/feed/data",
        content=str(good_records(end)).encode(),
        headers={"Content-Type": "text/plain"},
    )
    assert response.status_code == 415
    assert response.json()["error"] == "unsupported_media_type"
    assert service.window.frame().equals(before)


# --- the window's span for pushed records -------------------------------------------------------


def window_after_fetch(end: int, context_steps: int = 10) -> HistoryWindow:
    window = HistoryWindow(("cpu_utilisation",), context_steps=context_steps)
    times = pd.to_datetime([end - STEP * k for k in range(context_steps)], unit="s", utc=True)
    part = pd.DataFrame({"instance": "a", "timestamp": times, "cpu_utilisation": 0.5})
    window.merge({"cpu_utilisation": part}, window.plan(end))
    return window


def test_the_push_span_is_what_the_window_keeps():
    end = 1_795_000_200
    window = window_after_fetch(end)
    oldest, newest = window.push_span(now=end + 20)
    assert (oldest, newest) == (end - 10 * STEP, end + 20 + PUSH_LEAD_SECONDS)
    records = [
        {"server_name": "inside", "timestamp": oldest + STEP, "cpu_utilisation": 0.1},
        {"server_name": "edge", "timestamp": oldest, "cpu_utilisation": 0.2},
        {"server_name": "ancient", "timestamp": 0, "cpu_utilisation": 0.3},
        {"server_name": "ahead", "timestamp": newest + 1, "cpu_utilisation": 0.4},
    ]
    frame, errors = from_records(records, ["cpu_utilisation"], window=(oldest, newest))
    assert [(e.index, e.reason) for e in errors] == [
        (1, "outside_window"),
        (2, "outside_window"),
        (3, "outside_window"),
    ]
    window.push(frame)
    assert "inside" in set(window.frame()["instance"])
    # What the span refuses, the window would have dropped at once (or shifted its end for).
    unchecked, _ = from_records(records[1:3], ["cpu_utilisation"])
    window.push(unchecked)
    assert {"edge", "ancient"}.isdisjoint(window.frame()["instance"])


def test_records_pushed_before_the_first_fetch_survive_it_and_fetched_values_win():
    end = 1_795_000_200
    window = HistoryWindow(("cpu_utilisation",), context_steps=10)
    pushed, errors = from_records(
        [
            {"server_name": "pushed", "timestamp": end - STEP, "cpu_utilisation": 0.3},
            {"server_name": "a", "timestamp": end, "cpu_utilisation": 0.9},
        ],
        ["cpu_utilisation"],
        window=window.push_span(now=end),
    )
    assert errors == []
    window.push(pushed)
    times = pd.to_datetime([end - STEP * k for k in range(10)], unit="s", utc=True)
    part = pd.DataFrame({"instance": "a", "timestamp": times, "cpu_utilisation": 0.5})
    plan = window.plan(end)
    assert plan.full
    window.merge({"cpu_utilisation": part}, plan)
    frame = window.frame().set_index(["instance", "timestamp"])["cpu_utilisation"]
    assert frame[("pushed", pd.Timestamp(end - STEP, unit="s", tz="UTC"))] == 0.3
    assert frame[("a", pd.Timestamp(end, unit="s", tz="UTC"))] == 0.5  # the fetch wins
    assert len(frame.loc["a"]) == 10


def test_before_the_first_fetch_the_push_span_follows_the_clock():
    window = HistoryWindow(("cpu_utilisation",), context_steps=288)
    now = 1_795_000_123.0
    assert window.push_span(now) == (now - 288 * STEP, now + PUSH_LEAD_SECONDS)


def test_a_window_ahead_of_the_clock_keeps_its_own_end():
    end = 1_795_000_200
    window = window_after_fetch(end)
    assert window.push_span(now=end - 3600, lead=60) == (end - 10 * STEP, end + 60)


@pytest.mark.parametrize(
    ("offset", "reason"),
    [
        (None, "outside_window"),  # 1970
        (-3 * 86_400 - STEP, "outside_window"),  # older than the 3 days the window holds
        (-3 * 86_400 + STEP, None),
        (PUSH_LEAD_SECONDS, None),
        (PUSH_LEAD_SECONDS + 60, "outside_window"),
        (365 * 86_400, "outside_window"),
    ],
)
def test_records_the_window_cannot_use_are_refused_with_a_reason(fed, offset, reason):
    service, client, end = fed
    clock = service.clock()
    stamp = 0 if offset is None else (end if offset < 0 else clock) + offset
    records = [*good_records(end, 2), {"server_name": "pushed02", "timestamp": stamp, "cpu_pct": 5}]
    response = client.post("/feed/data", json=records)
    rejected = [{"index": 2, "reason": reason}] if reason else []
    assert response.json()["rejected"] == rejected
    assert pushed(service, "pushed02").empty == (reason is not None)
    assert len(pushed(service, "pushed01")) == 2


def test_a_custom_quantity_is_checked_against_its_configured_domain(tmp_path):
    config_file = tmp_path / "forecaster.yml"
    config_file.write_text(
        "custom_quantities:\n"
        "  queue_ratio:\n"
        "    {expr: 'sum by (instance) (q)', unit: ratio, domain: [0, 1], role: covariate}\n"
    )
    source = FakeSource(["ppdb001"])
    config = load_config(["--state.dir", "", "--config.file", str(config_file)], {})
    service = Service(config, source, None, lambda *_: None, clock=lambda: source.now_value)
    end = int(source.now_value // STEP) * STEP
    records = [
        {"server_name": "a", "timestamp": end, "queue_ratio": 0.5},
        {"server_name": "b", "timestamp": end, "queue_ratio": 5000.0},
    ]
    accepted, errors = service.ingest(records)
    assert (accepted, errors) == (1, [(1, "impossible_value")])
