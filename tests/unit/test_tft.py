"""The TFT package: the fast path equals the library path; artefacts load without pickle."""

from __future__ import annotations

import builtins
import dataclasses
import pickle
import warnings

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from pytorch_forecasting import TimeSeriesDataSet  # noqa: E402

from forecaster.features import host_id, profile_of  # noqa: E402
from forecaster.history_files import read_history  # noqa: E402
from forecaster.model.config import TFTConfig  # noqa: E402
from forecaster.model.dataset import (  # noqa: E402
    known_categories,
    make_dataset,
    model_frame,
    with_unknown_copies,
)
from forecaster.model.fast import Batch, FastPredictor  # noqa: E402
from forecaster.model.serialize import FormatError, from_json, to_json  # noqa: E402
from forecaster.model.tft import ModelBundle, build_model, load_bundle, save_bundle  # noqa: E402
from forecaster.registry import Registry  # noqa: E402
from simulator.fleet import build_fleet  # noqa: E402
from simulator.history import HistorySpec, write_history  # noqa: E402

pytestmark = pytest.mark.torch
warnings.filterwarnings("ignore", module="pytorch_forecasting|lightning|sklearn")
CONFIG = TFTConfig(hidden_size=4, attention_heads=1, hidden_continuous_size=4)
QUANTITIES = [*CONFIG.targets, *CONFIG.covariates]
START = 1_795_305_600 // 300 - 288 * 4


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """Four days of six simulated hosts, as the training pipeline reads them."""
    out = tmp_path_factory.mktemp("history")
    write_history(build_fleet(6, seed=3), HistorySpec(START, START + 288 * 4, START * 300.0), out)
    return read_history(out, QUANTITIES)


def _untrained(wide, config):
    torch.manual_seed(0)
    train = wide[wide["timestamp"] < wide["timestamp"].max() - pd.Timedelta(days=1)]
    dataset = make_dataset(with_unknown_copies(model_frame(train, config), 0.3, 0), config)
    model = build_model(dataset, config, [1.0] * len(config.targets)).eval()
    return ModelBundle(config, model, dataset.get_parameters())


@pytest.fixture(scope="module", params=["mean", "last"])
def bundle(wide, request):
    """An untrained tiny model per per-window centring: the arithmetic is what is tested."""
    return _untrained(wide, dataclasses.replace(CONFIG, normalisation=request.param))


CASES = [("ppdb001", 288), ("ppml001", 150), ("ppcon001", 36), ("ppweb001", 288)]
RENAMED = {"ppweb001": "zzhost7"}  # a host the model never saw (its profile label is kept)


def _library_forecast(bundle, wide, end):
    rows = []
    for instance, length in CASES:
        history = wide[(wide["instance"] == instance) & (wide["timestamp"] <= end)].tail(length)
        future = pd.DataFrame([history.iloc[-1]] * bundle.config.horizon)
        future["timestamp"] = [end + pd.Timedelta(minutes=5 * (i + 1)) for i in range(96)]
        rows += [history, future]
    frame = pd.concat(rows, ignore_index=True).replace({"instance": RENAMED})
    frame = known_categories(bundle.parameters, model_frame(frame, bundle.config))
    dataset = TimeSeriesDataSet.from_parameters(bundle.parameters, frame, predict=True)
    result = bundle.model.predict(dataset, mode="quantiles", batch_size=8, return_index=True)
    output = np.stack([o.numpy() for o in result.output], axis=2)
    order = list(result.index["series"])
    return {name: np.sort(output[order.index(name)], axis=-1) for name in order}


def _batch(bundle, wide, end):
    n = len(CASES)
    targets = np.zeros((n, 288, len(CONFIG.targets)))
    covariates = np.zeros((n, 288, len(CONFIG.covariates)))
    for k, (instance, length) in enumerate(CASES):
        history = wide[(wide["instance"] == instance) & (wide["timestamp"] <= end)].tail(length)
        targets[k, 288 - length :] = history[list(CONFIG.targets)].to_numpy()
        covariates[k, 288 - length :] = history[list(CONFIG.covariates)].to_numpy()
    names = [RENAMED.get(i, i) for i, _ in CASES]
    labels = wide.groupby("instance")["profile"].first()
    # Raw profiles and host ids: the fast path maps those it never saw to `unknown` itself.
    profiles = tuple(profile_of(n, labels[i]) for n, (i, _) in zip(names, CASES, strict=True))
    hosts = tuple(map(host_id, names))
    lengths = np.array([length for _, length in CASES])
    return names, Batch(int(end.timestamp()), targets, covariates, lengths, profiles, hosts)


def test_fast_path_equals_the_library_path(bundle, wide):
    end = wide["timestamp"].max() - pd.Timedelta(hours=12)
    library = _library_forecast(bundle, wide, end)
    names, batch = _batch(bundle, wide, end)
    fast = FastPredictor(bundle, batch_size=3).predict(batch)
    assert fast.shape == (len(CASES), CONFIG.horizon, len(CONFIG.targets), 3)
    for k, name in enumerate(names):
        relative = np.abs(fast[k] - library[name]) / np.maximum(np.abs(library[name]), 1e-9)
        assert relative.max() < 1e-4, name


@pytest.mark.fault("C7")
def test_fast_path_quantiles_never_cross_and_are_finite(bundle, wide):
    end = wide["timestamp"].max() - pd.Timedelta(hours=6)
    _, batch = _batch(bundle, wide, end)
    forecast = FastPredictor(bundle).predict(batch)
    assert np.isfinite(forecast).all()
    assert (np.diff(forecast, axis=-1) >= 0).all()


def test_saved_version_reloads_with_identical_forecasts(bundle, wide, tmp_path):
    registry = Registry(tmp_path)
    with registry.staging("v1") as staged:
        save_bundle(bundle, staged)
        registry.commit(staged, "v1", {"contract_version": "1.0.0"})
    registry.verify("v1", "1.0.0")
    loaded = load_bundle(registry.path("v1"))
    _, batch = _batch(bundle, wide, wide["timestamp"].max() - pd.Timedelta(hours=6))
    np.testing.assert_array_equal(
        FastPredictor(loaded).predict(batch), FastPredictor(bundle).predict(batch)
    )


class _Canary:
    """Unpickling this creates the canary file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


@pytest.mark.fault("C5")
def test_pickles_planted_next_to_a_model_are_never_opened(bundle, tmp_path, monkeypatch):
    registry = Registry(tmp_path / "models")
    with registry.staging("v1") as staged:
        save_bundle(bundle, staged)
        registry.commit(staged, "v1", {"contract_version": "1.0.0"})
    canary = tmp_path / "canary"
    for name in ("model.ckpt", "dataset_parameters.pkl", "model.pt"):
        (registry.path("v1") / name).write_bytes(pickle.dumps(_Canary(canary)))

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle load path was used")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    registry.verify("v1", "1.0.0")
    load_bundle(registry.path("v1"))
    assert not canary.exists()


def test_json_artefacts_refuse_unknown_types():
    with pytest.raises(FormatError):
        to_json(object())
    with pytest.raises(FormatError):
        from_json({"__type__": "os.system", "params": {}})
    with pytest.raises(FormatError):
        from_json({"__type__": "StandardScaler", "state": {"__class__": 1}})
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    restored = from_json(to_json({"a": array, "nan": float("nan"), (1, 2): "pair"}))
    np.testing.assert_array_equal(restored["a"], array)
    assert np.isnan(restored["nan"]) and restored[(1, 2)] == "pair"
