"""The forecaster process: restart serves the persisted snapshot at once, SIGTERM exits 0,
a second process on the same state directory is refused (RELIABILITY G1, G2, G4).

Prometheus is deliberately unreachable here: these are the paths that must work without it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import httpx
import pytest

from forecaster.persist import save_snapshot
from stack.ports import pick_free_ports
from tests.exporter_fixtures import fixed_snapshot

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.torch]


def start(state: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    command = [
        *(sys.executable, "-m", "forecaster", "--prometheus.url", "http://127.0.0.1:9"),
        *("--web.listen-address", f"127.0.0.1:{port}", "--state.dir", str(state)),
        *("--model.device", "cpu", "--cycle.interval", "5s", "--prometheus.timeout", "1s"),
        *extra,
    ]
    return subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy()
    )


def wait_for(url: str, needle: str, deadline_s: float) -> float:
    """Seconds until `url` answers 200 with `needle` in the body; fails at the deadline."""
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        try:
            response = httpx.get(url, timeout=1.0)
            if response.status_code == 200 and needle in response.text:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{url} did not serve {needle!r} within {deadline_s} s")


def stop(process: subprocess.Popen[bytes]) -> tuple[int, float, str]:
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return process.returncode, time.monotonic() - started, output.decode(errors="replace")


def fresh_snapshot():
    snapshot = fixed_snapshot()
    now = time.time()
    instances = {k: replace(v, made_at=now) for k, v in snapshot.instances.items()}
    return replace(snapshot, instances=MappingProxyType(instances), generated_at=now)


@pytest.mark.fault("A1", "G1", "G2")
def test_restart_serves_the_persisted_snapshot_and_sigterm_exits_0(tmp_path: Path):
    save_snapshot(fresh_snapshot(), tmp_path)
    port = pick_free_ports(1)[0]
    process = start(tmp_path, port)
    try:
        needle = 'forecaster_predicted_cpu_utilisation_ratio{horizon="30m",instance="ppdb001"'
        elapsed = wait_for(f"http://127.0.0.1:{port}/metrics", needle, 20.0)
        print(f"persisted snapshot served {elapsed:.2f} s after start")
        wait_for(f"http://127.0.0.1:{port}/metrics", "forecaster_source_up 0.0", 20.0)
    finally:
        code, took, output = stop(process)
    assert code == 0, output
    assert took < 10, f"SIGTERM took {took:.1f} s"
    assert "Traceback" not in output
    assert (tmp_path / "snapshot.npz").is_file()
    assert not list(tmp_path.glob(".snapshot.npz.tmp-*"))


@pytest.mark.fault("G4")
def test_second_forecaster_on_the_same_state_dir_is_refused(tmp_path: Path):
    first = start(tmp_path, pick_free_ports(1)[0])
    try:
        wait_for_lock = time.monotonic() + 20
        while not (tmp_path / "lock").exists() and time.monotonic() < wait_for_lock:
            time.sleep(0.1)
        second = start(tmp_path, pick_free_ports(1)[0])
        output, _ = second.communicate(timeout=30)
        assert second.returncode != 0
        assert "another forecaster is using" in output.decode()
    finally:
        code, _, output = stop(first)
    assert code == 0, output
