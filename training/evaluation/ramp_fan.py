"""`python -m training.evaluation.ramp_fan`: which ramp fan tells the truth once the ramp has
taken over.

Where the ramp outlook takes over (`forecaster.trend.ramp_takeover` with the shipped rules of
`forecaster.config.DEFAULT_EARLY_WARNING`, at every 5-minute origin of a history, from the
3 days the service holds, the served forecast counted as seeing no breach), two fans can be
served: the straight line's (the takeover's own) and the bent line's
(`forecaster.trend.hinge_fit`, at least `--knee` steps after the bend). Both are scored on what
the series then did:

* the time to breach: the first step whose p50 passes the critical threshold, against the
  first step the value itself passes it (both capped at the 8 h horizon: "none within 8 h"
  counts as 8 h), as the median absolute error;
* the p50's absolute error and the p10-p90 coverage at 30 min, 2 h and 8 h ahead, where the
  value is known;
* the fan's first step against the last observed value (how far below it the fan starts).

The takeover decision is the straight line's in both, so the alerts do not differ; what
differs is the fan, the time to breach and the probability a user sees.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from exporter.snapshot import QUANTILES
from forecaster.config import load_config
from forecaster.grid import HORIZON_STEPS
from forecaster.trend import ramp_forecast, ramp_rules, ramp_takeover
from training.evaluation.methods import load_dataset

log = logging.getLogger("training.evaluation.ramp_fan")
HORIZONS = {"30m": 6, "2h": 24, "8h": 96}
LOW, MID, HIGH = QUANTILES.index(0.1), QUANTILES.index(0.5), QUANTILES.index(0.9)


def _crossing(path: np.ndarray, threshold: float) -> np.ndarray:
    """(N,) steps ahead (1-based) of the first value above `threshold`, the horizon if none."""
    above = np.nan_to_num(path, nan=-np.inf) > threshold
    return np.where(above.any(axis=1), np.argmax(above, axis=1) + 1, path.shape[1])


def score_fans(
    y: np.ndarray, rule, *, step: int, held: int, knee: int, domain: tuple[float, float]
) -> dict[str, Any]:
    """Scores of the straight and the bent fan at every takeover of `rule` on histories `y`,
    both clipped to the quantity's `domain` as the engine serves them."""
    horizon = HORIZON_STEPS
    collected: dict[str, dict[str, list[np.ndarray]]] = {"line": {}, "bent": {}}
    takeovers = 0
    for c in range(held, y.shape[1] - horizon):
        history = y[:, c + 1 - held : c + 1]
        served = np.full((y.shape[0], horizon, len(QUANTILES)), np.nan)
        fan, take = ramp_takeover(history, served, rule, QUANTILES, step)
        rows = np.flatnonzero(take)
        if rows.size == 0:
            continue
        takeovers += rows.size
        future = y[rows, c + 1 : c + 1 + horizon]
        bent = ramp_forecast(
            history[rows],
            horizon,
            QUANTILES,
            window=rule.window_steps,
            seasons=rule.seasons,
            knee=knee,
        )
        bent = np.where(np.isfinite(bent).all(axis=(1, 2))[:, None, None], bent, fan[rows])
        line, bent = np.clip(fan[rows], *domain), np.clip(bent, *domain)
        actual = _crossing(future, rule.threshold)
        last = history[rows, -1]
        for name, f in (("line", line), ("bent", bent)):
            out = collected[name]
            out.setdefault("ttb_error", []).append(
                np.abs(_crossing(f[:, :, MID], rule.threshold) - actual) * step / 60.0
            )
            out.setdefault("start_below", []).append(last - f[:, 0, MID])
            for label, k in HORIZONS.items():
                value = future[:, k - 1]
                known = np.isfinite(value)
                out.setdefault(f"p50_error_{label}", []).append(
                    np.abs(f[known, k - 1, MID] - value[known])
                )
                inside = (f[known, k - 1, LOW] <= value[known]) & (
                    value[known] <= f[known, k - 1, HIGH]
                )
                out.setdefault(f"coverage_{label}", []).append(inside.astype(float))
    result: dict[str, Any] = {"takeover_origins": takeovers}
    for name, parts in collected.items():
        result[name] = {
            key: round(
                float(
                    np.mean(np.concatenate(v))
                    if key.startswith("coverage")
                    else np.median(np.concatenate(v))
                ),
                4,
            )
            for key, v in parts.items()
        }
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    config = load_config([], {})
    names = [q.name for q in config.targets(config.contract())]
    data = load_dataset(args.data, names)
    step = int(data.grid.times[1] - data.grid.times[0])
    held = int(config.guard.history // step)
    result: dict[str, Any] = {"data": str(args.data), "seed": data.meta.get("seed"), "knee": {}}
    domains = {q.name: q.domain for q in config.targets(config.contract())}
    for quantity, rule in ramp_rules(config, step).items():
        low, high = domains[quantity]
        scored = score_fans(
            data.grid.column(quantity),
            replace(rule, knee_steps=0),
            step=step,
            held=held,
            knee=args.knee,
            domain=(-np.inf if low is None else low, np.inf if high is None else high),
        )
        result["knee"][quantity] = scored
        log.info("%s: %s", quantity, scored)
    result["knee_steps"] = args.knee
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluation.ramp_fan", description=__doc__
    )
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--knee", type=int, default=12, help="steps after the bend, at least")
    parser.add_argument("--json", type=Path, default=Path("docs/ramp_fan.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(message)s")
    result = run(args)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    log.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
