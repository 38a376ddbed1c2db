"""JSON instead of pickle for pytorch-forecasting's dataset parameters and model hparams.

Only a whitelist of encoder and normaliser classes is accepted; each is stored as its type
name, its constructor arguments and its fitted attributes (numpy arrays and tensors as typed
lists). Loading builds fresh objects from that data and never executes anything it reads.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from pytorch_forecasting.data import EncoderNormalizer, MultiNormalizer, NaNLabelEncoder
from pytorch_forecasting.data.encoders import TorchNormalizer
from pytorch_forecasting.metrics import MultiLoss, QuantileLoss
from sklearn.preprocessing import StandardScaler

from forecaster.model.normalizers import LastValueNormalizer

ESTIMATORS: dict[str, type] = {
    "NaNLabelEncoder": NaNLabelEncoder,
    "StandardScaler": StandardScaler,
    "EncoderNormalizer": EncoderNormalizer,
    "LastValueNormalizer": LastValueNormalizer,
    "MultiNormalizer": MultiNormalizer,
    "TorchNormalizer": TorchNormalizer,
}
TYPE = "__type__"


class FormatError(ValueError):
    """A serialised artefact that does not describe what this code can rebuild."""


def to_json(value: Any) -> Any:  # noqa: PLR0911 - one return per stored type
    """Encode `value` (estimators, arrays, tensors, dicts, lists, scalars) as JSON data."""
    if type(value) in ESTIMATORS.values():
        return _encode_estimator(value)
    if isinstance(value, np.ndarray | torch.Tensor):
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        kind = "tensor" if isinstance(value, torch.Tensor) else "ndarray"
        return {
            TYPE: kind,
            "dtype": str(array.dtype),
            "shape": list(array.shape),
            "data": [to_json(x) for x in array.ravel().tolist()],
        }
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: to_json(v) for k, v in value.items()}
        return {TYPE: "pairs", "items": [[to_json(k), to_json(v)] for k, v in value.items()]}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, np.generic):
        return to_json(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return {TYPE: "float", "value": repr(value)}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise FormatError(f"cannot store a {type(value).__name__} as JSON")


def from_json(data: Any) -> Any:  # noqa: PLR0911 - one return per stored type
    """Inverse of `to_json`."""
    if isinstance(data, list):
        return [from_json(v) for v in data]
    if not isinstance(data, dict):
        return data
    kind = data.get(TYPE)
    if kind is None:
        return {k: from_json(v) for k, v in data.items()}
    if kind in ("ndarray", "tensor"):
        array = np.array([from_json(x) for x in data["data"]], dtype=data["dtype"])
        array = array.reshape(data["shape"])
        return torch.from_numpy(array) if kind == "tensor" else array
    if kind == "pairs":
        return {_key(from_json(k)): from_json(v) for k, v in data["items"]}
    if kind == "float":
        return float(data["value"])
    if kind in ESTIMATORS:
        return _estimator(kind, data)
    raise FormatError(f"unknown stored type {kind!r}")


def _key(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _encode_estimator(estimator: Any) -> dict[str, Any]:
    params = estimator.get_params(deep=False)
    state = {k: v for k, v in vars(estimator).items() if k.endswith("_") and not k.startswith("_")}
    return {TYPE: type(estimator).__name__, "params": to_json(params), "state": to_json(state)}


def _estimator(kind: str, data: dict[str, Any]) -> Any:
    params = from_json(data.get("params", {}))
    estimator = ESTIMATORS[kind](**params)
    for name, value in from_json(data.get("state", {})).items():
        if not name.endswith("_") or name.startswith("_"):
            raise FormatError(f"{kind}: unexpected attribute {name!r}")
        setattr(estimator, name, value)
    return estimator


# -- model hyper-parameters ---------------------------------------------------------------------


def quantile_loss(quantiles: list[float], weights: list[float]) -> MultiLoss:
    """The training loss: one quantile loss per target, weighted by 1 / its typical size.

    pytorch-forecasting scores predictions in original units, so without weights a target in
    bytes/s would drown one in ratios; with them each term is a normalised quantile loss.
    """
    losses = [QuantileLoss(quantiles=list(quantiles)) for _ in weights]
    return MultiLoss(losses, weights=[float(w) for w in weights])


def hparams_to_json(model: Any, quantiles: list[float]) -> dict[str, Any]:
    """A model's hyper-parameters as JSON: objects replaced by data that rebuilds them."""
    hparams = dict(model.hparams)
    skipped = {"loss", "logging_metrics", "output_transformer", "dataset_parameters"}
    plain = {k: to_json(v) for k, v in hparams.items() if k not in skipped}
    plain["embedding_sizes"] = {k: list(v) for k, v in hparams["embedding_sizes"].items()}
    return {
        "hparams": plain,
        "loss": {
            "quantiles": list(quantiles),
            "weights": [float(w) for w in model.loss.weights],
        },
        "output_transformer": to_json(hparams["output_transformer"]),
    }


def hparams_from_json(data: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for `TemporalFusionTransformer(**kwargs)` from `hparams_to_json`."""
    hparams = from_json(data["hparams"])
    hparams["embedding_sizes"] = {k: tuple(v) for k, v in hparams["embedding_sizes"].items()}
    hparams["loss"] = quantile_loss(data["loss"]["quantiles"], data["loss"]["weights"])
    hparams["output_transformer"] = from_json(data["output_transformer"])
    hparams["logging_metrics"] = torch.nn.ModuleList([])
    return hparams
