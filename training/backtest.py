"""`python -m training.backtest`: rolling-origin evaluation of a model against baselines.

At every origin (every `--origin-every`, default 2 h) over held-out history, the TFT (through
the service's fast path) and each baseline forecast the next 8 h from the history before the
origin; all are scored on the same origins and horizons: NQL (the TFT paper's q-risk), WAPE
of the p50 and p10-p90 coverage, per quantity at 30 m, 2 h, 8 h and over all horizons.
The result is JSON (attachable to the version as backtest.json), a markdown report and plots.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from forecaster.contract import load_contract
from forecaster.features import host_id, profile_of
from forecaster.grid import STEP_SECONDS
from forecaster.history_files import read_history
from forecaster.model.dataset import epoch_seconds
from forecaster.model.fast import Batch, FastPredictor
from forecaster.model.tft import ModelBundle, load_bundle
from forecaster.registry import Registry
from training.baselines import BASELINES
from training.gates import BACKTEST_CONTEXT
from training.metrics import HORIZONS, score_horizons

log = logging.getLogger("training.backtest")
TFT = "tft"
DEFAULT_BASELINES = (
    "naive",
    "seasonal_naive_24h",
    "predict_linear_1h",
    "predict_linear_6h",
    "auto_ets",
)


@dataclass(frozen=True)
class BacktestSpec:
    """Where the origins are and what the baselines see."""

    origin_every: int = 24  # steps between origins (2 h)
    context: int = BACKTEST_CONTEXT  # history handed to the baselines (the TFT reads its encoder's)
    baselines: tuple[str, ...] = DEFAULT_BASELINES


@dataclass(frozen=True)
class Grid:
    """Held-out history on the full 5-minute grid: values (instances, steps, quantities)."""

    instances: tuple[str, ...]
    profiles: tuple[str, ...]
    times: np.ndarray  # unix seconds at the end of each step
    values: np.ndarray
    quantities: tuple[str, ...]

    def column(self, name: str) -> np.ndarray:
        """(instances, steps) of one quantity."""
        return self.values[..., self.quantities.index(name)]


def to_grid(wide: pd.DataFrame, quantities: list[str]) -> Grid:
    """Pivot a wide frame onto a complete (instance, step) grid; missing cells are NaN."""
    seconds = epoch_seconds(wide["timestamp"])
    steps = seconds // STEP_SECONDS
    instances = tuple(sorted(wide["instance"].astype(str).unique()))
    row = pd.Index(instances).get_indexer(wide["instance"].astype(str))
    first, last = int(steps.min()), int(steps.max())
    values = np.full((len(instances), last - first + 1, len(quantities)), np.nan)
    values[row, steps - first] = wide[quantities].to_numpy(np.float64)
    labels = wide.groupby("instance")["profile"].first() if "profile" in wide else {}
    profiles = tuple(profile_of(i, labels.get(i)) for i in instances)
    times = (np.arange(first, last + 1) * STEP_SECONDS).astype(np.int64)
    return Grid(instances, profiles, times, values, tuple(quantities))


def origins(grid: Grid, spec: BacktestSpec, encoder: int, horizon: int) -> np.ndarray:
    """Step indices where forecasts start: enough history behind, a full horizon ahead."""
    first = max(spec.context, encoder)
    return np.arange(first, grid.times.size - horizon + 1, spec.origin_every)


def tft_forecasts(bundle: ModelBundle, grid: Grid, at: np.ndarray) -> np.ndarray:
    """(origins, instances, horizon, targets, quantiles) from the fast path."""
    config = bundle.config
    predictor = FastPredictor(bundle)
    targets = [grid.quantities.index(t) for t in config.targets]
    covariates = [grid.quantities.index(c) for c in config.covariates]
    hosts = tuple(host_id(i) for i in grid.instances)
    out = []
    for origin in tqdm(at, desc="tft", unit="origin", disable=None):
        window = grid.values[:, origin - config.encoder_length : origin]
        batch = Batch(
            end=int(grid.times[origin - 1]),
            targets=window[..., targets],
            covariates=np.nan_to_num(window[..., covariates]),
            lengths=np.full(len(grid.instances), config.encoder_length),
            profiles=grid.profiles,
            hosts=hosts,
        )
        out.append(predictor.predict(batch))
    return np.stack(out)


def baseline_forecasts(
    name: str, y: np.ndarray, at: np.ndarray, spec: BacktestSpec, *, horizon: int, quantiles
) -> np.ndarray:
    """(origins, instances, horizon, quantiles) of one baseline on one quantity."""
    baseline = BASELINES[name]
    return np.stack(
        [baseline.fit_predict(y[:, o - spec.context : o], horizon, quantiles) for o in at]
    )


def actuals(y: np.ndarray, at: np.ndarray, horizon: int) -> np.ndarray:
    """(origins, instances, horizon) of what happened after each origin."""
    return np.stack([y[:, o : o + horizon] for o in at])


def run_backtest(
    bundle: ModelBundle, grid: Grid, spec: BacktestSpec, forecasts: np.ndarray | None = None
) -> dict[str, Any]:
    """Scores of the TFT and every baseline on the same origins; JSON-ready.

    `forecasts`: the TFT's forecasts already made by `tft_forecasts` at `origins(grid, spec,
    ...)` (the retrainer checks them before scoring); computed here when not given.
    """
    config = bundle.config
    quantiles = list(config.quantiles)
    at = origins(grid, spec, config.encoder_length, config.horizon)
    if at.size == 0:
        raise ValueError("the held-out history is too short for a single origin")
    started = time.monotonic()
    tft = tft_forecasts(bundle, grid, at) if forecasts is None else forecasts
    if tft.shape[:2] != (at.size, len(grid.instances)):
        raise ValueError(f"forecasts of shape {tft.shape} do not match {at.size} origins")
    scores: dict[str, dict[str, Any]] = {TFT: {}}
    curves: dict[str, dict[str, Any]] = {TFT: {}}
    for t, quantity in enumerate(config.targets):
        y = actuals(grid.column(quantity), at, config.horizon)
        scores[TFT][quantity] = _scores(y, tft[:, :, :, t], quantiles)
        curves[TFT][quantity] = _curves(y, tft[:, :, :, t], quantiles)
        for name in spec.baselines:
            forecast = baseline_forecasts(
                name, grid.column(quantity), at, spec, horizon=config.horizon, quantiles=quantiles
            )
            scores.setdefault(name, {})[quantity] = _scores(y, forecast, quantiles)
            curves.setdefault(name, {})[quantity] = _curves(y, forecast, quantiles)
    return {
        "origins": int(at.size),
        "instances": len(grid.instances),
        "first_origin": _iso(grid.times[at[0] - 1]),
        "last_origin": _iso(grid.times[at[-1] - 1]),
        "spec": asdict(spec),
        "quantiles": quantiles,
        "scores": scores,
        "curves": curves,
        "summary": summarise(scores, config.targets),
        "seconds": round(time.monotonic() - started, 1),
    }


def _iso(seconds: float) -> str:
    return pd.Timestamp(int(seconds), unit="s", tz="UTC").isoformat()


def _scores(y, forecast, quantiles) -> dict[str, dict[str, float]]:
    return {
        name: {k: _finite(v) for k, v in asdict(s).items()}
        for name, s in score_horizons(y, forecast, quantiles).items()
    }


def _curves(y, forecast, quantiles) -> dict[str, list[float]]:
    """NQL and coverage at every step ahead, for the plots."""
    per_step = [
        score_horizons(y[..., h : h + 1], forecast[..., h : h + 1, :], quantiles)["all"]
        for h in range(y.shape[-1])
    ]
    return {
        "nql": [_finite(s.nql) for s in per_step],
        "coverage": [_finite(s.coverage) for s in per_step],
    }


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def summarise(scores: dict[str, Any], targets) -> dict[str, Any]:
    """TFT NQL over the best baseline and over seasonal naive at 8 h; TFT coverage per horizon."""
    summary: dict[str, Any] = {"nql_8h_vs_best_baseline": {}, "nql_8h_vs_seasonal_naive": {}}
    for quantity in targets:
        tft = scores[TFT][quantity]["8h"]["nql"]
        baselines = {
            name: s[quantity]["8h"]["nql"]
            for name, s in scores.items()
            if name != TFT and s[quantity]["8h"]["nql"] is not None
        }
        best = min(baselines, key=lambda n: baselines[n]) if baselines else None
        if tft is not None and best is not None:
            summary["nql_8h_vs_best_baseline"][quantity] = {
                "ratio": tft / baselines[best],
                "best": best,
            }
        seasonal = baselines.get("seasonal_naive_24h")
        if tft is not None and seasonal:
            summary["nql_8h_vs_seasonal_naive"][quantity] = tft / seasonal
    summary["tft_coverage"] = {
        h: float(np.nanmean([scores[TFT][q][h]["coverage"] or np.nan for q in targets]))
        for h in (*HORIZONS, "all")
    }
    return summary


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.backtest", description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="held-out history (parquet)")
    parser.add_argument("--models.dir", dest="models_dir", type=Path, default=Path("models"))
    parser.add_argument("--version", help="model version (default: the current one)")
    parser.add_argument("--origin-every", type=int, default=24, help="steps between origins")
    parser.add_argument("--baselines", default=",".join(DEFAULT_BASELINES))
    parser.add_argument(
        "--attach", action="store_true", help="store as the version's backtest.json"
    )
    parser.add_argument("--report", type=Path, help="write a markdown report (plots beside it)")
    parser.add_argument("--incidents", type=Path, help="incidents.parquet for fan charts")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(message)s")
    warnings.filterwarnings("ignore", module="pytorch_forecasting|lightning|sklearn")
    contract = load_contract()
    registry = Registry(args.models_dir)
    version = args.version or registry.current()
    if version is None:
        raise SystemExit(f"no model version in {args.models_dir}; train one or pass --version")
    registry.verify(version, contract.version)
    bundle = load_bundle(registry.path(version))
    quantities = [*bundle.config.targets, *bundle.config.covariates]
    grid = to_grid(read_history(args.data, quantities), quantities)
    spec = BacktestSpec(origin_every=args.origin_every, baselines=tuple(args.baselines.split(",")))
    result = run_backtest(bundle, grid, spec)
    result.update(
        version=version,
        data=str(args.data),
        command=shlex.join(["python", "-m", "training.backtest", *(argv or sys.argv[1:])]),
    )
    if args.attach:
        registry.amend(version, "backtest.json", result, contract.version)
    if args.report:
        from training.report import write_report

        write_report(result, bundle, grid, args.report, args.incidents)
    log.info("backtest of %s: %s", version, json.dumps(result["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
