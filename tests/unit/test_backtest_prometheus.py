"""`python -m training.backtest` with a Prometheus source: arguments, fetch, served replay.

Exactly one source (`--data` or `--prometheus.url`); times are RFC 3339 or unix seconds; every
bad argument exits 2 with a message naming it, before any model is loaded or any request is
sent. The fetch goes through the retrainer's (`httpx.MockTransport` here): a Prometheus that
refuses is exit 1, one without series exit 2. The served replay never looks past an origin.
The real Prometheus end to end: tests/integration/test_backtest_prometheus.py.
"""

from __future__ import annotations

import socket

import httpx
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch")

from forecaster.config import Config
from forecaster.contract import load_contract
from forecaster.grid import STEP_SECONDS
from forecaster.history_files import read_history
from forecaster.model.config import TFTConfig
from simulator.fleet import build_fleet
from simulator.history import HistorySpec, write_history
from training import backtest

pytestmark = pytest.mark.torch

URL = "http://127.0.0.1:9090"
END = 1_796_000_123  # not on the 5-minute grid
DAY = 86_400


def _exit(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The message of an argument error (exit 2)."""
    with pytest.raises(SystemExit) as raised:
        backtest.main(argv)
    assert raised.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "one of the arguments --data --prometheus.url is required"),
        (["--data", "x", "--prometheus.url", URL], "not allowed with argument --data"),
        (["--prometheus.url", URL, "--start", "yesterday"], "neither an RFC 3339 time"),
        (["--prometheus.url", URL, "--end", "2026-13-45T00:00:00Z"], "neither an RFC 3339"),
        (["--prometheus.url", URL, "--start", "-5"], "neither an RFC 3339"),
        (["--prometheus.url", URL, "--end", "99999999999"], "outside 1970 to 2262"),
        (
            ["--prometheus.url", URL, "--start", "1796000000", "--end", "1795000000"],
            "--start (2026-11-30T00:53:20+00:00) must be before --end",
        ),
        (
            ["--prometheus.url", URL, "--start", "1796000001", "--end", "1796000002"],
            "holds no 5-minute step",
        ),
        (["--data", "x", "--start", "1796000000"], "--start: only with --prometheus.url"),
        (["--data", "x", "--prometheus.timeout", "5s"], "--prometheus.timeout: only with"),
        (["--prometheus.url", "ftp://x"], "url 'ftp://x' is not an http(s) URL"),
        (["--prometheus.url", URL, "--prometheus.retries", "99"], "--prometheus.retries: Input"),
        (["--prometheus.url", URL, "--prometheus.timeout", "soon"], "--prometheus.timeout:"),
        (["--prometheus.url", URL, "--origin-every", "0"], "--origin-every must be at least 1"),
    ],
)
def test_bad_arguments_exit_2_naming_the_argument(argv, message, capsys):
    assert message in _exit(argv, capsys)


def test_an_unreadable_bearer_token_file_exits_2(tmp_path, capsys):
    argv = ["--prometheus.url", URL, "--prometheus.bearer-token-file", str(tmp_path / "none")]
    assert "--prometheus.bearer-token-file: cannot read" in _exit(argv, capsys)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2026-11-20T00:00:00Z", 1_795_132_800.0),
        ("2026-11-20T01:00:00+01:00", 1_795_132_800.0),
        ("2026-11-20T00:00:00", 1_795_132_800.0),  # no offset: UTC
        ("1795132800", 1_795_132_800.0),
        ("1795132800.5", 1_795_132_800.5),
    ],
)
def test_times_are_rfc_3339_or_unix_seconds(text, seconds):
    assert backtest._time(text) == seconds


def _range(argv: list[str], now: float = END) -> backtest.PrometheusRange:
    parser = backtest._parser()
    source = backtest._prometheus_range(parser, parser.parse_args(argv), now)
    assert source is not None
    return source


def test_the_range_defaults_to_the_last_7_days_on_the_grid():
    source = _range(["--prometheus.url", URL])
    assert source.end == END // STEP_SECONDS * STEP_SECONDS
    assert source.start == -(-(END - 7 * DAY) // STEP_SECONDS) * STEP_SECONDS
    # the retrainer's fetch asks for `history` up to `end`: exactly [start, end]
    assert source.config.history == source.end - source.start + STEP_SECONDS


def test_the_prometheus_settings_are_the_retrainers(tmp_path):
    token = tmp_path / "token"
    token.write_text("secret\n")
    argv = ["--prometheus.url", "https://prom.example:9090/", "--prometheus.timeout", "10s"]
    argv += ["--prometheus.bearer-token-file", str(token), "--prometheus.retries", "1"]
    argv += ["--prometheus.tls-config.server-name", "prom", "--start", "1795132800"]
    settings = _range(argv).config.prometheus
    assert (settings.url, settings.timeout, settings.retries) == (
        "https://prom.example:9090/",
        10.0,
        1,
    )
    assert settings.bearer_token_file == token
    assert settings.tls_config.server_name == "prom"
    assert _range(["--prometheus.url", URL]).url == URL
    parser = backtest._parser()
    assert backtest._prometheus_range(parser, parser.parse_args(["--data", "x"]), END) is None


# --- the fetch (a fake Prometheus) -------------------------------------------------------------


def _prometheus(*, status: int = 200, series: bool = True, warnings: tuple[str, ...] = ()):
    def answer(request: httpx.Request) -> httpx.Response:
        if status != 200:
            return httpx.Response(status, text="down")
        start, end = float(request.url.params["start"]), float(request.url.params["end"])
        values = [[t, "0.5"] for t in np.arange(start, end + 1, STEP_SECONDS)]
        result = [{"metric": {"instance": "a:9100"}, "values": values}] if series else []
        body = {"status": "success", "data": {"resultType": "matrix", "result": result}}
        if warnings:
            body["warnings"] = list(warnings)
        return httpx.Response(200, json=body)

    return httpx.MockTransport(answer)


NAMES = ["cpu_utilisation", "memory_utilisation", "network_receive"]


def test_the_fetch_asks_the_contract_expressions_over_the_range(tmp_path):
    asked: list[str] = []
    transport = _prometheus()

    def record(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.params["query"])
        return transport.handle_request(request)

    source = _range(["--prometheus.url", URL, "--start", str(END - DAY)])
    wide = backtest.fetch(source, NAMES, httpx.MockTransport(record))
    assert asked == [load_contract()[name].expr for name in NAMES]
    assert list(wide.columns) == ["instance", "timestamp", *NAMES]
    seconds = wide["timestamp"].astype("int64") // 10**9
    assert (seconds.min(), seconds.max()) == (source.start, source.end)
    assert len(wide) == DAY // STEP_SECONDS
    wide.to_parquet(tmp_path / "server_metrics.parquet", index=False)
    pd.testing.assert_frame_equal(read_history(tmp_path, NAMES), wide)


@pytest.mark.parametrize(
    ("transport", "code", "message"),
    [
        (_prometheus(status=503), 1, "cannot fetch from http://127.0.0.1:9090: source_error"),
        (_prometheus(warnings=("partial response",)), 1, "partial_history"),
        (_prometheus(series=False), 2, "has no series of any contract quantity"),
    ],
)
def test_a_prometheus_that_fails_or_holds_nothing_is_refused(transport, code, message):
    source = _range(["--prometheus.url", URL, "--prometheus.retries", "0"])
    with pytest.raises(backtest.BacktestError) as raised:
        backtest.fetch(source, NAMES, transport)
    assert raised.value.code == code
    assert message in str(raised.value)


# --- main, with the shipped model --------------------------------------------------------------


def test_a_range_too_short_exits_2_before_fetching(tmp_path, caplog):
    argv = ["--prometheus.url", "http://127.0.0.1:1", "--out", str(tmp_path)]
    argv += ["--start", "2026-11-20T00:00:00Z", "--end", "2026-11-22T00:00:00Z"]
    assert backtest.main(argv) == 2
    assert "too little history: --start to --end is 48.1 h long" in caplog.text
    assert "a backtest needs at least 60.0 h: 48.0 h before the first origin" in caplog.text
    assert not list(tmp_path.iterdir())


def test_a_prometheus_that_is_down_exits_1_with_a_message(tmp_path, caplog):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = ["--prometheus.url", f"http://127.0.0.1:{port}", "--prometheus.retries", "0"]
    argv += ["--prometheus.timeout", "2s", "--start", str(END - 4 * DAY), "--end", str(END)]
    argv += ["--out", str(tmp_path)]
    assert backtest.main(argv) == 1
    assert f"cannot fetch from http://127.0.0.1:{port}: source_error: connection" in caplog.text


def test_a_parquet_too_short_exits_2(tmp_path, caplog):
    first = END // STEP_SECONDS - 288
    write_history(build_fleet(2, seed=3), HistorySpec(first, first + 288, first * 300.0), tmp_path)
    assert backtest.main(["--data", str(tmp_path)]) == 2
    assert "too little history: the history in" in caplog.text


# --- the served replay -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("history")
    first = END // STEP_SECONDS - 3 * 288
    write_history(build_fleet(2, seed=5), HistorySpec(first, first + 3 * 288, first * 300.0), out)
    return read_history(out, [*TFTConfig().targets, *TFTConfig().covariates])


def _served(wide: pd.DataFrame):
    quantities = [*TFTConfig().targets, *TFTConfig().covariates]
    grid = backtest.to_grid(wide, quantities)
    spec = backtest.BacktestSpec(origin_every=72)
    at = backtest.origins(grid, spec, 288, 96)
    served, info = backtest.served_forecasts(
        wide, grid, at, predictor=None, config=Config(), targets=TFTConfig().targets, horizon=96
    )
    return grid, at, served, info


@pytest.mark.slow
def test_the_served_replay_never_looks_past_an_origin(history):
    grid, at, served, info = _served(history)
    assert served.shape == (at.size, 2, 96, len(TFTConfig().targets), 3)
    assert np.isfinite(served).all()
    assert info["guard"] and info["cycles"] > at.size
    assert set(info["methods"]) == set(TFTConfig().targets)
    cut = pd.Timestamp(int(grid.times[at[1] - 1]), unit="s", tz="UTC")
    changed = history.copy()
    later = changed["timestamp"] > cut
    changed.loc[later, list(TFTConfig().targets)] *= 1.5
    _, _, again, _ = _served(changed)
    np.testing.assert_array_equal(again[:2], served[:2])
    assert not np.allclose(again[2:], served[2:])
