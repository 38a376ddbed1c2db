"""From a cleaned wide frame to pytorch-forecasting's TimeSeriesDataSet, for training and
for the library's own prediction path (which the fast path is checked against)."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pandas as pd
from pytorch_forecasting import TimeSeriesDataSet
from pytorch_forecasting.data import EncoderNormalizer, MultiNormalizer, NaNLabelEncoder

from forecaster.features import UNKNOWN, calendar, host_id, profile_of
from forecaster.grid import STEP_SECONDS
from forecaster.model.config import LOG_FLOOR, TFTConfig
from forecaster.model.normalizers import LastValueNormalizer

GROUP = "series"
TIME = "time_idx"
STATIC = ("profile", "host")


def epoch_seconds(timestamps: pd.Series) -> np.ndarray:
    """Unix seconds of tz-aware timestamps, whatever their resolution."""
    utc = pd.to_datetime(timestamps, utc=True)
    return ((utc - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(np.int64)


def model_frame(wide: pd.DataFrame, config: TFTConfig) -> pd.DataFrame:
    """Model columns from a cleaned wide frame (instance, timestamp, [profile], quantities).

    Targets and covariates must be free of NaN; log covariates become log1p(value).
    """
    missing = [q for q in (*config.targets, *config.covariates) if q not in wide.columns]
    if missing:
        raise ValueError(f"quantities missing from the frame: {missing}")
    seconds = epoch_seconds(wide["timestamp"])
    labels = wide["profile"] if "profile" in wide.columns else pd.Series(None, index=wide.index)
    instances = wide["instance"].astype(str)
    profiles = {i: profile_of(i, p) for i, p in zip(instances, labels, strict=True)}
    frame = pd.DataFrame(
        {
            GROUP: instances.to_numpy(),
            TIME: seconds // STEP_SECONDS,
            "profile": instances.map(profiles).to_numpy(),
            "host": instances.map(host_id).to_numpy(),
            **calendar(seconds),
        }
    )
    for name in (*config.targets, *config.covariates):
        frame[name] = model_input(name, wide[name].to_numpy(np.float64), config)
    return frame.sort_values([GROUP, TIME], kind="stable").reset_index(drop=True)


def model_input(name: str, values: np.ndarray, config: TFTConfig) -> np.ndarray:
    """A quantity as the model reads it: log1p for log covariates, floored for log targets."""
    if name in config.log_covariates:
        return np.log1p(np.maximum(values, 0.0))
    if config.transformations.get(name) == "log":
        return np.maximum(values, LOG_FLOOR)
    return values


def with_unknown_copies(frame: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """Add copies of some series whose profile and host are `unknown` (profile masking).

    The model thereby learns what to do for hosts and profiles it has never seen. The choice
    of series is a deterministic function of the seed and the series names.
    """
    names = sorted(frame[GROUP].unique())
    ranked = sorted(names, key=lambda n: hashlib.sha256(f"{seed}:{n}".encode()).hexdigest())
    chosen = ranked[: max(1, round(fraction * len(names)))] if fraction > 0 else []
    copies = frame[frame[GROUP].isin(chosen)].copy()
    copies[GROUP] = copies[GROUP] + "#unknown"
    copies["profile"] = UNKNOWN
    copies["host"] = UNKNOWN
    return pd.concat([frame, copies], ignore_index=True)


def make_dataset(frame: pd.DataFrame, config: TFTConfig, **kwargs: Any) -> TimeSeriesDataSet:
    """The training TimeSeriesDataSet (extra keyword arguments go to its constructor)."""
    kind = LastValueNormalizer if config.normalisation == "last" else EncoderNormalizer
    normalizers = [
        kind(method="standard", transformation=config.transformations.get(t))
        for t in config.targets
    ]
    return TimeSeriesDataSet(
        frame,
        time_idx=TIME,
        target=list(config.targets),
        group_ids=[GROUP],
        max_encoder_length=config.encoder_length,
        min_encoder_length=config.min_encoder_length,
        max_prediction_length=config.horizon,
        min_prediction_length=config.horizon,
        static_categoricals=list(STATIC),
        time_varying_known_reals=list(config.calendar),
        time_varying_unknown_reals=[*config.targets, *config.covariates],
        # Unseen series, profiles and hosts encode as the NaN class instead of failing.
        categorical_encoders={name: NaNLabelEncoder(add_nan=True) for name in (GROUP, *STATIC)},
        target_normalizer=MultiNormalizer(normalizers),
        add_relative_time_idx=True,
        add_target_scales=True,
        add_encoder_length=True,
        **kwargs,
    )


def known_categories(parameters: dict[str, Any], frame: pd.DataFrame) -> pd.DataFrame:
    """Map profiles and hosts the model never saw to `unknown`, which it learnt to handle."""
    frame = frame.copy()
    for name in STATIC:
        classes = parameters["categorical_encoders"][name].classes_
        frame.loc[~frame[name].isin(list(classes)), name] = UNKNOWN
    return frame
