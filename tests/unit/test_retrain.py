"""`python -m training.retrain`: config, the pure gate, the run pipeline, HTTP and signals.

The slow tests train tiny candidates (hidden size 4, two batches) in real child processes. At
that size a candidate barely moves from its initial weights, so the rejected candidate is
judged against the shipped default model (trained for 18 minutes on simulator history) and the
promoted ones against the absolute rules, with the coverage band widened for an uncalibrated
model; the thresholds themselves are covered by the pure gate tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

import training.retrain.retrainer as retrainer_module
from forecaster.config import ConfigError
from forecaster.registry import POINTER, Registry
from simulator.fleet import build_fleet
from simulator.history import HistorySpec, write_history
from training.gates import (
    GATE_HORIZONS,
    GateSpec,
    Health,
    Window,
    history_problem,
    judge,
    quantile_health,
    split_history,
)
from training.history import load_history
from training.retrain.app import build_app
from training.retrain.config import load_config
from training.retrain.retrainer import REPORT, WORK_PREFIX, Retrainer
from training.retrain.service import first_run, main
from training.retrain.steps import (
    BusyError,
    child_env,
    run_lock,
    trainer_command,
)

ROOT = Path(__file__).resolve().parents[2]
LAST = 1_795_305_600 // 300  # 2026-11-22 00:00 UTC, in steps
TARGETS = (
    "cpu_utilisation",
    "memory_utilisation",
    "filesystem_utilisation",
    "disk_io",
    "request_latency_p95",
)
RELAXED_BAND = ("--gate.coverage-min", "0.3", "--gate.coverage-max", "0.99")


def _history(out: Path, days: float, servers: int = 4) -> Path:
    spec = HistorySpec(LAST - int(days * 288), LAST, (LAST - int(days * 288)) * 300.0)
    write_history(build_fleet(servers, seed=1), spec, out)
    return out


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> Path:
    return _history(tmp_path_factory.mktemp("history"), 4)


def _config(models: Path, data: Path, *extra: str, environ: dict | None = None):
    argv = [
        "--data", str(data),
        "--models.dir", str(models),
        "--history", "4d",
        "--holdout", "1d",
        "--max-minutes", "2",
        "--threads", "1",
        "--train.hidden-size", "4",
        "--train.batch-size", "4",
        "--train.batches-per-epoch", "2",
        "--train.max-epochs", "1",
        "--train.device", "cpu",
        "--log.level", "warning",
        *extra,
    ]  # fmt: skip
    return load_config(argv, environ or {})


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.fault("H1", "D9")
def test_defaults_match_the_documented_service():
    config = load_config([], {})
    assert config.interval == 7 * 86400 and config.history == 14 * 86400
    assert config.holdout == 86400 and config.web.listen_address == "127.0.0.1:9466"
    assert (config.threads, config.nice, config.once) == (1, 10, False)
    assert config.gate.spec() == GateSpec(0.05, "seasonal_naive_24h", 0.0, (0.70, 0.90))
    assert config.window().minimum == 960  # max(288 + 96 + 288, 576) + 288


def test_flags_beat_environment_beat_yaml_beat_defaults(tmp_path):
    path = tmp_path / "retrain.yaml"
    path.write_text("interval: 3d\ngate: {tolerance: 0.2}\nmodels: {dir: /yaml}\nthreads: 3\n")
    env = {"RETRAIN_CONFIG_FILE": str(path), "RETRAIN_INTERVAL": "2d", "RETRAIN_THREADS": "2"}
    config = load_config(["--interval", "1d", "--once"], env)
    assert config.interval == 86400 and config.once
    assert config.threads == 2 and config.gate.tolerance == 0.2
    assert config.models.dir == Path("/yaml") and config.nice == 10
    assert load_config([], env).interval == 2 * 86400
    assert load_config(["--config.file", str(path)], {}).interval == 3 * 86400


@pytest.mark.parametrize(
    ("argv", "env", "key"),
    [
        (["--interval", "soon"], {}, "interval"),
        (["--holdout", "1h"], {}, "holdout"),
        (["--history", "2d"], {}, "history"),
        (["--threads", "0"], {}, "threads"),
        (["--gate.coverage-min", "0.95"], {}, "gate.coverage_min"),
        (["--gate.baseline", "oracle"], {}, "gate.baseline"),
        (["--train.targets", "cpu_pct"], {}, "train.targets"),
        ([], {"RETRAIN_NICE": "42"}, "nice"),
        (["--web.listen-address", "nowhere"], {}, "web.listen_address"),
        (["--once", "--shadow.cycles", "3"], {}, "shadow.cycles"),
        (["--shadow.cycles", "-1"], {}, "shadow.cycles"),
    ],
)
def test_invalid_values_exit_2_naming_the_key(argv, env, key, capsys):
    with pytest.raises(ConfigError) as error:
        load_config(argv, env)
    assert error.value.key == key
    assert main(argv, env) == 2
    assert key in capsys.readouterr().err


@pytest.mark.fault("H1", "H2")
def test_a_non_loopback_listener_without_a_token_is_refused(capsys):
    assert main(["--web.listen-address", "0.0.0.0:9466"], {}) == 2
    assert "without credentials" in capsys.readouterr().err


@pytest.mark.fault("D9")
def test_the_child_trainer_is_the_training_cli_with_limited_threads(tmp_path):
    config = _config(tmp_path, tmp_path, "--threads", "2", "--train.targets", "cpu_utilisation")
    command = trainer_command(config, tmp_path / "work", "v1")
    assert command[:3] == [sys.executable, "-m", "training.train"]
    pairs = dict(zip(command[3::2], command[4::2], strict=True))
    assert pairs["--version"] == "v1" and pairs["--threads"] == "2"
    assert pairs["--models.dir"] == str(tmp_path) and pairs["--targets"] == "cpu_utilisation"
    env = child_env({"PATH": "/bin"}, 2)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "2" and env["PATH"] == "/bin"


def test_the_first_scheduled_run_follows_the_last_recorded_one():
    assert first_run(1000.0, 600.0, None) == 1600.0
    assert first_run(1000.0, 600.0, 700.0) == 1300.0
    assert first_run(1000.0, 600.0, 100.0) == 1010.0  # overdue: shortly after start-up


# --- the pure gate ---------------------------------------------------------------------------


def _backtest(nql: float, coverage: float = 0.8, baseline: float | None = 1.0) -> dict:
    def scores(value):
        return {
            q: {h: {"nql": value, "coverage": coverage} for h in GATE_HORIZONS} for q in TARGETS
        }

    result = {"scores": {"tft": scores(nql)}}
    if baseline is not None:
        result["scores"]["seasonal_naive_24h"] = scores(baseline)
    return result


HEALTHY = Health(vectors=100, non_finite=0, crossing=0)


@pytest.mark.fault("D3")
def test_a_candidate_not_worse_than_the_current_model_passes():
    verdict = judge(_backtest(0.52), _backtest(0.5, baseline=None), HEALTHY, GateSpec())
    assert verdict.passed and verdict.reasons == ()
    assert verdict.ratios == {h: pytest.approx(1.04) for h in GATE_HORIZONS}


@pytest.mark.fault("D3")
def test_a_candidate_worse_than_the_current_model_by_more_than_the_tolerance_is_rejected():
    verdict = judge(_backtest(0.53), _backtest(0.5, baseline=None), HEALTHY, GateSpec())
    assert not verdict.passed and verdict.reasons == ("worse_than_current",)
    assert len(verdict.details) == len(GATE_HORIZONS)


@pytest.mark.fault("D3")
def test_a_single_worse_horizon_is_enough_to_reject():
    candidate = _backtest(0.5)
    for quantity in TARGETS:
        candidate["scores"]["tft"][quantity]["8h"]["nql"] = 0.9
    verdict = judge(candidate, _backtest(0.5, baseline=None), HEALTHY, GateSpec())
    assert verdict.reasons == ("worse_than_current",) and verdict.details[0].startswith("NQL 8h")


@pytest.mark.fault("D4")
def test_non_finite_and_crossing_quantiles_are_rejected():
    forecasts = np.tile([0.1, 0.5, 0.9], (4, 10, 1))
    assert quantile_health(forecasts) == Health(40, 0, 0)
    forecasts[0, 0] = [np.nan, 0.5, 0.9]
    forecasts[1, 2] = [0.1, np.inf, 0.9]
    forecasts[2, 3] = [0.6, 0.5, 0.9]
    health = quantile_health(forecasts)
    assert health == Health(40, 2, 1)
    verdict = judge(_backtest(0.4), None, health, GateSpec())
    assert verdict.reasons == ("non_finite_quantiles", "crossing_quantiles")


@pytest.mark.parametrize("coverage", [0.6, 0.95, None])
@pytest.mark.fault("D3")
def test_coverage_outside_the_band_is_rejected(coverage):
    verdict = judge(_backtest(0.4, coverage=coverage), None, HEALTHY, GateSpec())
    assert verdict.reasons == ("coverage_out_of_band",)


def test_without_a_current_model_only_the_absolute_rules_apply():
    passed = judge(_backtest(0.9, baseline=1.0), None, HEALTHY, GateSpec())
    assert passed.passed and passed.ratios == {} and passed.current_nql is None
    worse = judge(_backtest(1.1, baseline=1.0), None, HEALTHY, GateSpec())
    assert worse.reasons == ("worse_than_baseline",)
    lenient = judge(_backtest(1.1, baseline=1.0), None, HEALTHY, GateSpec(baseline_tolerance=0.2))
    assert lenient.passed


def test_a_candidate_without_scores_is_rejected():
    verdict = judge(_backtest(None), None, HEALTHY, GateSpec())
    assert "no_scores" in verdict.reasons and not verdict.passed


def test_only_targets_both_models_forecast_are_compared():
    current = _backtest(0.5, baseline=None)
    del current["scores"]["tft"]["disk_io"]
    candidate = _backtest(0.5)
    for h in GATE_HORIZONS:
        candidate["scores"]["tft"]["disk_io"][h]["nql"] = 5.0  # not comparable: ignored
    verdict = judge(candidate, current, HEALTHY, GateSpec(baseline_tolerance=10))
    assert verdict.passed and "disk_io" not in verdict.to_json()["targets"]


# --- history windows -------------------------------------------------------------------------


@pytest.mark.fault("D8")
def test_a_history_shorter_than_one_run_needs_is_refused_with_a_reason(tmp_path):
    wide = load_history(_config(tmp_path, _history(tmp_path / "h", 2)), None, list(TARGETS), 0)
    problem = history_problem(wide, Window())
    assert problem is not None and "needs 960" in problem and "holdout 288" in problem
    assert history_problem(wide.iloc[0:0], Window()) == "the history is empty"


def test_the_split_holds_out_the_latest_window_and_keeps_context_for_the_gate(history, tmp_path):
    wide = load_history(_config(tmp_path, history), None, list(TARGETS), 0)
    assert history_problem(wide, Window()) is None
    train, gate = split_history(wide, Window())
    last = wide["timestamp"].max()
    holdout_start = last - pd.Timedelta(hours=24) + pd.Timedelta(minutes=5)
    assert train["timestamp"].max() == holdout_start - pd.Timedelta(minutes=5)
    assert gate["timestamp"].min() == holdout_start - pd.Timedelta(minutes=5 * 576)
    assert gate["timestamp"].nunique() == 576 + 288


# --- runs that stop before training ----------------------------------------------------------


@pytest.mark.fault("D8")
def test_a_too_short_history_fails_the_run_and_promotes_nothing(tmp_path):
    data = _history(tmp_path / "short", 2)
    retrainer = Retrainer(_config(tmp_path / "models", data), os.environ)
    report = retrainer.run("test")
    assert (report["outcome"], report["reason"]) == ("failed", "history_too_short")
    assert retrainer.registry.versions() == [] and retrainer.registry.current() is None
    saved = json.loads((tmp_path / "models" / REPORT).read_text())["runs"]
    assert saved[-1]["reason"] == "history_too_short"
    registry = retrainer.metrics.registry
    value = registry.get_sample_value
    assert value("forecaster_retrain_runs_total", {"outcome": "failed"}) == 1
    assert value("forecaster_retrain_failures_total", {"reason": "history_too_short"}) == 1
    assert value("forecaster_retrain_last_run_timestamp_seconds") == report["finished_ts"]
    assert value("forecaster_retrain_running") == 0


def _answer(request: httpx.Request) -> httpx.Response:
    start, end = float(request.url.params["start"]), float(request.url.params["end"])
    values = [[t, "0.5"] for t in np.arange(start, end + 1, 300)]
    series = [{"metric": {"instance": "a"}, "values": values}]
    return httpx.Response(
        200,
        json={
            "status": "success",
            "warnings": ["a store was unreachable: partial response"],
            "data": {"resultType": "matrix", "result": series},
        },
    )


@pytest.mark.fault("A7", "D8")
def test_a_partial_answer_from_prometheus_fails_the_run(tmp_path):
    config = load_config(["--models.dir", str(tmp_path), "--prometheus.url", "http://prom"], {})
    retrainer = Retrainer(config, os.environ, transport=httpx.MockTransport(_answer))
    report = retrainer.run("test")
    assert (report["outcome"], report["reason"]) == ("failed", "partial_history")
    assert "partial response" in report["detail"]


@pytest.mark.fault("D7")
def test_a_run_while_another_process_holds_the_lock_fails_as_locked(tmp_path, history):
    retrainer = Retrainer(_config(tmp_path, history), os.environ)
    with run_lock(tmp_path):
        with pytest.raises(BusyError), run_lock(tmp_path):
            pass
        report = retrainer.run("test")
    assert (report["outcome"], report["reason"]) == ("failed", "locked")


@pytest.mark.fault("D1")
def test_start_up_removes_stale_temp_dirs_unless_another_retrain_runs(tmp_path, history):
    for name in (".tmp-v20261122-000000-4242", f"{WORK_PREFIX}4242"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"half")
    retrainer = Retrainer(_config(tmp_path, history), os.environ)
    with run_lock(tmp_path):
        assert retrainer.startup() == []
    assert sorted(retrainer.startup()) == [".retrain-work-4242", ".tmp-v20261122-000000-4242"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".tmp-", WORK_PREFIX))]


# --- HTTP ------------------------------------------------------------------------------------


@pytest.mark.fault("D6", "D7", "H2")
def test_mutating_routes_need_the_token_and_retrain_is_409_while_running(tmp_path):
    retrainer = Retrainer(_config(tmp_path, _history(tmp_path / "short", 2)), os.environ)
    client = TestClient(build_app(retrainer, token="s3cret"))
    posts = [r.path for r in client.app.routes if "POST" in getattr(r, "methods", ())]
    assert sorted(posts) == ["/retrain", "/rollback"]
    for path in posts:
        assert client.post(path).status_code == 401
        wrong = client.post(path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403 and wrong.json()["error"] == "forbidden"
    good = {"Authorization": "Bearer s3cret"}
    assert retrainer._busy.acquire(blocking=False)  # a run in progress
    try:
        busy = client.post("/retrain", headers=good)
        assert busy.status_code == 409 and busy.json()["error"] == "conflict"
        assert client.post("/rollback", headers=good).status_code == 409
        assert client.get("/status").json()["running"] is True
    finally:
        retrainer._busy.release()
    assert client.post("/retrain", headers=good).status_code == 202
    retrainer.join(30)
    status = client.get("/status").json()
    assert status["runs"][0]["reason"] == "history_too_short" and not status["running"]
    refused = client.post("/rollback", headers=good)
    assert refused.status_code == 409 and refused.json()["reason"] == "missing"


def test_metrics_expose_every_family_and_the_three_outcomes(tmp_path, history):
    retrainer = Retrainer(_config(tmp_path, history), os.environ)
    text = TestClient(build_app(retrainer)).get("/metrics").text
    for outcome in ("promoted", "rejected", "failed"):
        assert f'forecaster_retrain_runs_total{{outcome="{outcome}"}} 0.0' in text
    for family in (
        "forecaster_retrain_last_success_timestamp_seconds",
        "forecaster_retrain_last_run_timestamp_seconds",
        "forecaster_retrain_duration_seconds",
        "forecaster_retrain_running",
        "forecaster_retrain_gate_nql_ratio",
        'forecaster_retrain_rejections_total{reason="worse_than_current"} 0.0',
        'forecaster_retrain_failures_total{reason="trainer_killed"} 0.0',
        "forecaster_retrain_interval_seconds 604800.0",
    ):
        assert family in text


# --- real runs: tiny candidates trained in child processes -----------------------------------

WRAPPER = r"""
import sys, threading
from pathlib import Path
import numpy as np, pandas as pd
mode, argv = sys.argv[1], sys.argv[2:]
if mode == "shuffle":  # permute every target's values across time and hosts
    path = Path(argv[argv.index("--data") + 1]) / "server_metrics.parquet"
    frame = pd.read_parquet(path)
    rng = np.random.default_rng(0)
    for target in sys.argv[-1].split(","):
        frame[target] = rng.permutation(frame[target].to_numpy())
    frame.to_parquet(path, index=False)
    argv = argv[:-1]
if mode == "block":  # stop inside the staging directory, files half written, until killed
    from forecaster.registry import Registry
    def commit(self, staged, version, info):
        print("staged", flush=True)
        threading.Event().wait()  # blocks until the test SIGKILLs this process
    Registry.commit = commit
from training.train import main
sys.exit(main(argv))
"""


def _wrapped(monkeypatch, mode: str) -> None:
    def command(config, data, version):
        tail = [",".join(TARGETS)] if mode == "shuffle" else []
        return [
            sys.executable,
            "-c",
            WRAPPER,
            mode,
            *trainer_command(config, data, version)[3:],
            *tail,
        ]

    monkeypatch.setattr(retrainer_module, "trainer_command", command)


def _shipped(models: Path) -> str:
    """Copy the repository's current default model into `models` and make it current."""
    shipped = Registry(ROOT / "models")
    version = shipped.current()
    assert version is not None
    shutil.copytree(shipped.path(version), models / version)
    registry = Registry(models)
    registry.promote(version, "1.0.0")
    return version


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.fault("D3")
def test_a_candidate_trained_on_shuffled_targets_is_rejected_and_the_current_stays(
    tmp_path, history, monkeypatch
):
    models = tmp_path / "models"
    current = _shipped(models)
    _wrapped(monkeypatch, "shuffle")
    retrainer = Retrainer(_config(models, history, *RELAXED_BAND), os.environ)
    report = retrainer.run("test")
    assert report["outcome"] == "rejected", report
    assert "worse_than_current" in report["reasons"]
    ratios = report["gate"]["nql_ratio_vs_current"]
    assert set(ratios) == set(GATE_HORIZONS) and all(r > 1.05 for r in ratios.values())
    assert retrainer.registry.pointer() == {"version": current, "previous": None}
    candidate = report["candidate"]
    assert candidate in retrainer.registry.versions()  # kept for inspection, not promoted
    gate = json.loads((models / candidate / "gate.json").read_text())
    assert gate["passed"] is False and gate["current"] == current
    manifest = retrainer.registry.verify(candidate, "1.0.0")
    assert {"gate.json", "backtest.json"} <= set(manifest.files)
    value = retrainer.metrics.registry.get_sample_value
    assert value("forecaster_retrain_runs_total", {"outcome": "rejected"}) == 1
    assert value("forecaster_retrain_rejections_total", {"reason": "worse_than_current"}) == 1
    assert value("forecaster_retrain_gate_nql_ratio", {"horizon": "8h"}) == ratios["8h"]
    assert value("forecaster_retrain_last_success_timestamp_seconds") == report["finished_ts"]


class _Readers:
    """Threads that parse current.json over and over while `Registry.promote` swaps it."""

    def __init__(self, path: Path, count: int = 4) -> None:
        self.path = path
        self.seen: list[str | None] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._read) for _ in range(count)]

    def _read(self) -> None:
        while not self.stop.is_set():
            text = self.path.read_text()
            try:
                self.seen.append(json.loads(text)["version"])
            except (ValueError, KeyError) as exc:
                self.errors.append(f"{exc}: {text!r}")

    def around(self, promote):
        """`promote`, with the readers reading before, during and after it."""

        def wrapped(registry, *args, **kwargs):
            for thread in self.threads:
                thread.start()
            while len(self.seen) < 100:
                time.sleep(0.001)
            try:
                return promote(registry, *args, **kwargs)
            finally:
                after = len(self.seen)
                while len(self.seen) < after + 100:
                    time.sleep(0.001)
                self.stop.set()
                for thread in self.threads:
                    thread.join()

        return wrapped


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.fault("D5")
def test_a_good_candidate_is_promoted_with_an_atomic_pointer_swap(tmp_path, history, monkeypatch):
    models = tmp_path / "models"
    config = _config(models, history, *RELAXED_BAND)
    first = Retrainer(config, os.environ).run("test")  # no current model: absolute rules
    assert first["outcome"] == "promoted", first
    assert first["gate"]["current_nql"] is None
    calls: list[tuple[str, str]] = []
    fsynced: set[int] = set()
    real_replace, real_fsync = os.replace, os.fsync

    def replace(src, dst, *args, **kwargs):
        calls.append((str(src), str(dst)))
        return real_replace(src, dst, *args, **kwargs)

    def fsync(fd):
        fsynced.add(os.fstat(fd).st_ino)
        return real_fsync(fd)

    pointer = models / POINTER
    readers = _Readers(pointer)
    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", replace)
        patch.setattr(os, "fsync", fsync)
        patch.setattr(Registry, "promote", readers.around(Registry.promote))
        second = Retrainer(config, os.environ).run("test")  # same data and seed: not worse
    assert second["outcome"] == "promoted", second
    ratios = second["gate"]["nql_ratio_vs_current"]
    assert set(ratios) == set(GATE_HORIZONS)
    assert all(r == pytest.approx(1.0, abs=0.05) for r in ratios.values())
    pointer_now = Registry(models).pointer()
    assert pointer_now == {"version": second["candidate"], "previous": first["candidate"]}
    assert readers.errors == []
    assert set(readers.seen) == {first["candidate"], second["candidate"]}
    swaps = [(src, dst) for src, dst in calls if dst == str(pointer)]
    assert len(swaps) == 1 and swaps[0][0] != str(pointer)  # a temp file replaced the pointer
    assert os.stat(pointer).st_ino in fsynced  # ...after it was fsynced


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.fault("D1", "D2", "D9")
def test_sigkill_of_the_child_trainer_leaves_no_version_under_a_final_name(
    tmp_path, history, monkeypatch
):
    models = tmp_path / "models"
    _wrapped(monkeypatch, "block")
    retrainer = Retrainer(_config(models, history), os.environ)
    assert retrainer.trigger("test")
    deadline = time.monotonic() + 240
    staged: list[Path] = []
    while not staged and time.monotonic() < deadline:
        staged = list(models.glob(".tmp-*/model.safetensors"))
        time.sleep(0.2)
    assert staged, "the child never reached its staging directory"
    child = retrainer._child
    assert child is not None and os.getpriority(os.PRIO_PROCESS, child.pid) >= 10
    os.kill(child.pid, signal.SIGKILL)
    retrainer.join(30)
    report = retrainer.runs[-1]
    assert (report["outcome"], report["reason"]) == ("failed", "trainer_killed")
    assert retrainer.registry.versions() == [] and retrainer.registry.current() is None
    assert not [p for p in models.iterdir() if p.name.startswith((".tmp-", WORK_PREFIX))]
    value = retrainer.metrics.registry.get_sample_value
    assert value("forecaster_retrain_failures_total", {"reason": "trainer_killed"}) == 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.fault("G1")
def test_sigterm_mid_retrain_stops_the_child_and_exits_0_within_10_s(tmp_path, history):
    models, port = tmp_path / "models", _free_port()
    argv = [
        sys.executable, "-m", "training.retrain", "--data", str(history),
        "--models.dir", str(models), "--history", "4d", "--train.hidden-size", "4",
        "--train.batches-per-epoch", "2", "--train.max-epochs", "1", "--train.device", "cpu",
        "--web.listen-address", f"127.0.0.1:{port}", "--log.level", "warning",
    ]  # fmt: skip
    service = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                assert httpx.post(f"{url}/retrain").status_code == 202
                break
            except httpx.TransportError:
                time.sleep(0.2)
        while not list(models.glob(f"{WORK_PREFIX}*/train.log")) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # the child is importing torch or training
        started = time.monotonic()
        service.send_signal(signal.SIGTERM)
        code = service.wait(timeout=15)
        elapsed = time.monotonic() - started
    finally:
        if service.poll() is None:
            service.kill()
    assert code == 0 and elapsed < 10, service.stderr.read()
    assert Registry(models).versions() == []
    assert not [p for p in models.iterdir() if p.name.startswith((".tmp-", WORK_PREFIX))]
    runs = json.loads((models / REPORT).read_text())["runs"]
    assert (runs[-1]["outcome"], runs[-1]["reason"]) == ("failed", "interrupted")


# --- the first run ---------------------------------------------------------------------------


def _history_answer(days_held: float, now: float):
    """A fake Prometheus whose series start `days_held` days before `now`."""
    first = now - days_held * 86400

    def answer(request: httpx.Request) -> httpx.Response:
        start, end = float(request.url.params["start"]), float(request.url.params["end"])
        step = float(request.url.params["step"])
        times = [t for t in np.arange(start, end + 1, step) if t >= first]
        series = [{"metric": {"instance": "a"}, "values": [[t, "0.5"] for t in times]}]
        body = {"status": "success", "data": {"resultType": "matrix", "result": series}}
        return httpx.Response(200, json=body)

    return answer


@pytest.mark.parametrize(("days_held", "starts"), [(2.0, False), (6.9, False), (7.5, True)])
def test_the_first_run_starts_once_prometheus_holds_enough_history(tmp_path, days_held, starts):
    now = 1_800_000_000.0
    config = load_config(["--models.dir", str(tmp_path), "--prometheus.url", "http://prom"], {})
    assert config.first_run_after == 7 * 86400
    retrainer = Retrainer(
        config,
        os.environ,
        transport=httpx.MockTransport(_history_answer(days_held, now)),
        clock=lambda: now,
    )
    triggered: list[str] = []
    retrainer.trigger = lambda trigger: triggered.append(trigger) or True  # type: ignore[method-assign]
    assert retrainer.first_run_pending()
    assert retrainer.first_run_check() is starts
    assert triggered == (["first_run"] if starts else [])
    found = retrainer.history_available
    assert found == pytest.approx(min(days_held, 7.0) * 86400, abs=3600)
    value = retrainer.metrics.registry.get_sample_value
    assert value("forecaster_retrain_history_available_seconds") == found
    assert value("forecaster_retrain_first_run_pending") == (0.0 if starts else 1.0)
    status = retrainer.status()["first_run"]
    assert status["after_seconds"] == 7 * 86400 and status["history_available_seconds"] == found


def test_no_first_run_probe_once_a_run_is_recorded_or_when_switched_off(tmp_path, history):
    retrainer = Retrainer(_config(tmp_path, history), os.environ)
    retrainer.runs.append({"outcome": "failed", "finished_ts": 1.0})
    assert not retrainer.first_run_pending() and not retrainer.first_run_check()
    off = Retrainer(_config(tmp_path, history, "--first-run-after", "0s"), os.environ)
    assert not off.first_run_pending() and not off.first_run_check()
    assert off.metrics.registry.get_sample_value("forecaster_retrain_first_run_pending") == 0


def test_the_first_run_probe_reads_a_parquet_history_and_survives_a_failing_source(
    tmp_path, history
):
    config = _config(tmp_path, history, "--first-run-after", "4d")
    retrainer = Retrainer(config, os.environ)
    retrainer.trigger = lambda trigger: True  # type: ignore[method-assign]
    assert retrainer.first_run_check() is False  # the 4-day history spans 4 days less a step
    assert retrainer.history_available == pytest.approx(4 * 86400 - 300)

    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, text="down")

    online = load_config(
        [
            "--models.dir",
            str(tmp_path),
            "--prometheus.url",
            "http://prom",
            "--prometheus.retries",
            "0",
        ],
        {},
    )
    down = Retrainer(online, os.environ, transport=httpx.MockTransport(refuse))
    assert down.first_run_check() is False and down.first_run_pending()  # tried again later


def test_a_first_run_after_shorter_than_a_run_needs_is_a_configuration_error():
    with pytest.raises(ConfigError, match="first_run_after"):
        load_config(["--first-run-after", "1d"], {})
