"""Fuzz target 3: the push-record validator (`forecaster.records.from_records`) and its route.

Records pushed to `POST /feed/data` are user input. Whatever a batch holds (any JSON value,
records with odd names, times, profiles and values, seed and contract fields mixed), the
validator raises nothing: every good record is kept with its values in base units, every bad
one is refused alone with a reason of `RECORD_ERRORS`, by its index. Through the FastAPI app
(with the real service's `ingest` behind it): 200 when every record is kept, 422 with the same
per-record reasons otherwise, 400 / 413 / 415 for bodies that are no batch; never a 500.

`tests/unit/test_frames.py` checks that nothing raises and reasons are known; these properties
also check that good records survive any company, value for value, and go through the route.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from exporter.app import build_app
from exporter.hub import Hub
from forecaster.config import load_config
from forecaster.contract import load_contract, possible_range
from forecaster.records import NAME_PATTERN, RECORD_ERRORS, SEED_FIELDS, from_records
from forecaster.service import Service
from tests.fuzz.common import (
    FUZZ,
    ODD_TEXT,
    any_floats,
    any_ints,
    deep_json,
    json_scalars,
    json_values,
    mutated,
    nested,
)
from tests.service_fakes import FakeSource

with warnings.catch_warnings():  # starlette's note about httpx vs httpx2
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.fuzz

STEP = 300
T0 = int(FakeSource.now_value) // STEP * STEP - 5 * STEP  # inside the served window
CONTRACT = load_contract()
QUANTITIES = tuple(q.name for q in CONTRACT.quantities)
DOMAINS = {q.name: q.domain for q in CONTRACT.quantities}
POSSIBLE = {name: possible_range(domain) for name, domain in DOMAINS.items()}
FIELDS = {**{name: (name, 1.0) for name in QUANTITIES}, **SEED_FIELDS}

# --- strategies ---------------------------------------------------------------------------------

good_names = st.from_regex(NAME_PATTERN, fullmatch=True)
STEP_NS = STEP * 1_000_000_000


@st.composite
def good_times(draw: st.DrawFn) -> tuple[object, int]:
    """(timestamp field, its unix nanoseconds): unix seconds as an int or a float, or ISO 8601
    (naive = UTC, with an offset, or Z) of whole seconds."""
    seconds = draw(st.integers(T0 - 10 * STEP, T0 + 10 * STEP))
    kind = draw(st.sampled_from(["int", "float", "naive", "offset", "z"]))
    if kind == "float":
        stamp = draw(st.floats(seconds - 1, seconds + 1))
        return stamp, round(stamp * 1e9)
    moment = datetime.fromtimestamp(seconds, UTC)
    offset = timezone(timedelta(minutes=draw(st.integers(-14 * 60, 14 * 60))))
    text = {
        "int": seconds,
        "naive": moment.replace(tzinfo=None).isoformat(),
        "offset": moment.astimezone(offset).isoformat(),
        "z": moment.isoformat().replace("+00:00", "Z"),
    }[kind]
    return text, seconds * 1_000_000_000


@st.composite
def good_records(draw: st.DrawFn, name: str) -> tuple[dict, dict[str, float], int, object]:
    """(record, expected base-unit values, unix nanoseconds, profile): a record the validator
    must keep (when its time lies in the window asked for)."""
    fields = draw(st.lists(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=3))
    record: dict[str, object] = {"server_name": name}
    expected: dict[str, float] = {}
    for field in fields:
        quantity, divisor = FIELDS[field]
        if quantity in expected:
            continue
        low, high = (bound * divisor * 0.999 for bound in POSSIBLE[quantity])
        value = draw(
            st.floats(low, high)
            | st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0])
            | st.integers(0, 100)
        )
        record[field], expected[quantity] = value, value / divisor
    record["timestamp"], nanos = draw(good_times())
    profile = draw(st.none() | st.sampled_from(["web", "db_1", "a.b-c:D"]) | good_names)
    if profile is not None or draw(st.booleans()):
        record["profile"] = profile
    extra = st.dictionaries(st.sampled_from(["state", "note", "load5"]), json_scalars, max_size=2)
    record.update(draw(extra))
    return record, expected, nanos, profile


def odd_record_from(good: dict) -> st.SearchStrategy[dict]:
    """`good` with fields replaced, removed or added: often bad, sometimes still good."""
    keys = st.sampled_from([*good, *FIELDS, "server_name", "timestamp", "profile"])
    odd = (
        json_values
        | any_ints
        | any_floats
        | st.sampled_from(ODD_TEXT)
        | st.sampled_from(
            ["2025-10-09T24:00:00", "9999-12-31T23:59:59Z", "2025-10-09T10:55:00+99:00"]
        )
    )
    changes = st.dictionaries(keys, odd, max_size=3)
    removed = st.sets(keys, max_size=2)
    return st.tuples(changes, removed).map(
        lambda c: {k: v for k, v in {**good, **c[0]}.items() if k not in c[1]}
    )


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[object], dict[int, tuple]]:
    """A batch of good records (distinct instances) among odd ones, shuffled; the good ones'
    positions with their expected values."""
    count = draw(st.integers(0, 3))
    goods = [draw(good_records(f"good-{k}")) for k in range(count)]
    odd = st.one_of(
        json_values,
        st.dictionaries(st.sampled_from([*FIELDS, "server_name", "timestamp"]), json_scalars),
        *(odd_record_from({**record, "server_name": "odd"}) for record, *_ in goods[:1]),
    ).filter(
        lambda r: not (isinstance(r, dict) and str(r.get("server_name", "")).startswith("good-"))
    )
    others = draw(st.lists(odd, max_size=3))
    batch: list[object] = [record for record, *_ in goods] + others
    order = draw(st.permutations(range(len(batch))))
    batch = [batch[k] for k in order]
    where = {order.index(k): goods[k][1:] for k in range(count)}
    return batch, where


def row_of(frame: pd.DataFrame, instance: str) -> pd.Series:
    rows = frame[frame["instance"] == instance]
    assert len(rows) == 1, f"{instance}: {len(rows)} rows"
    return rows.iloc[0]


def same(found: float, expected: float) -> bool:
    return (math.isnan(found) and math.isnan(expected)) or found == expected


windows = st.none() | st.tuples(
    st.integers(T0 - 12 * STEP, T0 + 2 * STEP), st.integers(0, 24 * STEP)
).map(lambda w: (float(w[0]), float(w[0] + w[1])))


@FUZZ
@given(batches(), windows)
@example(([{"server_name": "a", "timestamp": T0, "cpu_pct": 10**400}], {}), None)
@example(([{"server_name": "a", "timestamp": "2025-10-09T10:55:00+99:00", "cpu_pct": 1}], {}), None)
def test_good_records_are_kept_and_bad_ones_refused_alone(case, window):
    batch, good = case
    frame, errors = from_records(batch, QUANTITIES, STEP, window=window)
    assert all(error.reason in RECORD_ERRORS for error in errors)
    refused = {error.index: error.reason for error in errors}
    assert list(refused) == sorted(refused) and all(0 <= i < len(batch) for i in refused)
    assert list(frame.columns) == ["instance", "timestamp", "profile", *QUANTITIES]
    assert not frame.duplicated(["instance", "timestamp"]).any()
    assert (frame[list(QUANTITIES)].dtypes == np.float64).all()
    kept = set(frame["instance"])
    for index, (expected, nanos, profile) in good.items():
        if window is not None and not window[0] < nanos / 1e9 <= window[1]:
            assert refused.get(index) == "outside_window"
            continue
        assert index not in refused, f"good record {index} refused: {refused[index]}"
        row = row_of(frame, batch[index]["server_name"])
        cell = -(-nanos // STEP_NS) * STEP_NS  # the step it ends, on the grid
        assert row["timestamp"] == pd.Timestamp(cell, unit="ns", tz="UTC")
        assert row["profile"] == profile or (profile is None and pd.isna(row["profile"]))
        for quantity in QUANTITIES:
            assert same(row[quantity], expected.get(quantity, math.nan)), quantity
    for index, record in enumerate(batch):
        if index not in refused:
            assert isinstance(record, dict) and record["server_name"] in kept


# --- through the route --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def feed() -> Iterator[TestClient]:
    """The app's `POST /feed/data` backed by a real service after one cycle."""
    source = FakeSource(["ppdb001", "ppweb001"])
    config = load_config(["--state.dir", "", "--guard.enabled", "false"], {})
    service = Service(config, source, None, lambda *_: None, clock=lambda: source.now_value)
    service.run_cycle()
    app = build_app(Hub(stale_after=1800.0), ingest=service.ingest, max_body_bytes=4096)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def body_of(case: tuple[list[object], object]) -> bytes:
    batch, wrap = case
    payload = {"records": batch} if wrap == "records" else batch if wrap == "list" else wrap
    return json.dumps(payload, allow_nan=True).encode()


route_records = st.fixed_dictionaries(
    {
        "server_name": st.sampled_from(["ppdb001", "pushed01", "bad name", "", 7]),
        "timestamp": st.sampled_from(
            [
                T0,
                T0 - STEP,
                T0 + STEP // 2,
                float(T0),
                T0 - 10**6,
                10**400,
                "2026-11-19T05:30:00Z",
                "yesterday",
                None,
            ]
        ),
    },
    optional={
        "cpu_pct": st.sampled_from([1, 50.5, 1e308, -1.0, "50", None, math.nan, math.inf]),
        "memory_utilisation": st.floats() | st.none(),
        "profile": st.sampled_from(["web", "bad profile", None, 5]),
    },
)
"""Cheap records for the route (the validator itself is fuzzed above): some kept, some
refused, some inside the service's window."""
batch_bodies = st.tuples(
    st.lists(route_records | json_values, max_size=5), st.sampled_from(["records", "list"])
).map(body_of)
bodies = (
    batch_bodies
    | batch_bodies
    | st.tuples(st.just([]), json_values).map(body_of)
    | batch_bodies.flatmap(mutated)
    | deep_json.map(str.encode)
    | st.binary(max_size=64)
)


@FUZZ
@given(bodies, st.sampled_from(["application/json", "application/merge-patch+json", "text/plain"]))
@example(
    json.dumps([{"server_name": "a", "timestamp": 10**400, "cpu_pct": 1}]).encode(),
    "application/json",
)
@example(nested(1990).encode(), "application/json")  # the test's own stack, not the app's
def test_the_feed_route_answers_every_body_with_a_defined_status(feed, body, kind):
    response = feed.post("/feed/data", content=body, headers={"Content-Type": kind})
    assert response.status_code in (200, 400, 413, 415, 422), response.text
    answer = response.json()
    if kind == "text/plain":
        assert response.status_code == 415
        return
    if response.status_code in (400, 413):
        assert set(answer) == {"error", "reason"}
        return
    rejected = answer["rejected"]
    assert (response.status_code == 200) == (rejected == [])
    assert all(item["reason"] in RECORD_ERRORS for item in rejected)
    try:
        data = json.loads(body)
    except RecursionError:  # deeper than this stack allows; the app's thread parsed it
        return
    records = data["records"] if isinstance(data, dict) else data
    assert answer["accepted"] + len(rejected) == len(records)
