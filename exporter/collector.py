"""The forecaster's `/metrics`: a custom collector over one immutable snapshot, rendered once.

`SnapshotCollector` follows client_python's custom-collector pattern: every `collect()` builds
fresh metric families from the (frozen) `Snapshot` and `ServiceState` it was given; nothing is
registered globally and nothing is computed from live data. Which families it builds (names,
HELP, labels, samples, order) is the table `exporter.families.FAMILIES`, walked as it stands.
`prerender` turns that into the bytes `/metrics` serves (plain and gzip-compressed), once per
forecast cycle, off the request path. Forecast samples never carry timestamps: Prometheus
rejects samples from the future, so the lead time is the `horizon` label instead.

An instance whose forecast was made more than `stale_after` seconds before `now` has all its
forecast families withdrawn (predicted values, risk, breaches, drivers); its info, last-seen and
warm-up series stay, so dashboards still see the host. Non-finite values are never exported.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from exporter.families import CYCLE_NOTE, FAMILIES, MAX_DRIVERS, View, is_stale, safe_label
from exporter.render import render_text
from exporter.snapshot import ServiceState, Snapshot

__all__ = [
    "CONTENT_TYPE",
    "CYCLE_NOTE",
    "GZIP_LEVEL",
    "MAX_DRIVERS",
    "Rendered",
    "SnapshotCollector",
    "is_stale",
    "prerender",
    "render",
    "safe_label",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
GZIP_LEVEL = 6
_KINDS = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily}


class SnapshotCollector(Collector):
    """Collector over one published snapshot: fresh families per `collect()`, nothing cached.

    Sample of the output (abridged)::

        # HELP forecaster_predicted_cpu_utilisation_ratio Forecast of cpu_utilisation ...
        # TYPE forecaster_predicted_cpu_utilisation_ratio gauge
        forecaster_predicted_cpu_utilisation_ratio{horizon="30m",instance="ppdb001",...} 0.98
        # HELP forecaster_risk_score Risk score 0-100 of the instance (seed formula). ...
        # TYPE forecaster_risk_score gauge
        forecaster_risk_score{instance="ppdb001"} 80.0
        # HELP forecaster_fleet_health Current fleet health state (1 for the current one). ...
        # TYPE forecaster_fleet_health gauge
        forecaster_fleet_health{state="healthy"} 0.0
        forecaster_fleet_health{state="warning"} 1.0
        forecaster_fleet_health{state="critical"} 0.0
        # HELP forecaster_cycles_total Forecast cycles run since start. ...
        # TYPE forecaster_cycles_total counter
        forecaster_cycles_total 42.0
    """

    def __init__(
        self, snapshot: Snapshot, state: ServiceState, *, now: float, stale_after: float
    ) -> None:
        self.snapshot = snapshot
        self.state = state
        self.now = now
        self.stale_after = stale_after

    def collect(self) -> Iterator[Metric]:
        """Yield every family of `FAMILIES`, in its order (instances sorted by name)."""
        view = View.of(self.snapshot, self.state, now=self.now, stale_after=self.stale_after)
        for family in FAMILIES:
            kind = _KINDS[family.type]
            for name, help_text, params in family.exported(view):
                metric = kind(name, help_text, labels=list(family.labels))
                for labels, value in family.rows(view, params):
                    if value is not None and math.isfinite(value):
                        metric.add_metric(labels, float(value))
                if metric.samples or not family.omit_empty:
                    yield metric


def render(snapshot: Snapshot, state: ServiceState, *, now: float, stale_after: float) -> bytes:
    """Text exposition format 0.0.4 of `snapshot` and `state` as seen at `now`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot, state, now=now, stale_after=stale_after))
    return generate_latest(registry)


@dataclass(frozen=True)
class Rendered:
    """One rendering of `/metrics`: the body, its gzip form (compressed once) and when."""

    body: bytes
    gzipped: bytes
    rendered_at: float

    @classmethod
    def of(cls, body: bytes, rendered_at: float) -> Rendered:
        """Wrap `body`, compressing it once (deterministic: no gzip mtime)."""
        return cls(body, gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0), rendered_at)


def prerender(
    snapshot: Snapshot, state: ServiceState, *, now: float, stale_after: float
) -> Rendered:
    """The exposition plus its compression: what the hub stores and `/metrics` serves.

    The body comes from `exporter.render.render_text`, a hand-written renderer that writes
    the same bytes as `render` (prometheus_client's `generate_latest` over this collector)
    several times faster (docs/BENCHMARKS.md); `render` stays the specification that
    `tests/unit/test_exporter_render.py` compares it with.
    """
    return Rendered.of(render_text(snapshot, state, now=now, stale_after=stale_after), now)
