"""Simulator configuration: precedence, validation and exit codes."""

from __future__ import annotations

import pytest

from simulator.__main__ import main
from simulator.config import load_config, parse_duration, parse_time


@pytest.mark.fault("H1")
def test_defaults_listen_on_loopback():
    config = load_config(["serve"], {})
    assert config.listen_address == "127.0.0.1:9100"
    assert config.servers == 20 and config.seed == 42


def test_precedence_is_defaults_yaml_env_flags(tmp_path):
    path = tmp_path / "sim.yml"
    path.write_text("servers: 30\nseed: 1\nweb.listen-address: 127.0.0.1:9200\n")
    environ = {"SIMULATOR_SEED": "2", "SIMULATOR_WEB_LISTEN_ADDRESS": "127.0.0.1:9300"}
    config = load_config(["--config.file", str(path), "serve", "--seed", "3"], environ)
    assert config.servers == 30
    assert config.seed == 3
    assert config.listen_address == "127.0.0.1:9300"


@pytest.mark.parametrize(
    ("argv", "environ", "named"),
    [
        (["serve", "--servers", "0"], {}, "--servers"),
        (["serve", "--servers", "many"], {}, "--servers"),
        (["serve", "--bogus"], {}, "--bogus"),
        (["history", "--days", "-1"], {}, "--days"),
        (["history", "--scrape-interval", "often"], {}, "--scrape-interval"),
        (["serve", "--scenario", "doom"], {}, "--scenario"),
        (["serve"], {"SIMULATOR_SERVERS": "x"}, "SIMULATOR_SERVERS"),
        (["serve", "--web.listen-address", "nowhere"], {}, "--web.listen-address"),
        (["incident", "--node", "ppdb001"], {}, "--kind"),
    ],
)
@pytest.mark.fault("G3")
def test_invalid_input_exits_2_naming_the_flag(argv, environ, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_config(argv, environ)
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err


def test_unknown_yaml_key_is_rejected(tmp_path, capsys):
    path = tmp_path / "sim.yml"
    path.write_text("sevrers: 3\n")
    with pytest.raises(SystemExit):
        load_config(["--config.file", str(path), "serve"], {})
    assert "sevrers" in capsys.readouterr().err


@pytest.mark.fault("H1", "H2")
def test_serve_refuses_a_public_listener_without_a_token():
    assert main(["serve", "--web.listen-address", "0.0.0.0:0"]) == 2


def test_durations_and_times_parse_like_prometheus():
    assert parse_duration("20m") == 1200
    assert parse_duration("1h30m") == 5400
    assert parse_duration("2d") == 172800
    with pytest.raises(ValueError):
        parse_duration("")
    assert parse_time("2026-11-22T00:00:00Z") == 1_795_305_600
    assert parse_time("1795305600") == 1_795_305_600
