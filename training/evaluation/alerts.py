"""Alert logic of the early-warning evaluation: rules from alerts.yml, `for:`, episodes, scores.

Everything here is pure and works on arrays over the evaluation grid: `times` (T,) are the
forecast origins (unix seconds, 5-minute steps) and a condition or firing array is (N, T), one
row per instance, for one quantity.

* `parse_forecast_rules` reads the `NodeForecast*` rules of `prometheus/rules/alerts.yml` whose
  expression is on `forecaster_breach_probability`, with a strict regex: any such rule of another
  shape raises `ValueError`; `NodeForecast*` rules on other metrics are returned as skipped.
  A rule compares with a literal probability or with the exported
  `forecaster_alert_probability_threshold{quantity, severity}`, whose value is the
  configuration's (`early_warning`), as the forecaster exports it.
* `hold_for`: Prometheus' `for:` on a condition evaluated once per origin. The forecast changes
  once per 5-minute step (the service's window ends on the grid), so Prometheus' 1-minute
  evaluations see a value that is constant between origins, and `for: D` holds at origin t when
  the condition held at every origin in [t - D, t], i.e. at ceil(D / step) + 1 of them.
* An alert episode is a maximal run of firing origins (`episodes`).
* `score`: an incident (instance, breach time B) is caught when an episode of its instance
  started in [B - lookback, B); lead time = B - start of the first such episode. An episode is
  true when a breach of its instance happens at or after its start and no later than
  max(start + lookahead, its last firing origin); late (not false, not early) when it starts
  while an incident of its instance is in breach, from B to the incident's end plus `grace`;
  false otherwise. Incidents whose lookback window starts before the first origin, and
  episodes whose lookahead window ends after the last one, are left out and counted.
* `select`: the one tuning rule applied to every tuned method (see its docstring).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from numpy.typing import NDArray

from forecaster.config import Config, parse_duration
from forecaster.grid import STEP_SECONDS

HOUR = 3600
LOOKBACK = 8 * HOUR  # an alert counts as early warning up to 8 h before the breach
LOOKAHEAD = 8 * HOUR  # an episode is true if a breach follows within 8 h
GRACE = 1800  # an episode starting up to 30 min after an incident's end is late, not false
TARGET_PRECISION = 0.9
_KEY = np.int64(1) << 34  # row * _KEY + unix seconds: one sortable key per (instance, time)
FORECAST_EXPR = re.compile(
    r"^max by \(instance, quantity\) \( "
    r'forecaster_breach_probability\{quantity="(?P<quantity>[a-z][a-z0-9_]*)",'
    r'window="(?P<window>[0-9]+[smhd])"\} '
    r"\) (?P<op>>=?) "
    r"(?:(?P<threshold>[0-9]+(?:\.[0-9]+)?)"
    r"|on \(quantity\) group_left \(\) max by \(quantity\) \( "
    r'forecaster_alert_probability_threshold\{quantity="(?P=quantity)",'
    r'severity="(?P<severity>[a-z]+)"\} \))'
    # the warm-up clause: replayed origins start once the warm-up's history is held
    r"(?: unless on \(instance\) \( ?max by \(instance\) \( ?"
    r"forecaster_warmup_progress_ratio ?\) < 1 ?\))?$"
)
Floats = NDArray[np.float64]
Ints = NDArray[np.int64]


@dataclass(frozen=True)
class ForecastRule:
    """One forecast alert rule: `max by (instance, quantity)(p{quantity, window}) op threshold`."""

    alert: str
    severity: str
    quantity: str
    window: str
    op: str
    threshold: float
    for_seconds: float

    def condition(self, probability: np.ndarray) -> NDArray[np.bool_]:
        """The rule's comparison on breach probabilities (NaN compares false, like no series)."""
        with np.errstate(invalid="ignore"):
            if self.op == ">=":
                return np.asarray(probability >= self.threshold)
            return np.asarray(probability > self.threshold)


def parse_forecast_rules(
    path: Path, config: Config | None = None
) -> tuple[tuple[ForecastRule, ...], tuple[str, ...]]:
    """(the breach-probability rules of `path`, names of `NodeForecast*` rules not on it);
    thresholds on the exported alert probability are `config`'s (default: the defaults)."""
    config = config if config is not None else Config()
    document = yaml.safe_load(Path(path).read_text())
    rules, skipped = [], []
    for group in document.get("groups", []):
        for rule in group.get("rules", []):
            name = str(rule.get("alert", ""))
            expr = " ".join(str(rule.get("expr", "")).split())
            if not name.startswith("NodeForecast"):
                continue
            if "forecaster_breach_probability" not in expr:
                skipped.append(f"{name} ({expr})")
                continue
            match = FORECAST_EXPR.match(expr)
            if match is None:
                raise ValueError(f"{path}: rule {name}: unexpected expression shape: {expr!r}")
            if "for" not in rule:
                raise ValueError(f"{path}: rule {name}: no `for:`")
            rules.append(
                ForecastRule(
                    alert=name,
                    severity=str(rule.get("labels", {}).get("severity", "")),
                    quantity=match["quantity"],
                    window=match["window"],
                    op=match["op"],
                    threshold=_threshold(match, config),
                    for_seconds=parse_duration(rule["for"]),
                )
            )
    if not rules:
        raise ValueError(f"{path}: no NodeForecast* rule on forecaster_breach_probability")
    return tuple(rules), tuple(skipped)


def _threshold(match: re.Match[str], config: Config) -> float:
    """The rule's literal probability, or the configured one it compares with."""
    if match["threshold"] is not None:
        return float(match["threshold"])
    severity = match["severity"]
    if severity not in ("warning", "critical"):
        raise ValueError(f"unknown severity {severity!r} in the alert probability threshold")
    return float(getattr(config.alerting(match["quantity"]), severity))


def evaluations(for_seconds: float, step: int) -> int:
    """Consecutive origins at which a condition must hold for `for:` to fire."""
    return math.ceil(for_seconds / step - 1e-9) + 1


def hold_for(condition: np.ndarray, count: int) -> NDArray[np.bool_]:
    """Firing (N, T): the condition held at this origin and the `count - 1` before it."""
    condition = np.asarray(condition, dtype=bool)
    index = np.arange(condition.shape[-1])
    last_false = np.maximum.accumulate(np.where(condition, -1, index), axis=-1)
    return (index - last_false) >= count


def fire(
    conditions: Sequence[tuple[np.ndarray, float]], step: int, shape: tuple[int, int]
) -> NDArray[np.bool_]:
    """Firing of several rules on one quantity, OR-ed: (condition (N, T), for seconds) each."""
    out = np.zeros(shape, dtype=bool)
    for condition, for_seconds in conditions:
        out |= hold_for(condition, evaluations(for_seconds, step))
    return out


@dataclass(frozen=True)
class Events:
    """Intervals per instance row: `start` and `end` in unix seconds (end inclusive).

    For incidents, `scored` marks those whose catching counts towards recall (None: all); the
    others still make an alert near them true or late rather than false.
    """

    row: Ints
    start: Ints
    end: Ints
    scored: NDArray[np.bool_] | None = None

    def __len__(self) -> int:
        return int(self.row.size)

    def key(self, at: np.ndarray) -> Ints:
        """Sortable (row, time) keys of `at` (one time per event)."""
        return self.row * _KEY + np.asarray(at, dtype=np.int64)


def episodes(firing: np.ndarray, times: np.ndarray) -> Events:
    """Maximal runs of firing origins, sorted by (row, start); `end` is the last firing origin."""
    firing = np.asarray(firing, dtype=bool)
    padded = np.zeros((firing.shape[0], firing.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = firing
    change = np.diff(padded, axis=1)
    rows, first = np.nonzero(change == 1)
    _, after = np.nonzero(change == -1)
    times = np.asarray(times, dtype=np.int64)
    return Events(rows.astype(np.int64), times[first], times[after - 1])


def match_incidents(found: Events, incidents: Events, lookback: int = LOOKBACK) -> Floats:
    """Lead time (s) of each incident (its `start` is the breach time), NaN when not caught."""
    lead = np.full(len(incidents), np.nan)
    if not len(found) or not len(incidents):
        return lead
    keys = found.key(found.start)
    at = np.searchsorted(keys, incidents.key(incidents.start - lookback), side="left")
    inside = at < keys.size
    j = np.minimum(at, keys.size - 1)
    caught = inside & (found.row[j] == incidents.row) & (found.start[j] < incidents.start)
    lead[caught] = (incidents.start - found.start[j])[caught]
    return lead


def classify(
    found: Events, incidents: Events, lookahead: int = LOOKAHEAD, grace: int = GRACE
) -> NDArray[np.str_]:
    """Per episode "true", "late" or "false" (incidents: `start` = breach, `end` = its end)."""
    kind = np.full(len(found), "false", dtype="<U5")
    if not len(found) or not len(incidents):
        return kind
    order = np.argsort(incidents.key(incidents.start), kind="stable")
    row, breach, end = incidents.row[order], incidents.start[order], incidents.end[order]
    keys = row * _KEY + breach
    probe = found.key(found.start)
    nxt = np.searchsorted(keys, probe, side="left")
    j = np.minimum(nxt, keys.size - 1)
    until = np.maximum(found.start + lookahead, found.end)
    true = (nxt < keys.size) & (row[j] == found.row) & (breach[j] <= until)
    prev = np.searchsorted(keys, probe, side="right") - 1
    k = np.maximum(prev, 0)
    late = (prev >= 0) & (row[k] == found.row) & (found.start <= end[k] + grace)
    kind[late] = "late"
    kind[true] = "true"
    return kind


@dataclass(frozen=True)
class Score:
    """Counts behind recall, precision, lead time and false alerts of one method."""

    incidents: int
    caught: int
    leads: Floats  # seconds, one per caught incident
    episodes: int
    true: int
    late: int
    false: int
    node_days: float
    excluded_incidents: int = 0
    excluded_episodes: int = 0

    @property
    def recall(self) -> float:
        return self.caught / self.incidents if self.incidents else math.nan

    @property
    def precision(self) -> float:
        """(true + late) / episodes: a late alert is not a false one."""
        return (self.true + self.late) / self.episodes if self.episodes else math.nan

    @property
    def f1(self) -> float:
        r, p = self.recall, self.precision
        return 2 * r * p / (r + p) if r + p > 0 else 0.0

    @property
    def false_per_node_day(self) -> float:
        return self.false / self.node_days if self.node_days else math.nan

    @property
    def median_lead(self) -> float:
        return float(np.median(self.leads)) if self.leads.size else math.nan

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures (lead times in minutes)."""
        return {
            "incidents": self.incidents,
            "caught": self.caught,
            "recall": _rounded(self.recall),
            "episodes": self.episodes,
            "true": self.true,
            "late": self.late,
            "false": self.false,
            "precision": _rounded(self.precision),
            "precision_strict": _rounded(self.true / self.episodes if self.episodes else math.nan),
            "false_per_node_day": _rounded(self.false_per_node_day),
            "node_days": round(self.node_days, 2),
            "lead_minutes": lead_quantiles(self.leads),
            "leads_minutes": [round(float(v) / 60.0, 1) for v in np.sort(self.leads)],
            "excluded_incidents": self.excluded_incidents,
            "excluded_episodes": self.excluded_episodes,
        }


def _rounded(value: float) -> float | None:
    return round(float(value), 4) if np.isfinite(value) else None


def score(
    firing: np.ndarray,
    times: np.ndarray,
    incidents: Events,
    *,
    lookback: int = LOOKBACK,
    lookahead: int = LOOKAHEAD,
    grace: int = GRACE,
) -> Score:
    """Score one quantity's firing (N, T) against its incidents (rows of the same instances)."""
    times = np.asarray(times, dtype=np.int64)
    step = int(times[1] - times[0]) if times.size > 1 else STEP_SECONDS
    found = episodes(firing, times)
    chosen = np.ones(len(incidents), dtype=bool) if incidents.scored is None else incidents.scored
    in_window = (incidents.start >= times[0] + lookback) & (incidents.start <= times[-1])
    scored = chosen & in_window
    kept = Events(incidents.row[scored], incidents.start[scored], incidents.end[scored])
    lead = match_incidents(found, kept, lookback)
    kind = classify(found, incidents, lookahead, grace)
    judged = found.start <= times[-1] - lookahead
    days = max(0, int(times[-1] - lookahead - times[0]) + step) / 86400.0
    return Score(
        incidents=len(kept),
        caught=int(np.count_nonzero(np.isfinite(lead))),
        leads=lead[np.isfinite(lead)],
        episodes=int(np.count_nonzero(judged)),
        true=int(np.count_nonzero(judged & (kind == "true"))),
        late=int(np.count_nonzero(judged & (kind == "late"))),
        false=int(np.count_nonzero(judged & (kind == "false"))),
        node_days=firing.shape[0] * days,
        excluded_incidents=int(np.count_nonzero(chosen & ~in_window)),
        excluded_episodes=len(found) - int(np.count_nonzero(judged)),
    )


def pooled(scores: Sequence[Score]) -> Score:
    """Several quantities of the same fleet and period together (node-days counted once)."""
    total = {
        name: sum(getattr(s, name) for s in scores)
        for name in (
            "incidents",
            "caught",
            "episodes",
            "true",
            "late",
            "false",
            "excluded_incidents",
            "excluded_episodes",
        )
    }
    leads = np.concatenate([s.leads for s in scores]) if scores else np.zeros(0)
    return Score(leads=leads, node_days=max((s.node_days for s in scores), default=0.0), **total)


def select(scores: Sequence[Score], target: float = TARGET_PRECISION) -> int:
    """The tuning rule: index of the candidate with the highest recall among those with
    precision >= `target` (ties: longer median lead, then fewer false episodes); when none
    reaches `target`, the highest F1 (ties: higher precision, then fewer false episodes, then
    fewer episodes)."""
    if not scores:
        raise ValueError("no candidates to select from")

    def lead(s: Score) -> float:
        return s.median_lead if np.isfinite(s.median_lead) else -1.0

    good = [i for i, s in enumerate(scores) if s.precision >= target]
    if good:
        return max(good, key=lambda i: (scores[i].recall, lead(scores[i]), -scores[i].false))

    def fallback(i: int) -> tuple[float, float, int, int]:
        s = scores[i]
        precision = s.precision if np.isfinite(s.precision) else 0.0
        return (np.nan_to_num(s.f1, nan=0.0), precision, -s.false, -s.episodes)

    return max(range(len(scores)), key=fallback)


def lead_quantiles(leads: np.ndarray) -> dict[str, float | None]:
    """Lead-time distribution in minutes: min, p10, p25, median, p75, p90, max."""
    if not np.size(leads):
        return dict.fromkeys(("min", "p10", "p25", "median", "p75", "p90", "max"))
    q = np.percentile(np.asarray(leads) / 60.0, [0, 10, 25, 50, 75, 90, 100])
    names = ("min", "p10", "p25", "median", "p75", "p90", "max")
    return {k: round(float(v), 1) for k, v in zip(names, q, strict=True)}
