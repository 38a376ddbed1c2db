"""`python -m training.evaluation.ramp_study`: the ramp outlook alone as an alerting method, vs
the baselines.

The ramp outlook (`forecaster.trend.ramp_forecast`) needs no model, so it can be measured on
every 5-minute origin of a history in seconds. For each quantity and each candidate window, a
probability threshold and `for:` are chosen on the tuning history with the rule every baseline
uses (`training.evaluation.alerts.select`); the chosen setting is then applied, unchanged, to the
evaluation history, beside the same tuned baselines as `training.evaluation` (static threshold,
predict_linear). The ramp's probability is that of `forecaster.risk.breach_outlook` over 8 h
against each quantity's critical threshold, on a window of 3 days, as the service holds.

This measures one ingredient of the early-warning path, not the service's alerts: those also
take the TFT's and the served forecast's probabilities (docs/EVALUATION.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from exporter.snapshot import QUANTILES
from forecaster.config import load_config
from forecaster.grid import HORIZON_STEPS
from forecaster.risk import breach_outlook
from forecaster.trend import deviation_z, paced, ramp_forecast
from training.evaluation import alerts as ar
from training.evaluation.methods import (
    FOR_OPTIONS,
    PROBABILITIES,
    baseline_methods,
    load_dataset,
)
from training.replay import first_origin

log = logging.getLogger("training.evaluation.ramp_study")
WINDOWS = (12, 24, 48, 72)  # candidate fit windows in steps: 1 h, 2 h, 4 h, 6 h
# Level gates: the alert also needs the current value above factor x the critical threshold
# (node-mixin's fill-up alerts pair predict_linear with such a level); 0 is no gate.
LEVELS = (0.0, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9)
# Deviation gates: the deviation from the usual day must be this many robust spreads above
# its earlier median (`forecaster.trend.deviation_z`); 0 is no gate.
ZS = (0.0, 2.0, 3.0, 4.0, 6.0, 8.0)
# Pace gates: the line of the last 1 h / 2 h must itself reach the threshold within 8 h (a ramp
# still rising, not a level that stepped up and settled; `forecaster.trend.paced`); 0 is none.
PACES = (0, 12, 24)


def ramp_probability(
    y: np.ndarray,
    columns: np.ndarray,
    critical: float,
    window: int,
    *,
    step: int,
    held: int,
    paces: tuple[int, ...] = PACES,
    seasons: int = 3,
    knee: int = 0,
) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
    """(N, origins) 8 h breach probability of the ramp outlook at each origin column, the
    deviation's z (`deviation_z`) and each pace gate (`paced`), from the last `held` steps
    (the service's history); `seasons` 0 fits the value itself, not its deviation from the
    usual day; `knee` > 0 fits a line with one bend (`forecaster.trend.hinge_fit`)."""
    out = np.full((y.shape[0], columns.size), np.nan)
    z = np.full((y.shape[0], columns.size), np.nan)
    pace = {p: np.ones((y.shape[0], columns.size), dtype=bool) for p in paces}
    for k, c in enumerate(columns):
        history = y[:, max(0, c + 1 - held) : c + 1]
        projected = ramp_forecast(
            history, HORIZON_STEPS, QUANTILES, window=window, seasons=seasons, knee=knee
        )
        probability, _ = breach_outlook(np.nan_to_num(projected, nan=-np.inf), critical, step)
        out[:, k] = np.where(np.isfinite(projected).all(axis=(1, 2)), probability["8h"], 0.0)
        z[:, k] = deviation_z(history, recent=window)
        for p in paces:
            if p > 0:
                pace[p][:, k] = paced(history, p, HORIZON_STEPS, critical)
    return out, z, pace


def ramp_firing(
    signal: tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]],
    current: np.ndarray,
    chosen: dict[str, float],
    *,
    critical: float,
    step: int,
) -> np.ndarray:
    """(N, origins) firing of the ramp alert: probability, level and deviation conditions,
    held `for`."""
    probability, z, pace = signal
    with np.errstate(invalid="ignore"):
        condition = (probability > chosen["probability"]) & (current > chosen["level"] * critical)
        if chosen["z"] > 0:
            condition &= z > chosen["z"]
        if chosen["pace"] > 0:
            condition &= pace[chosen["pace"]]
    return ar.hold_for(condition, ar.evaluations(chosen["for_s"], step))


def _choose(signal, current, times, events: ar.Events, *, critical: float, step: int, gates):
    candidates, scores = [], []
    for level, z, pace in gates:
        for p in PROBABILITIES:
            for for_s in FOR_OPTIONS:
                chosen = {"probability": p, "level": level, "z": z, "pace": pace, "for_s": for_s}
                firing = ramp_firing(signal, current, chosen, critical=critical, step=step)
                candidates.append(chosen)
                scores.append(ar.score(firing, times, events))
    best = ar.select(scores)
    return candidates[best], scores[best]


def run(args: argparse.Namespace) -> dict[str, Any]:
    config = load_config([], {})
    quantities = list(args.quantities)
    thresholds = {q: config.thresholds[q].critical for q in quantities}
    names = [q.name for q in config.targets(config.contract())]
    tune, data = load_dataset(args.tune_data, names), load_dataset(args.data, names)
    step = int(data.grid.times[1] - data.grid.times[0])
    warmup = config.cycle.warmup_steps
    held = int(config.guard.history // step)
    t_times = tune.grid.times[first_origin(tune.grid.times, warmup) :]
    t_cols = np.searchsorted(tune.grid.times, t_times)
    e_times = data.grid.times[first_origin(data.grid.times, warmup) :]
    e_cols = np.searchsorted(data.grid.times, e_times)
    result: dict[str, Any] = {
        "tune_data": str(args.tune_data),
        "data": str(args.data),
        "tune_seed": tune.meta.get("seed"),
        "seasons": args.seasons,
        "seed": data.meta.get("seed"),
        "ramp": {},
        "baselines": {},
    }
    for quantity in quantities:
        critical = thresholds[quantity]

        def signal_of(y, columns, fit, critical=critical):
            return ramp_probability(
                y,
                columns,
                critical,
                fit[0],
                step=step,
                held=held,
                paces=tuple(args.paces),
                seasons=args.seasons,
                knee=fit[1],
            )

        picks = []
        t_y = tune.grid.column(quantity)
        for window in ((w, k) for w in args.windows for k in args.knees):
            signal = signal_of(t_y, t_cols, window)
            chosen, score = _choose(
                signal,
                t_y[:, t_cols],
                t_times,
                tune.events(quantity),
                critical=critical,
                step=step,
                gates=[
                    (level, z, pace)
                    for level in args.levels
                    for z in args.zs
                    for pace in args.paces
                ],
            )
            picks.append((score, window, chosen))
        best = ar.select([p[0] for p in picks])
        tuning, window, chosen = picks[best]
        e_y = data.grid.column(quantity)
        signal = signal_of(e_y, e_cols, window)
        firing = ramp_firing(signal, e_y[:, e_cols], chosen, critical=critical, step=step)
        score = ar.score(firing, e_times, data.events(quantity))
        result["ramp"][quantity] = {
            "window_steps": window[0],
            "knee_steps": window[1],
            **chosen,
            "tuning": _brief(tuning.summary()),
            "evaluation": _brief(score.summary()),
            "tuning_by_window": {f"{w}/{k}": _brief(s.summary()) for s, (w, k), _ in picks},
        }
        log.info(
            "%s: window/knee %s %s tuning %s evaluation %s",
            quantity,
            window,
            chosen,
            _brief(tuning.summary()),
            _brief(score.summary()),
        )
    for method in baseline_methods(tune, data, e_times, thresholds, warmup):
        result["baselines"][method.name] = {
            q: {
                **method.params[q],
                "evaluation": _brief(ar.score(f, e_times, data.events(q)).summary()),
            }
            for q, f in method.firing.items()
        }
    return result


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("recall", "precision", "caught", "incidents", "false", "false_per_node_day")
    out = {k: summary.get(k) for k in keys}
    out["median_lead_minutes"] = (summary.get("lead_minutes") or {}).get("median")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluation.ramp_study", description=__doc__
    )
    parser.add_argument("--tune-data", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument(
        "--quantities", nargs="+", default=["memory_utilisation", "filesystem_utilisation"]
    )
    parser.add_argument("--windows", nargs="+", type=int, default=list(WINDOWS), help="fit steps")
    parser.add_argument(
        "--levels", nargs="+", type=float, default=list(LEVELS), help="level gate factors"
    )
    parser.add_argument(
        "--knees",
        nargs="+",
        type=int,
        default=[0],
        help="steps after a fitted bend, at least (0: a straight line; forecaster.trend.hinge_fit)",
    )
    parser.add_argument("--paces", nargs="+", type=int, default=list(PACES), help="pace gates")
    parser.add_argument("--zs", nargs="+", type=float, default=list(ZS), help="deviation gates")
    parser.add_argument(
        "--seasons",
        type=int,
        default=3,
        help="days the usual day is the median of (0: fit the value, no detrending)",
    )
    parser.add_argument("--json", type=Path, default=Path("docs/ramp_study.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(message)s")
    result = run(args)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    log.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
