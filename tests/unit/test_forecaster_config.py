"""The forecaster's configuration: precedence, validation, custom quantities, secrets."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path
from typing import Any

import pytest

from forecaster.__main__ import main
from forecaster.config import (
    ConfigError,
    format_duration,
    load_config,
    parse_duration,
    read_secret,
)
from tests.unit.test_docs import FLAG, _rows, _section, _text


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


# --- --help: every flag says what it is and its default -----------------------------------------

PARSERS = ("forecaster.config", "training.retrain.config")
DEFAULT = re.compile(r"\(default: ([^)]*)\)")


def _value_flags(module: str) -> list[argparse.Action]:
    """The flags of a parser that take a value (not -h, --check-config or --once)."""
    parser = importlib.import_module(module)._parser()
    return [a for a in parser._actions if a.option_strings and a.nargs != 0]


def _setting(config: Any, path: str) -> Any:
    for part in path.split("."):
        config = getattr(config, part)
    return config


@pytest.mark.parametrize("module", PARSERS)
def test_every_flag_has_a_help_text_and_every_value_flag_its_default(module: str) -> None:
    parser = importlib.import_module(module)._parser()
    for action in parser._actions:
        assert action.help and action.help.strip(), f"{action.option_strings} has no help"
    for action in _value_flags(module):
        assert DEFAULT.search(action.help or ""), f"{action.option_strings}: no (default: ...)"
    parser.format_help()  # argparse %-formats each help: a stray % would raise here


def test_forecaster_help_shows_descriptions_and_defaults(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"], {})
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag, default in (
        ("--cycle.interval VALUE", "1m"),
        ("--cycle.stale-after VALUE", "30m"),
        ("--guard.history VALUE", "3d"),
        ("--prometheus.url VALUE", "http://127.0.0.1:9090"),
        ("--model.enabled VALUE", "true"),
        ("--guard.power VALUE", "2"),
        ("--state.dir VALUE", "forecaster-state"),
        ("--web.token-file VALUE", "none"),
        ("--model.device VALUE, --device VALUE", "auto"),
    ):
        match = re.search(re.escape(flag) + r" (.*?)\(default: ([^)]*)\)", text)
        assert match, flag
        assert match.group(1).strip(), f"{flag} has a default but no description"
        assert match.group(2) == default, flag


@pytest.mark.parametrize("module", PARSERS)
def test_the_default_each_flag_shows_is_the_settings_default(module: str) -> None:
    """Passing the shown default as the flag's value gives the default configuration."""
    load = importlib.import_module(module).load_config
    defaults = load([], {})
    for action in _value_flags(module):
        shown = DEFAULT.findall(action.help or "")[-1]
        if action.dest == "config_file":
            continue
        value = _setting(defaults, action.dest)
        if shown == "none":
            assert value is None, action.dest
            continue
        if value is None:
            continue  # a default the description names in words ("the URL's host")
        given = _setting(load([action.option_strings[0], shown], {}), action.dest)
        assert given == value, (action.dest, shown)


def _same_default(shown: str, documented: str) -> bool:
    if shown == documented:
        return True
    for read in (float, parse_duration):
        try:
            if read(shown) == read(documented):
                return True
        except ValueError:
            pass
    return documented == "0" and parse_duration(shown) == 0


@pytest.mark.parametrize(
    ("module", "page", "heading"),
    [
        ("forecaster.config", "SERVICE.md", "Flags and environment"),
        ("training.retrain.config", "TRAINING.md", "Retrainer flags"),
    ],
)
def test_help_defaults_agree_with_the_documented_ones(module: str, page: str, heading: str):
    documented = {
        flag: re.sub(r" \(.*\)$", "", row[1].replace("`", ""))
        for row in _rows(_section(_text(page), heading))
        for flag in FLAG.findall(row[0])
    }
    for action in _value_flags(module):
        shown = DEFAULT.findall(action.help or "")[-1]
        flag = action.option_strings[0]
        assert _same_default(shown, documented[flag]), (flag, shown, documented[flag])


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (30, "30s"),
        (60, "1m"),
        (90, "1m30s"),
        (7200, "2h"),
        (86400, "1d"),
        (1209600, "14d"),
    ],
)
def test_durations_in_help_are_prometheus_strings_that_parse_back(seconds: float, text: str):
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds
