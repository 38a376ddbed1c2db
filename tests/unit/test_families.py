"""`exporter.families.FAMILIES` is the one declaration of what `/metrics` exports.

Both writers (the prometheus_client collector and the fast renderer) emit exactly the table:
names, types, HELP texts, label names, family order. Every `forecaster_*` name the alert and
recording rules, the dashboards and the docs use is a family of the table (or of the retrainer,
listed below). The exporter's modules import each other without a cycle.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter.collector import CYCLE_NOTE, SnapshotCollector
from exporter.families import FAMILIES, PREDICTED, View
from exporter.render import render_text
from exporter.snapshot import EMPTY_SNAPSHOT, UNIT_SUFFIX, ServiceState, Snapshot, metric_name
from forecaster.contract import load_contract
from tests.exporter_fixtures import MADE_AT, NOW, fixed_snapshot, fixed_state

ROOT = Path(__file__).resolve().parents[2]
STALE_AFTER = 1800.0
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")  # as prometheus_client writes them
# Names served by other processes than the forecaster's `/metrics`; the forecaster registers no
# process or platform collector, so no other `forecaster_*` name comes from it.
RETRAINER = {  # training/retrain/metrics.py `RetrainMetrics`: the retrainer's own `/metrics`
    "forecaster_retrain_runs_total",
    "forecaster_retrain_rejections_total",
    "forecaster_retrain_failures_total",
    "forecaster_retrain_last_success_timestamp_seconds",
    "forecaster_retrain_last_run_timestamp_seconds",
    "forecaster_retrain_duration_seconds",
    "forecaster_retrain_stage_duration_seconds",
    "forecaster_retrain_running",
    "forecaster_retrain_gate_nql_ratio",
    "forecaster_retrain_interval_seconds",
    "forecaster_retrain_first_run_pending",
    "forecaster_retrain_history_available_seconds",
    "forecaster_retrain_shadow_cycles",
    "forecaster_retrain_shadow_decisions_total",
}
# A metric name, not part of a recording rule's level:metric:operations name, a path or a file
# name (`tests/golden/forecaster_metrics.prom`). One ending in "_" is a prefix
# (`forecaster_predicted_<quantity>_<unit>`, `{__name__=~"forecaster_predicted_.+"}`).
NAME = re.compile(r"(?<![\w:/.])forecaster_\w*(?![\w:]|\.\w)")


def _busy_state() -> ServiceState:
    """`fixed_state` with a sample in every reason counter, so every family has samples."""
    return dataclasses.replace(
        fixed_state(),
        dropped_series=MappingProxyType({"no_data": 1}),
        model_load_failures=MappingProxyType({"corrupt": 1}),
    )


CASES = {
    "busy": (fixed_snapshot(), _busy_state(), NOW),
    "fixed": (fixed_snapshot(), fixed_state(), NOW),
    "stale": (fixed_snapshot(), fixed_state(), MADE_AT + STALE_AFTER + 1),
    "empty": (EMPTY_SNAPSHOT, ServiceState(), NOW),
}


def _declared(snapshot: Snapshot, state: ServiceState, now: float) -> list[tuple]:
    """(name, type, HELP, labels) of every family the table exports, in order; a family left
    out when it has no samples is left out here by the writers' rule (see `_emitted`)."""
    view = View.of(snapshot, state, now=now, stale_after=STALE_AFTER)
    return [
        (name, family.type, help_text, family.labels, family.omit_empty)
        for family in FAMILIES
        for name, help_text, _ in family.exported(view)
    ]


def _collected(snapshot: Snapshot, state: ServiceState, now: float) -> list:
    collector = SnapshotCollector(snapshot, state, now=now, stale_after=STALE_AFTER)
    return list(collector.collect())


def _exposed(name: str, kind: str) -> str:
    """The name `/metrics` writes for a prometheus_client family name (counters: `_total`)."""
    return f"{name}_total" if kind == "counter" else name


@pytest.mark.parametrize("case", CASES)
def test_the_collector_emits_the_table(case):
    snapshot, state, now = CASES[case]
    metrics = _collected(snapshot, state, now)
    emitted = [_exposed(m.name, m.type) for m in metrics]
    declared = _declared(snapshot, state, now)
    expected = [d for d in declared if not d[4] or d[0] in emitted]
    assert emitted == [d[0] for d in expected]
    for metric, (name, kind, help_text, labels, _) in zip(metrics, expected, strict=True):
        assert (metric.type, metric.documentation) == (kind, help_text), name
        for sample in metric.samples:
            assert tuple(sample.labels) == labels, name  # declared order


@pytest.mark.parametrize("case", CASES)
def test_the_fast_renderer_emits_the_table(case):
    snapshot, state, now = CASES[case]
    text = render_text(snapshot, state, now=now, stale_after=STALE_AFTER).decode()
    heads = [line for line in text.splitlines() if line.startswith("#")]
    helps, types = heads[0::2], heads[1::2]
    emitted = [line.split(" ")[2] for line in types]
    expected = [d for d in _declared(snapshot, state, now) if not d[4] or d[0] in emitted]
    assert emitted == [d[0] for d in expected]
    assert helps == [f"# HELP {d[0]} {d[2]}" for d in expected]
    assert types == [f"# TYPE {d[0]} {d[1]}" for d in expected]
    labels = {_exposed(f.name, f.type): f for f in text_string_to_metric_families(text)}
    for name, _, _, declared, _ in expected:
        for sample in labels[name].samples:
            assert sorted(sample.labels) == sorted(declared), name  # written sorted by name


def test_every_family_of_the_busy_case_has_samples():
    """So that the label checks above cover every family of the table."""
    metrics = _collected(*CASES["busy"])
    assert all(m.samples for m in metrics), [m.name for m in metrics if not m.samples]
    assert len(metrics) == len(FAMILIES) - 1 + len(fixed_snapshot().units)


def test_the_table_declares_each_family_once_with_valid_names_and_labels():
    names = [family.name for family in FAMILIES]
    assert len(set(names)) == len(names)
    for family in FAMILIES:
        assert family.type in ("gauge", "counter"), family.name
        assert family.name.endswith("_total") == (family.type == "counter"), family.name
        assert family.help.endswith(".") and CYCLE_NOTE not in family.help, family.name
        assert len(set(family.labels)) == len(family.labels), family.name
        for label in family.labels:
            assert re.fullmatch(r"[a-z][a-z0-9_]*", label), (family.name, label)
    for name in exported_names():
        assert re.fullmatch(r"forecaster_[a-z0-9_]+", name), name


def test_the_forecast_family_names_are_the_contract_metric_names():
    view = View.of(fixed_snapshot(), fixed_state(), now=NOW, stale_after=STALE_AFTER)
    names = [name for name, _, _ in PREDICTED.exported(view)]
    assert names == [metric_name(q, u) for q, u in fixed_snapshot().units.items()]


# --- the names rules, dashboards and docs use -------------------------------------------------


def exported_names() -> set[str]:
    """Every name `/metrics` writes: the table, forecast families for the contract's targets."""
    names = {family.name for family in FAMILIES if family is not PREDICTED}
    for target in load_contract().targets:
        suffix = UNIT_SUFFIX.get(target.unit, target.unit)
        names.add(PREDICTED.name.format(quantity=target.name, unit=target.unit, suffix=suffix))
    return names


def test_the_retrainer_allowlist_is_what_the_retrainer_exports():
    from training.retrain.metrics import RetrainMetrics

    metrics = RetrainMetrics(("promoted", "rejected", "failed"), ("error",), 604800.0)
    assert {_exposed(m.name, m.type) for m in metrics.registry.collect()} == RETRAINER


def _strings(node: object, keys: frozenset[str]) -> Iterator[str]:
    """Every string under one of `keys` anywhere in a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in keys and isinstance(value, str):
                yield value
            yield from _strings(value, keys)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value, keys)


def _rule_texts() -> Iterator[tuple[str, str]]:
    """(where, text) of every expression, label and annotation of the alert and recording
    rules, and of the promtool unit tests' input series and expectations."""
    for path in sorted((ROOT / "prometheus" / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                where = f"{path.name}:{rule.get('alert') or rule.get('record')}"
                yield where, str(rule["expr"])
                for value in {**rule.get("labels", {}), **rule.get("annotations", {})}.values():
                    yield where, str(value)
    for path in sorted((ROOT / "prometheus" / "tests").glob("*.yml")):
        yield path.name, path.read_text()


def _used_names() -> Iterator[tuple[str, str]]:
    """(where, name) of every `forecaster_*` name in rules, dashboards, README and docs."""
    texts = list(_rule_texts())
    for path in sorted((ROOT / "grafana" / "dashboards").glob("*.json")):
        keys = frozenset({"expr", "query", "definition"})
        texts += [(path.name, s) for s in _strings(json.loads(path.read_text()), keys)]
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        texts.append((str(path.relative_to(ROOT)), path.read_text()))
    for where, text in texts:
        for match in NAME.finditer(text):
            yield where, match.group()


def _known(name: str, known: set[str]) -> bool:
    if name.endswith("_"):  # a prefix
        return any(k.startswith(name) for k in known)
    return name in known or any(name == k + suffix for k in known for suffix in SUFFIXES)


def test_the_rules_dashboards_and_docs_name_only_exported_families():
    known = exported_names() | RETRAINER
    used = list(_used_names())
    assert len({name for _, name in used}) > 30  # the scan finds the names it should
    unknown = sorted({(where, name) for where, name in used if not _known(name, known)})
    assert unknown == []


def test_the_rules_and_dashboards_use_the_forecast_and_risk_families():
    """A guard on the scan itself: it sees the names where they are used."""
    used = {name for _, name in _used_names()}
    assert {"forecaster_risk_score", "forecaster_breach_probability"} <= used
    assert metric_name("cpu_utilisation", "ratio") in used


# --- imports ----------------------------------------------------------------------------------


def _exporter_imports() -> dict[str, set[str]]:
    """exporter module -> the exporter modules it imports (anywhere in it, late ones too)."""
    package = ROOT / "exporter"
    modules = {p.stem: p for p in package.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for stem, path in modules.items():
        edges = graph.setdefault(stem, set())
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the exporter package
                    base = f"exporter.{base}".rstrip(".")
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                parts = target.split(".")
                if parts[0] == "exporter" and len(parts) > 1 and parts[1] in modules:
                    edges.add(parts[1])
                elif target == "exporter":
                    edges.add("__init__")
        edges.discard(stem)
    return graph


def test_exporter_modules_import_each_other_without_a_cycle():
    graph = _exporter_imports()
    assert "families" in graph["render"] and "families" in graph["collector"]
    assert "collector" not in graph["render"] and "collector" not in graph["families"]
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join((*path, module))
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, (*path, module))
        done.add(module)

    for module in sorted(graph):
        visit(module, ())
