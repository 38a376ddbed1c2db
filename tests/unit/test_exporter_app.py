"""The exporter's HTTP surface, in-process: REST shapes, auth, limits, errors, hub and WebSocket."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import threading
import warnings
from types import MappingProxyType

import numpy as np
import pytest
from fastapi import Depends
from starlette.websockets import WebSocketDisconnect

from exporter.app import (
    MUTATING_METHODS,
    accepts_gzip,
    build_app,
    unguarded_mutating_routes,
)
from exporter.hub import Broadcaster, Hub
from exporter.snapshot import HORIZONS, ServiceState, frozen_array
from exporter.websocket import WS_MAX_MESSAGE_BYTES, origin_allowed, serve_client
from tests.exporter_fixtures import MADE_AT, NOW, STEPS, fixed_snapshot, fixed_state, ppweb001

with warnings.catch_warnings():  # starlette's note about httpx vs httpx2
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON_BODY = {"Content-Type": "application/json"}
STALE_AFTER = 1800.0
QUANTITIES = {
    "cpu_utilisation",
    "memory_utilisation",
    "filesystem_utilisation",
    "disk_io",
    "request_latency_p95",
}


class Clock:
    """A settable fake clock."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Feed:
    """An ingest callable refusing records without an `instance` key."""

    def __init__(self) -> None:
        self.kept: list = []

    def __call__(self, records: list) -> tuple[int, list[tuple[int, str]]]:
        rejected = []
        for index, record in enumerate(records):
            if isinstance(record, dict) and "instance" in record:
                self.kept.append(record)
            else:
                rejected.append((index, "missing instance"))
        return len(records) - len(rejected), rejected


def make(publish: bool = True, clock: Clock | None = None, **options):
    """(hub, app) with the fixed snapshot published at NOW."""
    clock = clock or Clock()
    hub = Hub(stale_after=STALE_AFTER, clock=clock)
    if publish:
        hub.publish(fixed_snapshot(), fixed_state(), NOW)
    options.setdefault("stale_after", STALE_AFTER)
    return hub, build_app(hub, clock=clock, **options)


@pytest.fixture
def client():
    _, app = make(ingest=Feed(), reload=lambda: None, token=TOKEN)
    with TestClient(app) as test_client:
        yield test_client


# --- /metrics and probes -----------------------------------------------------------------------


@pytest.mark.fault("A3")
def test_metrics_serves_the_body_rendered_at_publish():
    hub, app = make()
    with TestClient(app) as c:
        response = c.get("/metrics", headers={"Accept-Encoding": "identity"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert response.content == hub.current.rendered.body
    assert b'forecaster_risk_score{instance="ppdb001"} 80.0' in response.content


def test_metrics_is_gzipped_when_the_client_accepts_it():
    hub, app = make()
    with TestClient(app) as c:
        response = c.get("/metrics", headers={"Accept-Encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip"
    assert response.content == hub.current.rendered.body  # httpx decodes it
    assert int(response.headers["content-length"]) == len(hub.current.rendered.gzipped)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, False),
        ("gzip", True),
        ("deflate, gzip;q=0.5", True),
        ("gzip;q=0", False),
        ("*", True),
        ("*;q=0", False),
        ("identity", False),
        ("gzip;q=abc", False),
    ],
)
def test_accept_encoding_is_parsed_with_quality_values(header, expected):
    assert accepts_gzip(header) is expected


@pytest.mark.fault("A1")
def test_ready_only_after_a_first_publish():
    hub, app = make(publish=False)
    with TestClient(app) as c:
        assert c.get("/-/healthy").status_code == 200
        not_ready = c.get("/-/ready")
        assert not_ready.status_code == 503
        assert not_ready.json()["error"] == "not_ready"
        assert b"forecaster_source_up 0.0" in c.get("/metrics").content
        hub.publish(fixed_snapshot(), fixed_state(), NOW)
        assert c.get("/-/ready").status_code == 200


def test_health_has_the_seed_shape(client):
    body = client.get("/health").json()
    assert body == {
        "status": "healthy",
        "ready": True,
        "model_loaded": True,
        "source_up": True,
        "servers": 3,
    }


def test_status_reports_warmup_model_cycle_source_and_shard(client):
    body = client.get("/status").json()
    assert body["running"] is True
    warmup = body["warmup"]
    assert warmup["is_warmed_up"] is False
    assert warmup["current_size"] == 20
    assert warmup["required_size"] == 36
    assert warmup["servers"]["newhost01"] == {"steps": 20, "required": 36, "progress": 0.5556}
    assert 0 < warmup["progress_percent"] < 100
    assert "newhost01" in warmup["message"]
    assert body["model"] == {
        "loaded": True,
        "version": "20261121-0001",
        "contract": "1.0.0",
        "load_failures": {},
    }
    assert body["last_cycle"] == {
        "end": MADE_AT,
        "duration_seconds": 1.25,
        "success_timestamp": MADE_AT,
    }
    assert body["source_up"] is True
    assert body["shard"] == {"index": 0, "count": 1}
    assert body["generated_at"] == MADE_AT
    assert body["persist"] == {"errors": 0}
    assert body["config"] == {"reload_successful": True, "reloaded_at": None}
    assert body["dropped_series"] == {} and body["cycle_failures"] == fixed_state().cycle_failures


def test_status_says_what_failed_persist_reload_model_load_and_capacity():
    state = dataclasses.replace(
        fixed_state(),
        persist_errors=3,
        config_reload_successful=False,
        config_reloaded_at=MADE_AT - 600,
        model_load_failures={"invalid": 1},
        dropped_series={"max_series": 40_000},
        cycle_failures={"source": 2},
    )
    hub, app = make(publish=False)
    hub.publish(fixed_snapshot(), state, NOW)
    with TestClient(app) as test_client:
        body = test_client.get("/status").json()
    assert body["persist"] == {"errors": 3}
    assert body["config"] == {"reload_successful": False, "reloaded_at": MADE_AT - 600}
    assert body["model"]["load_failures"] == {"invalid": 1}
    assert body["dropped_series"] == {"max_series": 40_000}
    assert body["cycle_failures"] == {"source": 2}


# --- predictions, server, alerts -----------------------------------------------------------------


def test_predictions_current_has_the_seed_shape_with_contract_quantities(client):
    body = client.get("/predictions/current").json()
    assert set(body) == {"predictions", "alerts", "environment", "metadata"}
    assert set(body["predictions"]) == {"ppdb001", "ppweb001", "newhost01"}
    assert set(body["predictions"]["ppdb001"]) == QUANTITIES
    assert set(body["predictions"]["newhost01"]) == QUANTITIES - {"request_latency_p95"}
    cpu = body["predictions"]["ppdb001"]["cpu_utilisation"]
    assert set(cpu) == {"p10", "p50", "p90", "current", "trend", "unit", "method"}
    assert [len(cpu[k]) for k in ("p10", "p50", "p90")] == [STEPS] * 3
    assert cpu["p50"][0] == pytest.approx(0.9308)
    assert (cpu["unit"], cpu["method"], cpu["current"]) == ("ratio", "tft", 0.93)
    assert body["predictions"]["newhost01"]["disk_io"]["unit"] == "bytes_per_second"
    assert body["environment"] == {
        "prob_30m": 0.45,
        "prob_8h": 0.62,
        "high_risk_servers": 1,
        "total_servers": 3,
        "fleet_health": "warning",
    }
    assert body["metadata"] == {
        "generated_at": MADE_AT,
        "model_version": "20261121-0001",
        "contract_version": "1.0.0",
        "step_seconds": 300,
        "horizon_steps": 96,
        "quantiles": [0.1, 0.5, 0.9],
    }
    assert body["alerts"] == client.get("/alerts/active").json()["alerts"]


def test_predictions_current_turns_non_finite_values_into_null():
    web = ppweb001()
    cpu = web.forecasts["cpu_utilisation"]
    quantiles = np.array(cpu.quantiles)
    quantiles[0, 2] = np.nan
    quantiles[1, 0] = np.inf
    forecasts = {"cpu_utilisation": dataclasses.replace(cpu, quantiles=frozen_array(quantiles))}
    web = dataclasses.replace(web, forecasts=forecasts)
    snapshot = dataclasses.replace(fixed_snapshot(), instances=MappingProxyType({"ppweb001": web}))
    hub, app = make(publish=False)
    hub.publish(snapshot, fixed_state(), NOW)
    with TestClient(app) as c:
        cpu_body = c.get("/predictions/current").json()["predictions"]["ppweb001"][
            "cpu_utilisation"
        ]
        assert cpu_body["p90"][0] is None
        assert cpu_body["p10"][1] is None
        assert cpu_body["p50"][0] == pytest.approx(0.3505)
        assert c.get("/predict/ppweb001").json()["predictions"]["cpu_utilisation"]["p90"][0] is None


@pytest.mark.fault("A2")
def test_stale_instances_are_left_out_of_rest_answers():
    clock = Clock()
    old = dataclasses.replace(fixed_snapshot().instances["ppdb001"], made_at=NOW - 2 * STALE_AFTER)
    instances = dict(fixed_snapshot().instances, ppdb001=old)
    hub, app = make(publish=False, clock=clock)
    hub.publish(dataclasses.replace(fixed_snapshot(), instances=instances), fixed_state(), NOW)
    with TestClient(app) as c:
        assert "ppdb001" not in c.get("/predictions/current").json()["predictions"]
        names = [a["server_name"] for a in c.get("/alerts/active").json()["alerts"]]
        assert names == ["ppweb001"]
        stale = c.get("/predict/ppdb001")
        assert stale.status_code == 404
        assert "stale" in stale.json()["reason"]
        assert b'instance="ppdb001",profile="database"' in c.get("/metrics").content
        assert b'forecaster_risk_score{instance="ppdb001"}' not in c.get("/metrics").content


def test_predictions_json_is_computed_once_per_snapshot():
    hub, _ = make()
    published = hub.current
    first = published.predictions_json(NOW, STALE_AFTER)
    assert published.predictions_json(NOW + 1, STALE_AFTER) is first
    zipped = published.predictions_json(NOW, STALE_AFTER, gzipped=True)
    assert gzip.decompress(zipped) == first
    assert published.predictions_json(NOW, STALE_AFTER, gzipped=True) is zipped
    later = published.predictions_json(MADE_AT + STALE_AFTER + 1, STALE_AFTER)
    assert later is not first  # every instance went stale: a new body
    assert b'"predictions":{}' in later


def test_predictions_current_is_gzipped_when_accepted(client):
    plain = client.get("/predictions/current", headers={"Accept-Encoding": "identity"})
    zipped = client.get("/predictions/current", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert "content-encoding" not in plain.headers
    assert zipped.json() == plain.json()


def test_predict_server_returns_forecasts_risk_breaches_and_drivers(client):
    body = client.get("/predict/ppdb001").json()
    assert body["server_name"] == "ppdb001"
    assert (body["profile"], body["method"]) == ("database", "tft")
    assert (body["origin"], body["made_at"]) == (NOW - 300.0, MADE_AT)
    assert set(body["predictions"]) == QUANTITIES
    assert body["risk"] == {
        "priority": "P1",
        "risk_score": 80.0,
        "cpu_risk": 40.0,
        "mem_risk": 25.0,
        "latency_risk": 15.0,
        "message": "CPU p90 predicted to reach 98.5% in 30 minutes",
    }
    assert body["breaches"]["cpu_utilisation"] == {
        "threshold": 0.95,
        "prob_30m": 0.35,
        "prob_8h": 0.97,
        "time_to_breach_seconds": 7800.0,
        "earliest_breach_seconds": 4200.0,
    }
    assert body["breaches"]["filesystem_utilisation"]["time_to_breach_seconds"] is None
    assert body["breaches"]["filesystem_utilisation"]["earliest_breach_seconds"] is None
    assert body["drivers"][0] == {"variable": "cpu_utilisation", "weight": 0.31}
    assert client.get("/predict/newhost01").json()["method"] == "heuristic"


def test_predict_unknown_server_is_a_json_404(client):
    response = client.get("/predict/ppdb999")
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "reason": "no forecast for server 'ppdb999'"}


@pytest.mark.parametrize("name", ['a"b', "x" * 129, "a b", "a{b}", "%00"])
@pytest.mark.fault("B7")
def test_predict_refuses_server_names_outside_the_allow_list(client, name):
    response = client.get(f"/predict/{name}")
    assert response.status_code == 400
    assert response.json()["error"] == "bad_request"


def test_alerts_active_lists_risky_servers_highest_first_ties_by_name():
    snapshot = fixed_snapshot()
    twin = dataclasses.replace(snapshot.instances["ppweb001"], instance="ppweb000")
    instances = dict(snapshot.instances, ppweb000=twin)
    hub, app = make(publish=False)
    hub.publish(dataclasses.replace(snapshot, instances=instances), fixed_state(), NOW)
    with TestClient(app) as c:
        body = c.get("/alerts/active").json()
    assert [a["server_name"] for a in body["alerts"]] == ["ppdb001", "ppweb000", "ppweb001"]
    assert body["count"] == 3
    assert set(body["alerts"][0]) == {
        "server_name",
        "profile",
        "priority",
        "risk_score",
        "cpu_risk",
        "mem_risk",
        "latency_risk",
        "message",
    }


# --- POST /feed/data and /-/reload -------------------------------------------------------------


def test_feed_data_accepts_a_good_batch(client):
    records = [{"instance": "ppdb001", "cpu_utilisation": 0.5}] * 2
    response = client.post("/feed/data", json={"records": records}, headers=AUTH)
    assert response.status_code == 200
    assert response.json() == {"accepted": 2, "rejected": []}


def test_feed_data_accepts_a_bare_list(client):
    response = client.post("/feed/data", json=[{"instance": "a"}], headers=AUTH)
    assert response.json() == {"accepted": 1, "rejected": []}


def test_feed_data_reports_refused_records_with_422_and_the_accepted_count():
    feed = Feed()
    _, app = make(ingest=feed)
    records = [{"instance": "a"}, {"cpu": 1}, {"instance": "b"}, 7]
    with TestClient(app) as c:
        response = c.post("/feed/data", json={"records": records})
    assert response.status_code == 422
    body = response.json()
    assert body["accepted"] == 2
    assert body["rejected"] == [
        {"index": 1, "reason": "missing instance"},
        {"index": 3, "reason": "missing instance"},
    ]
    assert body["error"] == "rejected_records"
    assert feed.kept == [{"instance": "a"}, {"instance": "b"}]


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe", b'{"records": 5}', b'"text"', b""])
def test_feed_data_refuses_malformed_bodies_with_400(client, raw):
    response = client.post(
        "/feed/data", content=raw, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert set(response.json()) == {"error", "reason"}


@pytest.mark.fault("H5")
def test_feed_data_refuses_a_body_declared_over_the_cap_with_413():
    _, app = make(ingest=Feed(), max_body_bytes=1000)
    with TestClient(app) as c:
        response = c.post("/feed/data", content=b"[" + b" " * 2000 + b"]", headers=JSON_BODY)
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


@pytest.mark.fault("H5")
def test_feed_data_refuses_a_streamed_body_over_the_cap_with_413():
    _, app = make(ingest=Feed(), max_body_bytes=1000)

    def chunks():
        yield b"["
        for _ in range(10):
            yield b" " * 200
        yield b"]"

    with TestClient(app) as c:
        response = c.post("/feed/data", content=chunks(), headers=JSON_BODY)
    assert "content-length" not in response.request.headers
    assert response.status_code == 413


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "json", "*/*", "text/x+json"],
)
def test_feed_data_refuses_a_body_that_is_not_declared_json_with_415(content_type):
    feed = Feed()
    _, app = make(ingest=feed)
    headers = {"Content-Type": content_type} if content_type else {}
    with TestClient(app) as c:
        response = c.post("/feed/data", content=b'[{"instance": "a"}]', headers=headers)
    assert response.status_code == 415
    assert response.json() == {
        "error": "unsupported_media_type",
        "reason": "the body must be JSON (Content-Type: application/json)",
    }
    assert feed.kept == []


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/vnd.api+json",
    ],
)
def test_feed_data_accepts_every_json_content_type(content_type):
    _, app = make(ingest=Feed())
    with TestClient(app) as c:
        response = c.post(
            "/feed/data", content=b'[{"instance": "a"}]', headers={"Content-Type": content_type}
        )
    assert response.status_code == 200


def test_feed_data_sums_the_refused_records_up_by_reason():
    def ingest(records: list) -> tuple[int, list[tuple[int, str]]]:
        return 1, [(0, "impossible_value"), (2, "outside_window"), (3, "impossible_value")]

    _, app = make(ingest=ingest)
    with TestClient(app) as c:
        response = c.post("/feed/data", json=[{}, {}, {}, {}])
    assert response.status_code == 422
    body = response.json()
    assert body["reason"] == "3 of 4 records refused: 2 impossible_value, 1 outside_window"
    assert body["accepted"] == 1 and [r["index"] for r in body["rejected"]] == [0, 2, 3]


def test_feed_data_without_an_ingest_callable_is_503():
    _, app = make()
    with TestClient(app) as c:
        response = c.post("/feed/data", json={"records": []})
    assert response.status_code == 503
    assert response.json()["error"] == "unavailable"


def test_reload_calls_the_injected_callable_and_is_503_without_one():
    calls = []
    _, app = make(reload=lambda: calls.append(1))
    _, bare = make()
    with TestClient(app) as c, TestClient(bare) as b:
        assert c.post("/-/reload").json() == {"status": "reload requested"}
        assert calls == [1]
        assert b.post("/-/reload").status_code == 503


# --- auth ----------------------------------------------------------------------------------------


def _mutating_routes(app):
    for route in app.routes:
        for method in sorted(getattr(route, "methods", None) or ()):
            if method in MUTATING_METHODS:
                yield method, route.path


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Basic abc"}, 401),
        ({"Authorization": "Bearer "}, 401),
        ({"Authorization": "Bearer wrong"}, 403),
        ({"Authorization": f"Bearer {TOKEN}x"}, 403),
    ],
)
@pytest.mark.fault("H2")
def test_mutating_routes_refuse_missing_or_wrong_tokens(client, headers, status):
    routes = list(_mutating_routes(client.app))
    assert routes
    for method, path in routes:
        response = client.request(method, path, headers=headers, json=[])
        assert response.status_code == status, (method, path)
        assert set(response.json()) == {"error", "reason"}
        if status == 401:
            assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.fault("H2")
def test_mutating_routes_accept_the_right_token(client):
    for method, path in _mutating_routes(client.app):
        response = client.request(method, path, headers=AUTH, json=[])
        assert response.status_code == 200, (method, path)


@pytest.mark.fault("H2")
def test_every_mutating_route_is_covered_by_the_auth_dependency():
    _, app = make(ingest=Feed(), reload=lambda: None, token=TOKEN)
    guarded = app.state.require_token
    routes = list(_mutating_routes(app))
    assert {path for _, path in routes} >= {"/feed/data", "/-/reload"}
    for route in app.routes:
        methods = getattr(route, "methods", None) or set()
        if methods & MUTATING_METHODS:
            calls = [d.call for d in route.dependant.dependencies]
            assert guarded in calls, route.path
    assert unguarded_mutating_routes(app, guarded) == []


@pytest.mark.fault("H2")
def test_route_table_check_catches_a_new_unguarded_route():
    _, app = make(token=TOKEN)

    @app.delete("/oops")
    def oops() -> dict:
        return {}

    @app.put("/fine", dependencies=[Depends(app.state.require_token)])
    def fine() -> dict:
        return {}

    assert unguarded_mutating_routes(app, app.state.require_token) == ["DELETE /oops"]


@pytest.mark.fault("H2")
def test_without_a_token_mutating_routes_are_open():
    _, app = make(ingest=Feed())
    with TestClient(app) as c:
        assert c.post("/feed/data", json=[]).status_code == 200


# --- errors and OpenAPI ----------------------------------------------------------------------


@pytest.mark.fault("H8")
def test_error_bodies_are_json_without_tracebacks_or_paths():
    def broken(records: list) -> tuple[int, list]:
        raise RuntimeError("boom in /work/main/forecaster/secret.py Traceback")

    _, app = make(ingest=broken)
    with TestClient(app, raise_server_exceptions=False) as c:
        responses = [
            c.post("/feed/data", json=[]),
            c.get("/nowhere"),
            c.delete("/metrics"),
            c.get("/predict/%22"),
            c.get("/predict/unknown"),
        ]
    assert [r.status_code for r in responses] == [500, 404, 405, 400, 404]
    for response in responses:
        assert response.headers["content-type"] == "application/json"
        assert set(response.json()) == {"error", "reason"}
        assert "Traceback" not in response.text
        assert "/work" not in response.text
        assert "RuntimeError" not in response.text


@pytest.mark.fault("H8")
def test_an_unexpected_error_is_logged_once_with_its_traceback_and_answered_500(caplog):
    def broken(records: list) -> tuple[int, list]:
        raise RuntimeError("boom")

    _, app = make(ingest=broken)
    with caplog.at_level("ERROR"), TestClient(app) as c:  # the exception must not escape
        response = c.post("/feed/data", json=[])
    assert response.status_code == 500
    assert response.json() == {
        "error": "internal_error",
        "reason": "unexpected error; see the forecaster's log",
    }
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert "RuntimeError" in errors[0].getMessage()


def test_openapi_documents_every_route_with_a_summary(client):
    spec = client.get("/openapi.json").json()
    for path in ("/metrics", "/predictions/current", "/predict/{server}", "/feed/data", "/status"):
        for operation in spec["paths"][path].values():
            assert operation["summary"], path
    description = spec["paths"]["/predictions/current"]["get"]["description"]
    assert "bytes per second" in description
    assert "seconds" in description
    assert "ratio 0-1" in description


# --- hub ------------------------------------------------------------------------------------------


def test_hub_publish_from_a_worker_thread_swaps_whole_states():
    hub = Hub(stale_after=STALE_AFTER, clock=Clock())
    snapshot = fixed_snapshot()
    states = [dataclasses.replace(fixed_state(), cycles_total=n) for n in range(1, 21)]

    def cycle():
        for state in states:
            hub.publish(snapshot, state, NOW)

    worker = threading.Thread(target=cycle)
    worker.start()
    seen = set()
    while worker.is_alive() or len(seen) < 1:
        published = hub.current
        if published.ready:
            line = f"forecaster_cycles_total {published.state.cycles_total}.0".encode()
            assert line in published.rendered.body
            seen.add(published.sequence)
    worker.join(timeout=10)
    assert hub.current.sequence == 20
    assert hub.current.state.cycles_total == 20


@pytest.mark.fault("A2")
def test_hub_rerender_withdraws_forecasts_that_went_stale():
    clock = Clock()
    hub = Hub(stale_after=STALE_AFTER, clock=clock)
    hub.publish(fixed_snapshot(), fixed_state())
    assert b'forecaster_risk_score{instance="ppdb001"}' in hub.current.rendered.body
    clock.now = MADE_AT + STALE_AFTER + 1
    published = hub.rerender()
    assert b'forecaster_risk_score{instance="ppdb001"}' not in published.rendered.body
    assert b'forecaster_instance_info{instance="ppdb001"' in published.rendered.body
    assert published.sequence == 1


def test_hub_skips_fan_out_to_a_closed_loop():
    hub = Hub(stale_after=STALE_AFTER, clock=Clock())
    loop = asyncio.new_event_loop()
    loop.close()
    hub.attach("app", loop, lambda published: None)
    assert hub.publish(fixed_snapshot(), fixed_state(), NOW).sequence == 1


# --- WebSocket ------------------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_websocket_sends_the_latest_cycle_on_connect_and_each_new_one():
    hub, app = make()
    with TestClient(app) as c, c.websocket_connect("/ws") as ws:
        first = ws.receive_json()
        assert first["type"] == "predictions"
        assert first["generated_at"] == MADE_AT
        db = next(s for s in first["servers"] if s["server_id"] == "ppdb001")
        assert db == {
            "server_id": "ppdb001",
            "server_name": "ppdb001",
            "profile": "database",
            "risk_score": 80.0,
            "priority": "P1",
            "method": "tft",
            "drivers": ["cpu_utilisation", "memory_utilisation", "load1"],
        }
        later = dataclasses.replace(fixed_snapshot(), generated_at=MADE_AT + 60)
        hub.publish(later, fixed_state(), NOW + 60)
        assert ws.receive_json()["generated_at"] == MADE_AT + 60


@pytest.mark.timeout(20)
@pytest.mark.fault("H7")
def test_websocket_refuses_a_foreign_origin():
    _, app = make(allowed_origins=["https://grafana.example.org/"])
    with TestClient(app) as c:
        evil = {"Origin": "https://evil.example"}
        with (
            pytest.raises(WebSocketDisconnect) as refused,
            c.websocket_connect("/ws", headers=evil),
        ):
            pass
        assert refused.value.code == 1008
        for origin in ("http://testserver", "https://grafana.example.org"):
            with c.websocket_connect("/ws", headers={"Origin": origin}) as ws:
                assert ws.receive_json()["type"] == "predictions"


@pytest.mark.fault("H7")
def test_origin_rules():
    allowed = {"https://grafana.example.org"}
    assert origin_allowed(None, "h:1", allowed)
    assert origin_allowed("http://h:1", "h:1", allowed)
    assert origin_allowed("https://grafana.example.org", "h:1", allowed)
    assert not origin_allowed("null", "h:1", allowed)
    assert not origin_allowed("http://h:2", "h:1", allowed)
    assert not origin_allowed("http://h:1", None, allowed)


@pytest.mark.timeout(20)
@pytest.mark.fault("F3")
def test_websocket_beyond_the_client_limit_is_closed_with_1013():
    _, app = make(ws_max_clients=1)
    with TestClient(app) as c, c.websocket_connect("/ws") as first:
        assert first.receive_json()["type"] == "predictions"
        with c.websocket_connect("/ws") as second, pytest.raises(WebSocketDisconnect) as closed:
            second.receive_text()
        assert closed.value.code == 1013


@pytest.mark.timeout(20)
@pytest.mark.fault("H5")
def test_websocket_inbound_message_over_64_kb_closes_with_1009():
    _, app = make(publish=False)
    with TestClient(app) as c, c.websocket_connect("/ws") as ws:
        ws.send_text("x" * (WS_MAX_MESSAGE_BYTES + 1))
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert closed.value.code == 1009


@pytest.mark.fault("F3")
def test_broadcast_drops_a_full_client_and_keeps_the_others():
    broadcaster = Broadcaster(max_clients=10, queue_size=2)
    stalled, reader = broadcaster.register(), broadcaster.register()
    received = []
    for sequence in range(1, 6):
        broadcaster.broadcast(sequence, f"m{sequence}")
        received.append(reader.queue.get_nowait())
    assert received == ["m1", "m2", "m3", "m4", "m5"]
    assert stalled.dropped.is_set() and stalled.close_code == 1008
    assert broadcaster.clients == {reader}
    assert broadcaster.dropped_total == 1


def test_broadcast_queues_one_shared_message_and_never_repeats_a_cycle():
    hub, _ = make()
    broadcaster = Broadcaster(max_clients=10, queue_size=4)
    clients = [broadcaster.register(hub.current) for _ in range(3)]
    broadcaster.on_publish(hub.current)  # the same cycle again: not re-sent
    messages = [c.queue.get_nowait() for c in clients]
    assert all(m is hub.current.message for m in messages)
    assert all(c.queue.empty() for c in clients)


class FakeSocket:
    """A WebSocket whose client either reads everything or never reads (send blocks)."""

    def __init__(self, reads: bool) -> None:
        self.reads = reads
        self.sent: list[str] = []
        self.closed_with: int | None = None
        self._never = asyncio.Event()

    async def send_text(self, message: str) -> None:
        if not self.reads:
            await self._never.wait()
        self.sent.append(message)

    async def receive(self) -> dict:
        await self._never.wait()
        return {"type": "websocket.disconnect"}

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed_with = code


@pytest.mark.timeout(20)
@pytest.mark.fault("F3")
def test_a_websocket_client_that_never_reads_is_dropped_while_another_keeps_receiving():
    async def scenario() -> tuple[FakeSocket, FakeSocket, Broadcaster]:
        broadcaster = Broadcaster(max_clients=10, queue_size=2)
        stalled, reader = FakeSocket(reads=False), FakeSocket(reads=True)
        stalled_client, reader_client = broadcaster.register(), broadcaster.register()
        stalled_task = asyncio.create_task(serve_client(stalled, stalled_client))
        reader_task = asyncio.create_task(serve_client(reader, reader_client))
        for sequence in range(1, 7):
            broadcaster.broadcast(sequence, f"m{sequence}")
            for _ in range(3):
                await asyncio.sleep(0)  # let the pumps run; no wall-clock wait
        await asyncio.wait_for(stalled_task, 5)
        reader_task.cancel()
        await asyncio.gather(reader_task, return_exceptions=True)
        return stalled, reader, broadcaster

    stalled, reader, broadcaster = asyncio.run(scenario())
    assert stalled.closed_with == 1008
    assert stalled.sent == []
    assert reader.sent == [f"m{n}" for n in range(1, 7)]
    assert broadcaster.dropped_total == 1


def test_published_message_skips_stale_instances():
    clock = Clock(MADE_AT + STALE_AFTER + 1)
    hub = Hub(stale_after=STALE_AFTER, clock=clock)
    published = hub.publish(fixed_snapshot(), ServiceState())
    assert '"servers":[]' in published.message
    assert len(HORIZONS) == 6


@pytest.mark.timeout(20)
@pytest.mark.fault("E5")
def test_websocket_clients_are_released_after_they_disconnect():
    _, app = make(ws_max_clients=2)
    with TestClient(app) as c:
        for _ in range(10):
            with c.websocket_connect("/ws") as ws:
                assert ws.receive_json()["type"] == "predictions"
        assert app.state.broadcaster.clients == set()


@pytest.mark.timeout(20)
@pytest.mark.fault("G1")
def test_close_all_closes_every_client_with_1001():
    async def scenario() -> FakeSocket:
        broadcaster = Broadcaster(max_clients=10, queue_size=2)
        socket = FakeSocket(reads=True)
        task = asyncio.create_task(serve_client(socket, broadcaster.register()))
        await asyncio.sleep(0)
        broadcaster.close_all()
        await asyncio.wait_for(task, 5)
        assert broadcaster.clients == set()
        return socket

    assert asyncio.run(scenario()).closed_with == 1001


def test_predictions_current_pages_in_name_order_and_says_where_the_next_page_starts(client):
    whole = client.get("/predictions/current").json()
    names = sorted(whole["predictions"])
    first = client.get("/predictions/current", params={"limit": 2}).json()
    assert list(first["predictions"]) == names[:2]
    assert first["metadata"] == {
        **whole["metadata"],
        "total": len(names),
        "offset": 0,
        "limit": 2,
        "next_offset": 2,
    }
    last = client.get("/predictions/current", params={"limit": 2, "offset": 2}).json()
    assert list(last["predictions"]) == names[2:] and last["metadata"]["next_offset"] is None
    assert last["environment"] == whole["environment"], "the fleet outlook is the whole fleet's"
    paged = {a["server_name"] for page in (first, last) for a in page["alerts"]}
    assert paged == {a["server_name"] for a in whole["alerts"]}
    gzipped = client.get("/predictions/current?limit=2", headers={"Accept-Encoding": "gzip"})
    assert gzipped.headers["content-encoding"] == "gzip" and gzipped.json() == first
    for bad in ({"limit": 0}, {"limit": 1001}, {"limit": 2, "offset": -1}, {"limit": "x"}):
        answer = client.get("/predictions/current", params=bad)
        assert answer.status_code == 400, (bad, answer.status_code)
        assert set(answer.json()) >= {"error", "reason"}
