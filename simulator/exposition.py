"""Prometheus text exposition of one simulated node, built fresh from an engine view."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from simulator.engine import NodeView
from simulator.series import FAMILIES, family_of, node_samples


class NodeCollector(Collector):
    """Collector over one node's view: a fresh set of families per scrape, nothing cached.

    Sample of the output::

        # HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.
        # TYPE node_cpu_seconds_total counter
        node_cpu_seconds_total{cpu="0",mode="idle"} 1.2763452e+06
        ...
        simulator_node_state{state="healthy"} 1.0
    """

    def __init__(self, view: NodeView) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        """Yield one Metric per family, samples in a stable order."""
        view = self.view
        gauges = {name: np.array([value]) for name, value in view.gauges.items()}
        samples = node_samples(
            view.static, np.array([view.time]), view.counters[None, :], gauges, view.scenario
        )
        yield from families(samples)


def families(samples: Iterable[tuple[str, dict[str, str], np.ndarray]]) -> Iterator[Metric]:
    """Group single-valued samples into Metric families, in first-seen order."""
    metrics: dict[str, Metric] = {}
    for name, labels, values in samples:
        family = family_of(name)
        if family not in metrics:
            kind, help_text = FAMILIES[family]
            metrics[family] = Metric(family, help_text, kind)
        metrics[family].add_sample(name, labels, float(values[0]))
    yield from metrics.values()
