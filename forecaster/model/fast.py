"""Fast inference: model inputs built directly as tensors from arrays, all series batched.

pytorch-forecasting's own path builds a TimeSeriesDataSet and a DataLoader from a DataFrame
at every call. This module applies the same transformations (fitted scalers, per-window
encoder normalisation, label encodings, relative time and encoder-length features) with
array operations and calls the network once per batch under `torch.inference_mode()`.
`tests/unit/test_tft.py` checks that both paths give the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from forecaster.features import UNKNOWN, calendar
from forecaster.grid import STEP_SECONDS
from forecaster.model.config import FORWARD_BATCH_SIZE
from forecaster.model.dataset import model_input
from forecaster.model.tft import ModelBundle


@dataclass(frozen=True)
class Batch:
    """Raw inputs of N series whose last observed step ends at `end` (unix seconds).

    `targets` (N, L, T) and `covariates` (N, L, C) hold raw values in base units, right-aligned:
    column L-1 is the step ending at `end`; `lengths` (N,) tells how many trailing columns are
    real history (at least the model's minimum encoder length, at most L).
    """

    end: int
    targets: NDArray[np.float64]
    covariates: NDArray[np.float64]
    lengths: NDArray[np.int64]
    profiles: tuple[str, ...]
    hosts: tuple[str, ...]


class FastPredictor:
    """Quantile forecasts (N, horizon, targets, quantiles) from a `Batch`."""

    def __init__(
        self, bundle: ModelBundle, device: str = "cpu", batch_size: int = FORWARD_BATCH_SIZE
    ) -> None:
        self.bundle = bundle
        self.config = bundle.config
        self.device = torch.device(device)
        self.batch_size = batch_size
        hparams = bundle.model.hparams
        self.reals: list[str] = list(hparams["x_reals"])
        self.categoricals: list[str] = list(hparams["x_categoricals"])
        parameters = bundle.parameters
        self.scalers = {
            name: (float(scaler.mean_[0]), float(scaler.scale_[0]))
            for name, scaler in parameters["scalers"].items()
            if scaler is not None
        }
        self.classes = {
            name: dict(parameters["categorical_encoders"][name].classes_)
            for name in self.categoricals
        }
        self.model = bundle.model.to(self.device).eval()

    def predict(self, batch: Batch) -> NDArray[np.float64]:
        """Forecasts of every series in `batch`, quantiles sorted (never crossing)."""
        return self.predict_with_importance(batch)[0]

    @property
    def encoder_variables(self) -> list[str]:
        """Names of the encoder inputs, in the order of the importance columns."""
        return list(self.model.encoder_variables)

    def predict_with_importance(
        self, batch: Batch
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Forecasts (N, horizon, targets, quantiles), sorted (and band-calibrated when the
        version has a calibration), and each series' encoder
        variable-selection weights averaged over its real history (N, len(encoder_variables)),
        the quantity the library's `interpret_output` reports per sample."""
        outputs, weights = [], []
        for lo in range(0, len(batch.lengths), self.batch_size):
            part = slice(lo, lo + self.batch_size)
            x = self.inputs(batch, part)
            with torch.inference_mode():
                out = self.model(x)
                stacked = torch.stack(list(out["prediction"]), dim=2)  # (n, h, targets, q)
                selection = out["encoder_variables"].squeeze(-2)  # (n, width, variables)
                lengths = x["encoder_lengths"]
                valid = torch.arange(selection.size(1), device=lengths.device)[None, :]
                mask = (valid < lengths[:, None]).unsqueeze(-1)
                mean = (selection * mask).sum(dim=1) / lengths.clamp(min=1).unsqueeze(-1)
            outputs.append(stacked.to(torch.float64).cpu().numpy())
            weights.append(mean.to(torch.float64).cpu().numpy())
        if not outputs:
            shape = (0, self.config.horizon, len(self.config.targets), len(self.config.quantiles))
            return np.zeros(shape), np.zeros((0, len(self.encoder_variables)))
        forecasts = np.sort(np.concatenate(outputs, axis=0), axis=-1)
        calibration = self.bundle.calibration
        if calibration is not None and tuple(self.config.quantiles) == (0.1, 0.5, 0.9):
            forecasts = calibration.apply(forecasts, tuple(self.config.targets))
        return forecasts, np.concatenate(weights, axis=0)

    def inputs(self, batch: Batch, part: slice) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """The network's input dictionary for the series in `part`, as the dataset builds it."""
        config = self.config
        lengths = batch.lengths[part].astype(np.int64)
        n, width = len(lengths), int(lengths.max())
        horizon = config.horizon
        # Right-padded layout: series i's encoder occupies positions [0, lengths[i]).
        offsets = np.arange(width)[None, :] - lengths[:, None]  # -length .. width-length-1
        valid = offsets < 0
        columns = batch.targets.shape[1] + np.clip(offsets, -batch.targets.shape[1], -1)
        rows = np.arange(n)[:, None]
        targets = batch.targets[part][rows, columns]  # (n, width, T)
        covariates = batch.covariates[part][rows, columns]
        times = batch.end + STEP_SECONDS * (offsets + 1).astype(np.float64)  # encoder step ends
        future = batch.end + STEP_SECONDS * np.arange(1, horizon + 1, dtype=np.float64)
        encoder, decoder, scales = self._reals(
            targets=targets,
            covariates=covariates,
            valid=valid,
            lengths=lengths,
            times=times,
            future=future,
        )
        cats = self._categoricals(batch, part)
        return {
            "encoder_cont": torch.from_numpy(encoder).to(self.device),
            "decoder_cont": torch.from_numpy(decoder).to(self.device),
            "encoder_cat": cats[:, None, :].expand(n, width, -1).to(self.device),
            "decoder_cat": cats[:, None, :].expand(n, horizon, -1).to(self.device),
            "encoder_lengths": torch.from_numpy(lengths).to(self.device),
            "decoder_lengths": torch.full((n,), horizon, dtype=torch.long, device=self.device),
            "target_scale": [torch.from_numpy(s).to(self.device) for s in scales],
        }

    def _reals(self, *, targets, covariates, valid, lengths, times, future):
        """Continuous inputs (encoder, decoder) and the per-window target scales."""
        config = self.config
        n, width = valid.shape
        horizon = config.horizon
        encoder = np.zeros((n, width, len(self.reals)), dtype=np.float32)
        decoder = np.zeros((n, horizon, len(self.reals)), dtype=np.float32)
        column = {name: i for i, name in enumerate(self.reals)}
        for name, values in calendar(times).items():
            encoder[..., column[name]] = self._scale(name, values)
        for name, values in calendar(future).items():
            decoder[..., column[name]] = self._scale(name, np.broadcast_to(values, (n, horizon)))
        rel = np.arange(width)[None, :] - lengths[:, None]
        encoder[..., column["relative_time_idx"]] = rel / config.encoder_length
        decoder[..., column["relative_time_idx"]] = (
            np.arange(horizon)[None, :] / config.encoder_length
        )
        length_feature = (lengths - 0.5 * config.encoder_length) / config.encoder_length * 2.0
        encoder[..., column["encoder_length"]] = length_feature[:, None]
        decoder[..., column["encoder_length"]] = length_feature[:, None]
        for i, name in enumerate(config.covariates):
            values = model_input(name, covariates[..., i], config)
            encoder[..., column[name]] = np.where(valid, self._scale(name, values), 0.0)
        scales = []
        for i, name in enumerate(config.targets):
            normalised, center, scale = self._normalise_target(i, name, targets[..., i], valid)
            encoder[..., column[name]] = normalised
            for suffix, value in (("center", center), ("scale", scale)):
                feature = self._scale(f"{name}_{suffix}", value)[:, None]
                encoder[..., column[f"{name}_{suffix}"]] = feature
                decoder[..., column[f"{name}_{suffix}"]] = feature
            scales.append(np.stack([center, scale], axis=-1).astype(np.float32))
        return encoder, decoder, scales

    def _normalise_target(self, index: int, name: str, values, valid):
        """Per-window standardisation over the encoder, as the dataset's normaliser does
        (float32): scale = std of the window; centre = its mean, or its last value."""
        normalizer = self.bundle.parameters["target_normalizer"].normalizers[index]
        y = torch.from_numpy(model_input(name, values, self.config).astype(np.float32))
        y = normalizer.preprocess(y)
        mask = torch.from_numpy(valid)
        count = mask.sum(dim=1)
        mean = torch.where(mask, y, 0.0).sum(dim=1) / count
        variance = torch.where(mask, (y - mean[:, None]) ** 2, 0.0).sum(dim=1) / (count - 1)
        scale = variance.sqrt() + torch.finfo(torch.float32).eps
        if self.config.normalisation == "last":  # the last valid step of the right-padded row
            center = y[torch.arange(len(count)), count - 1]
        else:
            center = mean
        normalised = torch.where(mask, (y - center[:, None]) / scale[:, None], 0.0)
        return normalised.numpy(), center.numpy(), scale.numpy()

    def _scale(self, name: str, values):
        mean, scale = self.scalers.get(name, (0.0, 1.0))
        return ((np.asarray(values, dtype=np.float64) - mean) / scale).astype(np.float32)

    def _categoricals(self, batch: Batch, part: slice) -> torch.Tensor:
        columns = []
        for name in self.categoricals:
            values = batch.profiles[part] if name == "profile" else batch.hosts[part]
            classes = self.classes[name]
            fallback = classes.get(UNKNOWN, 0)
            columns.append([classes.get(v, fallback) for v in values])
        return torch.tensor(columns, dtype=torch.long).T.contiguous()
