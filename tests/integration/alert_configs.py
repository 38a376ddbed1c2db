"""Test-only copies of the repository's Alertmanager config and alert rules, for a fast pipeline.

The repository files are read, never changed. The Alertmanager copy keeps every route, inhibit
rule and receiver type (`slack_configs`, `pagerduty_configs`); only where they send (URL and
key files, PagerDuty's events `url`), the templates path (made absolute) and the timers change.
The rule copy divides the `for:` of the forecast alerts (NodeForecast*) by a factor, so they
keep their relative order (critical before warning) but fire within seconds of their
condition; the fleet and meta-alerts keep theirs, so that they stay quiet in a short test.
"""

from __future__ import annotations

import copy
import math
import shutil
from pathlib import Path
from typing import Any

import yaml

from stack.config import REPO_ROOT, format_duration, parse_duration

ALERTMANAGER_SOURCE = REPO_ROOT / "alertmanager" / "alertmanager.yml"
RULES_SOURCE = REPO_ROOT / "prometheus" / "rules"
ALERT_RULES_FILE = "alerts.yml"
FORECAST_ALERT_PREFIX = "NodeForecast"


def alertmanager_test_config(
    document: dict[str, Any],
    *,
    slack_url_file: Path,
    pagerduty_key_file: Path,
    pagerduty_url: str,
    config_dir: Path,
    timers: dict[str, str],
) -> dict[str, Any]:
    """A copy of an Alertmanager config whose Slack and PagerDuty notifiers post to loopback.

    Every `slack_configs` entry reads its URL from `slack_url_file`; every `pagerduty_configs`
    entry reads its routing key from `pagerduty_key_file` and posts to `pagerduty_url`. Each
    route that sets `group_wait`, `group_interval` or `repeat_interval` (and the root route,
    always) gets the value from `timers`; `resolve_timeout` as well if given. Relative
    `templates` are made absolute against `config_dir`.
    """
    patched = copy.deepcopy(document)
    for receiver in patched.get("receivers") or []:
        for slack in receiver.get("slack_configs") or []:
            slack.pop("api_url", None)
            slack["api_url_file"] = str(slack_url_file)
        for pagerduty in receiver.get("pagerduty_configs") or []:
            pagerduty.pop("routing_key", None)
            pagerduty["routing_key_file"] = str(pagerduty_key_file)
            pagerduty["url"] = pagerduty_url
    if "resolve_timeout" in timers:
        patched.setdefault("global", {})["resolve_timeout"] = timers["resolve_timeout"]
    route_timers = {key: value for key, value in timers.items() if key != "resolve_timeout"}
    _patch_route(patched["route"], route_timers, root=True)
    patched["templates"] = [
        pattern if Path(pattern).is_absolute() else str(config_dir / pattern)
        for pattern in patched.get("templates") or []
    ]
    return patched


def _patch_route(route: dict[str, Any], timers: dict[str, str], *, root: bool) -> None:
    for key, value in timers.items():
        if root or key in route:
            route[key] = value
    for child in route.get("routes") or []:
        _patch_route(child, timers, root=False)


def shortened_for(
    rule_file: dict[str, Any], divisor: int, prefix: str = FORECAST_ALERT_PREFIX
) -> dict[str, Any]:
    """A copy of a rule file whose alerts named `prefix`... wait `for` a `divisor`-th of their
    duration (rounded up to whole seconds); every other rule stays as it is."""
    patched = copy.deepcopy(rule_file)
    for group in patched.get("groups") or []:
        for rule in group.get("rules") or []:
            if str(rule.get("alert", "")).startswith(prefix) and "for" in rule:
                seconds = math.ceil(parse_duration(str(rule["for"])) / divisor)
                rule["for"] = format_duration(seconds) if seconds > 0 else "0s"
    return patched


def write_alertmanager_config(
    target_dir: Path,
    *,
    slack_url: str,
    pagerduty_url: str,
    routing_key: str,
    timers: dict[str, str],
) -> Path:
    """Write the secret files and the Alertmanager copy into `target_dir`; return the copy."""
    target_dir.mkdir(parents=True, exist_ok=True)
    slack_url_file = target_dir / "slack_api_url"
    slack_url_file.write_text(slack_url + "\n")
    pagerduty_key_file = target_dir / "pagerduty_routing_key"
    pagerduty_key_file.write_text(routing_key + "\n")
    document = yaml.safe_load(ALERTMANAGER_SOURCE.read_text())
    patched = alertmanager_test_config(
        document,
        slack_url_file=slack_url_file,
        pagerduty_key_file=pagerduty_key_file,
        pagerduty_url=pagerduty_url,
        config_dir=ALERTMANAGER_SOURCE.parent,
        timers=timers,
    )
    config = target_dir / "alertmanager.yml"
    config.write_text(
        f"# Test copy of {ALERTMANAGER_SOURCE}: notifiers post to loopback sinks.\n"
        + yaml.safe_dump(patched, sort_keys=False)
    )
    return config


def write_rules(target_dir: Path, divisor: int) -> Path:
    """Copy prometheus/rules/ into `target_dir` with the forecast alerts' `for` shortened."""
    shutil.copytree(RULES_SOURCE, target_dir)
    alerts = target_dir / ALERT_RULES_FILE
    patched = shortened_for(yaml.safe_load(alerts.read_text()), divisor)
    alerts.write_text(yaml.safe_dump(patched, sort_keys=False, width=1 << 16))
    return target_dir
