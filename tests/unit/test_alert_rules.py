"""Alert rules, their promtool tests, runbooks and Alertmanager routing agree with each other.

`tests/unit/test_repo_rules.py` runs `promtool check rules`, `promtool test rules` and
`amtool check-config`; this module checks what those tools cannot: the numbers written in the
rules equal the forecaster's configuration, every alert has its annotations, a firing and a
non-firing promtool case and a runbook, the forecast alerts name the exported metrics, and each
severity reaches the receivers it should (`amtool config routes test`, cases in
`alertmanager/tests/routes.yml` plus one per alert), with critical inhibiting warning.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.snapshot import metric_name
from forecaster.config import Config, parse_duration
from forecaster.contract import load_contract
from tests.unit.test_repo_rules import ROOT, assert_ok, run, system_tool

ALERTS_FILE = ROOT / "prometheus" / "rules" / "alerts.yml"
RULE_FILES = sorted((ROOT / "prometheus" / "rules").glob("*.yml"))
RULE_TEST_FILES = sorted((ROOT / "prometheus" / "tests").glob("*.yml"))
RUNBOOKS = ROOT / "docs" / "runbooks"
RUNBOOK_BASE = (
    "https://github.com/prometheus-forecaster/prometheus-forecaster/blob/main/docs/runbooks/"
)
GRAFANA_BASE = "http://127.0.0.1:3000/d/"
AM_CONFIG = ROOT / "alertmanager" / "alertmanager.yml"
AM_TEMPLATES = ROOT / "alertmanager" / "templates"
ROUTE_CASES = ROOT / "alertmanager" / "tests" / "routes.yml"
SECRETS_README = ROOT / "alertmanager" / "secrets.example" / "README.md"

SEVERITIES = ("critical", "warning", "info", "none")
RECEIVERS = {"pagerduty-critical", "slack-critical", "slack-warning", "null", "watchdog"}
RECEIVERS_BY_SEVERITY = {
    "critical": "pagerduty-critical,slack-critical",
    "warning": "slack-warning",
    "info": "null",
    "none": "null",
}
ALERT_NAME = re.compile(r"^(?:NodeForecast|Fleet|Forecaster|Forecast)[A-Z][A-Za-z0-9]+$|^Watchdog$")
FORECAST_WINDOWS = {"warning": "8h", "critical": "30m"}


# --- parsing helpers ---------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule of prometheus/rules/alerts.yml."""
    groups = load_yaml(ALERTS_FILE)["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def rule_id(rule: Mapping[str, Any]) -> str:
    return f"{rule['alert']}/{rule['labels']['severity']}"


def alert_tests() -> list[dict[str, Any]]:
    """Every `alert_rule_test` entry of the promtool test files."""
    return [
        case
        for path in RULE_TEST_FILES
        for test in load_yaml(path).get("tests", [])
        for case in test.get("alert_rule_test", [])
    ]


def input_series() -> list[tuple[str, str]]:
    """(series, values) of every promtool test input."""
    return [
        (series["series"], str(series["values"]))
        for path in RULE_TEST_FILES
        for test in load_yaml(path).get("tests", [])
        for series in test.get("input_series", [])
    ]


def literal_numbers(expr: str) -> set[float]:
    """Numbers written in a PromQL expression, outside strings and range selectors."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\boffset\s+\S+", "", expr)
    return {float(n) for n in re.findall(r"(?<![\w.:])\d+(?:\.\d+)?(?![\w.:])", expr)}


def quantity_of(rule: Mapping[str, Any]) -> str:
    match = re.search(r'quantity="([a-z0-9_]+)"', rule["expr"])
    assert match, f"{rule_id(rule)} selects no quantity"
    return match.group(1)


def forecast_rules() -> list[dict[str, Any]]:
    return [
        r
        for r in alert_rules()
        if r["alert"].startswith("NodeForecast") and "breach_probability" in r["expr"]
    ]


# --- thresholds and numbers agree with the configuration --------------------------------------


def expected_numbers() -> dict[str, set[float]]:
    """The numbers each alert's expression must contain, from the forecaster's configuration."""
    from forecaster.risk import DEFAULT_FLEET_RULES

    config = Config()
    # forecast alerts compare with the exported forecaster_alert_probability_threshold: no number
    # ... and 1 is the warm-up ratio's end (`forecaster_warmup_progress_ratio < 1`: in warm-up)
    expected: dict[str, set[float]] = {rule_id(r): {1} for r in forecast_rules()}
    expected |= {
        "NodeForecastRiskHigh/critical": {config.risk.p1, 1},
        "NodeForecastRiskHigh/warning": {config.risk.p2, 1},
        "FleetIncidentProbabilityHigh/critical": {DEFAULT_FLEET_RULES.critical_above},
        "FleetIncidentProbabilityHigh/warning": {DEFAULT_FLEET_RULES.warning_above},
        "ForecasterDown/critical": {0},
        "ForecasterStale/warning": {3, config.cycle.interval},
        "ForecasterSourceDown/warning": {0},
        "ForecasterHeuristicFallback/warning": {0, 0.5},
        # two full runs of the weekly retraining, in seconds; at least two failures
        "ForecasterRetrainFailing/warning": {2, 7, 86400, 0},
        "ForecastAccuracyDegraded/warning": {0.6, 0.95, 100},
        "Watchdog/none": {1},
    }
    return expected


@pytest.mark.fault("I4")
def test_numbers_in_alert_expressions_match_the_configuration() -> None:
    expected = expected_numbers()
    found = {rule_id(r): literal_numbers(r["expr"]) for r in alert_rules()}
    assert found.keys() == expected.keys()
    mismatched = {k: (found[k], expected[k]) for k in found if found[k] != expected[k]}
    assert not mismatched, f"(found, expected from config): {mismatched}"


def test_risk_tiers_written_in_rules_and_annotations_are_the_configured_ones() -> None:
    risk = Config().risk
    tiers = {risk.p1, risk.p2}
    for path in RULE_FILES:
        text = path.read_text(encoding="utf-8")
        for number in re.findall(r"forecaster_risk_score\)?\s*(?:>=|<)\s*(\d+(?:\.\d+)?)", text):
            assert float(number) in tiers, f"{path.name}: risk tier {number} not in {tiers}"
        for tier, number in re.findall(r"\b(P[12]) at (\d+(?:\.\d+)?)", text):
            assert float(number) == (risk.p1 if tier == "P1" else risk.p2), (path.name, tier)


def test_fleet_thresholds_in_descriptions_are_the_seed_rules() -> None:
    from forecaster.risk import DEFAULT_FLEET_RULES

    limits = {
        "critical": DEFAULT_FLEET_RULES.critical_above,
        "warning": DEFAULT_FLEET_RULES.warning_above,
    }
    for rule in alert_rules():
        if rule["alert"] == "FleetIncidentProbabilityHigh":
            severity = rule["labels"]["severity"]
            percent = f"{limits[severity] * 100:g}%"
            assert f"{severity} above {percent}" in rule["annotations"]["description"]
            assert f"above {percent}." in rule["annotations"]["summary"]


def test_forecaster_cycle_interval_in_stale_description_matches_config() -> None:
    (rule,) = [r for r in alert_rules() if r["alert"] == "ForecasterStale"]
    assert f"cycle interval {Config().cycle.interval:g}s" in rule["annotations"]["description"]


def test_thresholds_in_promtool_inputs_are_the_configured_ones() -> None:
    """The tests feed `forecaster_threshold` as the forecaster exports it by default."""
    thresholds = Config().thresholds
    seen = set()
    for series, values in input_series():
        if not series.startswith("forecaster_threshold{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', series))
        quantity, level = labels["quantity"], labels["level"]
        value = float(values.split("x")[0])
        assert value == getattr(thresholds[quantity], level), series
        seen.add((quantity, level))
    assert seen == {(q, level) for q in thresholds for level in ("warning", "critical")}


def test_alert_probabilities_in_promtool_inputs_are_the_configured_ones() -> None:
    """Every promtool case of a forecast alert feeds the configured alert probabilities."""
    config = Config()
    expected = {
        (q, s): getattr(config.alerting(q), s) for q in config.thresholds for s in FORECAST_WINDOWS
    }
    for path in RULE_TEST_FILES:
        for case in load_yaml(path).get("tests", []):
            series = [s["series"] for s in case.get("input_series", [])]
            alerts = {t.get("alertname") for t in case.get("alert_rule_test", [])}
            if not alerts & {r["alert"] for r in forecast_rules()}:
                continue
            fed = {}
            for item in case["input_series"]:
                if item["series"].startswith("forecaster_alert_probability_threshold{"):
                    labels = dict(re.findall(r'(\w+)="([^"]*)"', item["series"]))
                    value = float(str(item["values"]).split("x")[0])
                    fed[(labels["quantity"], labels["severity"])] = value
            assert fed == expected, f"{path.name}: {series[0]}"


def test_forecast_alerts_compare_with_the_threshold_of_their_quantity_and_severity() -> None:
    for rule in forecast_rules():
        quantity, severity = quantity_of(rule), rule["labels"]["severity"]
        selector = (
            f'forecaster_alert_probability_threshold{{quantity="{quantity}",severity="{severity}"}}'
        )
        assert selector in rule["expr"], rule_id(rule)
        assert "> on (quantity) group_left ()" in " ".join(rule["expr"].split()), rule_id(rule)


def test_every_thresholded_quantity_has_a_warning_and_a_critical_forecast_alert() -> None:
    pairs = {(quantity_of(r), r["labels"]["severity"]) for r in forecast_rules()}
    expected = {(q, s) for q in Config().thresholds for s in FORECAST_WINDOWS}
    assert pairs == expected


def test_forecast_alerts_use_the_window_of_their_severity() -> None:
    for rule in forecast_rules():
        window = FORECAST_WINDOWS[rule["labels"]["severity"]]
        assert f'window="{window}"' in rule["expr"], rule_id(rule)


def test_forecast_alerts_query_the_exported_metric_of_their_quantity() -> None:
    contract = load_contract()
    for rule in forecast_rules():
        quantity = quantity_of(rule)
        expected = metric_name(quantity, contract[quantity].unit)
        text = " ".join(rule["annotations"].values())
        names = set(re.findall(r"forecaster_predicted_\w+", text))
        assert names == {expected}, rule_id(rule)


@pytest.mark.parametrize("rule", forecast_rules(), ids=rule_id)
def test_forecast_alert_says_already_past_when_the_current_value_is(rule: dict[str, Any]) -> None:
    """Summary and description compare the contract's recording rule of the quantity (its current
    value) with the critical threshold, and keep the forecast wording otherwise."""
    quantity, record = quantity_of(rule), load_contract()[quantity_of(rule)].record
    threshold = f'scalar(max(forecaster_threshold{{quantity="{quantity}",level="critical"}}))'
    for key in ("summary", "description"):
        text = rule["annotations"][key]
        assert "is already past its critical threshold (value {{ first . | value |" in text, key
        selectors = re.findall(r'max\(\{__name__=~"([^"]+)",instance=%q\}\) > (\S+)`', text)
        assert selectors, f"{rule_id(rule)} {key} does not query the current value"
        for selector, compared in selectors:
            assert re.fullmatch(selector, record), (rule_id(rule), selector, record)
            assert compared == threshold, rule_id(rule)
    window = FORECAST_WINDOWS[rule["labels"]["severity"]]
    words = {"8h": "8 hours", "30m": "30 minutes"}[window]
    summary = rule["annotations"]["summary"]
    assert "{{ else }}" in summary and f"critical threshold within {words}." in summary


def test_a_promtool_case_asserts_the_already_past_wording() -> None:
    past = [
        alert
        for case in alert_tests()
        for alert in case.get("exp_alerts") or []
        if "is already past its critical threshold" in alert["exp_annotations"]["summary"]
    ]
    assert {a["exp_labels"]["severity"] for a in past} == set(FORECAST_WINDOWS)
    assert all("already past" in a["exp_annotations"]["description"] for a in past)


# --- labels, annotations, names -----------------------------------------------------------------


@pytest.mark.parametrize("rule", alert_rules(), ids=rule_id)
def test_alert_has_severity_and_required_annotations(rule: dict[str, Any]) -> None:
    assert ALERT_NAME.match(rule["alert"]), rule["alert"]
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    for key in ("summary", "description", "runbook_url", "dashboard_url"):
        assert str(annotations.get(key, "")).strip(), f"{rule_id(rule)} lacks {key}"
    assert annotations["runbook_url"] == f"{RUNBOOK_BASE}{rule['alert']}.md"
    assert annotations["dashboard_url"].startswith(GRAFANA_BASE)
    if "for" in rule:
        parse_duration(rule["for"])


@pytest.mark.parametrize("rule", forecast_rules(), ids=rule_id)
def test_forecast_alert_carries_quantity_and_forecast_annotations(rule: dict[str, Any]) -> None:
    """`quantity` and `instance` survive the aggregation (inhibition keys on them)."""
    assert "by (instance, quantity)" in rule["expr"]
    for key in ("forecast", "band", "time_to_breach"):
        assert key in rule["annotations"], f"{rule_id(rule)} lacks {key}"
    assert "var-instance={{ $labels.instance" in rule["annotations"]["dashboard_url"]


def test_alerts_sharing_a_name_differ_in_severity() -> None:
    by_name: dict[str, list[str]] = {}
    for rule in alert_rules():
        by_name.setdefault(rule["alert"], []).append(rule["labels"]["severity"])
    duplicated = {name: s for name, s in by_name.items() if len(s) != len(set(s))}
    assert not duplicated


# --- promtool test coverage ---------------------------------------------------------------------


@pytest.mark.fault("I1")
def test_every_alert_and_severity_has_a_firing_promtool_case() -> None:
    fired = {
        (case["alertname"], alert["exp_labels"]["severity"])
        for case in alert_tests()
        for alert in case.get("exp_alerts") or []
    }
    missing = {rule_id(r) for r in alert_rules()} - {f"{a}/{s}" for a, s in fired}
    assert not missing, f"no firing promtool case for {sorted(missing)}"


@pytest.mark.fault("I1")
def test_every_alert_with_for_has_a_not_firing_promtool_case() -> None:
    quiet = {case["alertname"] for case in alert_tests() if not case.get("exp_alerts")}
    missing = {r["alert"] for r in alert_rules() if "for" in r} - quiet
    assert not missing, f"no not-firing promtool case for {sorted(missing)}"


def test_firing_promtool_cases_assert_every_annotation() -> None:
    """promtool 2.42 compares annotations exactly; make sure none is simply left out."""
    keys = {r["alert"]: set(r["annotations"]) for r in alert_rules()}
    for case in alert_tests():
        for alert in case.get("exp_alerts") or []:
            assert set(alert.get("exp_annotations", {})) == keys[case["alertname"]], case


# --- runbooks -----------------------------------------------------------------------------------


def test_every_alert_has_a_runbook() -> None:
    missing = [
        r["annotations"]["runbook_url"]
        for r in alert_rules()
        if not (RUNBOOKS / r["annotations"]["runbook_url"].removeprefix(RUNBOOK_BASE)).is_file()
    ]
    assert not missing


def test_every_runbook_belongs_to_an_alert() -> None:
    alerts = {r["alert"] for r in alert_rules()}
    orphans = [p.name for p in RUNBOOKS.glob("*.md") if p.stem not in alerts]
    assert not orphans


@pytest.mark.parametrize("path", sorted(RUNBOOKS.glob("*.md")), ids=lambda p: p.stem)
def test_runbook_explains_meaning_checks_and_actions(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.startswith(f"# {path.stem}\n")
    for heading in ("## What it means", "## How to check", "## What to do"):
        assert heading in text, f"{path.name} lacks {heading!r}"


# --- Alertmanager: receivers, secrets, templates ------------------------------------------------


def am_config() -> dict[str, Any]:
    return load_yaml(AM_CONFIG)


def test_receiver_names_are_the_documented_stable_ones() -> None:
    names = {r["name"] for r in am_config()["receivers"]}
    assert names == RECEIVERS
    header = AM_CONFIG.read_text(encoding="utf-8").split("global:")[0]
    assert all(name in header for name in RECEIVERS)


@pytest.mark.fault("H4")
def test_receivers_read_credentials_from_documented_files() -> None:
    config = am_config()
    assert not {"slack_api_url", "pagerduty_url"} & set(config.get("global", {}))
    readme = SECRETS_README.read_text(encoding="utf-8")
    files = set()
    for receiver in config["receivers"]:
        for slack in receiver.get("slack_configs", []):
            assert "api_url" not in slack
            assert slack["send_resolved"] is True
            files.add(slack["api_url_file"])
        for pagerduty in receiver.get("pagerduty_configs", []):
            assert not {"routing_key", "service_key"} & set(pagerduty)
            files.add(pagerduty["routing_key_file"])
    assert files == {
        "/etc/alertmanager/secrets/slack_api_url",
        "/etc/alertmanager/secrets/pagerduty_routing_key",
    }
    assert all(f in readme for f in files)
    assert all((SECRETS_README.parent / Path(f).name).is_file() for f in files)


def test_templates_referenced_by_receivers_are_defined() -> None:
    defined = {
        name
        for path in AM_TEMPLATES.glob("*.tmpl")
        for name in re.findall(r'define "([^"]+)"', path.read_text(encoding="utf-8"))
    }
    used = set(re.findall(r'template "([^"]+)"', AM_CONFIG.read_text(encoding="utf-8")))
    assert used, "no receiver uses the templates"
    assert used <= defined, used - defined
    assert am_config()["templates"] == ["templates/*.tmpl"]


# --- Alertmanager: inhibition -------------------------------------------------------------------

_MATCHER = re.compile(r'^\s*(\w+)\s*(=~|!~|!=|=)\s*"?(.*?)"?\s*$')


def matcher_matches(matcher: str, labels: Mapping[str, str]) -> bool:
    """Alertmanager matcher semantics (anchored regexes, a missing label is empty)."""
    parsed = _MATCHER.match(matcher)
    assert parsed, matcher
    name, op, value = parsed.groups()
    actual = labels.get(name, "")
    if op == "=":
        return actual == value
    if op == "!=":
        return actual != value
    found = re.fullmatch(value, actual) is not None
    return found if op == "=~" else not found


def inhibits(source: Mapping[str, str], target: Mapping[str, str]) -> bool:
    """Whether firing `source` mutes `target` under the config's inhibit rules."""
    for rule in am_config()["inhibit_rules"]:
        if (
            all(matcher_matches(m, target) for m in rule["target_matchers"])
            and all(matcher_matches(m, source) for m in rule["source_matchers"])
            and all(source.get(k, "") == target.get(k, "") for k in rule.get("equal", []))
        ):
            return True
    return False


def alert(name: str, severity: str, **labels: str) -> dict[str, str]:
    return {"alertname": name, "severity": severity, **labels}


CPU, MEM = {"quantity": "cpu_utilisation"}, {"quantity": "memory_utilisation"}
FORECASTER = {"instance": "forecaster:9465", "job": "forecaster"}


@pytest.mark.parametrize(
    ("source", "target", "muted"),
    [
        (
            alert("NodeForecastCPUSaturation", "critical", instance="ppdb001", **CPU),
            alert("NodeForecastCPUSaturation", "warning", instance="ppdb001", **CPU),
            True,
        ),
        (
            alert("NodeForecastCPUSaturation", "critical", instance="ppdb001", **CPU),
            alert("NodeForecastMemoryExhaustion", "warning", instance="ppdb001", **MEM),
            False,
        ),
        (
            alert("NodeForecastCPUSaturation", "critical", instance="ppdb001", **CPU),
            alert("NodeForecastCPUSaturation", "warning", instance="ppdb002", **CPU),
            False,
        ),
        (
            alert("NodeForecastCPUSaturation", "warning", instance="ppdb001", **CPU),
            alert("NodeForecastCPUSaturation", "critical", instance="ppdb001", **CPU),
            False,
        ),
        (
            alert("NodeForecastRiskHigh", "critical", instance="ppdb001"),
            alert("NodeForecastRiskHigh", "warning", instance="ppdb001"),
            True,
        ),
        (
            alert("NodeForecastRiskHigh", "critical", instance="ppdb001"),
            alert("NodeForecastCPUSaturation", "warning", instance="ppdb001", **CPU),
            False,
        ),
        (
            alert("FleetIncidentProbabilityHigh", "critical", window="30m"),
            alert("FleetIncidentProbabilityHigh", "warning", window="30m"),
            True,
        ),
        (
            alert("ForecasterDown", "critical", **FORECASTER),
            alert("ForecasterHeuristicFallback", "warning", **FORECASTER),
            True,
        ),
        (
            alert("ForecasterSourceDown", "warning", **FORECASTER),
            alert("ForecasterStale", "warning", **FORECASTER),
            True,
        ),
        (
            alert("ForecasterSourceDown", "warning", instance="forecaster-2:9465"),
            alert("ForecasterStale", "warning", **FORECASTER),
            False,
        ),
        (alert("ForecasterDown", "critical", job="forecaster"), alert("Watchdog", "none"), False),
    ],
)
@pytest.mark.fault("I2")
def test_inhibit_rules_mute_only_the_lesser_alert_of_the_same_instance_and_quantity(
    source: dict[str, str], target: dict[str, str], muted: bool
) -> None:
    assert inhibits(source, target) is muted


# --- Alertmanager: routes (amtool) --------------------------------------------------------------


def amtool_routes(labels: Mapping[str, str], receivers: str) -> None:
    amtool = system_tool("amtool", "prometheus-alertmanager")
    cmd = [amtool, "config", "routes", "test", f"--config.file={AM_CONFIG.relative_to(ROOT)}"]
    pairs = [f"{k}={v}" for k, v in labels.items()]
    assert_ok(run([*cmd, f"--verify.receivers={receivers}", *pairs], 60))


def route_cases() -> list[dict[str, Any]]:
    return load_yaml(ROUTE_CASES)["cases"]


@pytest.mark.fault("I2")
def test_route_cases_cover_every_receiver() -> None:
    covered = {r for case in route_cases() for r in case["receivers"]}
    assert covered == RECEIVERS


@pytest.mark.prometheus
@pytest.mark.parametrize("case", route_cases(), ids=lambda c: c["name"])
@pytest.mark.fault("I2")
def test_alertmanager_route_case(case: dict[str, Any]) -> None:
    amtool_routes(case["labels"], ",".join(case["receivers"]))


@pytest.mark.prometheus
@pytest.mark.parametrize("rule", alert_rules(), ids=rule_id)
@pytest.mark.fault("I2")
def test_alert_reaches_the_receivers_of_its_severity(rule: dict[str, Any]) -> None:
    severity = rule["labels"]["severity"]
    expected = "watchdog" if rule["alert"] == "Watchdog" else RECEIVERS_BY_SEVERITY[severity]
    labels = {"alertname": rule["alert"], "instance": "ppdb001", **rule["labels"]}
    amtool_routes(labels, expected)


# --- Alertmanager: notification templates (amtool template render) ----------------------------

FORECAST_ANNOTATIONS = {
    "summary": "CPU utilisation of ppdb001 is forecast to pass its critical threshold.",
    "description": "80% probability that CPU utilisation of ppdb001 passes 95% within 30m.",
    "forecast": "p50 96% in 30m (tft)",
    "band": "p10 92% to p90 99% in 30m",
    "time_to_breach": "20m 0s",
    "runbook_url": f"{RUNBOOK_BASE}NodeForecastCPUSaturation.md",
    "dashboard_url": f"{GRAFANA_BASE}node-forecast/node-forecast?var-instance=ppdb001",
}


def notification(labels: dict[str, str], annotations: dict[str, str]) -> dict[str, Any]:
    """Alertmanager's template data for one firing alert."""
    return {
        "receiver": "slack-critical",
        "status": "firing",
        "alerts": [
            {
                "status": "firing",
                "labels": labels,
                "annotations": annotations,
                "startsAt": "2024-01-01T00:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://127.0.0.1:9090/graph",
                "fingerprint": "0123456789abcdef",
            }
        ],
        "groupLabels": {k: labels[k] for k in ("alertname", "instance") if k in labels},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "http://127.0.0.1:9093",
    }


def render(template: str, data: dict[str, Any], tmp_path: Path) -> str:
    amtool = system_tool("amtool", "prometheus-alertmanager")
    data_file = tmp_path / "data.json"
    data_file.write_text(json.dumps(data), encoding="utf-8")
    result = run(
        [
            amtool,
            "template",
            "render",
            f"--template.glob={AM_TEMPLATES}/*.tmpl",
            f"--template.data={data_file}",
            f'--template.text={{{{ template "{template}" . }}}}',
        ],
        60,
    )
    assert_ok(result)
    return result.stdout


@pytest.mark.prometheus
def test_slack_text_shows_forecast_band_time_to_breach_and_links(tmp_path: Path) -> None:
    labels = alert("NodeForecastCPUSaturation", "critical", instance="ppdb001", **CPU)
    data = notification(labels, FORECAST_ANNOTATIONS)
    text = render("forecast.slack.text", data, tmp_path)
    assert text.startswith(f"CRITICAL: {FORECAST_ANNOTATIONS['summary']}\n")
    for line in (
        FORECAST_ANNOTATIONS["description"],
        "Forecast: p50 96% in 30m (tft)",
        "Band: p10 92% to p90 99% in 30m",
        "Time to breach: 20m 0s",
    ):
        assert f"\n{line}\n" in text
    dashboard, runbook = FORECAST_ANNOTATIONS["dashboard_url"], FORECAST_ANNOTATIONS["runbook_url"]
    assert text.rstrip().endswith(f"<{dashboard}|Dashboard> | <{runbook}|Runbook>")
    title = render("forecast.slack.title", data, tmp_path)
    assert title.strip() == "[FIRING:1] NodeForecastCPUSaturation ppdb001"
    assert render("forecast.slack.color", data, tmp_path).strip() == "danger"


@pytest.mark.prometheus
def test_pagerduty_fields_carry_the_forecast(tmp_path: Path) -> None:
    labels = alert("NodeForecastCPUSaturation", "critical", instance="ppdb001", **CPU)
    data = notification(labels, FORECAST_ANNOTATIONS)
    description = render("forecast.pagerduty.description", data, tmp_path).strip()
    expected = f"[FIRING:1] NodeForecastCPUSaturation ppdb001: {FORECAST_ANNOTATIONS['summary']}"
    assert description == expected
    for field in ("forecast", "band", "time_to_breach"):
        rendered = render(f"forecast.pagerduty.{field}", data, tmp_path).strip()
        assert rendered == FORECAST_ANNOTATIONS[field]


@pytest.mark.prometheus
def test_slack_text_of_a_meta_alert_skips_the_forecast_lines(tmp_path: Path) -> None:
    annotations = {
        k: v
        for k, v in FORECAST_ANNOTATIONS.items()
        if k not in ("forecast", "band", "time_to_breach")
    }
    data = notification(alert("ForecasterStale", "warning", **FORECASTER), annotations)
    text = render("forecast.slack.text", data, tmp_path)
    assert text.startswith("WARNING: ")
    assert "Forecast:" not in text and "Band:" not in text and "Time to breach:" not in text
    assert render("forecast.slack.color", data, tmp_path).strip() == "warning"
