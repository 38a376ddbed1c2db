"""One source of truth: the contract's expressions, the recording rules and the history columns."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from forecaster.contract import load_contract
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
