"""Unit tests of the stack's forecaster, receiver and Alertmanager planning, and the receiver."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from stack import plan, receiver
from stack.__main__ import LogFollower
from stack.banner import demo_banner
from stack.config import DEFAULT_DEMO_WORKDIR, REPO_ROOT, StackConfig, load_config
from stack.layout import Layout, write_alertmanager_config
from stack.process import StackError
from stack.stack import SERVICES, StackInfo, preflight

NOW = 1_700_000_223.4
WEBHOOK = "http://127.0.0.1:9/webhook"
NOTIFYING: dict[str, Any] = {
    "route": {"receiver": "slack-warning", "routes": [{"receiver": "pagerduty-critical"}]},
    "inhibit_rules": [{"source_matchers": ['severity = "critical"'], "equal": ["instance"]}],
    "templates": ["templates/*.tmpl", "/abs/other.tmpl"],
    "receivers": [
        {"name": "pagerduty-critical", "pagerduty_configs": [{"routing_key_file": "/run/k"}]},
        {
            "name": "slack-warning",
            "slack_configs": [{"api_url_file": "/run/s", "channel": "#x"}],
            "webhook_configs": [{"url": "https://example.invalid/hook"}],
        },
        {"name": "null"},
        {"name": "watchdog"},
    ],
}


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


# --- config ------------------------------------------------------------------------------------


def test_demo_starts_the_forecaster_and_receiver_unless_told_not_to() -> None:
    demo = load_config(["demo"], {}).stack
    assert demo.forecaster and demo.webhook_receiver
    assert demo.cycle_interval_s == 60
    assert demo.workdir == DEFAULT_DEMO_WORKDIR
    bare = load_config(["demo", "--no-forecaster", "--no-receiver"], {}).stack
    assert not bare.forecaster and not bare.webhook_receiver
    from_env = load_config(["demo"], {"STACK_FORECASTER": "false", "STACK_RECEIVER": "0"}).stack
    assert not from_env.forecaster and not from_env.webhook_receiver


def test_library_stack_starts_no_forecaster_by_default() -> None:
    config = StackConfig()
    assert not config.forecaster and not config.webhook_receiver


@pytest.mark.parametrize(("text", "seconds"), [("10s", 10), ("1m", 60), ("90s", 90), ("1h", 3600)])
def test_cycle_interval_takes_a_prometheus_duration(text: str, seconds: int) -> None:
    config = load_config(["demo", "--cycle-interval", text], {}).stack
    assert config.cycle_interval_s == seconds
    assert load_config(["demo"], {"STACK_CYCLE_INTERVAL": text}).stack.cycle_interval_s == seconds


@pytest.mark.parametrize("text", ["0s", "500ms", "2h", "ten"])
def test_invalid_cycle_interval_exits_with_status_2_naming_the_flag(
    text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_config(["demo", "--cycle-interval", text], {})
    assert exit_info.value.code == 2
    assert "--cycle-interval" in capsys.readouterr().err


def test_cycle_interval_out_of_range_is_rejected_naming_the_field() -> None:
    with pytest.raises(ValueError, match="cycle_interval_s"):
        StackConfig(cycle_interval_s=0)


def test_every_service_gets_its_own_port_name() -> None:
    assert len(set(SERVICES)) == len(SERVICES)
    assert {"forecaster", "receiver"} <= set(SERVICES)


def test_preflight_names_a_missing_model_registry(tmp_path: Path) -> None:
    for name in ("prometheus/rules", "simulator", "forecaster"):
        (tmp_path / name).mkdir(parents=True)
    for name in ("prometheus/prometheus.yml", "simulator/__main__.py", "forecaster/__main__.py"):
        (tmp_path / name).write_text("")
    config = StackConfig(repo_root=tmp_path, alertmanager=False, node_exporter=False)
    preflight(config)  # no forecaster: no model needed
    with pytest.raises(StackError, match=r"models/current\.json not found"):
        preflight(replace(config, forecaster=True))


# --- command lines -----------------------------------------------------------------------------


def test_forecaster_runs_the_shipped_model_on_cpu_with_its_state_in_the_workdir() -> None:
    config = StackConfig(cycle_interval_s=10, repo_root=Path("/repo"))
    argv = plan.forecaster_command(
        "py", config, "http://127.0.0.1:1", "127.0.0.1:2", Path("/w/data/forecaster")
    )
    assert argv[:3] == ["py", "-m", "forecaster"]
    assert _flag(argv, "--prometheus.url") == "http://127.0.0.1:1"
    assert _flag(argv, "--web.listen-address") == "127.0.0.1:2"
    assert _flag(argv, "--model.dir") == "/repo/models"
    assert _flag(argv, "--model.device") == "cpu"
    assert _flag(argv, "--state.dir") == "/w/data/forecaster"
    assert _flag(argv, "--cycle.interval") == "10s"
    assert "--web.token-file" not in argv, "loopback listeners need no token"


def test_default_cycle_interval_is_passed_as_one_minute() -> None:
    argv = plan.forecaster_command("py", StackConfig(), "http://p", "127.0.0.1:2", Path("/s"))
    assert _flag(argv, "--cycle.interval") == "1m"


def test_shipped_model_registry_names_a_current_version() -> None:
    current = json.loads((REPO_ROOT / plan.MODEL_DIR / "current.json").read_text())
    assert (REPO_ROOT / plan.MODEL_DIR / current["version"]).is_dir()


def test_receiver_command_listens_on_the_given_address() -> None:
    assert plan.receiver_command("py", "127.0.0.1:7") == [
        *("py", "-m", "stack.receiver", "--listen", "127.0.0.1:7")
    ]


def test_forecaster_urls_cover_metrics_rest_status_and_websocket() -> None:
    urls = plan.forecaster_urls("http://127.0.0.1:5")
    assert urls["metrics"] == "http://127.0.0.1:5/metrics"
    assert urls["predictions"] == "http://127.0.0.1:5/predictions/current"
    assert urls["status"] == "http://127.0.0.1:5/status"
    assert urls["websocket"] == "ws://127.0.0.1:5/ws"
    assert urls["predict"].format(instance="ppdb001") == "http://127.0.0.1:5/predict/ppdb001"


# --- Alertmanager work copy --------------------------------------------------------------------


def test_every_notifying_receiver_posts_only_to_the_local_webhook() -> None:
    patched = plan.local_webhook_alertmanager_config(NOTIFYING, WEBHOOK, Path("/repo/am"))
    assert patched is not None
    receivers = {r["name"]: r for r in patched["receivers"]}
    for name in ("pagerduty-critical", "slack-warning"):
        assert receivers[name] == {
            "name": name,
            "webhook_configs": [{"url": WEBHOOK, "send_resolved": True}],
        }
    assert receivers["null"] == {"name": "null"}
    assert receivers["watchdog"] == {"name": "watchdog"}
    assert "_file" not in json.dumps(patched), "no secret file is referenced any more"


def test_webhook_copy_keeps_routes_and_inhibit_rules_and_anchors_templates() -> None:
    patched = plan.local_webhook_alertmanager_config(NOTIFYING, WEBHOOK, Path("/repo/am"))
    assert patched is not None
    assert patched["route"] == NOTIFYING["route"]
    assert patched["inhibit_rules"] == NOTIFYING["inhibit_rules"]
    assert patched["templates"] == ["/repo/am/templates/*.tmpl", "/abs/other.tmpl"]
    assert NOTIFYING["receivers"][0]["pagerduty_configs"], "the original must stay untouched"


def test_config_without_notifying_receivers_is_used_as_it_is(tmp_path: Path) -> None:
    quiet = {"route": {"receiver": "default"}, "receivers": [{"name": "default"}]}
    assert plan.local_webhook_alertmanager_config(quiet, WEBHOOK, tmp_path) is None
    (tmp_path / "alertmanager").mkdir()
    source = tmp_path / "alertmanager" / "alertmanager.yml"
    source.write_text(yaml.safe_dump(quiet))
    layout = Layout(tmp_path / "work")
    assert write_alertmanager_config(tmp_path, layout, WEBHOOK) == source
    assert not layout.alertmanager_config.exists()


def test_without_a_receiver_alertmanager_runs_the_repository_file(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "work")
    source = REPO_ROOT / "alertmanager" / "alertmanager.yml"
    assert write_alertmanager_config(REPO_ROOT, layout, None) == source


@pytest.mark.prometheus
def test_generated_copy_of_the_repository_config_passes_amtool(tmp_path: Path) -> None:
    amtool = shutil.which("amtool")
    if amtool is None:
        message = "amtool not found on PATH (Debian package prometheus-alertmanager)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    layout = Layout(tmp_path / "work")
    written = write_alertmanager_config(REPO_ROOT, layout, WEBHOOK)
    checked = subprocess.run(
        [amtool, "check-config", str(written)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    if written == layout.alertmanager_config:
        document = yaml.safe_load(written.read_text())
        urls = {
            config["url"]
            for receiver_ in document["receivers"]
            for config in receiver_.get("webhook_configs", [])
        }
        assert urls == {WEBHOOK}


# --- banner ------------------------------------------------------------------------------------


def _info(**extra: Any) -> StackInfo:
    return StackInfo(
        workdir=Path("/w"),
        history_dir=Path("/w/history"),
        prometheus_config=Path("/w/prometheus/prometheus.yml"),
        window=plan.history_window(NOW, 26),
        backfill_end=1_700_000_220,
        prometheus_url="http://127.0.0.1:1",
        simulator_url="http://127.0.0.1:2",
        alertmanager_url="http://127.0.0.1:3",
        node_exporter_url=None,
        pids={"prometheus": 11, "simulator": 12},
        **extra,
    )


def test_banner_shows_forecaster_urls_and_incident_injection() -> None:
    banner = demo_banner(
        _info(forecaster_url="http://127.0.0.1:4", cycle_interval_s=60, receiver_url=None)
    )
    for url in (
        "http://127.0.0.1:4/metrics",
        "http://127.0.0.1:4/predictions/current",
        "http://127.0.0.1:4/status",
        "ws://127.0.0.1:4/ws",
        "http://127.0.0.1:2/incident/inject",
        "http://127.0.0.1:2/scenario/set",
    ):
        assert url in banner
    assert 'forecaster_predicted_cpu_utilisation_ratio{q="0.9",horizon="30m"}' in banner
    assert "one cycle every 1m" in banner
    assert "cpu_saturation" in banner
    assert "receiver.log" not in banner


def test_banner_without_forecaster_keeps_the_old_lines() -> None:
    banner = demo_banner(_info())
    assert "Forecaster" not in banner and "forecaster_risk_score" not in banner
    assert "python -m simulator scenario critical --url http://127.0.0.1:2" in banner


def test_banner_names_the_receiver_log() -> None:
    banner = demo_banner(_info(receiver_url="http://127.0.0.1:6"))
    assert "/w/logs/receiver.log" in banner
    assert "http://127.0.0.1:6/notifications" in banner


def test_log_follower_skips_what_the_file_held_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "receiver.log"
    path.write_text("webhook receiver listening on 127.0.0.1:1\n")
    follower = LogFollower(path)
    assert follower.new_lines() == []
    with path.open("a") as handle:
        handle.write("firing X\n")
    assert follower.new_lines() == ["firing X"]


def test_log_follower_returns_only_new_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "receiver.log"
    follower = LogFollower(path)
    assert follower.new_lines() == []
    path.write_text("one\ntw")
    assert follower.new_lines() == ["one"]
    with path.open("a") as handle:
        handle.write("o\nthree\n")
    assert follower.new_lines() == ["two", "three"]
    assert follower.new_lines() == []


# --- the receiver ------------------------------------------------------------------------------

RECEIVED = datetime(2026, 12, 1, 18, 20, tzinfo=UTC)
PAYLOAD = {
    "version": "4",
    "receiver": "pagerduty-critical",
    "status": "firing",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "ForecastCPU", "instance": "ppdb001", "severity": "critical"},
            "annotations": {"summary": "CPU on ppdb001\n forecast above 95%"},
        },
        {"status": "resolved", "labels": {"alertname": "Watchdog"}, "annotations": {}},
    ],
}


def test_receiver_prints_one_line_per_alert() -> None:
    assert receiver.alert_lines(PAYLOAD, RECEIVED) == [
        "2026-12-01T18:20:00Z firing ForecastCPU instance=ppdb001 severity=critical"
        " receiver=pagerduty-critical: CPU on ppdb001 forecast above 95%",
        "2026-12-01T18:20:00Z resolved Watchdog instance=- severity=-"
        " receiver=pagerduty-critical: ",
    ]


@pytest.mark.parametrize("payload", [[], {"alerts": "x"}, "text", None])
def test_receiver_says_so_for_a_payload_that_is_no_notification(payload: Any) -> None:
    assert receiver.alert_lines(payload, RECEIVED) == [
        "2026-12-01T18:20:00Z ignored: not an Alertmanager notification"
    ]


@pytest.mark.parametrize("text", ["9095", ":9095", "host:", "host:0", "host:70000", "h:x"])
def test_receiver_rejects_a_listen_address_without_host_and_port(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="HOST:PORT"):
        receiver.parse_listen(text)


@pytest.fixture
def served() -> Iterator[str]:
    """The receiver's server on a free loopback port, in a thread of this process."""
    server = receiver._Server(("127.0.0.1", 0))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()


def test_receiver_keeps_posted_alerts_and_answers_probes(
    served: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert httpx.get(served + "/-/ready").status_code == 200
    assert httpx.post(served + plan.RECEIVER_PATH, json=PAYLOAD).status_code == 200
    assert "firing ForecastCPU instance=ppdb001" in capsys.readouterr().out
    alerts = httpx.get(served + "/notifications").json()["alerts"]
    assert [a["alertname"] for a in alerts] == ["ForecastCPU", "Watchdog"]
    assert alerts[0]["receiver"] == "pagerduty-critical"
    bad = httpx.post(served + plan.RECEIVER_PATH, content=b"{", headers={"Content-Length": "1"})
    assert bad.status_code == 400
    assert httpx.get(served + "/nowhere").status_code == 404


def test_node_exporter_runs_without_the_systemd_collector() -> None:
    """Debian's node_exporter enables the systemd collector, which fails on every scrape where
    there is no systemd bus; the demo's must not log that error."""
    command = plan.node_exporter_command("node_exporter", "127.0.0.1:3")
    assert command[0] == "node_exporter"
    assert "--web.listen-address=127.0.0.1:3" in command
    assert "--no-collector.systemd" in command


def test_installed_node_exporter_accepts_the_demo_flags() -> None:
    binary = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    if binary is None:
        pytest.skip("no node_exporter installed (Debian package prometheus-node-exporter)")
    # kingpin parses every flag before it acts on --help: an unknown one exits 1
    checked = subprocess.run(
        [*plan.node_exporter_command(binary, "127.0.0.1:0"), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize(("status", "ok"), [(0, True), (130, True), (1, False), (143, False)])
def test_make_demo_treats_the_stacks_ctrl_c_exit_as_success(
    tmp_path: Path, status: int, ok: bool
) -> None:
    """`python -m stack demo` exits 130 once Ctrl-C has stopped it cleanly: `make demo` must not
    end with "Error 130". The demo recipe runs with a stand-in interpreter (`-o install` skips
    the set-up)."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("no make")
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\necho "stack $*"\nexit {status}\n', encoding="utf-8")
    fake.chmod(0o755)
    result = subprocess.run(
        [make, "--no-print-directory", "-o", "install", "demo", "DEMO=local", f"VENV_PY={fake}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "stack -m stack demo" in result.stdout
    assert (result.returncode == 0) is ok, result.stdout + result.stderr
    assert ("Error" in result.stderr) is not ok, result.stderr
