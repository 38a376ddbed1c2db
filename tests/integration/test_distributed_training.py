"""Distributed training through Lightning's DDP: two CPU processes on the gloo backend, loopback.

`python -m training.train --devices 2 --strategy ddp` on a tiny simulated history and a tiny
model, a few steps: Lightning starts the second rank itself, both ranks train on their share of
the batches with their gradients all-reduced, so their weights are identical after the run;
only the global rank 0 writes the version, and its manifest records the world size.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from forecaster.registry import Registry
from stack.ports import pick_free_ports

from .conftest import simulated_history

pytestmark = [pytest.mark.slow, pytest.mark.torch, pytest.mark.timeout(300)]
pytest.importorskip("pytorch_forecasting")

REPO = Path(__file__).resolve().parents[2]
RANK_LINE = re.compile(r"rank (\d+) of (\d+): weights sha256 ([0-9a-f]{64})")


def test_two_ddp_ranks_on_gloo_train_the_same_weights_and_rank_zero_writes_one_version(tmp_path):
    from forecaster.model.tft import load_bundle
    from training.train import weights_digest

    history, models = tmp_path / "history", tmp_path / "models"
    simulated_history(history, servers=3, days=3)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(pick_free_ports(1)[0])}
    done = subprocess.run(
        [
            *(sys.executable, "-m", "training.train", "--data", str(history)),
            *("--models.dir", str(models), "--threads", "1", "--device", "cpu"),
            *("--devices", "2", "--strategy", "ddp", "--hidden-size", "4", "--batch-size", "8"),
            *("--batches-per-epoch", "3", "--max-epochs", "1", "--seed", "7"),
        ],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert "distributed_backend=gloo" in log
    ranks = {int(r): (int(n), digest) for r, n, digest in RANK_LINE.findall(log)}
    assert set(ranks) == {0, 1}, log[-3000:]
    assert {n for n, _ in ranks.values()} == {2}
    assert ranks[0][1] == ranks[1][1], "the ranks' weights differ after the run"

    registry = Registry(models)
    versions = registry.versions()
    assert len(versions) == 1, f"only rank 0 writes: {versions}"
    manifest = registry.verify(versions[0], "1.0.0")
    info = manifest.info
    assert info["distributed"] == {"world_size": 2, "devices": 2, "num_nodes": 1, "strategy": "ddp"}
    assert info["metrics"]["world_size"] == 2 and info["metrics"]["steps"] >= 1
    assert info["metrics"]["weights_sha256"] == ranks[0][1]
    assert weights_digest(load_bundle(registry.path(versions[0])).model) == ranks[0][1]
