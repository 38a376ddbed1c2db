"""The simulator's HTTP surface, called in-process."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from simulator.__main__ import write_targets
from simulator.app import build_app
from simulator.engine import Engine
from simulator.fleet import build_fleet

EPOCH = 1_795_305_600.0


def _engine(now: float = EPOCH + 5000) -> Engine:
    return Engine(build_fleet(20, seed=42), EPOCH, clock=lambda: now)


@pytest.fixture
def client():
    return TestClient(build_app(_engine()))


def test_metrics_serves_one_node_per_request(client):
    response = client.get("/metrics", params={"node": "ppdb001"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert {
        "node_cpu_seconds",
        "node_memory_MemAvailable_bytes",
        "node_filesystem_avail_bytes",
        "node_disk_read_bytes",
        "node_network_receive_bytes",
        "node_load1",
        "http_request_duration_seconds",
        "http_requests",
        "jvm_gc_pause_seconds",
        "simulator_node_state",
        "simulator_incident_active",
        "simulator_scenario",
    } <= set(families)
    states = {s.labels["state"]: s.value for s in families["simulator_node_state"].samples}
    assert sum(states.values()) == 1
    modes = {s.labels["mode"] for s in families["node_cpu_seconds"].samples}
    assert modes == {"idle", "user", "system", "iowait", "irq", "softirq", "steal", "nice"}


def test_metrics_without_node_are_the_simulators_own(client):
    client.get("/metrics", params={"node": "ppweb001"})
    text = client.get("/metrics").text
    assert "simulator_fleet_size 20.0" in text
    assert 'simulator_node_scrapes_total{result="ok"} 1.0' in text
    assert "node_cpu_seconds_total" not in text


def test_unknown_node_is_404_json(client):
    response = client.get("/metrics", params={"node": "ppdb999"})
    assert response.status_code == 404
    assert response.json() == {"error": "unknown node", "reason": "no node named 'ppdb999'"}


def test_status_has_the_seed_shape(client):
    body = client.get("/status").json()
    assert {"running", "scenario", "tick_count", "fleet_size", "affected_servers"} <= set(body)
    assert body["fleet_size"] == 20 and body["scenario"] == "healthy"
    assert body["affected_servers"] == 0


def test_scenario_set_changes_the_scenario(client):
    response = client.post("/scenario/set", json={"scenario": "degrading"})
    assert response.status_code == 200
    assert len(response.json()["affected_servers"]) == 5
    status = client.get("/status").json()
    assert status["affected_servers"] == 5
    assert status["scenario_changes"][-1]["scenario"] == "degrading"


def test_unknown_scenario_is_400_naming_the_valid_ones(client):
    response = client.post("/scenario/set", json={"scenario": "apocalypse"})
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "unknown scenario"
    for name in ("healthy", "degrading", "critical"):
        assert name in body["reason"]


@pytest.mark.parametrize("payload", [b"{not json", b"[1, 2]", b"", b"\xff\xfe"])
def test_malformed_json_is_400(client, payload):
    response = client.post(
        "/scenario/set", content=payload, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"] in ("malformed JSON", "invalid request")


def test_missing_field_is_400(client):
    response = client.post("/scenario/set", json={"scenery": "healthy"})
    assert response.status_code == 400
    assert "scenario" in response.json()["reason"]


@pytest.mark.fault("H5")
def test_oversized_body_is_413(client):
    response = client.post("/scenario/set", content=b" " * 70_000)
    assert response.status_code == 413


def test_incident_inject_and_list(client):
    response = client.post(
        "/incident/inject", json={"node": "ppweb002", "kind": "filesystem_fill", "ramp": "20m"}
    )
    assert response.status_code == 201
    record = response.json()
    assert record["breach"] - record["precursor_start"] == 1200
    listed = client.get("/incidents").json()["incidents"]
    assert any(i["source"] == "api" and i["instance"] == "ppweb002" for i in listed)
    assert all({"instance", "kind", "precursor_start", "breach", "end"} <= set(i) for i in listed)


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        ({"node": "ppweb999", "kind": "memory_leak"}, 404),
        ({"node": "ppweb001", "kind": "meteor"}, 400),
        ({"node": "ppweb001", "kind": "memory_leak", "ramp": "soon"}, 400),
        ({"node": "ppweb001", "kind": "memory_leak", "ramp": "0s"}, 400),
        ({"node": "x" * 500, "kind": "memory_leak"}, 400),
    ],
)
@pytest.mark.fault("H5")
def test_bad_incident_requests_are_rejected(client, payload, status):
    response = client.post("/incident/inject", json=payload)
    assert response.status_code == status
    assert set(response.json()) == {"error", "reason"}


@pytest.mark.parametrize("path", ["/scenario/set", "/incident/inject"])
@pytest.mark.fault("H5")
def test_deeply_nested_json_is_400_not_500(path):
    client = TestClient(build_app(_engine()), raise_server_exceptions=False)
    nested = b"[" * 30_000 + b"]" * 30_000
    assert len(nested) < 64 * 1024  # within the body cap: the parser itself must refuse it
    response = client.post(path, content=nested, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json() == {"error": "malformed JSON", "reason": "nested too deeply"}


@pytest.mark.parametrize("field", ["ramp", "hold"])
@pytest.mark.parametrize("unit", ["s", "m", "d"])
@pytest.mark.fault("H5")
def test_a_duration_beyond_float_range_is_400_not_500(field, unit):
    client = TestClient(build_app(_engine()), raise_server_exceptions=False)
    payload = {"node": "ppweb001", "kind": "memory_leak", field: "9" * 400 + unit}
    response = client.post("/incident/inject", json=payload)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid request"
    assert body["reason"].startswith(f"{field}: ")
    assert "between 1s and 24h" in body["reason"]
    listed = client.get("/incidents").json()["incidents"]
    assert not any(i["source"] == "api" for i in listed)  # nothing was injected


@pytest.mark.fault("H2")
def test_mutating_routes_need_the_token_when_one_is_configured():
    client = TestClient(build_app(_engine(), token="s3cret"))
    routes = [
        ("/scenario/set", {"scenario": "critical"}),
        ("/incident/inject", {"node": "ppdb001", "kind": "memory_leak"}),
    ]
    for path, payload in routes:
        assert client.post(path, json=payload).status_code == 401
        wrong = client.post(path, json=payload, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403
        right = client.post(path, json=payload, headers={"Authorization": "Bearer s3cret"})
        assert right.status_code in (200, 201)
    assert client.get("/status").status_code == 200


@pytest.mark.fault("H2")
def test_every_mutating_route_is_guarded():
    app = build_app(_engine(), token="t")
    client = TestClient(app)
    mutating = [
        r for r in app.routes if getattr(r, "methods", set()) & {"POST", "PUT", "PATCH", "DELETE"}
    ]
    assert len(mutating) == 2
    for route in mutating:
        assert client.post(route.path, json={}).status_code == 401, route.path


def test_file_sd_targets_name_each_node_as_its_instance(tmp_path):
    path = tmp_path / "targets" / "simulator.json"
    fleet = build_fleet(20)
    write_targets(path, fleet.nodes, fleet.profiles, "127.0.0.1:9100")
    groups = json.loads(path.read_text())
    assert len(groups) == 20
    assert groups[3] == {
        "targets": ["127.0.0.1:9100"],
        "labels": {"instance": "ppdb001", "__param_node": "ppdb001", "profile": "database"},
    }


@pytest.mark.fault("H8")
def test_an_unexpected_error_is_one_json_500_and_one_logged_traceback(caplog):
    """Nothing re-raises it to the server (which would log it a second time): the test client,
    which raises whatever reaches the server, gets the answer."""
    engine = _engine()

    def broken(*_args, **_kwargs):
        raise RuntimeError("a bug")

    engine.incidents = broken  # type: ignore[method-assign]
    client = TestClient(build_app(engine))  # raise_server_exceptions: on
    with caplog.at_level("ERROR"):
        response = client.get("/incidents")
    assert response.status_code == 500
    assert response.json() == {"error": "internal error", "reason": "RuntimeError"}
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert "a bug" not in response.text  # no message or traceback in the answer
