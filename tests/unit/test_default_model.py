"""The shipped default model: a verified registry version that serves unseen hosts too."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch")

from forecaster.contract import load_contract
from forecaster.features import host_id, profile_of
from forecaster.history_files import read_history
from forecaster.model.fast import Batch, FastPredictor
from forecaster.model.tft import load_bundle
from forecaster.registry import ALLOWED_SUFFIXES, Registry
from simulator.fleet import build_fleet
from simulator.history import HistorySpec, write_history
from training.metrics import nql

pytestmark = pytest.mark.torch
warnings.filterwarnings("ignore", module="pytorch_forecasting|lightning|sklearn")
MODELS = Path(__file__).resolve().parents[2] / "models"
TRAINING_END = 1_795_219_200  # 2026-11-16T00:00Z, end of the default model's training data


@pytest.fixture(scope="module")
def shipped():
    registry = Registry(MODELS)
    version = registry.current()
    assert version is not None, "no current model in models/"
    registry.verify(version, load_contract().version)
    return registry, version, load_bundle(registry.path(version))


def test_shipped_model_is_small_and_holds_only_json_and_safetensors(shipped):
    registry, version, _ = shipped
    files = list(registry.path(version).iterdir())
    assert sum(f.stat().st_size for f in files) < 5 * 1024 * 1024
    assert all(f.name.endswith(ALLOWED_SUFFIXES) for f in files)


def test_shipped_model_records_how_it_was_built_and_its_backtest(shipped):
    registry, version, bundle = shipped
    info = json.loads((registry.path(version) / "training_info.json").read_text())
    assert info["command"].startswith("python -m training.train")
    if "calibration" in info:
        assert info["calibration"]["command"].startswith("python -m training.calibrate")
        assert bundle.calibration is not None
    assert info["metrics"]["seconds"] <= 20 * 60
    backtest = json.loads((registry.path(version) / "backtest.json").read_text())
    assert backtest["command"].startswith("python -m training.backtest")
    ratios = backtest["summary"]["nql_8h_vs_seasonal_naive"]
    assert set(ratios) == set(bundle.config.targets)
    assert all(np.isfinite(list(ratios.values())))


@pytest.fixture(scope="module")
def unseen_window(tmp_path_factory):
    """Two days after the training data: the seen ML hosts and one the model never saw."""
    out = tmp_path_factory.mktemp("transfer")
    nodes = ["ppml001", "ppml002", "ppml003", "ppml0099", "zzq001"]
    first = TRAINING_END // 300
    write_history(
        build_fleet(seed=42, nodes=nodes), HistorySpec(first, first + 576, first * 300.0), out
    )
    return nodes, out


def _forecast_nql(bundle, frame, nodes):
    config = bundle.config
    quantities = [*config.targets, *config.covariates]
    values = np.stack([frame[frame["instance"] == n][quantities].to_numpy() for n in nodes])
    times = frame[frame["instance"] == nodes[0]]["timestamp"].to_numpy()
    predictor = FastPredictor(bundle)
    losses = {n: [] for n in nodes}
    for origin in range(288, 576 - 96 + 1, 24):
        window = values[:, origin - 288 : origin]
        end = int(pd.Timestamp(times[origin - 1]).timestamp())
        batch = Batch(
            end,
            window[..., : len(config.targets)],
            window[..., len(config.targets) :],
            np.full(len(nodes), 288),
            tuple(profile_of(n) for n in nodes),
            tuple(host_id(n) for n in nodes),
        )
        forecast = predictor.predict(batch)
        actual = values[:, origin : origin + 96, : len(config.targets)]
        for k, node in enumerate(nodes):
            losses[node].append(
                [
                    nql(actual[k, :, t], forecast[k, :, t], config.quantiles)
                    for t in range(len(config.targets))
                ]
            )
    return {n: np.mean(v, axis=0) for n, v in losses.items()}, forecast


@pytest.mark.fault("C6")
def test_an_unseen_host_is_forecast_as_well_as_the_seen_hosts_of_its_profile(
    shipped, unseen_window
):
    _, _, bundle = shipped
    nodes, out = unseen_window
    quantities = [*bundle.config.targets, *bundle.config.covariates]
    losses, forecast = _forecast_nql(bundle, read_history(out, quantities), nodes)
    seen = np.mean([losses[n] for n in ("ppml001", "ppml002", "ppml003")], axis=0)
    assert losses["ppml0099"].mean() <= 1.2 * seen.mean(), (losses["ppml0099"], seen)
    # An unknown prefix (generic profile, unknown host) is served with finite, ordered quantiles.
    assert np.isfinite(forecast[-1]).all() and (np.diff(forecast[-1], axis=-1) >= 0).all()


def test_calibrated_band_keeps_the_median_of_the_raw_model(shipped):
    _, _, bundle = shipped
    if bundle.calibration is None:
        pytest.skip("the shipped model is not calibrated")
    rng = np.random.default_rng(0)
    config = bundle.config
    n = 3
    batch = Batch(
        TRAINING_END,
        rng.uniform(0.2, 0.6, size=(n, 288, len(config.targets))),
        rng.uniform(0.0, 1.0, size=(n, 288, len(config.covariates))),
        np.full(n, 288),
        ("database",) * n,
        tuple(host_id(f"ppdb00{i}") for i in range(n)),
    )
    calibrated = FastPredictor(bundle).predict(batch)
    raw_bundle = dataclasses.replace(bundle, calibration=None)
    raw = FastPredictor(raw_bundle).predict(batch)
    np.testing.assert_allclose(calibrated[..., 1], raw[..., 1])
    assert not np.allclose(calibrated[..., 2], raw[..., 2])
    assert (np.diff(calibrated, axis=-1) >= 0).all()
