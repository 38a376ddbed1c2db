"""The long fuzz run: every target of `tests/fuzz` for a time budget, and its report.

A target is one module `tests/fuzz/test_fuzz_<name>.py`. `run_target` runs it in its own
pytest process with `FUZZ_SECONDS` (the `fuzz-long` hypothesis profile: random seeds, chunks
of examples repeated until the module's budget is spent, shared among its properties) and
`FUZZ_REPORT` (the per-property figures the conftest writes as JSON). `render` turns the
results into `docs/FUZZ.md`: per property the examples run, the seconds, and the failure
with hypothesis' minimal example, or none; the page's hand-written part, after `KEEP_MARKER`
(the crashers found so far and their regression tests), is kept as it is. `python -m
tools.fuzz` drives both.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
FUZZ_DIR = REPO_ROOT / "tests" / "fuzz"
OUTPUT_FILE = REPO_ROOT / "docs" / "FUZZ.md"
PREFIX = "test_fuzz_"
TAIL_CHARS = 4000  # of pytest's output, kept when a target fails
RESULTS_PREFIX = "<!-- fuzz-results: "
KEEP_MARKER = "<!-- Hand-written below this line: python -m tools.fuzz keeps it as it is. -->"


def kept_part(path: Path) -> str:
    """The hand-written part of an existing report (after `KEEP_MARKER`), or ""."""
    if not path.is_file():
        return ""
    text = path.read_text(encoding="utf-8")
    return text.split(KEEP_MARKER, 1)[1].strip("\n") if KEEP_MARKER in text else ""


@dataclass
class TargetResult:
    """One target's run: its pytest exit status, wall time, properties and output tail."""

    name: str
    summary: str
    exitstatus: int
    wall_s: float
    properties: list[dict[str, Any]] = field(default_factory=list)
    hypothesis: str = ""
    tail: str = ""
    budget_s: float = 0.0
    started: str = ""  # UTC, "YYYY-MM-DD HH:MM"

    @property
    def passed(self) -> bool:
        return self.exitstatus == 0 and all(p.get("failure") is None for p in self.properties)


def targets(directory: Path = FUZZ_DIR) -> dict[str, Path]:
    """Target name -> module, for every `test_fuzz_<name>.py`, sorted by name."""
    found = sorted(directory.glob(f"{PREFIX}*.py"))
    return {path.stem.removeprefix(PREFIX): path for path in found}


def summary(path: Path) -> str:
    """The first line of a target module's docstring, without its "Fuzz target N:" label."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    first = doc.strip().splitlines()[0] if doc.strip() else path.stem
    return first.split(": ", 1)[1] if first.lower().startswith("fuzz target") else first


def run_target(name: str, path: Path, seconds: float, python: str = sys.executable) -> TargetResult:
    """Run one target module for about `seconds` under the long profile."""
    with tempfile.TemporaryDirectory(prefix="fuzz-report-") as scratch:
        report = Path(scratch) / "report.json"
        env = {**os.environ, "FUZZ_SECONDS": f"{seconds:g}", "FUZZ_REPORT": str(report)}
        command = [
            python,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "-rN",
            str(path.relative_to(REPO_ROOT)),
        ]
        started = f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}"
        start = time.monotonic()
        done = subprocess.run(  # noqa: S603 - our own interpreter and test file
            command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False
        )
        wall = time.monotonic() - start
        data = json.loads(report.read_text(encoding="utf-8")) if report.is_file() else {}
    output = done.stdout + done.stderr
    return TargetResult(
        name=name,
        summary=summary(path),
        exitstatus=done.returncode,
        wall_s=wall,
        properties=list(data.get("properties", [])),
        hypothesis=str(data.get("hypothesis", "")),
        tail="" if done.returncode == 0 else output[-TAIL_CHARS:],
        budget_s=seconds,
        started=started,
    )


def _embedded(results: list[TargetResult]) -> str:
    """The results as an HTML comment of the report (so that `--merge` can reuse them)."""
    data = json.dumps([asdict(result) for result in results], sort_keys=True)
    escaped = data.replace("-->", "--\\u003e")  # JSON's escape of ">": no end of the comment
    return f"{RESULTS_PREFIX}{escaped} -->"


def previous_results(path: Path) -> list[TargetResult]:
    """The results a report at `path` embeds ([] when there is none or it has none)."""
    if not path.is_file():
        return []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(RESULTS_PREFIX) and line.endswith(" -->"):
            data = json.loads(line.removeprefix(RESULTS_PREFIX).removesuffix(" -->"))
            return [TargetResult(**item) for item in data]
    return []


def _failure_cell(failure: str | None) -> str:
    if failure is None:
        return "none"
    first = failure.strip().splitlines()[0]
    return "**failed**: " + first.replace("|", "\\|")[:120]


def render(
    results: list[TargetResult],
    *,
    command: str = "python -m tools.fuzz",
    kept: str = "",
) -> str:
    """The text of the long run's report, `kept` (the hand-written part) at its end."""
    version = next((r.hypothesis for r in results if r.hypothesis), "unknown")
    examples = sum(p["examples"] for r in results for p in r.properties)
    failed = [r for r in results if not r.passed]
    budgets = ", ".join(f"{b:g} s" for b in sorted({r.budget_s for r in results}))
    starts = sorted(r.started for r in results if r.started)
    when = f"{starts[0]} to {starts[-1]} UTC (target starts)" if starts else "unknown"
    lines = [
        "# Fuzzing: the long run",
        "",
        f"<!-- Generated by `{command}`; rerun it to refresh. -->",
        "",
        "The hypothesis properties of `tests/fuzz` (one module per target) run in CI with 500"
        " derandomized examples each (`pytest tests/fuzz`, profile `fuzz-ci`). This is the long"
        " run: each target for about the budget below (profile `fuzz-long`, `FUZZ_SECONDS`),"
        " with fresh random seeds, its properties sharing the budget. A failure shows"
        " hypothesis' minimal example; every crasher found so far is a regression example"
        " (`@example`) or test in the target's module.",
        "",
        f"- Date: {when}",
        f"- Budget: {budgets} per target, {len(results)} targets,"
        f" {sum(r.wall_s for r in results) / 60:.1f} min in all",
        f"- Hypothesis {version}, Python {platform.python_version()},"
        f" {os.cpu_count()} cores ({platform.machine()})",
        f"- Examples run: {examples:,} (shrinking included)",
        f"- Result: {'no failure' if not failed else f'{len(failed)} target(s) failed'}",
        "",
        "| target | property | examples | seconds | failure |",
        "|---|---|---:|---:|---|",
    ]
    for result in results:
        if not result.properties:
            lines.append(
                f"| {result.name} | (no property ran: pytest exit {result.exitstatus}) | 0 |"
                f" {result.wall_s:.0f} | **failed** |"
            )
        for prop in result.properties:
            test = prop["nodeid"].split("::")[-1]
            lines.append(
                f"| {result.name} | `{test}` | {prop['examples']:,} | {prop['seconds']:.0f} |"
                f" {_failure_cell(prop.get('failure'))} |"
            )
    lines += ["", "## Targets", ""]
    lines += [
        f"- **{r.name}** (`tests/fuzz/{PREFIX}{r.name}.py`, run {r.started} UTC): {r.summary}"
        for r in results
    ]
    for result in failed:
        lines += ["", f"## Failure: {result.name}", ""]
        for prop in result.properties:
            if prop.get("failure"):
                lines += [f"`{prop['nodeid']}`:", "", "```text", prop["failure"].strip(), "```", ""]
        if result.tail:
            lines += ["pytest's output (end):", "", "```text", result.tail.strip(), "```"]
    lines += ["", _embedded(results), "", KEEP_MARKER]
    if kept:
        lines += ["", kept]
    return "\n".join(lines) + "\n"
