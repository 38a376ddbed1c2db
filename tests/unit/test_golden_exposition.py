"""Golden exposition of one simulated node for a fixed seed and time, linted by promtool.

Regenerate after an intended change:
`UPDATE_GOLDEN=1 pytest tests/unit/test_golden_exposition.py`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.exposition import generate_latest

from simulator.engine import Engine
from simulator.exposition import NodeCollector
from simulator.fleet import build_fleet

GOLDEN = Path(__file__).parent.parent / "golden" / "simulator_ppdb001.prom"
EPOCH = 1_795_305_600.0  # 2026-11-22T00:00Z
AT = EPOCH + 13.5 * 3600 + 17  # a Sunday afternoon, mid-step
# node_exporter's own names break this lint rule; its checkmetrics.sh filters it the same way.
KNOWN_NODE_EXPORTER_LINT = "metric names should be written in 'snake_case' not 'camelCase'"


def _render() -> bytes:
    engine = Engine(build_fleet(20, seed=42), EPOCH, clock=lambda: AT)
    return generate_latest(NodeCollector(engine.view("ppdb001")))


def _split(text: bytes) -> tuple[list[str], list[float]]:
    """The exposition with every sample value masked, and the values in order."""
    lines, values = [], []
    for line in text.decode().splitlines():
        if line.startswith("#"):
            lines.append(line)
            continue
        series, _, value = line.rpartition(" ")
        lines.append(series)
        values.append(float(value))
    return lines, values


def test_exposition_matches_the_golden_file():
    """Byte for byte but for the last bits of a float: numpy's vectorised log and erf differ
    in the last place between CPUs (SIMD dispatch), which moves the 17th significant digit."""
    text = _render()
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_bytes(text)
    lines, values = _split(text)
    golden_lines, golden_values = _split(GOLDEN.read_bytes())
    assert lines == golden_lines
    assert values == pytest.approx(golden_values, rel=1e-12, abs=0.0)


@pytest.mark.prometheus
def test_golden_exposition_passes_promtool_check_metrics():
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool missing (Debian package prometheus)")
        pytest.skip("promtool missing (Debian package prometheus)")
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=GOLDEN.read_bytes(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    problems = [
        line
        for line in result.stdout.decode().splitlines() + result.stderr.decode().splitlines()
        if line.strip() and KNOWN_NODE_EXPORTER_LINT not in line
    ]
    camel = [
        line for line in result.stdout.decode().splitlines() if KNOWN_NODE_EXPORTER_LINT in line
    ]
    assert all(line.startswith("node_memory_") for line in camel), camel
    assert problems == []
