"""Training and backtest pipelines on tiny data: versions written, scores comparable."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

pytest.importorskip("torch")

from forecaster.contract import load_contract
from forecaster.history_files import read_history
from forecaster.model.config import TFTConfig
from forecaster.model.dataset import model_input
from forecaster.model.tft import load_bundle
from forecaster.registry import Registry
from simulator.fleet import build_fleet
from simulator.history import HistorySpec, write_history
from training.backtest import BacktestSpec, origins, run_backtest, to_grid
from training.dataset import ABSENT_SUFFIX, excursion_weights, segments, with_absent_copies
from training.train import TrainOptions, train, write_version

pytestmark = [pytest.mark.torch, pytest.mark.slow]
warnings.filterwarnings("ignore", module="pytorch_forecasting|lightning|sklearn")
CONFIG = TFTConfig(hidden_size=4, attention_heads=1, hidden_continuous_size=4)
QUANTITIES = [*CONFIG.targets, *CONFIG.covariates]
FIRST = 1_795_305_600 // 300 - 288 * 5


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    out = tmp_path_factory.mktemp("history")
    write_history(build_fleet(4, seed=11), HistorySpec(FIRST, FIRST + 288 * 5, FIRST * 300.0), out)
    return read_history(out, QUANTITIES)


def test_gaps_split_series_and_short_gaps_are_filled(wide):
    holed = wide.copy()
    first = holed["instance"] == holed["instance"].iloc[0]
    rows = holed.index[first]
    holed.loc[rows[100:102], "cpu_utilisation"] = np.nan  # filled
    holed.loc[rows[700:720], "cpu_utilisation"] = np.nan  # splits the series
    frame = segments(holed, CONFIG)
    assert frame[list(CONFIG.targets)].notna().all().all()
    names = frame["series"].unique()
    assert sum(n.startswith(holed["instance"].iloc[0]) for n in names) == 2


def test_excursion_weights_single_out_departures_from_the_recent_normal(wide):
    frame = segments(wide, CONFIG)
    calm = excursion_weights(frame, CONFIG, 4.0)
    assert excursion_weights(frame, CONFIG, 0.0).tolist() == [1.0] * len(frame)
    spiked = frame.copy()
    row = spiked.index[spiked["series"] == spiked["series"].iloc[0]][600]
    spiked.loc[row, "memory_utilisation"] = 0.99
    weights = excursion_weights(spiked, CONFIG, 4.0)
    assert weights[row] == 5.0 and calm[row] < 5.0
    assert ((weights >= 1.0) & (weights <= 5.0)).all()
    assert np.median(calm) == 1.0


def test_absent_copies_hold_what_the_service_feeds_for_a_quantity_a_host_lacks(wide):
    frame = segments(wide, CONFIG)
    assert with_absent_copies(frame, CONFIG, 0.0, seed=1) is frame
    augmented = with_absent_copies(frame, CONFIG, 0.5, seed=1)
    again = with_absent_copies(frame, CONFIG, 0.5, seed=1)
    assert augmented.equals(again), "a deterministic function of the seed and the names"
    originals = augmented[~augmented["series"].str.endswith(ABSENT_SUFFIX)]
    assert originals.reset_index(drop=True).equals(frame), "the real series are kept unchanged"
    copies = augmented[augmented["series"].str.endswith(ABSENT_SUFFIX)]
    names = copies["series"].unique()
    assert len(names) == round(0.5 * frame["series"].nunique())
    absent_seen = set()
    for name in names:
        copy = copies[copies["series"] == name].reset_index(drop=True)
        source = frame[frame["series"] == name.removesuffix(ABSENT_SUFFIX)].reset_index(drop=True)
        assert copy["time_idx"].equals(source["time_idx"])
        present_targets = 0
        for quantity in QUANTITIES:
            if copy[quantity].equals(source[quantity]):
                present_targets += quantity in CONFIG.targets
                continue
            # exactly what the cleaner's zero fill becomes on the served path
            served = model_input(quantity, np.zeros(len(copy)), CONFIG)
            np.testing.assert_array_equal(copy[quantity].to_numpy(), served)
            absent_seen.add(quantity)
        assert present_targets >= 1, "every copy keeps at least one real target"
    assert absent_seen, "some quantities were made absent"


@pytest.fixture(scope="module")
def trained(wide, tmp_path_factory):
    options = TrainOptions(
        max_time_s=20, batches_per_epoch=2, max_epochs=2, batch_size=16, absent_fraction=0.5
    )
    bundle, metrics = train(wide, CONFIG, options)
    registry = Registry(tmp_path_factory.mktemp("models"))
    info = {"contract_version": load_contract().version, "metrics": metrics, "version": "t1"}
    version = write_version(registry, bundle, wide, info)
    return registry, version, metrics


def test_training_writes_a_version_that_verifies_and_loads(trained):
    registry, version, metrics = trained
    registry.verify(version, load_contract().version)
    assert np.isfinite(metrics["train_loss"]) and metrics["steps"] >= 1
    mapping = json.loads((registry.path(version) / "server_mapping.json").read_text())
    assert set(mapping["servers"]) == set(build_fleet(4, seed=11).nodes)
    assert load_bundle(registry.path(version)).config == CONFIG


def test_backtest_scores_every_method_on_the_same_origins(trained, wide):
    registry, version, _ = trained
    bundle = load_bundle(registry.path(version))
    grid = to_grid(wide, QUANTITIES)
    spec = BacktestSpec(origin_every=96, baselines=("naive", "predict_linear_1h"))
    result = run_backtest(bundle, grid, spec)
    assert result["origins"] == origins(grid, spec, 288, 96).size > 0
    assert set(result["scores"]) == {"tft", "naive", "predict_linear_1h"}
    for scores in result["scores"].values():
        for quantity in CONFIG.targets:
            assert set(scores[quantity]) == {"30m", "2h", "8h", "all"}
            assert scores[quantity]["8h"]["observed"] == result["origins"] * result["instances"]
            assert scores[quantity]["all"]["nql"] is not None
    assert set(result["summary"]["nql_8h_vs_best_baseline"]) == set(CONFIG.targets)


def test_backtest_cleans_gaps_as_the_service_does_and_judges_every_method_alike(trained, wide):
    """A short gap is filled for the TFT as the service fills it (no n/a); an instance missing
    most of a target in a window is left out for every method at that origin, not only for
    the TFT."""
    registry, version, _ = trained
    bundle = load_bundle(registry.path(version))
    holed = wide.copy()
    names = sorted(holed["instance"].unique())
    gappy = holed.index[holed["instance"] == names[0]]
    holed.loc[gappy[400::50], "cpu_utilisation"] = np.nan  # one-step gaps all along
    sparse = holed.index[holed["instance"] == names[1]]
    holed.loc[sparse[900:1300], "memory_utilisation"] = np.nan  # most of a day: skipped
    grid = to_grid(holed, QUANTITIES)
    spec = BacktestSpec(origin_every=96, baselines=("naive",))
    result = run_backtest(bundle, grid, spec)
    pairs = result["origins"] * result["instances"]
    for quantity in CONFIG.targets:
        share = result["forecast_share"][quantity]
        assert 0.0 < share["tft"] < 1.0 and share["naive"] == 1.0
        assert share["judged"] == share["tft"]
        observed = {m: s[quantity]["8h"]["observed"] for m, s in result["scores"].items()}
        assert len(set(observed.values())) == 1 and 0 < observed["tft"] < pairs
        assert result["scores"]["tft"][quantity]["8h"]["nql"] is not None
        assert result["scores"]["tft"][quantity]["all"]["coverage"] is not None
