"""One retrain run and its bookkeeping: history -> child trainer -> backtest gate -> promote.

`Retrainer.run` pulls the recent history (Prometheus, or a parquet file), refuses a window
that is too short or partial, trains a candidate in a child `python -m training.train` at low
priority with limited threads and a timeout, backtests candidate and current model on the
latest held-out window and promotes the candidate only past `training.gates.judge`.

Crash safety: the child writes its version under `.tmp-<version>-<pid>` and renames it into
place only when complete, so a SIGKILL leaves no version under a final name; the retrainer
removes the child's staging after a failure and every stale `.tmp-*` at start-up (under the
run lock, so never another process's). Two retrainers never run at once: an in-process lock
(`409` for `POST /retrain`) and an `fcntl` lock on `<models>/.retrain.lock`.

With `shadow.cycles` set, a candidate that passes the gate is not promoted by the run (outcome
`shadowed`): it is scored on newer history first, every `shadow.interval`, and promoted or
rejected after that many cycles (`training.retrain.shadow`; each decision is recorded as a run
with trigger `shadow`).

A rejected candidate is kept (not promoted) with its `gate.json` and `backtest.json`, for
inspection; `Registry.collect_garbage` keeps the 3 newest versions plus current and previous.
Every run is appended to `<models>/retrain-report.json` (the last `KEEP_RUNS`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from forecaster.contract import Contract, load_contract
from forecaster.grid import STEP_SECONDS
from forecaster.model.config import TFTConfig
from forecaster.registry import TMP_PREFIX, Registry, RegistryError, new_version, write_json_atomic
from training.gates import Verdict, history_problem, holdout_start, split_history
from training.history import HistoryError, history_span, load_history
from training.retrain import shadow
from training.retrain.config import RetrainConfig
from training.retrain.metrics import RetrainMetrics
from training.retrain.steps import (
    FAILURES,
    BusyError,
    RunError,
    backtest_gate,
    child_env,
    lower_priority,
    model_quantities,
    run_lock,
    tail,
    trainer_command,
)

log = logging.getLogger(__name__)
OUTCOMES = ("promoted", "rejected", "failed", "shadowed")
REPORT = "retrain-report.json"
WORK_PREFIX = ".retrain-work-"
MODEL_CONFIG = "model_config.json"  # forecaster.model.tft.MODEL_CONFIG, read without torch
TRAIN_GRACE_S = 300.0  # import, dataset building, validation and writing after --max-minutes
TERMINATE_GRACE_S = 5.0
KEEP_RUNS = 20
KEEP_SHADOW_CYCLES = 100  # the cycles kept in the shadow state (waiting ones included)


def _iso(seconds: float) -> str:
    return pd.Timestamp(seconds, unit="s", tz="UTC").isoformat()


class Retrainer:
    """Runs retrains one at a time and keeps their reports and metrics."""

    def __init__(
        self,
        config: RetrainConfig,
        environ: Mapping[str, str],
        *,
        contract: Contract | None = None,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.environ = dict(environ)
        self.contract = contract or load_contract()
        self.registry = Registry(config.models.dir)
        self.metrics = RetrainMetrics(OUTCOMES, FAILURES, config.interval, shadow.DECISIONS)
        self.runs: list[dict[str, Any]] = []
        self.next_run: Callable[[], float | None] = lambda: None
        self._transport = transport
        self._clock = clock
        self._busy = threading.Lock()
        self._stop = threading.Event()
        self._child_lock = threading.Lock()
        self._child: subprocess.Popen | None = None
        self._candidate: str | None = None
        self._thread: threading.Thread | None = None
        self.history_available: float | None = None  # the first-run probe's last finding

    # --- lifecycle --------------------------------------------------------------------------

    def startup(self) -> list[str]:
        """Restore the last reports; remove stale temp dirs unless another retrain runs."""
        self._load_reports()
        state = shadow.load_state(self.registry.root)
        self.metrics.shadow_cycles.set(shadow.counted(state) if state else 0)
        try:
            with run_lock(self.registry.root):
                removed = self.registry.remove_stale_tmp()
                for work in self.registry.root.glob(f"{WORK_PREFIX}*"):
                    shutil.rmtree(work, ignore_errors=True)
                    removed.append(work.name)
        except BusyError:
            log.warning("another retrain is running on %s: stale files left", self.registry.root)
            return []
        if removed:
            log.info("removed stale temporary files: %s", ", ".join(sorted(removed)))
        return removed

    def trigger(self, trigger: str) -> bool:
        """Start a run in a background thread; False if one is already running."""
        if self._stop.is_set() or not self._busy.acquire(blocking=False):
            return False
        thread = threading.Thread(target=self._run_released, args=(trigger,), daemon=True)
        self._thread = thread
        thread.start()
        return True

    def scheduled(self) -> None:
        """The scheduler's job: start a run unless one is in progress."""
        if not self.trigger("schedule"):
            log.warning("scheduled retrain skipped: a run is in progress")

    def first_run_pending(self) -> bool:
        """Whether the first run waits for history: `first_run_after` set, no run recorded."""
        pending = self.config.first_run_after > 0 and not self.runs and not self.running()
        self.metrics.first_run_pending.set(float(pending))
        return pending

    def first_run_check(self) -> bool:
        """The first-run probe's job: while `first_run_pending`, measure the history that
        Prometheus holds (one coarse query) and start the first run ("first_run") once it
        covers `first_run_after`. True when it started one."""
        if not self.first_run_pending():
            return False
        quantity = model_quantities(self._model_config())[0]
        try:
            span = history_span(
                self.config,
                self.contract,
                quantity,
                self._clock(),
                self.config.first_run_after,
                transport=self._transport,
            )
        except HistoryError as exc:
            log.warning("first-run probe failed (%s): %s", exc.reason, exc)
            return False
        self.history_available = span
        self.metrics.history_available.set(span)
        if span < self.config.first_run_after:
            log.info(
                "first run waits for history: %.1f of %.1f days",
                span / 86400,
                self.config.first_run_after / 86400,
            )
            return False
        started = self.trigger("first_run")
        if started:
            log.info("first run started: %.1f days of history", span / 86400)
            self.metrics.first_run_pending.set(0.0)
        return started

    def run(self, trigger: str) -> dict[str, Any]:
        """Run once in this thread and return the report; `BusyError` if a run is in progress."""
        if not self._busy.acquire(blocking=False):
            raise BusyError("a retrain is in progress")
        try:
            return self._run(trigger)
        finally:
            self._busy.release()

    def running(self) -> bool:
        """Whether a run is in progress in this process."""
        return self._busy.locked()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the background run started by `trigger`."""
        if self._thread is not None:
            self._thread.join(timeout)

    def last_finished(self) -> float | None:
        """Unix time the last recorded run ended, if any."""
        return float(self.runs[-1]["finished_ts"]) if self.runs else None

    def request_stop(self) -> None:
        """Refuse new runs and send SIGTERM to the child trainer; returns at once (signal-safe)."""
        self._stop.set()
        child = self._child
        if child is not None and child.poll() is None:
            with suppress(OSError):
                child.terminate()

    def stop(self, timeout: float = 8.0) -> None:
        """Stop for good: terminate the child trainer, remove its staging, wait for the run."""
        deadline = time.monotonic() + timeout
        self.request_stop()
        with self._child_lock:
            child = self._child
        if child is not None:
            try:
                child.wait(min(TERMINATE_GRACE_S, max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            if self._candidate is not None:
                self._remove_staging(self._candidate)
        self.join(max(0.0, deadline - time.monotonic()))

    def rollback(self) -> str:
        """Point `current` back at the previous version; `BusyError` while a run is in progress."""
        if not self._busy.acquire(blocking=False):
            raise BusyError("a retrain is in progress")
        try:
            with run_lock(self.registry.root):
                version = self.registry.rollback(self.contract.version)
        finally:
            self._busy.release()
        log.info("rolled back to %s", version)
        return version

    def status(self) -> dict[str, Any]:
        """JSON of the state and the last runs, newest first."""
        next_run = self.next_run()
        return {
            "running": self.running(),
            "pointer": self.registry.pointer(),
            "interval_seconds": self.config.interval,
            "next_run": _iso(next_run) if next_run else None,
            "first_run": {
                "pending": self.first_run_pending(),
                "after_seconds": self.config.first_run_after,
                "history_available_seconds": self.history_available,
            },
            "shadow": self._shadow_status(),
            "runs": list(reversed(self.runs)),
        }

    def _shadow_status(self) -> dict[str, Any] | None:
        state = shadow.load_state(self.registry.root)
        if state is None:
            return None
        return {
            **{k: state.get(k) for k in ("candidate", "current", "since", "started")},
            "cycles_counted": shadow.counted(state),
            "cycles_needed": self.config.shadow.cycles,
            "last_cycle": state["cycles"][-1] if state["cycles"] else None,
        }

    # --- one run ----------------------------------------------------------------------------

    def _run_released(self, trigger: str) -> None:
        try:
            self._run(trigger)
        finally:
            self._busy.release()

    def _run(self, trigger: str) -> dict[str, Any]:
        report: dict[str, Any] = {"trigger": trigger, "started": _iso(self._clock()), "stages": {}}
        started = time.monotonic()
        self.metrics.running.set(1)
        try:
            with run_lock(self.registry.root):
                self._pipeline(report)
        except BusyError as exc:
            report.update(outcome="failed", reason="locked", detail=str(exc))
        except RunError as exc:
            report.update(outcome="failed", reason=exc.reason, detail=exc.detail)
        except RegistryError as exc:  # the candidate changed between the gate and promotion
            report.update(outcome="failed", reason="candidate_invalid", detail=exc.reason)
        except Exception as exc:  # a run must never take the service down
            log.exception("retrain failed unexpectedly")
            report.update(outcome="failed", reason="internal", detail=f"{type(exc).__name__}")
        finally:
            self._candidate = None
            report["seconds"] = round(time.monotonic() - started, 2)
            report["finished"] = _iso(finished := self._clock())
            report["finished_ts"] = finished
            self._record(report)
            self.metrics.running.set(0)
        return report

    @contextmanager
    def _stage(self, report: dict[str, Any], name: str) -> Iterator[None]:
        if self._stop.is_set():
            raise RunError("interrupted", f"stopping before {name}")
        started = time.monotonic()
        try:
            yield
        finally:
            report["stages"][name] = round(time.monotonic() - started, 2)

    def _pipeline(self, report: dict[str, Any]) -> None:
        current = self._current(report)
        candidate = self._candidate_name()
        report["candidate"] = candidate
        config = self._model_config()
        quantities = list(dict.fromkeys(model_quantities(config) + (current[1] if current else [])))
        window = self.config.window()
        with self._stage(report, "fetch"):
            try:
                wide = load_history(
                    self.config, self.contract, quantities, self._clock(), self._transport
                )
            except HistoryError as exc:
                raise RunError(exc.reason, exc.detail) from None
        problem = history_problem(wide, window)
        if problem is not None:
            raise RunError("history_too_short", problem)
        train_part, gate_part = split_history(wide, window)
        report["history"] = {
            "start": str(wide["timestamp"].min()),
            "end": str(wide["timestamp"].max()),
            "end_ts": float(wide["timestamp"].max().timestamp()),
            "holdout_start": str(holdout_start(wide, window)),
            "instances": int(wide["instance"].nunique()),
        }
        del wide
        with self._stage(report, "train"), self._workdir() as work:
            train_part.to_parquet(work / "server_metrics.parquet", index=False)
            del train_part
            self._train(candidate, work)
        try:
            self.registry.verify(candidate, self.contract.version)
        except RegistryError as exc:
            raise RunError("candidate_invalid", str(exc)) from None
        with self._stage(report, "backtest"):
            verdict, backtest = backtest_gate(
                self.config,
                self.registry.path,
                candidate,
                current[0] if current else None,
                gate_part,
            )
        self._conclude(report, candidate, verdict, backtest)

    def _conclude(
        self, report: dict[str, Any], candidate: str, verdict: Verdict, backtest: dict[str, Any]
    ) -> None:
        """Attach the backtest and the verdict to the candidate; promote it if it passed."""
        gate = {
            **verdict.to_json(),
            "candidate": candidate,
            "current": report.get("current"),
            **{k: backtest[k] for k in ("origins", "first_origin", "last_origin", "instances")},
        }
        report["gate"] = gate
        self.registry.amend(candidate, "backtest.json", backtest, self.contract.version)
        self.registry.amend(candidate, "gate.json", gate, self.contract.version)
        if verdict.passed and self.config.shadow.cycles > 0:
            self._enter_shadow(report, candidate)
        elif verdict.passed:
            self.registry.promote(candidate, self.contract.version)
            report.update(outcome="promoted", promoted=candidate)
        else:
            report.update(outcome="rejected", reasons=list(verdict.reasons))
        report["removed"] = self.registry.collect_garbage()

    # --- the shadow stage -------------------------------------------------------------------

    def shadow_cycle(self) -> dict[str, Any] | None:
        """The shadow job: score the candidate in shadow on the newer history and decide after
        `shadow.cycles` counted cycles (`training.retrain.shadow`). Returns the cycle's record;
        None when no candidate is in shadow, a run is in progress or the service is stopping."""
        if self._stop.is_set() or not self._busy.acquire(blocking=False):
            return None
        try:
            with run_lock(self.registry.root):
                return self._shadow_cycle()
        except BusyError:
            return None
        finally:
            self._busy.release()

    def _enter_shadow(self, report: dict[str, Any], candidate: str) -> None:
        root = self.registry.root
        previous = shadow.load_state(root)
        if previous is not None and previous["candidate"] != candidate:
            self._decide(previous, "superseded", f"{candidate} passed the gate after it")
        state = {
            "candidate": candidate,
            "current": report.get("current"),
            "since": report["history"]["end"],
            "since_ts": report["history"]["end_ts"],
            "started": _iso(self._clock()),
            "cycles": [],
        }
        shadow.save_state(root, state)
        self.metrics.shadow_cycles.set(0)
        report.update(outcome="shadowed", shadow={"cycles_needed": self.config.shadow.cycles})

    def _shadow_cycle(self) -> dict[str, Any] | None:
        root = self.registry.root
        state = shadow.load_state(root)
        if state is None:
            self.metrics.shadow_cycles.set(0)
            return None
        serving = self.registry.current()
        if serving != state["current"]:
            self._decide(state, "superseded", f"the serving model is now {serving}")
            return None
        now = self._clock()
        cycle: dict[str, Any] = {"at": _iso(now), "counted": False}
        window = self.config.window()
        try:
            fresh, steps = self._fresh_history(state, now, window.context)
            cycle["fresh_steps"] = steps
            if steps < window.horizon:
                cycle["reason"] = "waiting"
            else:
                verdict, backtest = backtest_gate(
                    self.config, self.registry.path, state["candidate"], state["current"], fresh
                )
                cycle.update(
                    counted=True,
                    passed=verdict.passed,
                    reasons=list(verdict.reasons),
                    origins=backtest["origins"],
                    nql=verdict.nql,
                    current_nql=verdict.current_nql,
                    nql_ratio_vs_current=verdict.ratios,
                )
        except (HistoryError, RunError) as exc:
            cycle.update(reason=exc.reason, detail=str(exc)[:500])
        state["cycles"] = [*state["cycles"], cycle][-KEEP_SHADOW_CYCLES:]
        shadow.save_state(root, state)
        done = shadow.counted(state)
        self.metrics.shadow_cycles.set(done)
        log.info(
            "shadow cycle of %s: %s (%d of %d counted)",
            state["candidate"],
            ("passed" if cycle["passed"] else "failed") if cycle["counted"] else cycle["reason"],
            done,
            self.config.shadow.cycles,
        )
        if done >= self.config.shadow.cycles:
            self._decide(state, "promoted" if cycle.get("passed") else "rejected")
        return cycle

    def _fresh_history(
        self, state: dict[str, Any], now: float, context: int
    ) -> tuple[pd.DataFrame, int]:
        """The history since the shadow began, with `context` steps before it, and how many
        steps it holds after that start."""
        since = float(state["since_ts"])
        span = min(self.config.history, max(0.0, now - since) + (context + 1) * STEP_SECONDS)
        source = self.config.model_copy(update={"history": span})  # the same source, shorter
        quantities = model_quantities(self._model_config())
        wide = load_history(source, self.contract, quantities, now, self._transport)
        if wide.empty:
            return wide, 0
        first = pd.Timestamp(since - context * STEP_SECONDS, unit="s", tz="UTC")
        wide = wide[wide["timestamp"] > first].reset_index(drop=True)
        after = wide["timestamp"] > pd.Timestamp(since, unit="s", tz="UTC")
        return wide, int(wide.loc[after, "timestamp"].nunique())

    def _decide(self, state: dict[str, Any], decision: str, detail: str | None = None) -> None:
        """End the shadow stage of `state`'s candidate: promote, reject or drop it."""
        started = time.monotonic()
        candidate = state["candidate"]
        record = {**state, "decision": decision, "detail": detail}
        report: dict[str, Any] = {
            "trigger": "shadow",
            "started": _iso(self._clock()),
            "stages": {},
            "candidate": candidate,
            "current": state["current"],
            "shadow": {"decision": decision, "cycles_counted": shadow.counted(state)},
        }
        try:
            self.registry.amend(candidate, shadow.STATE, record, self.contract.version)
            if decision == "promoted":
                self.registry.promote(candidate, self.contract.version)
        except (RegistryError, OSError) as exc:
            decision = "rejected" if decision == "promoted" else decision
            report["shadow"].update(decision=decision, detail=f"candidate unusable: {exc}")
        last = next((c for c in reversed(state["cycles"]) if c.get("counted")), None)
        if decision == "promoted":
            report.update(outcome="promoted", promoted=candidate)
        else:
            report.update(outcome="rejected")
            if decision == "rejected" and last is not None:
                report["reasons"] = list(last.get("reasons", []))
        if detail:
            report["shadow"].setdefault("detail", detail)
        shadow.clear_state(self.registry.root)
        self.metrics.shadow_decisions.labels(decision).inc()
        self.metrics.shadow_cycles.set(0)
        report["seconds"] = round(time.monotonic() - started, 2)
        report["finished"] = _iso(finished := self._clock())
        report["finished_ts"] = finished
        self._record(report)

    def _current(self, report: dict[str, Any]) -> tuple[str, list[str]] | None:
        """(version, quantities) of the current model, or None when there is none usable."""
        version = self.registry.current()
        report["current"] = version
        if version is None:
            return None
        try:
            self.registry.verify(version, self.contract.version)
            data = json.loads((self.registry.path(version) / MODEL_CONFIG).read_text())
            config = TFTConfig.from_json(data["config"])
        except (RegistryError, OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("current model %s is unusable, gating on absolute rules: %s", version, exc)
            report["current_problem"] = str(exc)
            return None
        return version, model_quantities(config)

    def _model_config(self) -> TFTConfig:
        """The candidate's model shape: the configured targets, or the default ones."""
        return TFTConfig(targets=self.config.train.targets or TFTConfig().targets)

    def _candidate_name(self) -> str:
        base = new_version(datetime.fromtimestamp(self._clock(), UTC))
        name, n = base, 1
        while self.registry.path(name).exists():
            name, n = f"{base}-{n}", n + 1
        return name

    @contextmanager
    def _workdir(self) -> Iterator[Path]:
        work = self.registry.root / f"{WORK_PREFIX}{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _train(self, candidate: str, work: Path) -> None:
        """Train `candidate` in a child process; RunError unless it exits 0."""
        command = trainer_command(self.config, work, candidate)
        timeout = self.config.max_minutes * 60 + TRAIN_GRACE_S
        log_path = work / "train.log"
        self._candidate = candidate
        with self._child_lock:
            if self._stop.is_set():
                raise RunError("interrupted", "stopping before training")
            with log_path.open("wb") as out:
                child = subprocess.Popen(  # noqa: S603 - argv from validated config, no shell
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=child_env(self.environ, self.config.threads),
                )
            self._child = child
        lower_priority(child.pid, self.config.nice)
        log.info("training candidate %s (pid %d, nice %d)", candidate, child.pid, self.config.nice)
        try:
            code = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            self._remove_staging(candidate)
            raise RunError("trainer_timeout", f"killed after {timeout:.0f} s") from None
        finally:
            with self._child_lock:
                self._child = None
        if code != 0:
            self._remove_staging(candidate)
            if self._stop.is_set():
                raise RunError("interrupted", f"trainer stopped (exit {code})")
            reason = "trainer_killed" if code < 0 else "trainer_failed"
            raise RunError(reason, f"exit {code}: {tail(log_path)}")

    def _remove_staging(self, candidate: str) -> None:
        for path in self.registry.root.glob(f"{TMP_PREFIX}{candidate}-*"):
            shutil.rmtree(path, ignore_errors=True)

    # --- reports ----------------------------------------------------------------------------

    def _record(self, report: dict[str, Any]) -> None:
        self.runs = [*self.runs, report][-KEEP_RUNS:]
        self.metrics.observe(report)
        try:
            write_json_atomic(self.registry.root / REPORT, {"runs": self.runs})
        except OSError as exc:
            log.warning("cannot write %s: %s", REPORT, exc.strerror)
        why = report.get("reason") or ",".join(report.get("reasons", [])) or "-"
        log.info(
            "retrain %s: candidate %s, current %s, reason %s, %.1f s",
            report["outcome"],
            report.get("candidate"),
            report.get("current"),
            why,
            report["seconds"],
        )
        if report["outcome"] == "failed":
            log.warning("retrain failure detail: %s", report.get("detail"))

    def _load_reports(self) -> None:
        path = self.registry.root / REPORT
        try:
            runs = json.loads(path.read_text())["runs"]
        except (OSError, ValueError, KeyError, TypeError):
            runs = []
        self.runs = [r for r in runs if isinstance(r, dict) and "outcome" in r][-KEEP_RUNS:]
        self.metrics.restore(self.runs, started=self._clock())
