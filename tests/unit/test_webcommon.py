"""The listen-address rule every listener shares (webcommon.address), and its documentation."""

from __future__ import annotations

from pathlib import Path

import pytest

from webcommon.address import LISTEN_HELP, TOKEN_HELP, is_loopback, split_address

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "127.255.255.254", "::1", "localhost"])
@pytest.mark.fault("H1")
def test_the_loopback_range_needs_no_token(host):
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "10.0.0.1", "192.168.1.5", "128.0.0.1", "example.com", ""]
)
@pytest.mark.fault("H1", "H2")
def test_every_other_address_needs_a_token(host):
    assert not is_loopback(host)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:9465", ("127.0.0.1", 9465)),
        ("[::1]:9100", ("::1", 9100)),
        (":9466", ("0.0.0.0", 9466)),
    ],
)
def test_addresses_split_into_host_and_port(address, expected):
    assert split_address(address) == expected


@pytest.mark.parametrize("address", ["9465", "host:", "host:65536", "host:-1", "host:port"])
def test_malformed_addresses_are_refused(address):
    with pytest.raises(ValueError, match="expected host:port"):
        split_address(address)


def test_the_readme_states_the_same_rule():
    """Every list item of the README and the reference pages under docs/ that states the token
    rule names the loopback range, not one address."""
    items = [
        item.split("\n\n")[0]  # a list item ends at the first blank line
        for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
        for item in path.read_text().split("\n- ")[1:]
    ]
    rules = [i for i in items if "without a token" in i or "needs `--web.token-file`" in i]
    assert len(rules) >= 2, "the docs no longer state the token rule for both services"
    for item in rules:
        assert "loopback range (127.0.0.0/8, ::1)" in " ".join(item.split()), item


def test_every_listeners_help_states_the_rule(capsys):
    """The forecaster's, the simulator's and the retrainer's --help say what the code does."""
    from forecaster.config import _parser as forecaster_parser
    from simulator.config import _parser as simulator_parser
    from training.retrain.config import _parser as retrain_parser

    simulator_serve = simulator_parser()._subparsers._group_actions[0].choices["serve"]
    for parser in (forecaster_parser(), simulator_serve, retrain_parser()):
        text = " ".join(parser.format_help().split())
        assert " ".join(LISTEN_HELP.split()) in text, parser.prog
        assert " ".join(TOKEN_HELP.split()) in text, parser.prog
