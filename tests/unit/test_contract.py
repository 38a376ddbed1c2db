"""One source of truth: the contract's expressions, the recording rules and the history columns."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from exporter.snapshot import HORIZONS, STEP_SECONDS, WINDOWS, duration_seconds
from forecaster.contract import Grid, load_contract
from simulator.history import COLUMNS, CONTRACT_VERSION

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "prometheus" / "rules" / "recording.yml"


def _recording_rules() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["record"]: r["expr"] for g in groups for r in g["rules"] if "record" in r}


def test_every_contract_quantity_is_recorded_with_the_same_expression():
    contract = load_contract()
    rules = _recording_rules()
    assert set(rules) == {q.record for q in contract.quantities}
    for quantity in contract.quantities:
        assert rules[quantity.record] == quantity.expr, quantity.name


def test_recording_rule_names_follow_level_metric_operations():
    for quantity in load_contract().quantities:
        level, metric, operation = quantity.record.split(":")
        assert level == "instance"
        assert metric == quantity.name
        assert re.fullmatch(r"[a-z0-9_]+", operation)


def test_contract_expressions_keep_one_series_per_instance():
    for quantity in load_contract().quantities:
        assert "by (instance" in quantity.expr, quantity.name


def test_history_columns_are_the_contract_quantities_with_the_same_units():
    contract = load_contract()
    assert contract.version == CONTRACT_VERSION
    assert list(COLUMNS) == [q.name for q in contract.quantities]
    for quantity in contract.quantities:
        unit, role = COLUMNS[quantity.name]
        assert (unit, role) == (quantity.unit, quantity.role), quantity.name


def test_targets_are_the_five_seed_quantities():
    names = [q.name for q in load_contract().targets]
    assert names == [
        "cpu_utilisation",
        "memory_utilisation",
        "filesystem_utilisation",
        "disk_io",
        "request_latency_p95",
    ]
    assert load_contract().step_seconds == 300


# --- the grid ---------------------------------------------------------------------------------

PACKAGED = (ROOT / "forecaster" / "contract_v1.yaml").read_text()


def test_the_grid_is_a_day_of_context_and_season_and_eight_hours_ahead():
    grid = load_contract().grid
    assert (grid.step_seconds, grid.season_steps, grid.context_steps, grid.horizon_steps) == (
        300,
        288,
        288,
        96,
    )
    assert load_contract().step_seconds == grid.step_seconds


def test_the_contract_grid_and_the_exporter_labels_agree():
    grid = load_contract().grid
    assert grid.horizons == HORIZONS and grid.windows == WINDOWS  # one definition: exporter's
    assert grid.step_seconds == STEP_SECONDS
    for label, steps in (*HORIZONS.items(), *WINDOWS.items()):
        assert duration_seconds(label) == steps * grid.step_seconds, label
        assert 1 <= steps <= grid.horizon_steps, label
    assert max(HORIZONS.values()) == grid.horizon_steps  # the longest label is the horizon
    assert dict(HORIZONS) == {"5m": 1, "30m": 6, "1h": 12, "2h": 24, "4h": 48, "8h": 96}
    assert dict(WINDOWS) == {"30m": 6, "8h": 96}


def test_every_grid_constant_is_the_contract_grid():
    from forecaster import grid, heuristic
    from forecaster.model.config import TFTConfig
    from training.metrics import HORIZONS as SCORED

    contract = load_contract().grid
    assert contract == grid.GRID
    assert contract.step_seconds == grid.STEP_SECONDS
    assert heuristic.SEASON_STEPS == grid.SEASON_STEPS == contract.season_steps
    assert contract.context_steps == grid.CONTEXT_STEPS
    assert contract.horizon_steps == grid.HORIZON_STEPS
    assert grid.DAY_STEPS * contract.step_seconds == 86_400
    model = TFTConfig()
    assert (model.encoder_length, model.horizon) == (contract.context_steps, contract.horizon_steps)
    assert all(SCORED[label] == HORIZONS[label] for label in SCORED)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((300, 288, 288, 48), "'8h': 96 steps is not within the horizon of 48"),
        ((600, 144, 144, 48), "'5m' does not last 1 steps of 600 s"),
        ((300, 0, 288, 96), "season_steps must be a positive integer"),
        ((300, 288, True, 96), "context_steps must be a positive integer"),
        ((300.0, 288, 288, 96), "step_seconds must be a positive integer"),
    ],
)
def test_an_inconsistent_grid_is_refused(arguments, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Grid(*arguments)


def test_grid_windows_and_horizons_are_checked_like_the_exporter_labels():
    with pytest.raises(ValueError, match="no exported horizon"):
        Grid(300, 288, 288, 96, horizons={})
    with pytest.raises(ValueError, match="window '12h'"):
        Grid(300, 288, 288, 96, windows={"12h": 144})
    grid = Grid(300, 288, 288, 144, windows={"12h": 144})
    assert dict(grid.windows) == {"12h": 144} and grid.horizons == HORIZONS


def test_a_contract_file_sets_its_grid_in_durations_of_its_step(tmp_path):
    path = tmp_path / "contract.yaml"
    path.write_text(PACKAGED.replace("  horizon: 8h\n", "  horizon: 12h\n"))
    assert load_contract(path).grid.horizon_steps == 144
    path.write_text(PACKAGED.replace("  season: 1d\n", "  season: 7m\n"))
    with pytest.raises(ValueError, match="season '7m': not a whole number of steps"):
        load_contract(path)
    path.write_text(PACKAGED.replace("  context: 1d\n", "  context: 1d\n  extra: 1h\n"))
    with pytest.raises(ValueError, match="expected exactly the durations"):
        load_contract(path)


def test_a_contract_file_without_a_grid_gets_the_packaged_one(tmp_path):
    document = yaml.safe_load(PACKAGED)
    del document["grid"]
    path = tmp_path / "contract.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    assert load_contract(path) == load_contract()


def test_the_service_contract_keeps_the_grid_with_custom_quantities():
    from forecaster.config import load_config

    config = load_config(["--state.dir", ""], {})
    assert config.contract().grid == load_contract().grid
