"""Training frames: contiguous, NaN-free series segments in the model's columns."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from forecaster.grid import DAY_STEPS, STEP_SECONDS
from forecaster.model.config import TFTConfig
from forecaster.model.dataset import GROUP, TIME, model_frame, model_input

ABSENT_SUFFIX = "#absent"
MAX_FILL_STEPS = 3  # gaps up to 15 minutes are interpolated; longer ones split a series
WEIGHT = "weight"


def segments(wide: pd.DataFrame, config: TFTConfig) -> pd.DataFrame:
    """Model frame of every gap-free stretch long enough for one training window.

    Short gaps are interpolated per series; rows still incomplete split the series into
    segments named `<instance>@<n>`, and segments shorter than encoder + horizon are dropped.
    Missing values are never invented beyond MAX_FILL_STEPS.
    """
    columns = [*config.targets, *config.covariates]
    frame = model_frame(_fill_short_gaps(wide, columns), config)
    complete = frame[columns].notna().all(axis=1).to_numpy()
    series = frame[GROUP].to_numpy()
    time_idx = frame[TIME].to_numpy()
    starts = np.r_[True, (series[1:] != series[:-1]) | (np.diff(time_idx) != 1)]
    starts |= np.r_[True, complete[1:] != complete[:-1]]
    segment_id = np.cumsum(starts)
    frame[GROUP] = [f"{s}@{k}" for s, k in zip(series, segment_id, strict=True)]
    frame = frame[complete]
    sizes = frame.groupby(GROUP)[TIME].transform("size")
    return frame[sizes >= config.encoder_length + config.horizon].reset_index(drop=True)


def _fill_short_gaps(wide: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Re-index each instance on the full 5-minute grid and interpolate short gaps only."""
    pieces = []
    for instance, rows in wide.groupby("instance", sort=True):
        indexed = rows.set_index("timestamp").sort_index()
        grid = pd.date_range(indexed.index[0], indexed.index[-1], freq=f"{STEP_SECONDS}s")
        filled = indexed.reindex(grid)
        filled[columns] = filled[columns].interpolate(limit=MAX_FILL_STEPS, limit_area="inside")
        filled["instance"] = instance
        if "profile" in filled.columns:
            filled["profile"] = filled["profile"].ffill().bfill()
        pieces.append(filled.rename_axis("timestamp").reset_index())
    return pd.concat(pieces, ignore_index=True)


def excursion_weights(frame: pd.DataFrame, config: TFTConfig, strength: float) -> np.ndarray:
    """Per-row loss weights 1 + strength * (how far the targets stray from their recent normal).

    The excursion of a row is its largest robust z-score over the targets, against the series'
    trailing 24 h median and median absolute deviation, rising from 0 at |z| = 3 to 1 at
    |z| = 6, so ordinary daily swings keep weight 1. Rare
    departures such as an incident's precursor then count more in the loss than the long calm
    stretches between them. Uses the data alone (no labels); weights are never model inputs.
    """
    if strength <= 0:
        return np.ones(len(frame))
    grouped = frame.groupby(GROUP, sort=False)
    excursion = np.zeros(len(frame))
    for target in config.targets:
        rolling = grouped[target].rolling(DAY_STEPS, min_periods=12)
        median = rolling.median().reset_index(level=0, drop=True).reindex(frame.index)
        deviation = (frame[target] - median).abs()
        spread = deviation.groupby(frame[GROUP]).transform(
            lambda d: d.rolling(DAY_STEPS, min_periods=12).median()
        )
        scale = spread.where(spread > 0).fillna(deviation.median() or 1.0) * 1.4826
        z = (deviation / scale).fillna(0.0).to_numpy()
        excursion = np.maximum(excursion, np.clip((z - 3.0) / 3.0, 0.0, 1.0))
    return 1.0 + strength * excursion


def with_absent_copies(
    frame: pd.DataFrame, config: TFTConfig, fraction: float, seed: int, rate: float = 0.5
) -> pd.DataFrame:
    """Add copies of some series in which some quantities are absent (input-absence masking).

    Real hosts seldom export every quantity of the contract (most have no HTTP latency, request
    counts or GC pauses; some have no disk or filesystem series), and the service gives an
    absent quantity the value the cleaner fills it with, zero (`forecaster.clean`: `absent`).
    The simulator's hosts export everything, so without these copies the network only ever
    sees a zero history as a real, idle one. In each copy every quantity is absent with
    probability `rate` (at least one target stays present), its column set to what the model
    reads for a zero history (`model_input(name, 0)`), exactly as served. The copies, named
    `<series>#absent`, are a deterministic function of the seed and the series names.
    """
    if fraction <= 0:
        return frame
    names = sorted(frame[GROUP].unique())
    ranked = sorted(names, key=lambda n: hashlib.sha256(f"absent:{seed}:{n}".encode()).hexdigest())
    chosen = ranked[: max(1, round(fraction * len(names)))]
    quantities = [*config.targets, *config.covariates]
    copies = []
    for name in chosen:
        digest = hashlib.sha256(f"absent:{seed}:{name}:set".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        absent = rng.random(len(quantities)) < rate
        if absent[: len(config.targets)].all():
            absent[rng.integers(len(config.targets))] = False
        copy = frame[frame[GROUP] == name].copy()
        copy[GROUP] = name + ABSENT_SUFFIX
        for quantity in np.asarray(quantities)[absent]:
            copy[quantity] = model_input(str(quantity), np.zeros(len(copy)), config)
        copies.append(copy)
    return pd.concat([frame, *copies], ignore_index=True)
