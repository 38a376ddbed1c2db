"""The benchmark suite's cheap parts in quick mode: result structure and numerical agreement.

No wall-clock time is asserted: only that the figures are there, well formed, and that our
paths give the same answers as the reference paths they are compared with.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench import render as render_bench
from bench.__main__ import main as bench_main
from bench.__main__ import write
from bench.common import Context, figure, synthetic_snapshot
from exporter.collector import render
from exporter.render import render_text

pytestmark = pytest.mark.bench
FIGURE_KEYS = {"name", "value", "unit", "goal_op", "goal_value", "met", "load", "note"}


def _ctx(tmp_path) -> Context:
    return Context(quick=True, work=tmp_path, command="pytest")


def _check_figures(result: dict) -> None:
    assert result["figures"], "a benchmark reports at least one figure"
    for row in result["figures"]:
        assert set(row) == FIGURE_KEYS
        assert len(row["load"]) == 3
        if row["goal_op"] is not None and row["value"] is not None:
            assert isinstance(row["met"], bool)


def test_figure_judges_goals_in_both_directions():
    assert figure("x", 4.0, "s", goal_op="<=", goal_value=5.0)["met"] is True
    assert figure("x", 6.0, "s", goal_op="<=", goal_value=5.0)["met"] is False
    assert figure("x", 600, "/s", goal_op=">=", goal_value=500)["met"] is True
    assert figure("x", None, "s", goal_op="<=", goal_value=5.0)["met"] is None
    assert figure("x", 1.0, "s")["met"] is None


def test_synthetic_snapshot_renders_identically_with_both_renderers():
    snapshot = synthetic_snapshot(12, now=1_795_305_600.0)
    args = {"now": 1_795_305_600.0, "stale_after": 1800.0}
    from exporter.snapshot import ServiceState

    assert render_text(snapshot, ServiceState(), **args) == render(snapshot, ServiceState(), **args)


def test_render_benchmark_quick_mode_reports_identical_bytes(tmp_path):
    result = render_bench.run(_ctx(tmp_path))
    _check_figures(result)
    assert [row["hosts"] for row in result["rows"]] == list(render_bench.QUICK_SIZES)
    for row in result["rows"]:
        assert row["identical"] is True
        assert row["samples"] > 100 * row["hosts"]
        assert row["ratio"] > 0


@pytest.mark.torch
def test_inference_benchmark_quick_mode_fast_path_equals_library_path(tmp_path):
    pytest.importorskip("pytorch_forecasting")
    from bench import inference

    result = inference.run(_ctx(tmp_path))
    _check_figures(result)
    (row,) = result["rows"]
    assert row["servers"] == inference.QUICK_SIZES[0]
    assert row["max_rel_diff"] < 1e-4
    assert row["ratio"] > 0
    assert result["threads_effect"]["default_s"] > 0


@pytest.mark.torch
def test_forward_benchmark_quick_mode_static_graph_gives_the_library_numbers(tmp_path):
    pytest.importorskip("pytorch_forecasting")
    from bench import forward

    result = forward.run(_ctx(tmp_path))
    _check_figures(result)
    rows = {row["candidate"].split(",")[0]: row for row in result["rows"]}
    assert {"eager", "static-shape forward"} <= set(rows)
    assert len(result["rows"]) == len(forward.QUICK_BATCH_SIZES) + 1
    for row in result["rows"]:  # every batch size and the static graph: the same forecasts
        assert row["max_rel_diff"] < 1e-5 and row["ratio"] > 0
    assert result["best_batch"] in forward.QUICK_BATCH_SIZES


@pytest.mark.torch
def test_gpu_script_runs_stand_alone_on_the_cpu(tmp_path):
    pytest.importorskip("pytorch_forecasting")
    completed = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "--device", "cpu", "--servers", "8", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    payload = json.loads(completed.stdout.strip().splitlines()[-1])
    (row,) = payload["rows"]
    assert payload["device"] == "cpu" and row["servers"] == 8 and row["tft"] == 8
    assert {"forecast_s", "risk_snapshot_s", "render_s", "total_s"} <= set(row)


def test_report_is_written_from_the_results(tmp_path):
    result = render_bench.run(_ctx(tmp_path))
    result.update(
        title="render",
        machine={"cpu_model": "test cpu", "nproc": 2},
        command="pytest",
        date="2026-12-01T00:00:00+00:00",
        duration_s=1.0,
        load_before=[0, 0, 0],
        load_after=[0, 0, 0],
    )
    gpu = {
        "title": "gpu",
        "figures": [figure("100,000 servers", None, "s", note="not run (no GPU)")],
        "rows": [],
    }
    write({"render": result, "gpu": gpu}, tmp_path / "out", with_plots=False)
    text = (tmp_path / "out" / "BENCHMARKS.md").read_text()
    assert "| figure | goal | measured | met? | load 1/5/15 min |" in text
    assert "test cpu, 2 cores" in text and "Command: `pytest`" in text
    assert "not run (no GPU)" in text
    saved = json.loads((tmp_path / "out" / "benchmarks.json").read_text())
    assert set(saved) == {"render", "gpu"}


def test_bench_refuses_an_unknown_benchmark_name():
    assert bench_main(["--only", "nonsense"]) == 2
