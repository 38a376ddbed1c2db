"""The forecaster's configuration: precedence, validation, custom quantities, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from forecaster.__main__ import main
from forecaster.config import ConfigError, load_config, parse_duration, read_secret


@pytest.mark.fault("H1")
def test_defaults_listen_on_loopback_with_the_contract_targets():
    config = load_config([], {})
    assert config.web.listen_address.startswith("127.0.0.1:")
    assert config.prometheus.url == "http://127.0.0.1:9090"
    names = [q.name for q in config.targets(config.contract())]
    assert names == [
        "cpu_utilisation",
        "memory_utilisation",
        "filesystem_utilisation",
        "disk_io",
        "request_latency_p95",
    ]
    assert config.cycle.interval == 60 and config.cycle.stale_after == 1800


def test_flags_beat_environment_beats_yaml(tmp_path: Path):
    path = tmp_path / "forecaster.yml"
    path.write_text("prometheus:\n  url: http://yaml:9090\ncycle:\n  interval: 2m\n")
    environ = {"FORECASTER_PROMETHEUS_URL": "http://env:9090"}
    config = load_config(["--config.file", str(path)], environ)
    assert config.prometheus.url == "http://env:9090"
    assert config.cycle.interval == 120
    config = load_config(
        ["--config.file", str(path), "--prometheus.url", "http://flag:9090"], environ
    )
    assert config.prometheus.url == "http://flag:9090"


def test_device_and_shard_flags():
    config = load_config(["--device", "cpu", "--shard.index", "1", "--shard.count", "3"], {})
    assert config.model.device == "cpu"
    assert (config.shard.index, config.shard.count) == (1, 3)


@pytest.mark.parametrize(
    ("argv", "key"),
    [
        (["--shard.index", "3", "--shard.count", "3"], "shard"),
        (["--cycle.interval", "soon"], "cycle.interval"),
        (["--model.device", "tpu"], "model.device"),
        (["--prometheus.url", "ftp://x"], "prometheus"),
        (["--web.listen-address", "nowhere"], "web"),
    ],
)
@pytest.mark.fault("G3")
def test_invalid_settings_name_their_key(argv, key):
    with pytest.raises(ConfigError) as error:
        load_config(argv, {})
    assert error.value.key.startswith(key)


@pytest.mark.fault("G3")
def test_unknown_yaml_key_is_refused(tmp_path: Path):
    path = tmp_path / "f.yml"
    path.write_text("cycle:\n  intervall: 1m\n")
    with pytest.raises(ConfigError) as error:
        load_config(["--config.file", str(path)], {})
    assert error.value.key == "cycle.intervall"


def test_custom_quantity_with_its_own_promql_is_a_target(tmp_path: Path):
    path = tmp_path / "f.yml"
    path.write_text(
        "quantities: [cpu_utilisation, nginx_active]\n"
        "custom_quantities:\n"
        "  nginx_active:\n"
        "    expr: sum by (instance) (nginx_connections_active)\n"
        "    unit: tasks\n"
        "    domain: [0, null]\n"
    )
    config = load_config(["--config.file", str(path)], {})
    targets = config.targets(config.contract())
    assert [q.name for q in targets] == ["cpu_utilisation", "nginx_active"]
    assert targets[1].expr == "sum by (instance) (nginx_connections_active)"
    assert targets[1].domain == (0, None)


def test_custom_target_is_listed_once_without_a_quantities_list(tmp_path: Path):
    path = tmp_path / "f.yml"
    path.write_text(
        "custom_quantities:\n"
        "  nginx_active:\n"
        "    expr: sum by (instance) (nginx_connections_active)\n"
        "    unit: tasks\n"
    )
    config = load_config(["--config.file", str(path)], {})
    names = [q.name for q in config.targets(config.contract())]
    assert names.count("nginx_active") == 1
    assert len(names) == len(set(names))


def test_unknown_quantity_names_the_known_ones():
    config = load_config([], {}).model_copy(update={"quantities": ("cpu", "x")})
    with pytest.raises(ConfigError, match="known: cpu_utilisation"):
        config.targets(config.contract())


def test_durations_parse_like_prometheus():
    assert parse_duration("1h30m") == 5400
    assert parse_duration("90s") == 90
    assert parse_duration(15) == 15
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration("1.5h")


@pytest.mark.fault("H4")
def test_secret_files_are_read_and_stripped(tmp_path: Path):
    path = tmp_path / "token"
    path.write_text("s3cret\n")
    assert read_secret(path) == "s3cret"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        read_secret(tmp_path / "empty")


@pytest.mark.fault("G3")
def test_main_exits_2_naming_the_key_on_invalid_config(capsys):
    assert main(["--cycle.interval", "never"], {}) == 2
    assert "cycle.interval" in capsys.readouterr().err


@pytest.mark.fault("H1", "H2")
def test_main_refuses_a_non_loopback_listener_without_a_token(capsys):
    assert main(["--web.listen-address", "0.0.0.0:9465"], {}) == 2
    assert "without credentials" in capsys.readouterr().err


def test_check_config_validates_and_exits_0(capsys):
    assert main(["--check-config"], {}) == 0
    assert "valid" in capsys.readouterr().out
