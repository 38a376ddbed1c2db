"""The retrainer's steps: the run lock, the child trainer's argv and the backtest gate.

Each step raises `RunError` with a reason from `FAILURES` (a bounded label set of
`forecaster_retrain_failures_total{reason}`; the history's own, `training.history.REASONS`,
among them); `training.retrain.retrainer` strings them together.
"""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from forecaster.grid import STEP_SECONDS
from forecaster.model.config import TFTConfig
from training.gates import Verdict, judge, quantile_health
from training.retrain.config import RetrainConfig

FAILURES = (
    "locked",
    "source_error",
    "partial_history",
    "bad_history",
    "history_too_short",
    "trainer_failed",
    "trainer_killed",
    "trainer_timeout",
    "candidate_invalid",
    "backtest_failed",
    "interrupted",
    "internal",
)
LOCK = ".retrain.lock"
LOG_TAIL_LINES = 20


class RunError(Exception):
    """A run that ended before the gate; `reason` is one of FAILURES."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class BusyError(Exception):
    """Another run (in this process or another) holds the lock."""


@contextmanager
def run_lock(root: Path) -> Iterator[None]:
    """An exclusive, non-blocking `fcntl` lock on `<root>/.retrain.lock`; `BusyError` if held."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / LOCK).open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise BusyError(f"another retrain holds {root / LOCK}") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def trainer_command(config: RetrainConfig, data: Path, version: str) -> list[str]:
    """argv of the child trainer for one candidate."""
    train = config.train
    flags: dict[str, object] = {
        "--data": data,
        "--models.dir": config.models.dir,
        "--version": version,
        "--seed": train.seed,
        "--max-minutes": config.max_minutes,
        "--threads": config.threads,
        "--hidden-size": train.hidden_size,
        "--batch-size": train.batch_size,
        "--batches-per-epoch": train.batches_per_epoch,
        "--max-epochs": train.max_epochs,
        "--device": train.device,
        "--normalisation": train.normalisation,
        "--excursion-weight": train.excursion_weight,
        "--absent-fraction": train.absent_fraction,
        "--log.level": config.log.level,
    }
    if train.targets:
        flags["--targets"] = ",".join(train.targets)
    command = [sys.executable, "-m", "training.train"]
    for flag, value in flags.items():
        command += [flag, str(value)]
    return command


def child_env(environ: Mapping[str, str], threads: int) -> dict[str, str]:
    """The child's environment: ours, with every BLAS/OpenMP pool limited to `threads`."""
    pools = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    return {**environ, **dict.fromkeys(pools, str(threads)), "PYTHONUNBUFFERED": "1"}


def lower_priority(pid: int, nice: int) -> None:
    """Raise the niceness of `pid` (0: this process) to at least `nice`; never lowers it."""
    with suppress(OSError):
        if os.getpriority(os.PRIO_PROCESS, pid) < nice:
            os.setpriority(os.PRIO_PROCESS, pid, nice)


def model_quantities(config: TFTConfig) -> list[str]:
    """Columns a model reads: its targets, then its covariates."""
    return [*config.targets, *config.covariates]


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a (child's) log file, progress-bar carriage returns as new lines."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.replace("\r", "\n").splitlines()[-lines:])


def backtest_gate(
    config: RetrainConfig,
    path: Callable[[str], Path],
    candidate: str,
    current: str | None,
    gate_part: pd.DataFrame,
) -> tuple[Verdict, dict[str, Any]]:
    """Backtest candidate and current model on the same holdout origins and judge.

    Returns the verdict and the candidate's backtest (with the current model's scores), which
    is attached to the candidate as backtest.json. `path` maps a version to its directory.
    """
    import torch

    from forecaster.model.tft import load_bundle
    from training.backtest import BacktestSpec, origins, run_backtest, tft_forecasts, to_grid

    torch.set_num_threads(config.threads)
    gate = config.gate
    spec = BacktestSpec(
        origin_every=int(gate.origin_every // STEP_SECONDS),
        context=config.window().context,
        baselines=(gate.baseline,),
    )
    try:
        bundle = load_bundle(path(candidate))
        grid = to_grid(gate_part, model_quantities(bundle.config))
        at = origins(grid, spec, bundle.config.encoder_length, bundle.config.horizon)
        forecasts = tft_forecasts(bundle, grid, at)
        result = run_backtest(bundle, grid, spec, forecasts)
        theirs = None
        if current is not None:
            champion = load_bundle(path(current))
            grid = to_grid(gate_part, model_quantities(champion.config))
            theirs = run_backtest(champion, grid, replace(spec, baselines=()))
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        raise RunError("backtest_failed", f"{type(exc).__name__}: {exc}") from None
    if theirs is not None and theirs["first_origin"] != result["first_origin"]:
        raise RunError("backtest_failed", "candidate and current scored on other origins")
    verdict = judge(result, theirs, quantile_health(forecasts), gate.spec())
    scores = None if theirs is None else theirs["scores"]
    return verdict, {**result, "current": current, "current_scores": scores}
