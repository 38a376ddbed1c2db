"""The soak run (fault catalogue F5): the real forecaster under steady load for minutes on end.

A stack of real binaries on 127.0.0.1 (`stack.Stack`: Prometheus with backfilled simulator
history, the simulator scraped live) feeds a `python -m forecaster` process started here, with
its own copy of the shipped model registry and one cycle every `cycle_s` seconds. While it
runs:

* `scrapers` threads each read `/metrics` once a second (a fleet of Prometheus servers and
  dashboards), one of them `/predictions/current` every tenth time;
* `ws_clients` WebSocket clients stay connected to `/ws` and read every update;
* every `promote_every_s` a new model version is committed to the registry copy, promoted and
  `POST /-/reload` asked for, as the retrainer does after a training run that passes its gate
  (the training itself runs in the retrainer's own child process, never in the forecaster's:
  what the forecaster lives through is the new version and its hot reload), and the registry is
  garbage-collected to its usual size.

The forecaster's resident memory, open file descriptors and threads are sampled from `/proc`
every `sample_s`; its log is read at the end. The verdict (`SoakResult.problems`), from the end
of the warm-up (`warmup_s`, 3 minutes by default) to the end: resident memory grown at most
5 % (the medians of the first and the last minute, so one garbage collection does not decide
it), file descriptors and threads within +/- 2, no traceback or ERROR line in the log, the
cycles advancing, every scraper and WebSocket client still served. Bounded in count and time,
it stops by itself and ends only the processes it started, by their PIDs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
RSS_GROWTH_MAX = 0.05
COUNT_DRIFT_MAX = 2
ERROR_MARKERS = ("Traceback", "level=ERROR", "level=CRITICAL")


@dataclass(frozen=True)
class SoakSettings:
    """One soak run's shape (the catalogue's F5 by default, 10 minutes)."""

    seconds: float = 600.0
    warmup_s: float = 180.0
    cycle_s: int = 10
    scrapers: int = 16
    ws_clients: int = 50
    promote_every_s: float = 180.0
    sample_s: float = 5.0
    servers: int = 4
    history_hours: int = 4


@dataclass
class Sample:
    at: float  # seconds since the forecaster started
    rss_kib: int
    fds: int
    threads: int


@dataclass
class SoakResult:
    settings: SoakSettings
    samples: list[Sample] = field(default_factory=list)
    cycles: tuple[float, float] = (0.0, 0.0)  # forecaster_cycles_total at warm-up end, at end
    scrapes: int = 0
    scrape_errors: int = 0
    ws_messages: int = 0
    ws_dropped: int = 0
    promotions: int = 0
    reload_errors: int = 0
    log_errors: list[str] = field(default_factory=list)
    exit_code: int | None = None

    def window(self) -> tuple[list[Sample], list[Sample]]:
        """The samples of the first and the last minute after the warm-up."""
        after = [s for s in self.samples if s.at >= self.settings.warmup_s]
        if not after:
            return [], []
        end = after[-1].at
        first = [s for s in after if s.at < after[0].at + 60.0]
        last = [s for s in after if s.at > end - 60.0]
        return first, last

    def figures(self) -> dict[str, Any]:
        first, last = self.window()
        if not first or not last:
            return {}
        rss0 = statistics.median(s.rss_kib for s in first)
        rss1 = statistics.median(s.rss_kib for s in last)
        return {
            "rss_mib_start": round(rss0 / 1024, 1),
            "rss_mib_end": round(rss1 / 1024, 1),
            "rss_growth": round(rss1 / rss0 - 1.0, 4),
            "fds_start": first[0].fds,
            "fds_end": last[-1].fds,
            "threads_start": first[0].threads,
            "threads_end": last[-1].threads,
            "fds_range": [min(s.fds for s in first + last), max(s.fds for s in first + last)],
            "cycles": self.cycles[1] - self.cycles[0],
            "scrapes": self.scrapes,
            "scrape_errors": self.scrape_errors,
            "ws_messages": self.ws_messages,
            "ws_dropped": self.ws_dropped,
            "promotions": self.promotions,
            "reload_errors": self.reload_errors,
        }

    def problems(self) -> list[str]:
        """What failed the soak (empty: it passed)."""
        figures = self.figures()
        if not figures:
            return ["the run ended before the warm-up did: nothing to compare"]
        out = []
        if figures["rss_growth"] > RSS_GROWTH_MAX:
            out.append(f"resident memory grew {figures['rss_growth']:.1%} after the warm-up")
        for name in ("fds", "threads"):
            drift = figures[f"{name}_end"] - figures[f"{name}_start"]
            if abs(drift) > COUNT_DRIFT_MAX:
                out.append(f"{name} drifted by {drift:+d} after the warm-up")
        minimum = (self.settings.seconds - self.settings.warmup_s) / self.settings.cycle_s / 3
        if figures["cycles"] < minimum:
            out.append(f"only {figures['cycles']:.0f} cycles after the warm-up")
        if self.scrape_errors or figures["reload_errors"]:
            out.append(f"{self.scrape_errors} scrapes and {self.reload_errors} reloads failed")
        if self.ws_dropped:
            out.append(f"{self.ws_dropped} WebSocket clients lost their connection")
        if self.log_errors:
            out.append(f"{len(self.log_errors)} error lines in the log: {self.log_errors[:3]}")
        if self.exit_code not in (0, None):
            out.append(f"the forecaster exited {self.exit_code} on SIGTERM")
        return out


def _proc(pid: int) -> tuple[int, int, int]:
    """(resident KiB, open fds, threads) of `pid` from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss = int(fields["VmRSS"].split()[0])
    threads = int(fields["Threads"])
    return rss, len(os.listdir(f"/proc/{pid}/fd")), threads


def _cycles(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10.0).text
    for line in text.splitlines():
        if line.startswith("forecaster_cycles_total "):
            return float(line.split()[1])
    return 0.0


def _registry_copy(target: Path) -> str:
    """A registry under `target` holding the shipped current version only; its name."""
    source = REPO_ROOT / "models"
    current = json.loads((source / "current.json").read_text())["version"]
    target.mkdir(parents=True)
    shutil.copytree(source / current, target / current)
    (target / "current.json").write_text(json.dumps({"version": current, "previous": None}))
    return current


def _promote(registry_dir: Path, base: str, number: int) -> None:
    """Commit the shipped `base`'s artefacts as a new version of the registry copy, promote
    it and garbage-collect the copy to its usual size, as the retrainer does."""
    from forecaster.contract import load_contract
    from forecaster.registry import Registry

    shipped = Registry(REPO_ROOT / "models")  # read only: the source of the artefacts
    registry = Registry(registry_dir)
    contract = load_contract().version
    manifest = shipped.verify(base, contract)
    version = f"soak-{number:03d}"
    with registry.staging(version) as staged:
        for name in manifest.files:
            shutil.copy2(shipped.path(base) / name, staged / name)
        info = {k: v for k, v in manifest.info.items() if k not in ("files", "version")}
        registry.commit(staged, version, {**info, "soak_of": base})
    registry.promote(version, contract)
    registry.collect_garbage()


class _Load:
    """The scrapers and WebSocket clients, on threads, until `stop` is set."""

    def __init__(self, url: str, settings: SoakSettings) -> None:
        self.url = url
        self.settings = settings
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.scrapes = self.scrape_errors = self.ws_messages = self.ws_dropped = 0
        self.threads = [
            threading.Thread(target=self._scrape, args=(i,), daemon=True)
            for i in range(settings.scrapers)
        ] + [threading.Thread(target=self._listen, daemon=True) for _ in range(settings.ws_clients)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15.0)

    def _scrape(self, index: int) -> None:
        with httpx.Client(timeout=30.0) as client:
            count = 0
            while not self.stop.wait(1.0):
                count += 1
                path = "/predictions/current" if count % 10 == index % 10 else "/metrics"
                try:
                    ok = client.get(self.url + path).status_code == 200
                except httpx.HTTPError:
                    ok = False
                with self.lock:
                    self.scrapes += 1
                    self.scrape_errors += not ok

    def _listen(self) -> None:
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect

        url = "ws" + self.url.removeprefix("http") + "/ws"
        try:
            with connect(url, open_timeout=30.0, max_size=None) as socket:
                while not self.stop.is_set():
                    try:
                        socket.recv(timeout=1.0)
                    except TimeoutError:
                        continue
                    with self.lock:
                        self.ws_messages += 1
        except (ConnectionClosed, OSError):
            if not self.stop.is_set():
                with self.lock:
                    self.ws_dropped += 1


def run_soak(settings: SoakSettings, workdir: Path, log=print) -> SoakResult:
    """Run one soak in `workdir` (created); see the module docstring."""
    from stack import Stack, StackConfig
    from stack.ports import address, pick_free_ports

    result = SoakResult(settings)
    registry_dir = workdir / "models"
    base = _registry_copy(registry_dir)
    config = StackConfig(
        servers=settings.servers,
        history_hours=settings.history_hours,
        workdir=workdir / "stack",
        alertmanager=False,
        node_exporter=False,
        forecaster=False,
    )
    with Stack(config) as stack:
        (port,) = pick_free_ports(1)
        url = f"http://{address(port)}"
        command = [
            *(sys.executable, "-m", "forecaster", "--prometheus.url", stack.prometheus_url),
            *("--web.listen-address", address(port), "--model.dir", str(registry_dir)),
            *("--model.device", "cpu", "--state.dir", str(workdir / "state")),
            *("--cycle.interval", f"{settings.cycle_s}s"),
        ]
        log_path = workdir / "forecaster.log"
        with log_path.open("wb") as sink:
            # our own interpreter and flags
            process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)  # noqa: S603
        try:
            _soak(process, url, (registry_dir, base), result, log)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    result.exit_code = process.wait(30.0)
                except subprocess.TimeoutExpired:
                    process.kill()
                    result.exit_code = process.wait()
            else:
                result.exit_code = process.returncode
    text = log_path.read_text(errors="replace")
    result.log_errors = [
        line for line in text.splitlines() if any(m in line for m in ERROR_MARKERS)
    ]
    return result


def _soak(process, url: str, registry: tuple[Path, str], result: SoakResult, log) -> None:
    """Wait for the forecaster, then load, sample and promote until the run's end."""
    registry_dir, base = registry
    settings = result.settings
    started = time.monotonic()
    deadline = started + 240.0
    while time.monotonic() < deadline:  # the listener and a first published snapshot
        if process.poll() is not None:
            raise RuntimeError(f"the forecaster exited {process.returncode} during its start")
        try:
            if httpx.get(f"{url}/-/ready", timeout=5.0).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    else:
        raise RuntimeError("the forecaster was not ready within 240 s")
    load = _Load(url, settings)
    load.start()
    begin = time.monotonic()
    next_sample = begin
    next_promotion = begin + settings.promote_every_s
    warm = False
    try:
        while (now := time.monotonic()) < begin + settings.seconds:
            if process.poll() is not None:
                raise RuntimeError(f"the forecaster exited {process.returncode} under load")
            if now >= next_sample:
                rss, fds, threads = _proc(process.pid)
                result.samples.append(Sample(now - begin, rss, fds, threads))
                next_sample += settings.sample_s
            if not warm and now - begin >= settings.warmup_s:
                result.cycles = (_cycles(url), 0.0)
                warm = True
                log(f"[soak] warm-up over at {now - begin:.0f} s: {result.samples[-1]}")
            if now >= next_promotion:
                result.promotions += 1
                _promote(registry_dir, base, result.promotions)
                try:
                    answer = httpx.post(f"{url}/-/reload", timeout=60.0)
                    result.reload_errors += answer.status_code != 200
                except httpx.HTTPError:
                    result.reload_errors += 1
                next_promotion += settings.promote_every_s
                log(f"[soak] promoted soak-{result.promotions:03d} at {now - begin:.0f} s")
            time.sleep(0.5)
        result.cycles = (result.cycles[0], _cycles(url))
    finally:
        load.finish()
        result.scrapes, result.scrape_errors = load.scrapes, load.scrape_errors
        result.ws_messages, result.ws_dropped = load.ws_messages, load.ws_dropped


def report(result: SoakResult, command: str) -> str:
    """The markdown page of one run."""
    figures = result.figures()
    problems = result.problems()
    s = result.settings
    lines = [
        "# Soak run (fault catalogue F5)",
        "",
        f"Generated {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} by `{command}` on "
        f"{os.cpu_count()} cores: {s.seconds / 60:.0f} min, cycles every {s.cycle_s} s, "
        f"{s.scrapers} scrapers (one request a second each), {s.ws_clients} WebSocket clients, "
        f"a new model version promoted and reloaded every {s.promote_every_s / 60:.0f} min, "
        f"{s.servers} simulated servers; compared from minute {s.warmup_s / 60:.0f} to the end.",
        "",
        f"**Verdict: {'passed' if not problems else 'failed'}.**"
        + ("" if not problems else " " + "; ".join(problems)),
        "",
        "| figure | value |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in figures.items()),
        f"| log error lines | {len(result.log_errors)} |",
        f"| exit code on SIGTERM | {result.exit_code} |",
        "",
        "Resident memory (MiB) every minute: "
        + ", ".join(
            f"{s.rss_kib / 1024:.0f}"
            for s in result.samples[:: max(1, int(60 // result.settings.sample_s))]
        ),
        "",
        "The code and the limits: `tools/soak/__init__.py`; the CI run: "
        "`tests/integration/test_soak.py`.",
        "",
    ]
    return "\n".join(lines)
