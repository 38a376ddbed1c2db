"""Two forecaster replicas sharing one fleet (`--shard.index/--shard.count`) against one real
Prometheus.

The forecaster stack (Prometheus, the simulator's 20 nodes with 4 h of history) gets two more
forecasters, shards 0 and 1 of 2; Prometheus then scrapes those two instead of the stack's own
(its `forecaster` job, `honor_labels: true`, file service discovery, as shipped). Each shard
forecasts a disjoint share of the fleet and together they forecast all of it, in Prometheus as
in their own REST answers; when one is stopped, the other's series stay and `ForecasterDown`
names the stopped shard's address.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from forecaster.service import shard_of
from stack import StackInfo
from stack.config import REPO_ROOT
from stack.ports import pick_free_ports

from .conftest import FORECAST_CYCLE_S, SIMULATED_NODES, query, terminate, wait_for

pytestmark = [pytest.mark.prometheus, pytest.mark.torch, pytest.mark.slow]

SHARDS = 2
SERVED = "count by (instance) (forecaster_predicted_cpu_utilisation_ratio)"


@contextmanager
def replica(stack: StackInfo, index: int, workdir: Path) -> Iterator[tuple[str, int]]:
    """One forecaster, shard `index` of SHARDS; its address and PID. Stopped (by its PID) at
    the end unless the test stopped it."""
    address = f"127.0.0.1:{pick_free_ports(1)[0]}"
    log = (workdir / f"shard{index}.log").open("wb")
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "forecaster", "--prometheus.url", stack.prometheus_url),
            *("--web.listen-address", address, "--state.dir", str(workdir / f"state{index}")),
            *("--model.dir", str(REPO_ROOT / "models"), "--model.device", "cpu"),
            *("--cycle.interval", f"{FORECAST_CYCLE_S}s", "--guard.enabled", "false"),
            *("--shard.index", str(index), "--shard.count", str(SHARDS)),
        ],
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield address, process.pid
    finally:
        terminate(process)
        log.close()


def _served(address: str) -> set[str] | None:
    """The instances a replica's REST answer forecasts, once it has published a cycle."""
    try:
        body = httpx.get(f"http://{address}/predictions/current", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return None
    return set(body.get("predictions", {})) or None


def _scrape_only(stack: StackInfo, addresses: list[str]) -> None:
    """Point the `forecaster` job's file service discovery at `addresses` alone."""
    targets = stack.prometheus_config.parent / "targets"
    for path in targets.glob("forecaster*.json"):
        path.unlink()
    document = [{"targets": addresses, "labels": {}}]
    (targets / "forecaster-shards.json.tmp").write_text(json.dumps(document))
    os.replace(targets / "forecaster-shards.json.tmp", targets / "forecaster-shards.json")


def _up(stack: StackInfo) -> dict[str, float]:
    return {
        r["metric"]["instance"]: float(r["value"][1])
        for r in query(stack.prometheus_url, 'up{job="forecaster"}')
    }


def _in_prometheus(stack: StackInfo) -> set[str]:
    return {r["metric"]["instance"] for r in query(stack.prometheus_url, SERVED)}


def test_two_shards_forecast_disjoint_shares_whose_union_is_the_fleet(forecast_stack, tmp_path):
    stack = forecast_stack
    with ExitStack() as replicas:
        started = [replicas.enter_context(replica(stack, i, tmp_path)) for i in range(SHARDS)]
        addresses = [address for address, _ in started]
        shares = [wait_for(lambda a=a: _served(a), 180, f"a cycle of {a}") for a in addresses]
        for index, share in enumerate(shares):
            assert all(shard_of(i, SHARDS) == index for i in share), "hash % count == index"
        assert shares[0].isdisjoint(shares[1])
        assert shares[0] | shares[1] == SIMULATED_NODES

        _scrape_only(stack, addresses)
        wait_for(
            lambda: _up(stack) == dict.fromkeys(addresses, 1.0) or None,
            120,
            "Prometheus scraping both shards and nothing else",
        )
        wait_for(
            lambda: _in_prometheus(stack) == SIMULATED_NODES or None,
            120,
            "every node's forecast in Prometheus, from the two shards",
        )
        shard_info = query(stack.prometheus_url, 'forecaster_shard_info{job="forecaster"}')
        assert {(r["metric"]["instance"], r["metric"]["index"]) for r in shard_info} == {
            (address, str(i)) for i, address in enumerate(addresses)
        }

        dead, pid = started[1]
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: _up(stack).get(dead) == 0.0 or None, 120, "the stopped shard down")
        wait_for(
            lambda: _in_prometheus(stack) == shares[0] or None,
            120,
            "the other shard's forecasts intact, the stopped one's gone stale",
        )

        def down_alerts() -> dict[str, dict]:
            alerts = httpx.get(f"{stack.prometheus_url}/api/v1/alerts", timeout=5).json()
            return {
                a["labels"].get("instance", ""): a
                for a in alerts["data"]["alerts"]
                if a["labels"]["alertname"] == "ForecasterDown"
            }

        named = wait_for(
            lambda: down_alerts() if dead in down_alerts() else None,
            120,
            "ForecasterDown for the stopped shard",
        )
        assert named[dead]["state"] in {"pending", "firing"}
        assert dead in named[dead]["annotations"]["description"]
        assert started[0][0] not in named, "the live shard is not named"
