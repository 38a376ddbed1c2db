"""The long run's driver (`python -m tools.fuzz`): its targets, its report, one short run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools.fuzz import (
    KEEP_MARKER,
    REPO_ROOT,
    TargetResult,
    kept_part,
    previous_results,
    render,
    targets,
)

pytestmark = pytest.mark.fuzz


def test_every_target_module_is_a_target():
    assert set(targets()) == {"artefacts", "clean", "exposition", "promql", "records"}


def result(name: str, failure: str | None = None) -> TargetResult:
    prop = {
        "nodeid": f"tests/fuzz/test_fuzz_{name}.py::test_{name}_property",
        "examples": 12345,
        "seconds": 299.6,
        "failure": failure,
    }
    return TargetResult(
        name,
        f"the {name} target.",
        1 if failure else 0,
        301.0,
        [prop],
        "6.1",
        "",
        300.0,
        "2026-12-04 03:00",
    )


def test_the_report_gives_examples_seconds_and_failures_per_property():
    failure = "AssertionError: boom --> x\nFalsifying example: test_clean_property(x=1)"
    text = render([result("clean", failure), result("promql")])
    assert "- Date: 2026-12-04 03:00 to 2026-12-04 03:00 UTC (target starts)" in text
    assert "- Budget: 300 s per target, 2 targets, 10.0 min in all" in text
    assert "- Hypothesis 6.1," in text
    assert "- Examples run: 24,690 (shrinking included)" in text
    assert "| promql | `test_promql_property` | 12,345 | 300 | none |" in text
    assert (
        "| clean | `test_clean_property` | 12,345 | 300 | **failed**: AssertionError: boom" in text
    )
    assert "## Failure: clean" in text and "Falsifying example: test_clean_property(x=1)" in text
    assert "- Result: 1 target(s) failed" in text


def test_the_report_embeds_its_results_for_a_merge(tmp_path: Path):
    page = tmp_path / "FUZZ.md"
    results = [result("clean", "AssertionError: a --> b"), result("promql")]
    page.write_text(render(results), encoding="utf-8")
    assert previous_results(page) == results
    assert previous_results(tmp_path / "missing.md") == []


def test_a_short_long_run_writes_its_report(tmp_path: Path):
    report = tmp_path / "FUZZ.md"
    command = [sys.executable, "-m", "tools.fuzz", "--seconds", "1", "--report", str(report)]
    env = {**os.environ, "FUZZ_CHUNK": "20"}  # 20 examples a call: a second or two
    done = subprocess.run(
        [*command, "exposition"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    text = report.read_text(encoding="utf-8")
    assert "| exposition | `test_the_exposition_parses_back_to_the_declared_samples` |" in text
    assert "- Result: no failure" in text


def test_the_hand_written_part_of_the_report_is_kept(tmp_path: Path):
    page = tmp_path / "FUZZ.md"
    page.write_text(f"# old run\n\n{KEEP_MARKER}\n\n## Crashers\n\n- one\n", encoding="utf-8")
    text = render([result("clean")], kept=kept_part(page))
    assert text.endswith(f"{KEEP_MARKER}\n\n## Crashers\n\n- one\n")
    assert "# old run" not in text
    assert kept_part(tmp_path / "missing.md") == ""
