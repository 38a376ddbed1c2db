"""Snapshot strategies shared by the exposition and the persisted-snapshot targets.

Label values are arbitrary text: unicode of every plane, quotes, backslashes, newlines,
carriage returns, line separators, NUL, braces, `=` and `,`; the values the service passes
through `safe_label` (instance names, profiles, driver variables, reasons, the model version)
also lone surrogates, which a JSON answer from Prometheus can carry. The other label values
(quantities, methods, windows, horizons, levels) are the forecaster's own names, never
invalid UTF-8. Floats are any float64, the odd ones over-represented.
"""

from __future__ import annotations

import math
from types import MappingProxyType

import numpy as np
from hypothesis import strategies as st

from exporter.snapshot import (
    FLEET_HEALTH,
    HORIZONS,
    QUANTILE_LABELS,
    Accuracy,
    Breach,
    Environment,
    InstanceSnapshot,
    QuantityForecast,
    Risk,
    ServiceState,
    Snapshot,
)
from tests.fuzz.common import ODD_FLOATS

NOW = 1_795_354_200.0  # on the grid
STALE_AFTER = 1800.0
UNITS = {
    "cpu_utilisation": "ratio",
    "memory_utilisation": "ratio",
    "disk_io": "bytes_per_second",
    "request_latency_p95": "seconds",
}
QUANTITIES = (*UNITS, "gpu_memory")  # one the snapshot's unit table does not know
HOSTILE = (
    "",
    " ",
    '"',
    '\\"',
    "\\",
    "\\n",
    "\n",
    "\r",
    "\r\n",
    "\t",
    "\x00",
    "\x85",
    "\u2028",
    "\u2029",
    "\ufeff",
    "{",
    "}",
    '="',
    ",",
    "# HELP x y",
    'a"} or vector(1) or x{y="',
    "ünïcødé 中文 \u200f\u202ertl",
    "\U0001f600",
    "%s %r {0}",
)

utf8_text = st.text(st.characters(codec="utf-8"), max_size=6) | st.sampled_from(HOSTILE)
"""Label values that are valid UTF-8."""
any_label = utf8_text | st.sampled_from(["\ud800", "a\udfffb"])
"""Label values a JSON answer can carry, lone surrogates included."""
floats = st.floats() | st.sampled_from(ODD_FLOATS)
rows = np.array([steps - 1 for steps in HORIZONS.values()], dtype=np.intp)


@st.composite
def quantiles(draw: st.DrawFn) -> np.ndarray:
    """A (steps, 3) forecast: a ramp between two floats with a few odd cells; sometimes
    shorter than the horizon, or of another shape (nothing exported then)."""
    steps = draw(st.sampled_from([96, 96, 96, 12, 1]))
    with np.errstate(all="ignore"):
        array = np.linspace(draw(floats), draw(floats), steps * len(QUANTILE_LABELS))
    array = array.reshape(steps, len(QUANTILE_LABELS))
    for row, column, value in draw(
        st.lists(st.tuples(st.sampled_from(rows), st.integers(0, 2), floats), max_size=3)
    ):
        if row < steps:
            array[row, column] = value
    if draw(st.integers(0, 30)) == 0:
        array = array.reshape(-1)
    array.flags.writeable = False
    return array


def forecast(quantity: str) -> st.SearchStrategy[QuantityForecast]:
    return st.builds(
        QuantityForecast,
        quantity=st.just(quantity),
        unit=st.just(UNITS.get(quantity, "bytes")),
        method=st.sampled_from(["tft", "heuristic", "ramp"]) | utf8_text,
        quantiles=quantiles(),
        current=floats,
        trend=floats,
        scores=st.dictionaries(
            st.sampled_from(["tft", "seasonal_naive"]) | utf8_text, floats, max_size=2
        ).map(MappingProxyType),
    )


@st.composite
def instances(draw: st.DrawFn, name: str) -> InstanceSnapshot:
    chosen = draw(st.lists(st.sampled_from(QUANTITIES), unique=True, max_size=2))
    windows = st.dictionaries(st.sampled_from(["30m", "8h"]) | utf8_text, floats, max_size=2)
    breaches = {
        q: Breach(
            q,
            draw(floats),
            MappingProxyType(draw(windows)),
            draw(st.none() | floats),
            draw(st.none() | floats),
        )
        for q in draw(st.lists(st.sampled_from(QUANTITIES) | utf8_text, max_size=2))
    }
    return InstanceSnapshot(
        instance=name,
        profile=draw(any_label),
        origin=NOW - 300,
        made_at=draw(st.sampled_from([NOW - 60, NOW - STALE_AFTER, NOW - 2 * STALE_AFTER])),
        last_seen=draw(floats),
        warmup_steps=draw(st.integers(0, 400)),
        warmup_required=draw(st.integers(-1, 288)),
        forecasts=MappingProxyType({q: draw(forecast(q)) for q in chosen}),
        breaches=MappingProxyType(breaches),
        risk=Risk(
            draw(floats),
            draw(st.sampled_from(["P1", "P2", "P3"])),
            draw(floats),
            draw(floats),
            draw(floats),
            draw(any_label),
        ),
        drivers=tuple(draw(st.lists(st.tuples(any_label, floats), max_size=3))),
    )


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    names = draw(st.lists(any_label, unique=True, max_size=2))
    pairs = st.tuples(st.sampled_from(QUANTITIES) | utf8_text, utf8_text)
    return Snapshot(
        generated_at=NOW - 60,
        instances=MappingProxyType({name: draw(instances(name)) for name in names}),
        environment=Environment(
            draw(floats),
            draw(floats),
            draw(st.integers(0, 10**6)),
            draw(st.integers(0, 10**6)),
            draw(st.sampled_from([*FLEET_HEALTH, "unknown"])),
        ),
        thresholds=MappingProxyType(draw(st.dictionaries(pairs, floats, max_size=2))),
        alert_thresholds=MappingProxyType(draw(st.dictionaries(pairs, floats, max_size=2))),
        accuracy=tuple(
            draw(
                st.lists(
                    st.builds(
                        Accuracy, utf8_text, utf8_text, floats, floats, st.integers(0, 10**6)
                    ),
                    max_size=2,
                )
            )
        ),
        units=MappingProxyType(draw(st.sampled_from([UNITS, {}]))),
    )


counts = st.dictionaries(any_label, st.integers(0, 10**12), max_size=2)
states = st.builds(
    ServiceState,
    source_up=st.booleans(),
    last_success=st.none() | floats,
    cycles_total=st.integers(0, 10**12),
    cycle_failures=counts,
    last_cycle_duration=floats,
    input_partial=st.booleans(),
    model_loaded=st.booleans(),
    model_version=st.none() | any_label,
    contract_version=utf8_text,
    shard_index=st.integers(0, 100),
    shard_count=st.integers(1, 100),
    clean_events=counts,
    dropped_series=counts,
    model_load_failures=counts,
    started_at=floats,
)


def finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
