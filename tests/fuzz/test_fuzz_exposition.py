"""Fuzz target 4: the exposition round trip (`exporter.render.render_text`, `/metrics`).

A snapshot with arbitrary label values (unicode, quotes, backslashes, newlines, lone
surrogates where the service lets them through) and arbitrary float values, rendered to the
text format, parses back with prometheus_client's parser (`text_string_to_metric_families`)
to exactly the samples the family table declares: the same names, the same label values
character for character (lone surrogates as `safe_label` replaces them), the same float64
values bit for bit, and none of the missing or non-finite ones. The forecast families are
also checked against the snapshot's arrays directly, without the table.

`tests/unit/test_exporter_render.py` checks that the fast renderer writes the bytes of
prometheus_client's own writer; this checks that what both write is read back as meant.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given
from prometheus_client.parser import text_string_to_metric_families

from exporter.families import FAMILIES, View, safe_label
from exporter.render import render_text
from exporter.snapshot import (
    EMPTY_SNAPSHOT,
    HORIZONS,
    QUANTILE_LABELS,
    ServiceState,
    Snapshot,
    metric_name,
)
from tests.fuzz.common import FUZZ
from tests.fuzz.snapshots import NOW, STALE_AFTER, finite, snapshots, states

pytestmark = pytest.mark.fuzz

Sample = tuple[str, tuple[tuple[str, str], ...], float]


def parsed_samples(body: bytes) -> list[Sample]:
    return sorted(
        (sample.name, tuple(sorted(sample.labels.items())), sample.value)
        for family in text_string_to_metric_families(body.decode("utf-8"))
        for sample in family.samples
    )


def declared_samples(snapshot: Snapshot, state: ServiceState) -> list[Sample]:
    """What `exporter.families.FAMILIES` says `/metrics` holds: every finite row."""
    view = View.of(snapshot, state, now=NOW, stale_after=STALE_AFTER)
    samples = []
    for family in FAMILIES:
        for name, _, params in family.exported(view):
            for labels, value in family.rows(view, params):
                if finite(value):
                    pairs = tuple(sorted(zip(family.labels, labels, strict=True)))
                    samples.append((name, pairs, float(value)))  # type: ignore[arg-type]
    return sorted(samples)


def forecast_samples(snapshot: Snapshot) -> list[Sample]:
    """The forecast samples, from the snapshot's arrays alone."""
    samples = []
    for instance in snapshot.instances.values():
        if instance.made_at < NOW - STALE_AFTER:
            continue
        for quantity, forecast in instance.forecasts.items():
            array = forecast.quantiles
            if array.ndim != 2:
                continue
            name = metric_name(quantity, forecast.unit)
            for horizon, steps in HORIZONS.items():
                for k, q in enumerate(QUANTILE_LABELS):
                    if steps <= array.shape[0] and math.isfinite(array[steps - 1, k]):
                        labels = {
                            "instance": safe_label(instance.instance),
                            "horizon": horizon,
                            "q": q,
                            "method": forecast.method,
                        }
                        samples.append((name, tuple(sorted(labels.items())), array[steps - 1, k]))
    return sorted(samples)


@FUZZ
@given(snapshots(), states)
@example(EMPTY_SNAPSHOT, ServiceState())
def test_the_exposition_parses_back_to_the_declared_samples(snapshot, state):
    body = render_text(snapshot, state, now=NOW, stale_after=STALE_AFTER)
    parsed = parsed_samples(body)
    assert parsed == declared_samples(snapshot, state)
    predicted = [s for s in parsed if s[0].startswith("forecaster_predicted_")]
    assert predicted == forecast_samples(snapshot)
