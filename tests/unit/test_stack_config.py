"""Unit tests of the stack runner's pure parts: config, ports, time window, config patching."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from stack import plan
from stack.__main__ import demo_banner
from stack.config import (
    DEFAULT_DEMO_WORKDIR,
    REPO_ROOT,
    StackConfig,
    format_duration,
    load_config,
    parse_duration,
)
from stack.lock import WorkdirLock
from stack.ports import pick_free_ports
from stack.process import StackError, find_binary
from stack.stack import StackInfo, preflight, prepare_workdir

BOUNDARY = 1_700_000_100  # 2023-11-14 22:15:00 UTC, a multiple of 5 minutes
NOW = BOUNDARY + 123.4


def test_defaults_apply_without_flags_or_environment() -> None:
    config = load_config(["demo"], {})
    assert config.command == "demo"
    assert config.log_level == "info"
    stack = config.stack
    assert (stack.servers, stack.seed, stack.history_hours) == (20, 42, 26)
    assert stack.scrape_interval_s is None
    assert stack.alertmanager and stack.node_exporter and not stack.keep_workdir
    assert stack.workdir == DEFAULT_DEMO_WORKDIR


def test_environment_overrides_defaults() -> None:
    environ = {
        "STACK_SERVERS": "3",
        "STACK_SEED": "7",
        "STACK_HOURS": "2",
        "STACK_SCRAPE_INTERVAL": "15s",
        "STACK_ALERTMANAGER": "false",
        "STACK_KEEP": "yes",
        "STACK_WORKDIR": "/tmp/somewhere",
        "STACK_LOG_LEVEL": "DEBUG",
    }
    config = load_config(["demo"], environ)
    stack = config.stack
    assert (stack.servers, stack.seed, stack.history_hours) == (3, 7, 2)
    assert stack.scrape_interval_s == 15
    assert not stack.alertmanager and stack.keep_workdir
    assert stack.workdir == Path("/tmp/somewhere")
    assert config.log_level == "debug"


def test_flags_override_environment() -> None:
    environ = {"STACK_SERVERS": "3", "STACK_ALERTMANAGER": "false", "STACK_LOG_LEVEL": "error"}
    argv = ["demo", "--servers", "5", "--alertmanager", "--no-node-exporter", "--log.level", "info"]
    config = load_config(argv, environ)
    assert config.stack.servers == 5
    assert config.stack.alertmanager and not config.stack.node_exporter
    assert config.log_level == "info"


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["demo", "--servers", "0"], "--servers"),
        (["demo", "--seed", "x"], "--seed"),
        (["demo", "--hours", "-1"], "--hours"),
        (["demo", "--hours", "1.5"], "--hours"),
        (["demo", "--scrape-interval", "7s"], "--scrape-interval"),
        (["demo", "--scrape-interval", "2m"], "--scrape-interval"),
        (["demo", "--log.level", "loud"], "--log.level"),
        (["demo", "--no-such-flag"], "--no-such-flag"),
    ],
)
def test_invalid_flag_exits_with_status_2_naming_the_flag(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_config(argv, {})
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"STACK_SEED": "abc"}, "STACK_SEED"),
        ({"STACK_KEEP": "maybe"}, "STACK_KEEP"),
        ({"STACK_LOG_LEVEL": "loud"}, "STACK_LOG_LEVEL"),
    ],
)
def test_invalid_environment_exits_with_status_2_naming_the_variable(
    environ: dict[str, str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_config(["demo"], environ)
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err


def test_history_shorter_than_an_hour_is_rejected_naming_the_field() -> None:
    with pytest.raises(ValueError, match="history_hours"):
        StackConfig(history_hours=0)


def test_stack_config_is_frozen() -> None:
    config = StackConfig()
    with pytest.raises(AttributeError):
        config.servers = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "seconds"), [("15s", 15), ("1m", 60), ("1h30m", 5400), ("500ms", 0.5)]
)
def test_prometheus_durations_parse_to_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "15", "1.5m", "m", "1m 30s", "5x"])
def test_malformed_durations_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(("seconds", "text"), [(15, "15s"), (60, "1m"), (90, "90s"), (7200, "2h")])
def test_durations_format_in_the_largest_whole_unit(seconds: int, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


def test_free_ports_are_distinct_and_bindable_on_loopback() -> None:
    ports = pick_free_ports(4)
    assert len(set(ports)) == 4
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_history_ends_at_last_five_minute_boundary_and_epoch_lies_hours_before() -> None:
    window = plan.history_window(NOW, 26)
    assert window.end == BOUNDARY
    assert window.end - window.epoch == 26 * 3600
    assert window.hours == 26


def _history_argv(config: StackConfig, interval_s: float = 60) -> list[str]:
    window = plan.history_window(NOW, config.history_hours)
    return plan.history_command("py", config, window, Path("/h"), interval_s)


@pytest.mark.parametrize("hours", [1, 6, 26, 168])
def test_history_days_and_hours_agree_exactly_for_the_simulator(hours: int) -> None:
    argv = _history_argv(StackConfig(history_hours=hours))
    days = float(_flag(argv, "--days"))
    openmetrics_hours = float(_flag(argv, "--openmetrics-hours"))
    assert openmetrics_hours == hours
    assert openmetrics_hours <= 24 * days
    assert round(days * 86400 / 300) == hours * 12


def test_raw_samples_run_up_to_now_while_rows_end_on_the_step() -> None:
    window = plan.history_window(NOW, 26)
    argv = _history_argv(StackConfig(history_hours=26))
    assert _flag(argv, "--end") == str(window.now)
    assert window.end <= window.now < window.end + 300


def test_repository_config_keeps_its_intervals_unless_asked() -> None:
    document = yaml.safe_load((REPO_ROOT / "prometheus" / "prometheus.yml").read_text())
    assert plan.scrape_interval_of(document, plan.NODE_JOB) == 60
    patched = plan.patch_prometheus_config(document, 15)
    assert plan.scrape_interval_of(patched, plan.NODE_JOB) == 15
    assert patched["global"]["evaluation_interval"] == "15s"
    assert document["global"]["scrape_interval"] == "1m", "the original must stay untouched"


def test_scrape_interval_falls_back_to_global_then_prometheus_default() -> None:
    assert plan.scrape_interval_of({"global": {"scrape_interval": "30s"}}, "node") == 30
    assert plan.scrape_interval_of({}, "node") == plan.PROMETHEUS_DEFAULT_SCRAPE_INTERVAL_S


def test_patching_clamps_a_scrape_timeout_longer_than_the_interval() -> None:
    document = {"global": {"scrape_timeout": "30s"}, "scrape_configs": [{"job_name": "x"}]}
    assert plan.patch_prometheus_config(document, 15)["global"]["scrape_timeout"] == "15s"


def test_rule_groups_with_their_own_interval_follow_the_patch() -> None:
    rules = yaml.safe_load((REPO_ROOT / "prometheus" / "rules" / "recording.yml").read_text())
    patched = plan.patch_rule_groups(rules, 15)
    assert {g["interval"] for g in patched["groups"] if "interval" in g} == {"15s"}
    assert patched["groups"][0]["rules"] == rules["groups"][0]["rules"]


def test_file_sd_targets_carry_the_address_and_labels() -> None:
    assert plan.file_sd_targets("127.0.0.1:9") == [{"targets": ["127.0.0.1:9"]}]
    assert plan.file_sd_targets("127.0.0.1:9", instance="x") == [
        {"targets": ["127.0.0.1:9"], "labels": {"instance": "x"}}
    ]


def test_service_commands_listen_on_the_given_loopback_address(tmp_path: Path) -> None:
    prometheus = plan.prometheus_command("prom", tmp_path / "p.yml", tmp_path / "db", "127.0.0.1:1")
    assert "--web.listen-address=127.0.0.1:1" in prometheus
    alertmanager = plan.alertmanager_command(
        "am", tmp_path / "a.yml", tmp_path / "s", "127.0.0.1:2"
    )
    assert "--web.listen-address=127.0.0.1:2" in alertmanager
    assert "--cluster.listen-address=" in alertmanager
    backfill = plan.backfill_command("promtool", tmp_path / "om.txt", tmp_path / "db")
    assert backfill[1:4] == ["tsdb", "create-blocks-from", "openmetrics"]
    assert "--max-block-duration=24h" in backfill


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_history_and_serve_get_the_same_seed_fleet_and_epoch() -> None:
    config = StackConfig(servers=3, seed=7, history_hours=6)
    window = plan.history_window(NOW, config.history_hours)
    history = _history_argv(config, interval_s=15)
    serve = plan.simulator_command("py", config, window, "127.0.0.1:9", Path("/t/simulator.json"))
    for name in ("--seed", "--servers", "--epoch"):
        assert _flag(history, name) == _flag(serve, name)
    assert _flag(history, "--end") == str(window.now)
    assert _flag(history, "--openmetrics-hours") == "6.0"
    assert float(_flag(history, "--days")) * 24 == pytest.approx(6)
    assert _flag(history, "--scrape-interval") == "15s"
    assert _flag(serve, "--sd.file") == "/t/simulator.json"


def test_workdir_not_made_by_the_stack_is_never_wiped(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(StackError, match="refusing to wipe"):
        prepare_workdir(tmp_path)
    assert (tmp_path / "precious.txt").exists()


def test_workdir_made_by_the_stack_is_wiped(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    prepare_workdir(workdir)
    (workdir / "old.txt").write_text("stale")
    prepare_workdir(workdir)
    assert [p.name for p in workdir.iterdir()] == [".stack-workdir"]


@pytest.mark.fault("G4")
def test_second_lock_on_a_workdir_fails_naming_the_holder(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    with WorkdirLock(workdir) as lock:
        assert lock.path == tmp_path / "demo.lock"
        with pytest.raises(StackError, match=r"already running .* \(pid \d+"):
            WorkdirLock(workdir).__enter__()
    with WorkdirLock(workdir):
        pass


def test_demo_banner_shows_urls_queries_and_scenario_commands() -> None:
    info = StackInfo(
        workdir=Path("/w"),
        history_dir=Path("/w/history"),
        prometheus_config=Path("/w/prometheus/prometheus.yml"),
        window=plan.history_window(NOW, 26),
        backfill_end=BOUNDARY + 120,
        prometheus_url="http://127.0.0.1:1",
        simulator_url="http://127.0.0.1:2",
        alertmanager_url=None,
        node_exporter_url="http://127.0.0.1:3",
        pids={"prometheus": 11, "simulator": 12},
    )
    banner = demo_banner(info)
    assert "http://127.0.0.1:1" in banner and "http://127.0.0.1:3" in banner
    assert "Alertmanager" not in banner
    assert "prometheus 11, simulator 12" in banner
    assert "instance:cpu_utilisation:rate5m" in banner
    assert "python -m simulator scenario critical --url http://127.0.0.1:2" in banner
    assert "python -m simulator incident --node ppdb001 --kind memory_leak" in banner
    assert "http://127.0.0.1:2/scenario/set" in banner


def test_missing_binary_error_names_the_debian_package() -> None:
    with pytest.raises(StackError, match=r"apt-get install prometheus-alertmanager"):
        find_binary(["no-such-alertmanager-binary"], "prometheus-alertmanager")


def test_preflight_names_a_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(StackError, match=r"prometheus\.yml not found"):
        preflight(StackConfig(repo_root=tmp_path, alertmanager=False, node_exporter=False))
