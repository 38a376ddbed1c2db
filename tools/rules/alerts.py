"""The `NodeForecast*` breach-probability alerts: one table row per quantity, one template.

Each quantity with thresholds in the forecaster's configuration (`Config().thresholds`, i.e.
`forecaster.config.DEFAULT_THRESHOLDS`) gets two rules from `forecast_rule.yml.tmpl`: a warning
on the 8 h breach window and a critical on the 30 min one (`SEVERITY_WINDOWS`, windows of
`exporter.snapshot.WINDOWS`). What follows from the contract and the exporter is not written
here: the forecast metric (`forecaster_predicted_<quantity>_<unit>`), the humanize function of
the unit, the horizons inside each window, the longest horizon. The table holds only what is a
choice of the rules: the alert name, the wording and the `for:` of each severity.

The summary and description say "already past its critical threshold (value V)" instead of the
forecast wording when the quantity's current value is above `forecaster_threshold{level=
"critical"}`. The forecaster exports no current value; the rules read the contract's recording
rule (`instance:<quantity>:<operation>`, `prometheus/rules/recording.yml`), which they select
as `{__name__=~"instance:<quantity>:.+"}` (`current_value_selector`), so that the template needs
no name of its own; `forecast_rules` checks that the selector matches the contract's record.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from exporter.snapshot import HORIZONS, WINDOWS, metric_name
from forecaster.config import Config, parse_duration
from forecaster.contract import load_contract

TEMPLATE_DIR = Path(__file__).resolve().parent
RULE_TEMPLATE = TEMPLATE_DIR / "forecast_rule.yml.tmpl"
# Breach window per severity, in the order the rules are written.
SEVERITY_WINDOWS: Mapping[str, str] = {"warning": "8h", "critical": "30m"}
# Alertmanager/Prometheus template function that prints a value of each contract unit.
HUMANIZE: Mapping[str, str] = {"ratio": "humanizePercentage", "seconds": "humanizeDuration"}
_PLACEHOLDER = re.compile(r"@\{(\w+)\}")


@dataclass(frozen=True)
class ForecastAlert:
    """The choices of one quantity's forecast alerts."""

    alert: str  # NodeForecast<Condition>, also the runbook's name (docs/runbooks/<alert>.md)
    subject: str  # the quantity inside a sentence: "memory utilisation"
    subject_capitalised: str  # ... and at its start: "Memory utilisation"
    warning_for: str  # `for:` of the 8 h warning
    critical_for: str = "5m"  # `for:` of the 30 min critical

    def hold_for(self, severity: str) -> str:
        """The `for:` duration of the rule of `severity`."""
        return {"warning": self.warning_for, "critical": self.critical_for}[severity]


# One row per quantity with thresholds, in the order of the rules file.
ALERTS: Mapping[str, ForecastAlert] = {
    "cpu_utilisation": ForecastAlert(
        "NodeForecastCPUSaturation", "CPU utilisation", "CPU utilisation", warning_for="10m"
    ),
    "memory_utilisation": ForecastAlert(
        "NodeForecastMemoryExhaustion",
        "memory utilisation",
        "Memory utilisation",
        warning_for="5m",
    ),
    "filesystem_utilisation": ForecastAlert(
        "NodeForecastFilesystemFull",
        "root filesystem usage",
        "Root filesystem usage",
        warning_for="5m",
    ),
    "request_latency_p95": ForecastAlert(
        "NodeForecastLatencyDegradation",
        "p95 request latency",
        "p95 request latency",
        warning_for="10m",
    ),
}


def fill(template: str, values: Mapping[str, str]) -> str:
    """`template` with each `@{name}` replaced by `values[name]` (KeyError names a missing one)."""
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def thresholded_quantities(config: Config | None = None) -> tuple[str, ...]:
    """The quantities with thresholds, in the table's order; each must have exactly one row."""
    configured = set((config if config is not None else Config()).thresholds)
    missing = sorted(configured - set(ALERTS))
    if missing:
        raise ValueError(f"quantities with thresholds but no row in tools/rules ALERTS: {missing}")
    unused = sorted(set(ALERTS) - configured)
    if unused:
        raise ValueError(f"rows of tools/rules ALERTS for quantities without thresholds: {unused}")
    return tuple(ALERTS)


def horizon_matcher(window: str) -> str:
    """The `horizon=~"..."` matcher (with its comma) of the horizons inside `window`; empty
    when every exported horizon is inside it."""
    inside = [label for label, steps in HORIZONS.items() if steps <= WINDOWS[window]]
    if len(inside) == len(HORIZONS):
        return ""
    return f'horizon=~"{"|".join(inside)}",'


def in_words(duration: str) -> str:
    """`8h` -> `8 hours`, `30m` -> `30 minutes`."""
    seconds = int(parse_duration(duration))
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute"), (1, "second")):
        if seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    raise AssertionError("unreachable: every duration is a whole number of seconds")


def current_value_selector(quantity: str) -> str:
    """The `__name__` matcher of the rule templates for the current value of `quantity`."""
    return f"instance:{quantity}:.+"


def forecast_rules(config: Config | None = None) -> str:
    """The YAML of every forecast rule: per quantity, the warning then the critical."""
    contract = load_contract()
    template = RULE_TEMPLATE.read_text(encoding="utf-8")
    longest = max(HORIZONS, key=HORIZONS.__getitem__)
    rules = []
    for quantity in thresholded_quantities(config):
        row, unit = ALERTS[quantity], contract[quantity].unit
        if unit not in HUMANIZE:
            raise ValueError(f"{quantity}: no humanize function for unit {unit!r} in HUMANIZE")
        if not re.fullmatch(current_value_selector(quantity), contract[quantity].record):
            raise ValueError(
                f"{quantity}: the recording rule {contract[quantity].record!r} is not "
                f"instance:{quantity}:<operation>, the current value the rules read"
            )
        for severity, window in SEVERITY_WINDOWS.items():
            values = {
                "alert": row.alert,
                "quantity": quantity,
                "severity": severity,
                "for": row.hold_for(severity),
                "window": window,
                "window_words": in_words(window),
                "horizons": horizon_matcher(window),
                "time_to_breach_horizon": longest,
                "metric": metric_name(quantity, unit),
                "humanize": HUMANIZE[unit],
                "subject": row.subject,
                "summary_subject": row.subject_capitalised,
            }
            rules.append(fill(template, values))
    return "".join(rules)
