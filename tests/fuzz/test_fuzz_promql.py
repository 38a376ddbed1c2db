"""Fuzz target 1: the PromQL answer parsers (`forecaster.source`).

`from_query_range` turns a `/api/v1/query_range` answer into a LONG frame on the grid, and
`PrometheusSource.query_range` / `.instant` / `.now` do the same from the bytes of an HTTP
answer. Whatever Prometheus (or a proxy, or a compatible store) sends, they return a
well-formed result or raise `SourceError` with a reason of `SOURCE_ERRORS`; nothing else.
Well-formed: the frame's columns and dtypes, one row per (instance, grid step), sorted, every
timestamp on the step grid, instances non-empty label values within the byte limit, and, for
answers whose samples are all valid, exactly the values the grid convention prescribes (the
latest non-NaN sample of each step; NaN and infinities kept for the cleaner).

Unlike `tests/unit/test_frames.py` and `test_source.py` (which check that no other exception
escapes), these properties also check the frame against an independent model of the parser
and take the answers through pieces, partial flags and mutated bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import httpx
import numpy as np
import pandas as pd
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from forecaster.config import PrometheusSettings
from forecaster.source import (
    MAX_LABEL_BYTES,
    SERIES_DROPS,
    SOURCE_ERRORS,
    InstantResult,
    PrometheusSource,
    RangeResult,
    SourceError,
    from_query_range,
)
from tests.fuzz.common import (
    FUZZ,
    ODD_TEXT,
    any_floats,
    any_ints,
    deep_json,
    json_values,
    mutated,
)

pytestmark = pytest.mark.fuzz

STEP = 300
T0 = 1_760_000_100  # on the grid
MAX_SECONDS = 9.2e9  # forecaster.grid.MAX_UNIX_SECONDS

# --- strategies ---------------------------------------------------------------------------------

label_text = st.text(max_size=6) | st.sampled_from([t for t in ODD_TEXT if t != "\ud800"])
instances = st.sampled_from(["a", "b", "ppdb001"]) | label_text
times = (
    st.integers(T0 - 3 * STEP, T0 + 12 * STEP)
    | st.floats(T0 - 3 * STEP, T0 + 12 * STEP)
    | st.integers(T0, T0 + 12).map(lambda k: T0 + k * STEP)
)
odd_times = (
    times
    | any_ints
    | any_floats
    | st.booleans()
    | st.none()
    | st.sampled_from(["1760000100", "1760000100.5", "now", ""])
)
value_texts = st.sampled_from(
    ["1", "0.5", "-0", "NaN", "+Inf", "-Inf", "1e308", "5e-324", "1e-320", "1e18", "-1e6"]
) | st.floats().map(repr)
odd_values = (
    value_texts
    | st.sampled_from(["1e309", "nan", "inf", "Infinity", "0x10", "1_0", "", " 2 ", "abc", "١٢"])
    | any_ints.map(str)
    | json_values
)


def answer(result: object, **extra: object) -> dict[str, object]:
    return {"status": "success", "data": {"resultType": "matrix", "result": result}, **extra}


valid_series = st.fixed_dictionaries(
    {
        "metric": st.fixed_dictionaries(
            {"instance": instances}, optional={"job": label_text, "__name__": label_text}
        ),
        "values": st.lists(st.tuples(times, value_texts).map(list), max_size=8),
    }
)
valid_answers = st.lists(valid_series, max_size=4).map(answer)
"""Answers whose every sample is valid: times near the grid (off it, duplicated, unsorted),
values as Prometheus writes them (NaN and infinities included)."""

odd_points = st.tuples(odd_times, odd_values).map(list) | st.lists(json_values, max_size=3)
odd_series = st.fixed_dictionaries(
    {
        "metric": st.dictionaries(st.sampled_from(["instance", "job"]), json_values | instances),
        "values": st.lists(odd_points | json_values, max_size=6) | json_values,
    },
    optional={"value": json_values, "histograms": json_values},
)
near_valid_answers = st.builds(
    lambda result, status, kind, extra: {
        "status": status,
        "data": {"resultType": kind, "result": result, **extra},
        **extra,
    },
    st.lists(odd_series | valid_series | json_values, max_size=4) | json_values,
    st.sampled_from(["success", "success", "error", "partial", None]) | json_values,
    st.sampled_from(["matrix", "matrix", "vector", "scalar", None]) | json_values,
    st.dictionaries(
        st.sampled_from(["warnings", "infos", "partialResponse", "isPartial", "errorType"]),
        json_values,
    ),
)
"""Answers that are almost right: odd times and values, wrong types, missing keys, other
result types and statuses, partial flags, warnings of any type."""

any_answers = valid_answers | near_valid_answers | json_values


# --- the model the frames are checked against ---------------------------------------------------


def expected_cells(payload: Mapping) -> dict[tuple[str, int], float]:
    """(instance, grid nanoseconds) -> value, computed independently of the parser for an
    answer whose samples are all valid: the series kept per instance (the most points, the
    first on ties), times snapped up to the grid, the latest non-NaN sample of a step wins."""
    chosen: dict[str, list] = {}
    for series in payload["data"]["result"]:
        name = series["metric"]["instance"]
        if not name or len(name.encode()) > MAX_LABEL_BYTES:
            continue
        if name not in chosen or len(series["values"]) > len(chosen[name]):
            chosen[name] = series["values"]
    step_ns = STEP * 1_000_000_000
    cells: dict[tuple[str, int], list[tuple[int, int, float]]] = {}
    for name, points in chosen.items():
        for order, (seconds, text) in enumerate(points):
            if not (math.isfinite(seconds) and abs(seconds) < MAX_SECONDS):
                continue
            nanos = round(float(seconds) * 1e9)
            cell = -(-nanos // step_ns) * step_ns
            cells.setdefault((name, cell), []).append((nanos, order, float(text)))
    out = {}
    for key, samples in cells.items():
        values = [value for _, _, value in sorted(samples)]
        kept = [value for value in values if not math.isnan(value)]
        out[key] = kept[-1] if kept else math.nan
    return out


def check_frame(result: RangeResult, quantity: str = "q") -> None:
    """The invariants of every parsed LONG frame."""
    frame = result.frame
    assert list(frame.columns) == ["instance", "timestamp", quantity]
    assert isinstance(frame["timestamp"].dtype, pd.DatetimeTZDtype)
    assert str(frame["timestamp"].dt.tz) == "UTC"
    assert frame[quantity].dtype == np.float64
    assert frame.index.equals(pd.RangeIndex(len(frame)))
    nanos = frame["timestamp"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    assert (nanos % (STEP * 1_000_000_000) == 0).all()
    keys = list(zip(frame["instance"], nanos, strict=True))
    assert keys == sorted(set(keys)), "rows not unique and sorted by (instance, timestamp)"
    for name in frame["instance"]:
        assert isinstance(name, str) and name
        assert len(name.encode()) <= MAX_LABEL_BYTES
    assert set(result.dropped) <= set(SERIES_DROPS)
    assert all(count > 0 for count in result.dropped.values())
    assert all(isinstance(warning, str) for warning in result.warnings)


def cells_of(frame: pd.DataFrame, quantity: str = "q") -> dict[tuple[str, int], float]:
    nanos = frame["timestamp"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    return dict(
        zip(zip(frame["instance"], nanos.tolist(), strict=True), frame[quantity], strict=True)
    )


def same_values(found: Mapping, expected: Mapping) -> bool:
    if found.keys() != expected.keys():
        return False
    return all(
        (math.isnan(found[k]) and math.isnan(expected[k])) or found[k] == expected[k] for k in found
    )


# --- from_query_range ---------------------------------------------------------------------------


@FUZZ
@given(valid_answers)
@example(answer([{"metric": {"instance": "a"}, "values": [[T0, "NaN"], [T0 - 1, "1"]]}]))
@example(answer([{"metric": {"instance": "a"}, "values": [[T0 + 1, "+Inf"], [T0 + 2, "NaN"]]}]))
def test_valid_answers_give_the_grid_values_of_the_latest_samples(payload):
    result = from_query_range(payload, "q", STEP)
    check_frame(result)
    assert same_values(cells_of(result.frame), expected_cells(payload))


@FUZZ
@given(any_answers)
@example({"status": "success", "data": {"resultType": "matrix", "result": [[]]}})
@example(answer([{"metric": {"instance": "a"}, "values": [[T0, "1", "extra"]]}]))
@example(answer([{"metric": {"instance": "a"}, "values": [["ab", "cd"]]}]))
@example(answer([{"metric": {"instance": "a"}, "values": [[10**400, "1"]]}]))
@example(answer([{"metric": {"instance": "a"}, "values": [[T0, [1, 2]]]}]))
@example(answer([{"metric": {"instance": "a"}, "values": [[T0, {"a": 1}]]}]))
def test_any_json_answer_parses_well_formed_or_raises_source_error(payload):
    try:
        result = from_query_range(payload, "q", STEP)
    except SourceError as error:
        assert error.reason in SOURCE_ERRORS
        return
    check_frame(result)


def test_a_lone_surrogate_instance_is_dropped_not_raised():
    payload = json.loads(
        '{"status": "success", "data": {"resultType": "matrix", "result": '
        '[{"metric": {"instance": "\\ud800"}, "values": [[1760000100, "1"]]}]}}'
    )
    result = from_query_range(payload, "q", STEP)
    assert result.dropped["bad_instance"] == 1


# --- through the HTTP client --------------------------------------------------------------------


class Clock:
    """A clock that only moves when the source sleeps: no test ever waits."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def client(answers: list[tuple[int, dict[str, str], bytes]]) -> PrometheusSource:
    """A source whose answers are `answers` (status, headers, body) in turn, the last one
    repeated, streamed as a real transport does; small piece and body limits, so that
    answers come in pieces and big bodies are refused."""
    queue = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        status, headers, body = queue.pop(0) if len(queue) > 1 else queue[0]
        return httpx.Response(status, headers=headers, stream=httpx.ByteStream(body))

    settings = PrometheusSettings(
        url="http://prom:9090",
        timeout=5,
        retries=1,
        max_samples_per_request=1000,
        max_body_bytes=16 * 1024,
    )
    clock = Clock()
    return PrometheusSource(
        settings, transport=httpx.MockTransport(handler), sleep=clock.sleep, clock=clock
    )


def encode(payload: object) -> bytes:
    return json.dumps(payload, allow_nan=True).encode()


bodies = (
    any_answers.map(encode)
    | valid_answers.map(encode).flatmap(mutated)
    | deep_json.map(str.encode)
    | st.binary(max_size=512)
)
statuses = st.sampled_from([200, 200, 200, 200, 204, 400, 404, 422, 429, 500, 503])
content_types = st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "text/html", "", "APPLICATION/JSON"]
)
responses = st.builds(
    lambda status, kind, body, headers: (status, {"content-type": kind, **headers}, body),
    statuses,
    content_types,
    bodies,
    st.dictionaries(
        st.sampled_from(["retry-after", "date", "content-encoding", "content-length"]),
        st.sampled_from(["1", "0", "-5", "soon", "Wed, 21 Oct 2015 07:28:00 GMT", "gzip", "br"])
        | st.integers(0, 10**6).map(str),
    ),
)


@FUZZ
@given(st.lists(responses, min_size=1, max_size=4), st.sampled_from([1, 300, 600, 1000]))
def test_range_queries_over_any_answers_give_a_grid_frame_or_a_source_error(answers, hint):
    with client(answers) as source:
        try:
            result = source.query_range("up", T0, T0 + 5 * STEP, STEP, hint, quantity="q")
        except SourceError as error:
            assert error.reason in SOURCE_ERRORS
            return
    check_frame(result)


instant_answers = st.builds(
    lambda status, kind, result, extra: {
        "status": status,
        "data": {"resultType": kind, "result": result},
        **extra,
    },
    st.sampled_from(["success", "error"]) | json_values,
    st.sampled_from(["scalar", "vector", "matrix", "string"]) | json_values,
    st.tuples(
        any_floats | any_ints | json_values, st.sampled_from(["1", "NaN", "x"]) | json_values
    ).map(list)
    | json_values,
    st.dictionaries(st.sampled_from(["warnings", "error", "errorType"]), json_values),
)


@FUZZ
@given(
    (instant_answers | json_values).map(encode) | st.binary(max_size=256),
    st.sampled_from(["", "Wed, 21 Oct 2015 07:28:00 GMT", "not a date", "Mon, 99 Foo 0 99:99"]),
)
@example(
    encode({"status": "success", "data": {"resultType": "scalar", "result": [10**400, 1]}}), ""
)
def test_instant_queries_and_now_give_a_result_or_a_source_error(body, date):
    with client([(200, {"content-type": "application/json", "date": date}, body)]) as source:
        try:
            result = source.instant("time()")
        except SourceError as error:
            assert error.reason in SOURCE_ERRORS
        else:
            assert isinstance(result, InstantResult)
            assert result.result_type in ("scalar", "vector", "matrix", "string")
            assert all(isinstance(w, str) for w in result.warnings)
        try:
            now = source.now()
        except SourceError as error:
            assert error.reason in SOURCE_ERRORS
        else:
            assert isinstance(now, float)


def test_a_time_no_float_holds_is_a_source_error():
    body = json.dumps(
        {"status": "success", "data": {"resultType": "scalar", "result": [10**400, "1"]}}
    )
    answer = (200, {"content-type": "application/json"}, body.encode())
    with client([answer]) as source, pytest.raises(SourceError):
        source.now()
