"""The TFT model: built from a dataset, stored as safetensors + JSON, loaded without pickle."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytorch_forecasting
import torch
from pytorch_forecasting import TemporalFusionTransformer, TimeSeriesDataSet
from safetensors.torch import load_model, save_model

from forecaster.model.calibration import FILENAME as CALIBRATION
from forecaster.model.calibration import Calibration
from forecaster.model.config import TFTConfig
from forecaster.model.schema import DATASET_PARAMETERS, MODEL_CONFIG, WEIGHTS, check_bundle
from forecaster.model.serialize import (
    from_json,
    hparams_from_json,
    hparams_to_json,
    quantile_loss,
    to_json,
)


@dataclass
class ModelBundle:
    """A trained model with what it needs to turn raw arrays into its inputs."""

    config: TFTConfig
    model: TemporalFusionTransformer
    parameters: dict[str, Any]  # TimeSeriesDataSet parameters: encoders, scalers, normalisers
    calibration: Calibration | None = None  # per-horizon band scaling (calibration.json)


def loss_weights(frame: pd.DataFrame, config: TFTConfig) -> list[float]:
    """1 / mean |y| per target over the training frame (1.0 for an all-zero target)."""
    means = frame[list(config.targets)].abs().mean().to_numpy()
    return [1.0 / m if m > 0 else 1.0 for m in means]


def build_model(
    dataset: TimeSeriesDataSet, config: TFTConfig, weights: list[float]
) -> TemporalFusionTransformer:
    """A fresh TFT shaped by `dataset` and `config`, its loss weighted per target."""
    return TemporalFusionTransformer.from_dataset(
        dataset,
        hidden_size=config.hidden_size,
        attention_head_size=config.attention_heads,
        hidden_continuous_size=config.hidden_continuous_size,
        dropout=config.dropout,
        learning_rate=config.learning_rate,
        loss=quantile_loss(list(config.quantiles), weights),
        logging_metrics=torch.nn.ModuleList([]),
        log_interval=-1,
        reduce_on_plateau_patience=1000,  # None breaks under Lightning 2.6
    )


def save_bundle(bundle: ModelBundle, directory: Path) -> list[str]:
    """Write weights and JSON into `directory`; returns the file names written."""
    directory.mkdir(parents=True, exist_ok=True)
    save_model(bundle.model, str(directory / WEIGHTS))
    model_config = {
        "config": bundle.config.to_json(),
        **hparams_to_json(bundle.model, list(bundle.config.quantiles)),
        "libraries": {
            "torch": torch.__version__,
            "pytorch_forecasting": pytorch_forecasting.__version__,
        },
    }
    _write_json(directory / MODEL_CONFIG, model_config)
    _write_json(directory / DATASET_PARAMETERS, to_json(bundle.parameters))
    return [WEIGHTS, MODEL_CONFIG, DATASET_PARAMETERS]


def load_bundle(directory: Path, device: str = "cpu") -> ModelBundle:
    """Rebuild a model from `directory` (checked by the registry first); strict weight loading.

    The artefacts are checked against their schemas before anything is built from them
    (`forecaster.model.schema.ArtefactError`, a ValueError, if one fails).
    """
    check_bundle(directory)
    model_config = json.loads((directory / MODEL_CONFIG).read_text())
    config = TFTConfig.from_json(model_config["config"])
    with warnings.catch_warnings():  # Lightning's advice on checkpointing: no checkpoints here
        warnings.filterwarnings("ignore", message="Attribute .* is an instance of `nn.Module`")
        model = TemporalFusionTransformer(**hparams_from_json(model_config))
    load_model(model, str(directory / WEIGHTS), strict=True, device=device)
    model.eval()
    parameters = from_json(json.loads((directory / DATASET_PARAMETERS).read_text()))
    calibration = None
    if (directory / CALIBRATION).is_file():
        calibration = Calibration.from_json(json.loads((directory / CALIBRATION).read_text()))
    return ModelBundle(config, model.to(device), parameters, calibration)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True, allow_nan=False) + "\n")
