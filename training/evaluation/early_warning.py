"""`python -m training.evaluation`: early warning on labelled incidents, forecast alerts vs
baselines.

A simulator history (a seed and period the model was not trained on) is replayed through the
forecaster's own path at every 5-minute origin (`training.replay`); the `NodeForecast*` rules of
`prometheus/rules/alerts.yml` are applied to the replayed breach probabilities exactly as
written (thresholds and `for:` parsed from the file, `training.evaluation.alerts`). In the same run
two baseline families alert on the history itself, each tuned on a separate tuning history (the
model's training period) with one rule (`alerts.select`): a static threshold on the
current value (reactive) and node-mixin style `predict_linear(x[W], H) > threshold`. Every
method is scored per incident kind and overall: recall, precision, lead time, false alerts per
node-day. Results go to a JSON file and a markdown report with plots.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from forecaster.config import load_config
from forecaster.grid import STEP_SECONDS
from forecaster.model.dataset import epoch_seconds
from training.evaluation import alerts as ar
from training.evaluation.methods import (
    FACTORS,
    FOR_OPTIONS,
    OURS,
    Dataset,
    Method,
    baseline_methods,
    evaluate_method,
    fan_requests,
    gradual,
    incident_shapes,
    load_dataset,
    rule_firing,
    tuned_probability,
    window_agreement,
)
from training.replay import (
    Chain,
    Replay,
    calibration_summary,
    first_origin,
    replay,
    service_check,
)

log = logging.getLogger("training.evaluation")


def provenance(argv: list[str], started: float, threads: int) -> dict[str, Any]:
    """Git revision, command, machine and time of this run."""
    git = shutil.which("git")
    revision, dirty = "unknown", None
    if git:
        run = [git, "rev-parse", "HEAD"]
        done = subprocess.run(run, capture_output=True, text=True, check=False)  # noqa: S603 - fixed argv
        revision = done.stdout.strip() or "unknown"
        status = [git, "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"]
        done = subprocess.run(status, capture_output=True, text=True, check=False)  # noqa: S603 - fixed argv
        dirty = bool(done.stdout.strip())
    cpu = "unknown"
    if Path("/proc/cpuinfo").exists():
        names = [
            line for line in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in line
        ]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    import torch

    return {
        "git_revision": revision,
        "git_dirty": dirty,
        "command": shlex.join(["python", "-m", "training.evaluation", *argv]),
        "generated": pd.Timestamp(started, unit="s", tz="UTC").isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpu": cpu,
            "cpu_count": os.cpu_count(),
            "torch_threads": threads,
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
    }


def _replayed(data: Dataset, chain: Chain, fans, cache: Path | None, tag: str) -> Replay:
    """The replay of `data`, read from `cache` when it holds one of the same model version,
    history (its path, generating command and row count) and serving settings (the chain's
    ramp rules and held history, the configuration's thresholds)."""
    path = None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        serving = {
            "ramps": {q: asdict(r) for q, r in sorted(chain.ramps.items())},
            "context_steps": chain.context_steps,
            "thresholds": chain.config.model_dump(mode="json")["thresholds"],
        }
        source = json.dumps(
            [str(data.path.resolve()), data.meta.get("command"), len(data.wide), serving],
            sort_keys=True,
        )
        digest = hashlib.sha256(source.encode()).hexdigest()[:12]
        path = cache / f"replay-{tag}-{data.path.name}-{digest}.npz"
        if path.exists():
            log.info("replay of %s read from %s", data.path, path)
            return Replay.load(path)
    state = replay(data.wide, chain, data.grid, fans)
    log.info(
        "replayed %d origins x %d instances of %s in %.0f s (%.0f ms per origin)",
        state.times.size,
        len(state.instances),
        data.path,
        state.seconds,
        1000 * state.seconds / max(state.times.size, 1),
    )
    if path is not None:
        state.save(path)
    return state


def _describe(data: Dataset, times: np.ndarray, kinds: Mapping[str, str]) -> dict[str, Any]:
    """Seed, span, origins and incidents of a history (precursor lengths in minutes)."""
    incidents = data.incidents
    counts = incidents["kind"].value_counts().to_dict()
    shapes = incident_shapes(incidents)
    by_shape = shapes.groupby(incidents["kind"]).value_counts()
    slow = gradual(incidents)
    minutes = (epoch_seconds(slow["breach"]) - epoch_seconds(slow["precursor_start"])) / 60
    precursor = {
        str(kind): {"min": float(m.min()), "median": float(m.median()), "max": float(m.max())}
        for kind, m in pd.Series(minutes, index=slow.index).groupby(slow["kind"])
    }
    return {
        "path": str(data.path),
        "seed": data.meta.get("seed"),
        "servers": len(data.grid.instances),
        "start": _iso(data.grid.times[0]),
        "end": _iso(data.grid.times[-1]),
        "days": round((data.grid.times[-1] - data.grid.times[0] + STEP_SECONDS) / 86400, 2),
        "first_origin": _iso(times[0]),
        "origins": int(times.size),
        "incidents_by_kind": {str(k): int(v) for k, v in sorted(counts.items())},
        "incidents_by_shape": {f"{k}|{s}": int(v) for (k, s), v in sorted(by_shape.items())},
        "precursor_minutes": precursor,
        "command": shlex.join(data.meta.get("command", [])),
        "kinds": dict(kinds),
    }


def _training_info(directory: Path) -> dict[str, Any]:
    """Seed, data range and command of the model's training run (its training_info.json)."""
    path = directory / "training_info.json"
    info = json.loads(path.read_text()) if path.exists() else {}
    return {"seed": info.get("seed"), "data": info.get("data"), "command": info.get("command")}


def _iso(seconds: float) -> str:
    return pd.Timestamp(int(seconds), unit="s", tz="UTC").isoformat()


def _holder(config, version: str | None):
    """The service's model holder; with `version`, it loads that version instead of current."""
    from forecaster.serving import ModelHolder, load_version

    contract = config.contract().version
    if version is None:
        return ModelHolder(config.model, contract)

    def pinned(registry, wanted, contract_version, settings):
        return load_version(registry, version, contract_version, settings)

    return ModelHolder(config.model, contract, loader=pinned)


@dataclass(frozen=True)
class Setup:
    """What every step of a run reads: the service's chain, rules, histories, names."""

    config: Any
    holder: Any
    version: str
    chain: Chain
    rules: tuple[ar.ForecastRule, ...]
    skipped: tuple[str, ...]
    data: Dataset
    tune: Dataset
    kinds: dict[str, str]  # alerted quantity -> incident kind

    @property
    def thresholds(self) -> dict[str, float]:
        return {q: self.config.thresholds[q].critical for q in self.kinds}

    def origins(self, data: Dataset) -> np.ndarray:
        return data.grid.times[first_origin(data.grid.times, self.config.cycle.warmup_steps) :]


def _setup(args: argparse.Namespace) -> Setup:
    """Load the configuration, the model (as the service does), the rules and both histories."""
    flags = ["--model.dir", str(args.models_dir), "--model.device", "cpu"]
    config = load_config([*flags, "--model.threads", str(args.threads)], {})
    holder = _holder(config, args.version)
    loaded = holder.check()
    if loaded is None:
        raise SystemExit(f"no loadable model in {args.models_dir}")
    chain = Chain.of(config, loaded.predictor)
    rules, skipped = ar.parse_forecast_rules(args.rules, config)
    names = [q.name for q in chain.quantities]
    data, tune = load_dataset(args.data, names), load_dataset(args.tune_data, names)
    by_quantity = dict(zip(data.incidents["quantity"], data.incidents["kind"], strict=True))
    kinds = {q: by_quantity.get(q, q) for q in dict.fromkeys(r.quantity for r in rules)}
    return Setup(config, holder, loaded.version, chain, rules, skipped, data, tune, kinds)


def _methods(setup: Setup, state: Replay, args: argparse.Namespace):
    """Every method's firing on the evaluation origins; (methods, tuning replay seconds)."""
    step, rules = setup.chain.step, setup.rules
    methods = [
        Method(OURS, "forecast rules of alerts.yml (warning + critical)", {}, {}),
        Method(f"{OURS}_critical_only", "forecast rules of alerts.yml, critical only", {}, {}),
    ]
    methods[0] = replace(methods[0], firing=rule_firing(state, rules, step))
    methods[1] = replace(methods[1], firing=rule_firing(state, rules, step, "critical"))
    warmup = setup.config.cycle.warmup_steps
    methods += baseline_methods(setup.tune, setup.data, state.times, setup.thresholds, warmup)
    if not args.tune_probability:
        return methods, None
    tune_state = _replayed(setup.tune, setup.chain, (), args.replay_cache, setup.version)
    methods.append(tuned_probability(tune_state, setup.tune, state, rules, step))
    return methods, tune_state.seconds


def _replay_record(state: Replay, check: dict[str, Any], tune_seconds: float | None):
    return {
        "origins": int(state.times.size),
        "instances": len(state.instances),
        "skipped_origins": state.skipped_origins,
        "seconds": round(state.seconds, 1),
        "from_cache": state.cached,
        "ms_per_origin": round(1000 * state.seconds / max(state.times.size, 1), 1),
        "tune_seconds": None if tune_seconds is None else round(tune_seconds, 1),
        "methods": dict(state.methods),
        "service_check": check,
        "windows": window_agreement(state),
        "calibration": calibration_summary(state),
    }


def run(args: argparse.Namespace, argv: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The whole evaluation; (JSON-ready result, what the plots need)."""
    started = time.time()
    setup = _setup(args)
    data = setup.data
    fans = fan_requests(data, setup.origins(data))
    state = _replayed(data, setup.chain, fans, args.replay_cache, setup.version)
    check = service_check(data.wide, setup.chain, setup.holder, state, args.service_check)
    methods, tune_seconds = _methods(setup, state, args)
    result = {
        **provenance(argv, started, args.threads),
        "model_version": setup.version,
        "model_training": _training_info(args.models_dir / setup.version),
        "rules_file": str(args.rules),
        "rules": [r.__dict__ for r in setup.rules],
        "rules_not_replayed": list(setup.skipped),
        "thresholds": setup.thresholds,
        "data": _describe(data, state.times, setup.kinds),
        "tune_data": _describe(setup.tune, setup.origins(setup.tune), setup.kinds),
        "definitions": {
            "lookback_s": ar.LOOKBACK,
            "lookahead_s": ar.LOOKAHEAD,
            "grace_s": ar.GRACE,
            "target_precision": ar.TARGET_PRECISION,
            "step_s": setup.chain.step,
            "factors": [FACTORS[0], FACTORS[-1]],
            "for_options_s": list(FOR_OPTIONS),
        },
        "replay": _replay_record(state, check, tune_seconds),
        "methods": {m.name: evaluate_method(m, data, state.times, setup.kinds) for m in methods},
        "seconds": round(time.time() - started, 1),
    }
    return result, {"state": state, "data": data, "methods": methods, "rules": setup.rules}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.evaluation", description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="evaluation history directory")
    parser.add_argument("--tune-data", type=Path, required=True, help="history to tune baselines")
    parser.add_argument("--models.dir", dest="models_dir", type=Path, default=Path("models"))
    parser.add_argument("--version", help="model version (default: the registry's current)")
    parser.add_argument("--rules", type=Path, default=Path("prometheus/rules/alerts.yml"))
    parser.add_argument("--report", type=Path, default=Path("docs/EVALUATION.md"))
    parser.add_argument("--json", type=Path, help="results (default: evaluation.json beside it)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--tune-probability",
        action="store_true",
        help="also replay the tuning history and tune our probability threshold on it",
    )
    parser.add_argument("--replay-cache", type=Path, help="directory to keep replays in")
    parser.add_argument("--service-check", type=int, default=3, help="origins checked")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(message)s")
    warnings.filterwarnings("ignore", module="pytorch_forecasting|lightning|sklearn")
    result, extra = run(args, argv)
    path = args.json or args.report.parent / "evaluation.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    from training.evaluation.report import write_report

    write_report(result, extra, args.report)
    log.info("wrote %s and %s", path, args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
