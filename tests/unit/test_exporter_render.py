"""The fast exposition renderer writes exactly the bytes of prometheus_client's `generate_latest`.

`exporter.render.render_text` is compared with `exporter.collector.render` (the
`SnapshotCollector` through `generate_latest`, the specification) on the golden snapshot and on
generated snapshots with hostile label values, non-finite and huge values, short or oddly
shaped forecasts, empty fleets and stale instances.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.utils import floatToGoString

from exporter.collector import prerender, render
from exporter.hub import Hub
from exporter.render import escape_label_value, format_value, render_text
from exporter.snapshot import (
    EMPTY_SNAPSHOT,
    FLEET_HEALTH,
    Accuracy,
    Breach,
    Environment,
    InstanceSnapshot,
    QuantityForecast,
    Risk,
    ServiceState,
    Snapshot,
)
from tests.exporter_fixtures import MADE_AT, NOW, UNITS, fixed_snapshot, fixed_state, ppdb001

STALE_AFTER = 1800.0
GOLDEN = Path(__file__).parent.parent / "golden" / "forecaster_metrics.prom"
HOSTILE = [
    'a"} or vector(1) or x{y="',
    "back\\slash\\",
    "new\nline",
    "\\n literally",
    "unicode ünïcødé 中文 \u200f\u202ertl",
    "lone \ud800 surrogate",
    "",
    "{0} %s %r {{}}",
]
SPECIAL_FLOATS = [
    0.0,
    -0.0,
    1.0,
    0.1,
    1e-7,
    5e-324,
    999_999.999,
    1e6,
    1_000_000.5,
    52_000_000.0,
    123_456_789.123,
    1e15,
    1e16,
    1.5e16,
    1e21,
    1.7976931348623157e308,
    -1e6,
    -52_000_000.0,
    1_795_305_600.0,
    math.inf,
    -math.inf,
    math.nan,
]


def _both(snapshot: Snapshot, state: ServiceState, now: float = NOW) -> tuple[object, object]:
    """(reference, fast): the bytes, or the exception type when rendering raises."""
    outcomes = []
    for renderer in (render, render_text):
        try:
            outcomes.append(renderer(snapshot, state, now=now, stale_after=STALE_AFTER))
        except Exception as exc:  # the same failure is part of the contract
            outcomes.append(type(exc))
    return outcomes[0], outcomes[1]


# --- fixed cases ------------------------------------------------------------------------------


def test_fast_renderer_matches_the_golden_file_byte_for_byte():
    text = render_text(fixed_snapshot(), fixed_state(), now=NOW, stale_after=STALE_AFTER)
    assert text == GOLDEN.read_bytes()


def test_fast_renderer_equals_generate_latest_for_the_fixed_snapshot():
    reference, fast = _both(fixed_snapshot(), fixed_state())
    assert isinstance(reference, bytes) and fast == reference


def test_fast_renderer_equals_generate_latest_for_an_empty_fleet():
    for state in (ServiceState(), fixed_state()):
        reference, fast = _both(EMPTY_SNAPSHOT, state)
        assert isinstance(reference, bytes) and fast == reference


def test_fast_renderer_withdraws_stale_forecasts_like_the_collector():
    later = MADE_AT + STALE_AFTER + 1
    reference, fast = _both(fixed_snapshot(), fixed_state(), now=later)
    assert isinstance(reference, bytes) and fast == reference
    assert b"forecaster_predicted_" not in fast
    assert b'forecaster_instance_info{instance="ppdb001",profile="database"} 1.0' in fast


@pytest.mark.fault("B6")
def test_fast_renderer_handles_hostile_instance_names_like_the_collector():
    instances = [dataclasses.replace(ppdb001(), instance=name) for name in HOSTILE]
    snapshot = dataclasses.replace(
        fixed_snapshot(), instances=MappingProxyType({i.instance: i for i in instances})
    )
    reference, fast = _both(snapshot, fixed_state())
    assert isinstance(reference, bytes) and fast == reference
    assert b'instance="a\\"} or vector(1) or x{y=\\""' in fast
    assert b'instance="new\\nline"' in fast


def test_fast_renderer_formats_large_values_in_go_exponent_form():
    text = render_text(fixed_snapshot(), fixed_state(), now=NOW, stale_after=STALE_AFTER)
    # disk I/O in bytes per second and unix timestamps are written as Go writes them
    assert b'method="tft",q="0.5"} 5.21e+07\n' in text
    assert b"forecaster_start_time_seconds 1.7953506e+09\n" in text


def test_format_value_equals_float_to_go_string_on_special_values():
    for value in SPECIAL_FLOATS:
        assert format_value(value) == floatToGoString(value), value


@given(st.floats(allow_nan=True, allow_infinity=True))
@settings(max_examples=500, deadline=None)
def test_format_value_equals_float_to_go_string(value):
    assert format_value(value) == floatToGoString(value)


@given(st.text())
@settings(max_examples=200, deadline=None)
@pytest.mark.fault("B6")
def test_label_escaping_is_reversible(value):
    escaped = escape_label_value(value)
    assert "\n" not in escaped
    assert re.fullmatch(r'(?:[^"\\]|\\[\\"n])*', escaped, re.DOTALL)  # no bare quote
    decoded = re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), escaped)
    assert decoded == value


def test_hub_publishes_the_fast_rendering_with_the_reference_bytes():
    hub = Hub(stale_after=STALE_AFTER, clock=lambda: NOW)
    published = hub.publish(fixed_snapshot(), fixed_state(), now=NOW)
    assert published.rendered.body == render(
        fixed_snapshot(), fixed_state(), now=NOW, stale_after=STALE_AFTER
    )
    again = hub.rerender(now=MADE_AT + STALE_AFTER + 1)
    assert again.rendered.body == render(
        fixed_snapshot(), fixed_state(), now=MADE_AT + STALE_AFTER + 1, stale_after=STALE_AFTER
    )
    rendered = prerender(fixed_snapshot(), fixed_state(), now=NOW, stale_after=STALE_AFTER)
    assert rendered.body == published.rendered.body


# --- generated snapshots ----------------------------------------------------------------------

labels = st.one_of(st.text(max_size=8), st.sampled_from(HOSTILE))
# Values the collector only passes through `safe_label` when it exports them (so no surrogates
# where it does not): quantity names, windows, horizons, contract version.
plain_labels = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=6),
    st.sampled_from([h for h in HOSTILE if "\ud800" not in h]),
)
values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-2.0, 2.0),
    st.floats(1e5, 1e17),
    st.sampled_from(SPECIAL_FLOATS),
)
QUANTITIES = [*UNITS, "gpu_memory"]  # one quantity the snapshot's unit table does not know


@st.composite
def quantiles(draw):
    steps = draw(st.sampled_from([96, 96, 96, 100, 95, 48, 12, 1, 0]))
    columns = draw(st.sampled_from([3, 3, 3, 2, 4, 1]))
    fill = draw(st.sampled_from([0.25, 52_000_000.0, 1e-7, 123.456]))
    dtype = draw(st.sampled_from([np.float64, np.float64, np.float32]))
    array = np.full((steps, columns), fill)
    if draw(st.booleans()) and steps:  # a smooth, realistic row of model output
        top = draw(st.floats(0.0, 1e8))
        array = np.linspace(0.0, top, steps * columns).reshape(steps, columns)
    for index, value in draw(st.lists(st.tuples(st.integers(0, 10**6), values), max_size=6)):
        if array.size:
            array.flat[index % array.size] = value  # a few odd values anywhere
    if draw(st.integers(0, 20)) == 0:
        array = array.reshape(-1)  # not (horizon, quantiles): nothing exported
    with np.errstate(over="ignore"):
        array = array.astype(dtype)
    array.flags.writeable = False
    return array


@st.composite
def quantity_forecast(draw, quantity):
    return QuantityForecast(
        quantity=quantity,
        unit=UNITS.get(quantity, "bytes"),
        method=draw(st.one_of(st.sampled_from(["tft", "heuristic"]), plain_labels)),
        quantiles=draw(quantiles()),
        current=draw(values),
        trend=draw(values),
    )


@st.composite
def instance(draw, name):
    chosen = draw(st.lists(st.sampled_from(QUANTITIES), unique=True, max_size=len(QUANTITIES)))
    forecasts = {q: draw(quantity_forecast(q)) for q in chosen}
    windows = st.dictionaries(st.sampled_from(["30m", "8h"]) | plain_labels, values, max_size=2)
    breaches = {
        q: Breach(q, 0.95, MappingProxyType(draw(windows)), draw(st.none() | values))
        for q in draw(st.lists(st.sampled_from(QUANTITIES) | plain_labels, max_size=3))
    }
    drivers = draw(st.lists(st.tuples(labels, values), max_size=7))
    made_at = draw(st.sampled_from([MADE_AT, NOW - STALE_AFTER, NOW - 2 * STALE_AFTER]))
    return InstanceSnapshot(
        instance=name,
        profile=draw(labels),
        origin=MADE_AT - 240,
        made_at=made_at,
        last_seen=draw(values),
        warmup_steps=draw(st.integers(0, 400)),
        warmup_required=draw(st.integers(-1, 288)),
        forecasts=MappingProxyType(forecasts),
        breaches=MappingProxyType(breaches),
        risk=Risk(draw(values), "P3", 0.0, 0.0, 0.0, "message"),
        drivers=tuple(drivers),
    )


@st.composite
def snapshot(draw):
    names = draw(st.lists(labels, unique=True, max_size=4))
    instances = {name: draw(instance(name)) for name in names}
    units = draw(st.sampled_from([UNITS, {}, {"disk_io": "bytes_per_second"}]))
    thresholds = draw(
        st.dictionaries(
            st.tuples(st.sampled_from(QUANTITIES), st.sampled_from(["warning", "critical"])),
            values,
            max_size=4,
        )
    )
    accuracy = draw(
        st.lists(
            st.builds(Accuracy, plain_labels, plain_labels, values, values, st.integers(0, 10**6)),
            max_size=3,
        )
    )
    environment = Environment(
        draw(values),
        draw(values),
        draw(st.integers(0, 10**6)),
        draw(st.integers(0, 10**6)),
        draw(st.sampled_from([*FLEET_HEALTH, "unknown"])),
    )
    return Snapshot(
        generated_at=MADE_AT,
        instances=MappingProxyType(instances),
        environment=environment,
        thresholds=MappingProxyType(thresholds),
        accuracy=tuple(accuracy),
        units=MappingProxyType(units),
    )


counts = st.dictionaries(labels, st.integers(0, 10**12), max_size=3)
states = st.builds(
    ServiceState,
    source_up=st.booleans(),
    last_success=st.none() | values,
    cycles_total=st.integers(0, 10**12),
    cycle_failures=counts,
    last_cycle_duration=values,
    input_partial=st.booleans(),
    model_loaded=st.booleans(),
    model_version=st.none() | labels,
    contract_version=plain_labels,
    shard_index=st.integers(0, 100),
    shard_count=st.integers(1, 100),
    clean_events=counts,
    dropped_series=counts,
    model_load_failures=counts,
    started_at=values,
)


@given(snapshot(), states)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fast_renderer_equals_generate_latest_on_generated_snapshots(snap, state):
    reference, fast = _both(snap, state)
    assert fast == reference
