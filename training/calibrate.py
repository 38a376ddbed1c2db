"""`python -m training.calibrate`: a new model version whose band is calibrated per horizon.

Forecasts a calibration history (a fleet and period used neither for training nor for the
backtest that will judge the result) at rolling origins with the fast path, fits the per-target,
per-horizon band factors of `forecaster.model.calibration`, and writes a new version: the same
weights and JSON as the source version plus `calibration.json`, committed through the registry
(hashes, atomic rename). Backtest the new version before promoting it.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from forecaster.contract import load_contract
from forecaster.history_files import read_history
from forecaster.model.calibration import FILENAME, Calibration, fit
from forecaster.model.tft import ModelBundle, load_bundle
from forecaster.registry import MANIFEST, Registry
from training.backtest import BacktestSpec, actuals, origins, tft_forecasts, to_grid

log = logging.getLogger("training.calibrate")
NOT_COPIED = (MANIFEST, "backtest.json", FILENAME)


def calibration_set(bundle: ModelBundle, data: Path, origin_every: int):
    """Actuals (S, horizon, targets) and raw forecasts (S, horizon, targets, 3)."""
    config = bundle.config
    quantities = [*config.targets, *config.covariates]
    grid = to_grid(read_history(data, quantities), quantities)
    spec = BacktestSpec(origin_every=origin_every)
    at = origins(grid, spec, config.encoder_length, config.horizon)
    if at.size == 0:
        raise SystemExit(f"{data}: too short for a single calibration origin")
    forecasts = tft_forecasts(bundle, grid, at)  # (O, N, H, T, Q)
    y = np.stack(
        [actuals(grid.column(q), at, config.horizon) for q in config.targets], axis=-1
    )  # (O, N, H, T)
    samples = forecasts.shape[0] * forecasts.shape[1]
    shape = forecasts.shape[2:]
    return y.reshape(samples, *shape[:2]), forecasts.reshape(samples, *shape)


def coverage(y: np.ndarray, forecasts: np.ndarray) -> dict[str, float]:
    """p10-p90 coverage at 30 m, 2 h and 8 h and over all steps."""
    inside = (y >= forecasts[..., 0]) & (y <= forecasts[..., 2])
    finite = np.isfinite(y)
    steps = {"30m": 5, "2h": 23, "8h": 95}
    out = {k: float(inside[:, h][finite[:, h]].mean()) for k, h in steps.items()}
    out["all"] = float(inside[finite].mean())
    return out


def write_calibrated(
    registry: Registry, source: str, target: str, calibration: Calibration, info: dict[str, Any]
) -> None:
    """Copy `source`'s artefacts, add the calibration, commit as `target`."""
    contract = load_contract()
    manifest = registry.verify(source, contract.version)
    with registry.staging(target) as staged:
        for name in manifest.files:
            if name not in NOT_COPIED:
                shutil.copyfile(registry.path(source) / name, staged / name)
        text = json.dumps(calibration.to_json(), indent=1, sort_keys=True) + "\n"
        (staged / FILENAME).write_text(text)
        base = {k: v for k, v in manifest.info.items() if k not in ("files", "version")}
        registry.commit(staged, target, {**base, **info})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.calibrate", description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="calibration history (parquet)")
    parser.add_argument("--models.dir", dest="models_dir", type=Path, default=Path("models"))
    parser.add_argument("--version", required=True, help="the version to calibrate")
    parser.add_argument("--new-version", required=True, help="name of the calibrated version")
    parser.add_argument("--origin-every", type=int, default=12, help="steps between origins")
    parser.add_argument("--promote", action="store_true", help="make it the current version")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(message)s")
    warnings.filterwarnings("ignore", module="pytorch_forecasting|lightning|sklearn")
    registry = Registry(args.models_dir)
    contract = load_contract()
    registry.verify(args.version, contract.version)
    bundle = load_bundle(registry.path(args.version))
    bundle.calibration = None  # fit on the raw band
    y, raw = calibration_set(bundle, args.data, args.origin_every)
    calibration = fit(y, raw, tuple(bundle.config.targets))
    calibrated = calibration.apply(raw, tuple(bundle.config.targets))
    before = {q: coverage(y[..., t], raw[..., t, :]) for t, q in enumerate(bundle.config.targets)}
    after = {
        q: coverage(y[..., t], calibrated[..., t, :]) for t, q in enumerate(bundle.config.targets)
    }
    command = shlex.join(["python", "-m", "training.calibrate", *(argv or sys.argv[1:])])
    calibration.info.update(data=str(args.data), source=args.version, command=command)
    info = {
        "calibrated_from": args.version,
        "calibration": {"command": command, "coverage_before": before, "coverage_after": after},
    }
    write_calibrated(registry, args.version, args.new_version, calibration, info)
    if args.promote:
        registry.promote(args.new_version, contract.version)
    for q in bundle.config.targets:
        log.info("%s coverage before %s after %s", q, before[q], after[q])
    print(json.dumps({"version": args.new_version, "before": before, "after": after}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
