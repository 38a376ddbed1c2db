"""The alerting rules are generated: `tools.rules` gives the committed alerts.yml byte for byte.

What the rules mean (numbers equal the configuration, annotations, promtool cases, runbooks) is
checked on the committed file by `tests/unit/test_alert_rules.py`; this module checks that the
file is the generator's, that the generator covers every thresholded quantity from its table,
and that what it derives from the contract and the exporter is right.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.snapshot import metric_name
from forecaster.config import DEFAULT_THRESHOLDS, Config
from forecaster.contract import load_contract
from tools import rules
from tools.rules import __main__ as cli
from tools.rules.alerts import (
    ALERTS,
    RULE_TEMPLATE,
    SEVERITY_WINDOWS,
    forecast_rules,
    horizon_matcher,
    in_words,
    thresholded_quantities,
)
from training.evaluation.alerts import parse_forecast_rules

ROOT = Path(__file__).resolve().parents[2]
ALERTS_FILE = ROOT / "prometheus" / "rules" / "alerts.yml"
PLACEHOLDER = re.compile(r"@\{(\w+)\}")


@pytest.fixture(scope="module")
def rendered() -> str:
    return rules.render()


def generated_forecast_rules(config: Config | None = None) -> list[dict[str, Any]]:
    parsed: list[dict[str, Any]] = yaml.safe_load(forecast_rules(config))
    return parsed


def quantity_of(rule: dict[str, Any]) -> str:
    match = re.search(r'quantity="(\w+)"', rule["expr"])
    assert match, rule["alert"]
    return match.group(1)


def test_regeneration_gives_the_committed_rules_byte_for_byte(rendered: str) -> None:
    committed = ALERTS_FILE.read_text(encoding="utf-8")
    assert committed == rendered, "alerts.yml differs from the generator: run make rules"


def test_check_flag_passes_on_the_committed_file_and_fails_on_an_edited_copy(
    tmp_path: Path, rendered: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--check"]) == 0
    copy = tmp_path / "alerts.yml"
    copy.write_text(rendered, encoding="utf-8")
    assert cli.main(["--check", "--out", str(copy)]) == 0
    copy.write_text(
        rendered.replace("\n        for: 10m\n", "\n        for: 15m\n", 1), encoding="utf-8"
    )
    assert cli.main(["--check", "--out", str(copy)]) == 1
    out = capsys.readouterr().out
    assert "-        for: 15m\n+        for: 10m\n" in out
    assert f"{copy} differs from the generator" in out
    assert cli.main(["--check", "--out", str(tmp_path / "missing.yml")]) == 1


def test_write_creates_the_generated_file(tmp_path: Path, rendered: str) -> None:
    target = tmp_path / "rules" / "alerts.yml"
    assert cli.main(["--out", str(target)]) == 0
    assert target.read_text(encoding="utf-8") == rendered


def test_generated_rules_are_yaml_with_the_groups_of_the_file(rendered: str) -> None:
    groups = [g["name"] for g in yaml.safe_load(rendered)["groups"]]
    assert groups == [
        "forecaster-node-forecasts",
        "forecaster-fleet",
        "forecaster-meta",
        "forecaster-general",
    ]
    assert "@{" not in rendered


def test_every_thresholded_quantity_has_its_warning_and_critical_rule() -> None:
    assert set(thresholded_quantities()) == set(Config().thresholds) == set(DEFAULT_THRESHOLDS)
    found = {(quantity_of(r), r["labels"]["severity"]): r for r in generated_forecast_rules()}
    assert set(found) == {(q, s) for q in DEFAULT_THRESHOLDS for s in SEVERITY_WINDOWS}
    for (quantity, severity), rule in found.items():
        row = ALERTS[quantity]
        assert rule["alert"] == row.alert
        assert rule["for"] == row.hold_for(severity)
        assert f'window="{SEVERITY_WINDOWS[severity]}"' in rule["expr"]
        assert rule["annotations"]["runbook_url"].endswith(f"/docs/runbooks/{row.alert}.md")


def test_forecast_rules_name_the_metric_and_unit_of_the_contract() -> None:
    contract = load_contract()
    humanize = {"ratio": "humanizePercentage", "seconds": "humanizeDuration"}
    for rule in generated_forecast_rules():
        quantity = quantity_of(rule)
        unit = contract[quantity].unit
        text = " ".join(rule["annotations"].values())
        assert set(re.findall(r"forecaster_predicted_\w+", text)) == {metric_name(quantity, unit)}
        band = rule["annotations"]["band"]
        assert f"p10 {{{{ first . | value | {humanize[unit]} }}}}" in band


def test_a_thresholded_quantity_without_a_row_is_an_error() -> None:
    thresholds = {**DEFAULT_THRESHOLDS, "disk_io": {"warning": 1e8, "critical": 2e8}}
    with pytest.raises(ValueError, match="disk_io"):
        forecast_rules(Config(thresholds=thresholds))


def test_a_row_without_thresholds_is_an_error() -> None:
    thresholds = {k: v for k, v in DEFAULT_THRESHOLDS.items() if k != "request_latency_p95"}
    with pytest.raises(ValueError, match="request_latency_p95"):
        forecast_rules(Config(thresholds=thresholds))


def test_critical_window_queries_only_the_horizons_inside_it() -> None:
    assert horizon_matcher("30m") == 'horizon=~"5m|30m",'
    assert horizon_matcher("8h") == ""


@pytest.mark.parametrize(
    ("duration", "words"),
    [
        ("8h", "8 hours"),
        ("30m", "30 minutes"),
        ("1h", "1 hour"),
        ("1d", "1 day"),
        ("90s", "90 seconds"),
    ],
)
def test_in_words(duration: str, words: str) -> None:
    assert in_words(duration) == words


def test_rule_template_uses_only_the_values_the_generator_fills() -> None:
    names = set(PLACEHOLDER.findall(RULE_TEMPLATE.read_text(encoding="utf-8")))
    assert names == {
        "alert",
        "quantity",
        "severity",
        "for",
        "window",
        "window_words",
        "horizons",
        "time_to_breach_horizon",
        "metric",
        "humanize",
        "subject",
        "summary_subject",
    }
    assert set(PLACEHOLDER.findall(rules.LAYOUT_TEMPLATE.read_text("utf-8"))) == {"forecast_rules"}


def test_replay_parser_reads_every_generated_forecast_rule(tmp_path: Path, rendered: str) -> None:
    path = tmp_path / "alerts.yml"
    path.write_text(rendered, encoding="utf-8")
    parsed, skipped = parse_forecast_rules(path)
    assert {(r.quantity, r.severity) for r in parsed} == {
        (q, s) for q in DEFAULT_THRESHOLDS for s in SEVERITY_WINDOWS
    }
    assert all(r.window == SEVERITY_WINDOWS[r.severity] for r in parsed)
    assert [s.split()[0] for s in skipped] == ["NodeForecastRiskHigh", "NodeForecastRiskHigh"]
