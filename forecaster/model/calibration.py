"""Per-horizon calibration of the forecast band (split-conformal scaling of the quantile offsets).

A quantile model trained on one fleet can be over- or under-confident by horizon: the shipped
model's p10-p90 band covered 82 % of held-out values at 30 min but 72 % at 8 h. Calibration
keeps the p50 and rescales each side of the band per target and horizon step:

    p10' = p50 - lower[t, h] * (p50 - p10)        p90' = p50 + upper[t, h] * (p90 - p50)

`fit` picks `upper[t, h]` as the empirical 0.9-quantile of (y - p50) / (p90 - p50) over a
calibration set (and `lower` likewise below the median), so that on that set about 10 % of the
values fall above p90' and 10 % below p10'; the factors are smoothed along the horizon (running
median) and clipped to [MIN_FACTOR, MAX_FACTOR]. Calibration data must be neither the training
data nor the data the result is judged on. Stored as `calibration.json` in the model version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

FILENAME = "calibration.json"
MIN_FACTOR = 0.5
MAX_FACTOR = 4.0
SMOOTHING = 9  # steps of the running median along the horizon
MIN_SAMPLES = 50


@dataclass(frozen=True)
class Calibration:
    """Scale factors (targets, horizon) for each side of the band, and what they came from."""

    targets: tuple[str, ...]
    lower: NDArray[np.float64]
    upper: NDArray[np.float64]
    info: dict[str, Any]

    def apply(self, forecasts: np.ndarray, targets: tuple[str, ...]) -> np.ndarray:
        """Calibrated copy of (N, horizon, targets, 3) p10/p50/p90 forecasts (sorted input)."""
        out = np.array(forecasts, dtype=np.float64, copy=True)
        horizon = out.shape[1]
        for t, name in enumerate(targets):
            if name not in self.targets:
                continue
            i = self.targets.index(name)
            lower = self.lower[i, :horizon][None, :]
            upper = self.upper[i, :horizon][None, :]
            p10, p50, p90 = out[:, :, t, 0], out[:, :, t, 1], out[:, :, t, 2]
            out[:, :, t, 0] = p50 - lower * (p50 - p10)
            out[:, :, t, 2] = p50 + upper * (p90 - p50)
        return out

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types only."""
        return {
            "version": 1,
            "targets": list(self.targets),
            "lower": np.round(self.lower, 6).tolist(),
            "upper": np.round(self.upper, 6).tolist(),
            "info": self.info,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Calibration:
        """Inverse of `to_json`; ValueError for a malformed file."""
        if data.get("version") != 1:
            raise ValueError(f"calibration format {data.get('version')!r}, expected 1")
        targets = tuple(str(t) for t in data["targets"])
        lower = np.asarray(data["lower"], dtype=np.float64)
        upper = np.asarray(data["upper"], dtype=np.float64)
        if lower.shape != upper.shape or lower.ndim != 2 or lower.shape[0] != len(targets):
            raise ValueError(f"calibration arrays of shapes {lower.shape} and {upper.shape}")
        if not (np.isfinite(lower).all() and np.isfinite(upper).all()):
            raise ValueError("calibration factors must be finite")
        if (lower < 0).any() or (upper < 0).any():
            raise ValueError("calibration factors must not be negative")
        return cls(targets, lower, upper, dict(data.get("info", {})))


def fit(
    y: np.ndarray, forecasts: np.ndarray, targets: tuple[str, ...], level: float = 0.9
) -> Calibration:
    """Factors from actuals `y` (S, horizon, targets) and forecasts (S, horizon, targets, 3).

    `level` is the share of values each side's new bound should hold (0.9: 10 % outside).
    Cells with a non-finite actual are ignored; a (target, step) with fewer than MIN_SAMPLES
    values on a side keeps the factor 1.
    """
    _, horizon, n_targets = y.shape
    lower = np.ones((n_targets, horizon))
    upper = np.ones((n_targets, horizon))
    p10, p50, p90 = forecasts[..., 0], forecasts[..., 1], forecasts[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        up = (y - p50) / (p90 - p50)
        down = (p50 - y) / (p50 - p10)
    for t in range(n_targets):
        for h in range(horizon):
            upper[t, h] = _factor(up[:, h, t], (p90 - p50)[:, h, t], level)
            lower[t, h] = _factor(down[:, h, t], (p50 - p10)[:, h, t], level)
    info = {"level": level, "samples": int(np.isfinite(y).any(axis=(1, 2)).sum())}
    return Calibration(targets, _smooth(lower), _smooth(upper), info)


def _factor(ratio: np.ndarray, width: np.ndarray, level: float) -> float:
    usable = np.isfinite(ratio) & (width > 0)
    if usable.sum() < MIN_SAMPLES:
        return 1.0
    return float(np.quantile(ratio[usable], level))


def _smooth(factors: np.ndarray) -> np.ndarray:
    """Running median along the horizon, then clipped to [MIN_FACTOR, MAX_FACTOR]."""
    half = SMOOTHING // 2
    padded = np.pad(factors, ((0, 0), (half, half)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, SMOOTHING, axis=1)
    return np.clip(np.median(windows, axis=-1), MIN_FACTOR, MAX_FACTOR)
