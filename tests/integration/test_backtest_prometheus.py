"""`python -m training.backtest --prometheus.url`: a real Prometheus holding simulator history.

A small stack (3 servers, 3.5 days of simulator history backfilled with promtool, Prometheus and
the live simulator on 127.0.0.1; `stack.Stack` stops every process it started by its PID) is
backtested through `training.backtest.main` with the shipped model, origins every 6 h: the
history is fetched with the contract's PromQL, written where `--data` reads it, and the report
scores the TFT, the served forecast (guard included) and every baseline on every quantity.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forecaster.history_files import read_history
from forecaster.model.config import TFTConfig
from stack import Stack, StackConfig, StackInfo

pytest.importorskip("torch")

from training import backtest

pytestmark = [pytest.mark.prometheus, pytest.mark.slow, pytest.mark.torch]

HISTORY_HOURS = 84  # 3.5 days: 48 h before the first origin, 8 h after the last
ORIGIN_EVERY = 72  # steps (6 h): 5 origins
SERVERS = 3


@pytest.fixture(scope="module")
def small_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    config = StackConfig(
        servers=SERVERS,
        seed=7,
        history_hours=HISTORY_HOURS,
        scrape_interval_s=60,
        workdir=Path(tmp_path_factory.mktemp("backtest-stack")) / "work",
        keep_workdir=True,
        alertmanager=False,
        node_exporter=False,
    )
    with Stack(config) as info:
        yield info


@pytest.fixture
def results(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every result `run_backtest` returns inside `main`."""
    found: list[dict[str, Any]] = []
    run = backtest.run_backtest

    def spy(*args: Any, **kwargs: Any) -> dict[str, Any]:
        found.append(run(*args, **kwargs))
        return found[-1]

    monkeypatch.setattr(backtest, "run_backtest", spy)
    return found


def test_a_backtest_on_prometheus_scores_every_method_on_every_quantity(
    small_stack: StackInfo, tmp_path: Path, results: list[dict[str, Any]]
) -> None:
    report, out = tmp_path / "report.md", tmp_path / "history"
    code = backtest.main(
        [
            *("--prometheus.url", small_stack.prometheus_url),
            *("--start", str(small_stack.window.epoch), "--end", str(small_stack.window.end)),
            *("--origin-every", str(ORIGIN_EVERY), "--threads", "1"),
            *("--out", str(out), "--report", str(report)),
        ]
    )
    assert code == 0
    assert read_history(out, ["cpu_utilisation"])["instance"].nunique() == SERVERS
    (result,) = results
    assert result["origins"] >= backtest.MIN_ORIGINS
    assert result["instances"] == SERVERS
    methods = {backtest.TFT, backtest.SERVED, *backtest.DEFAULT_BASELINES}
    assert set(result["scores"]) == methods
    for method, per_quantity in result["scores"].items():
        assert set(per_quantity) == set(TFTConfig().targets), method
        for quantity, scores in per_quantity.items():
            for horizon, score in scores.items():
                assert score["nql"] is not None and math.isfinite(score["nql"]), (
                    method,
                    quantity,
                    horizon,
                )
    assert set(result["summary"]["served_nql_8h_vs_best_baseline"]) == set(TFTConfig().targets)
    assert result["served"]["guard"] and result["served"]["cycles"] > result["origins"]
    text = report.read_text()
    assert small_stack.prometheus_url in text and str(out / "server_metrics.parquet") in text
    for method in methods:
        assert f"| {method} |" in text, method
    assert (tmp_path / "img" / "report_nql.png").is_file()


def test_a_prometheus_holding_too_little_history_exits_2(
    small_stack: StackInfo, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Asked for 3 days of which Prometheus holds one: refused after the fetch, by message."""
    first = small_stack.window.epoch
    code = backtest.main(
        [
            *("--prometheus.url", small_stack.prometheus_url),
            *("--start", str(first - 2 * 86_400), "--end", str(first + 86_400)),
            *("--out", str(tmp_path)),
        ]
    )
    assert code == 2
    assert "too little history: the history in" in caplog.text
