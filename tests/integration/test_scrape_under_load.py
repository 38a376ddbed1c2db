"""`/metrics` under 16 concurrent scrapers (fault catalogue F1, F2), over real HTTP on loopback.

The exporter app is served by uvicorn on 127.0.0.1 with a snapshot of more than 1,920 series;
16 keep-alive scrapers (gzip accepted, as Prometheus does) each scrape a bounded number of
times: once with the service idle (F1), then while new snapshots are rendered and published
back to back with the TFT's forward pass running beside them (a forecast cycle's work), and
while a real `python -m training.train` runs in a child process (F2). Every answer must be a
200 whose decoded body is byte for byte one of the bodies the hub published: never an error,
never a truncated or mixed body. The latency these scenarios reach is measured by
`python -m bench --only scrape` (bench/scrape.py); no wall-clock time is asserted here.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from bench.common import synthetic_snapshot
from exporter.app import build_app
from exporter.hub import Hub
from exporter.snapshot import ServiceState

from .conftest import simulated_history, terminate

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
SCRAPERS = 16
SCRAPES_EACH = 25
HOSTS = 18  # synthetic_snapshot: about 110 series a host
MIN_SERIES = 1_920
# Lightning's first line once the Trainer exists (the fit starts right after it); its progress
# bar is buffered off a terminal, so "Epoch" shows only when the run ends.
TRAINER_UP = "GPU available"
STATE = ServiceState(source_up=True, model_loaded=True, model_version="test")


def _digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class Published:
    """The hub with a record of every body it published (by digest)."""

    def __init__(self) -> None:
        self.hub = Hub(stale_after=1e9)
        self.bodies: set[str] = set()
        self.lock = threading.Lock()

    def publish(self, seed: int) -> bytes:
        snapshot = synthetic_snapshot(HOSTS, now=time.time(), seed=seed)
        published = self.hub.publish(snapshot, STATE)
        with self.lock:
            self.bodies.add(_digest(published.rendered.body))
        return published.rendered.body


@contextmanager
def serving(hub: Hub) -> Iterator[str]:
    """The exporter app on a free loopback port; its base URL."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(build_app(hub), host="127.0.0.1", port=0, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def scrape_all(url: str, published: Published) -> dict[str, int]:
    """SCRAPERS threads x SCRAPES_EACH scrapes; counts of good, bad and distinct bodies."""
    results: list[tuple[int, str]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(SCRAPERS)

    def work() -> None:
        with httpx.Client(headers={"Accept-Encoding": "gzip"}, timeout=30) as client:
            barrier.wait()
            for _ in range(SCRAPES_EACH):
                try:
                    response = client.get(f"{url}/metrics")
                    outcome = (response.status_code, _digest(response.content))
                except httpx.HTTPError as exc:
                    outcome = (0, type(exc).__name__)
                with lock:
                    results.append(outcome)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(SCRAPERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    with published.lock:
        known = set(published.bodies)
    return {
        "answers": len(results),
        "good": sum(1 for status, digest in results if status == 200 and digest in known),
        "errors": sum(1 for status, _ in results if status != 200),
        "distinct": len({digest for status, digest in results if status == 200}),
    }


@contextmanager
def cycles(published: Published) -> Iterator[threading.Event]:
    """A cycle's work in the background until the block ends: snapshots rendered and published
    back to back, beside the shipped TFT's forward pass on a batch of series."""
    stop = threading.Event()

    def publish() -> None:
        seed = 1
        while not stop.is_set():
            published.publish(seed)
            seed += 1

    def forward() -> None:
        import torch

        from bench.inference import history_arrays, load_model, make_batch
        from forecaster.model.fast import FastPredictor

        _, bundle = load_model(REPO / "models")
        predictor = FastPredictor(bundle, batch_size=32)
        batch = make_batch(history_arrays(32, bundle.config))
        torch.set_num_threads(1)
        while not stop.is_set():
            predictor.predict(batch)

    threads = [threading.Thread(target=fn, daemon=True) for fn in (publish, forward)]
    for thread in threads:
        thread.start()
    try:
        yield stop
    finally:
        stop.set()
        for thread in threads:
            thread.join(120)


@contextmanager
def training(tmp_path: Path) -> Iterator[subprocess.Popen]:
    """A real training run on a tiny simulated history in a child process, until it fits."""
    history, log = tmp_path / "history", tmp_path / "train.log"
    simulated_history(history, servers=3, days=3)
    argv = [
        *(sys.executable, "-m", "training.train", "--data", str(history), "--threads", "1"),
        *("--models.dir", str(tmp_path / "models"), "--max-epochs", "1000"),
        *("--max-minutes", "3", "--batches-per-epoch", "5"),
    ]
    with log.open("w") as out:
        child = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and child.poll() is None:
            if TRAINER_UP in log.read_text(errors="replace"):
                break
            time.sleep(0.5)
        assert child.poll() is None, f"training ended early:\n{log.read_text()[-2000:]}"
        assert TRAINER_UP in log.read_text(errors="replace"), "training did not reach fitting"
        time.sleep(2)  # into the fit: datasets built, the first batches running
        yield child
    finally:
        terminate(child, 30)


@pytest.fixture
def published() -> Published:
    published = Published()
    body = published.publish(0)
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    assert series >= MIN_SERIES
    return published


@pytest.mark.fault("F1")
def test_sixteen_concurrent_scrapers_get_every_answer_whole(published):
    with serving(published.hub) as url:
        counts = scrape_all(url, published)
    assert counts == {
        "answers": SCRAPERS * SCRAPES_EACH,
        "good": SCRAPERS * SCRAPES_EACH,
        "errors": 0,
        "distinct": 1,
    }


@pytest.mark.torch
@pytest.mark.fault("F2")
def test_scrapes_during_forecast_cycles_are_each_one_whole_published_body(published):
    pytest.importorskip("pytorch_forecasting")
    with serving(published.hub) as url, cycles(published):
        counts = scrape_all(url, published)
    assert counts["answers"] == counts["good"] == SCRAPERS * SCRAPES_EACH
    assert counts["errors"] == 0
    assert counts["distinct"] > 1, "the scrapes saw the cycles publish new snapshots"


@pytest.mark.torch
@pytest.mark.fault("F2")
def test_scrapes_while_a_training_runs_beside_the_service_all_succeed(published, tmp_path):
    pytest.importorskip("pytorch_forecasting")
    with serving(published.hub) as url, training(tmp_path) as child:
        counts = scrape_all(url, published)
        assert child.poll() is None, "the training was still running during the scrapes"
    assert counts == {
        "answers": SCRAPERS * SCRAPES_EACH,
        "good": SCRAPERS * SCRAPES_EACH,
        "errors": 0,
        "distinct": 1,
    }
