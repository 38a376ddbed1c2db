"""The robust PromQL source against a fake Prometheus: limits, retries, failure reasons."""

from __future__ import annotations

import itertools
import json
import logging
import ssl
from collections import deque
from email.utils import formatdate

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forecaster.config import PrometheusSettings
from forecaster.source import (
    MAX_POINTS,
    SOURCE_ERRORS,
    PrometheusSource,
    RangeResult,
    SourceError,
    plan_pieces,
    points_per_request,
)
from tests.service_fakes import FakeClock

T0 = 1_700_000_100  # on the 5-minute grid
JSON = {"content-type": "application/json"}
EXPR = '1 - avg by (instance) (rate(node_cpu_seconds_total{mode="idle"}[5m]))'
TOKEN = "canary-7f3a9c-secret"  # a test canary, not a credential


def matrix(series, warnings=None, **extra):
    """A recorded-looking query_range answer: {instance: [(t, "value"), ...]}."""
    payload = {
        "status": "success",
        "data": {
            "resultType": "matrix",
            "result": [
                {"metric": {"instance": name, "job": "node"}, "values": [list(p) for p in pts]}
                for name, pts in series.items()
            ],
        },
        **extra,
    }
    if warnings:
        payload["warnings"] = warnings
    return payload


def ok(payload, headers=None):
    return httpx.Response(200, headers={**JSON, **(headers or {})}, content=json.dumps(payload))


def prom_error(status, error_type, message):
    body = {"status": "error", "errorType": error_type, "error": message}
    return httpx.Response(status, headers=JSON, content=json.dumps(body))


ANSWER = matrix({"ppdb001": [(T0, "0.41"), (T0 + 300, "0.43")], "ppweb001": [(T0, "0.2")]})


class FakePrometheus:
    """A programmable Prometheus: a queue of responses, exceptions or handlers, then `default`."""

    def __init__(self, *items, default=None):
        self.queue = deque(items)
        self.default = default
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        item = self.queue.popleft() if self.queue else self.default
        if isinstance(item, Exception):
            raise item
        if callable(item):
            return item(request)
        return item


class UpperRng:
    """Jitter that always takes the upper bound, to test the budget deterministically."""

    @staticmethod
    def uniform(low, high):
        return high


def source(fake, clock=None, rng=None, **overrides):
    options = {"url": "http://prom:9090", "timeout": 30, **overrides}
    clock = clock or FakeClock()
    return PrometheusSource(
        PrometheusSettings(**options),
        transport=httpx.MockTransport(fake),
        sleep=clock.sleep,
        clock=clock,
        rng=rng,
    )


def failure(fake, clock=None, **overrides) -> SourceError:
    with source(fake, clock, **overrides) as client, pytest.raises(SourceError) as caught:
        client.query_range(EXPR, T0, T0 + 300)
    assert caught.value.reason in SOURCE_ERRORS
    return caught.value


# --- happy path --------------------------------------------------------------------------------


def test_query_range_returns_a_long_frame_with_grid_parameters():
    fake = FakePrometheus(ok(ANSWER))
    with source(fake) as client:
        result = client.query_range(EXPR, T0 - 10, T0 + 310, quantity="cpu_utilisation")
    params = fake.requests[0].url.params
    assert (params["start"], params["end"], params["step"]) == (str(T0), str(T0 + 300), "300")
    assert params["query"] == EXPR
    assert list(result.frame["instance"]) == ["ppdb001", "ppdb001", "ppweb001"]
    assert list(result.frame["cpu_utilisation"]) == [0.41, 0.43, 0.2]
    assert not result.partial


def test_pieces_are_joined_into_one_sorted_frame():
    def answer(request):
        lo, hi = (int(request.url.params[k]) for k in ("start", "end"))
        points = [(t, str(t - T0)) for t in range(lo, hi + 1, 300)]
        return ok(matrix({"b": points, "a": points}))

    fake = FakePrometheus(default=answer)
    # 500 series x 2 points = the 1,000-sample minimum: 5 points -> pieces of 2, 2, 1
    with source(fake, max_samples_per_request=1000) as client:
        result = client.query_range(EXPR, T0, T0 + 4 * 300, series_hint=500)
    assert len(fake.requests) == 3
    frame = result.frame
    assert list(frame["instance"]) == ["a"] * 5 + ["b"] * 5
    assert list(frame["value"]) == [0.0, 300.0, 600.0, 900.0, 1200.0] * 2


def test_large_answers_shrink_the_following_pieces_under_the_samples_limit():
    def answer(request):
        start = int(request.url.params["start"])
        return ok(matrix({f"node{i:03d}": [(start, "1")] for i in range(100)}))

    fake = FakePrometheus(default=answer)
    with source(fake) as client:  # 250,000 samples: 100 series -> 2,500 points per request
        client.query_range(EXPR, T0, T0 + 300 * 20_000)
    spans = [
        (int(r.url.params["end"]) - int(r.url.params["start"])) // 300 + 1 for r in fake.requests
    ]
    assert spans[0] == MAX_POINTS and set(spans[1:-1]) == {2_500}
    assert sum(spans) == 20_001


def test_no_grid_step_in_range_gives_an_empty_frame_without_a_request():
    fake = FakePrometheus()
    with source(fake) as client:
        result = client.query_range(EXPR, T0 + 1, T0 + 299)
    assert fake.requests == [] and result.frame.empty


# --- A1, A3, A4: connection, timeout, 5xx ------------------------------------------------------


@pytest.mark.fault("A1")
def test_connection_refused_is_retried_then_reason_connection():
    clock = FakeClock()
    fake = FakePrometheus(default=httpx.ConnectError("[Errno 111] Connection refused"))
    assert failure(fake, clock).reason == "connection"
    assert len(fake.requests) == 4 and len(clock.waits) == 3  # 1 + retries (3)


@pytest.mark.fault("A3")
def test_timeout_is_retried_then_reason_timeout():
    fake = FakePrometheus(default=httpx.ReadTimeout("timed out"))
    assert failure(fake, retries=1).reason == "timeout"
    assert len(fake.requests) == 2


@pytest.mark.fault("A4")
def test_5xx_then_recovery_succeeds_with_jittered_exponential_backoff():
    clock = FakeClock()
    fake = FakePrometheus(
        prom_error(500, "internal", "boom"),
        httpx.Response(502, text="<html>Bad Gateway</html>"),
        httpx.Response(503, text="Service Unavailable"),
        ok(ANSWER),
    )
    with source(fake, clock) as client:
        result = client.query_range(EXPR, T0, T0 + 300)
    assert len(result.frame) == 3 and len(fake.requests) == 4
    assert len(clock.waits) == 3
    for wait, cap in zip(clock.waits, (0.5, 1.0, 2.0), strict=True):
        assert 0.0 <= wait <= cap
    assert clock.waits != [0.5, 1.0, 2.0]  # full jitter, not the bare exponential


@pytest.mark.fault("A4")
def test_5xx_that_persists_ends_with_reason_http_error():
    fake = FakePrometheus(default=httpx.Response(503, text="down"))
    error = failure(fake)
    assert error.reason == "http_error" and "503" in str(error)
    assert len(fake.requests) == 4


@pytest.mark.fault("A4")
def test_retries_stop_when_the_next_wait_would_pass_the_budget():
    clock = FakeClock()
    fake = FakePrometheus(default=httpx.Response(500))
    assert failure(fake, clock, rng=UpperRng(), timeout=0.6).reason == "http_error"  # budget 1.2 s
    assert clock.waits == [0.5] and len(fake.requests) == 2  # 0.5 + 1.0 would pass 1.2


@pytest.mark.fault("A4")
def test_backoff_is_capped_at_8_seconds():
    clock = FakeClock()
    fake = FakePrometheus(default=httpx.Response(500))
    failure(fake, clock, rng=UpperRng(), retries=6, timeout=60)
    assert clock.waits == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]


# --- A5: 429 -----------------------------------------------------------------------------------


@pytest.mark.fault("A5")
def test_429_waits_at_least_retry_after_seconds():
    clock = FakeClock()
    fake = FakePrometheus(httpx.Response(429, headers={"Retry-After": "5"}), ok(ANSWER))
    with source(fake, clock) as client:
        client.query_range(EXPR, T0, T0 + 300)
    assert clock.waits[0] >= 5 and len(fake.requests) == 2


@pytest.mark.fault("A5")
def test_429_with_an_http_date_waits_until_that_date():
    now = 1_700_000_000
    headers = {
        "Retry-After": formatdate(now + 7, usegmt=True),
        "Date": formatdate(now, usegmt=True),
    }
    clock = FakeClock()
    fake = FakePrometheus(httpx.Response(429, headers=headers), ok(ANSWER))
    with source(fake, clock) as client:
        client.query_range(EXPR, T0, T0 + 300)
    assert clock.waits[0] >= 7


@pytest.mark.fault("A5")
def test_429_that_persists_makes_a_bounded_number_of_requests():
    clock = FakeClock()
    fake = FakePrometheus(default=httpx.Response(429, headers={"Retry-After": "5"}))
    assert failure(fake, clock, timeout=60).reason == "rate_limited"
    assert len(fake.requests) == 4 and all(w >= 5 for w in clock.waits)


@pytest.mark.fault("A5")
def test_429_asking_for_more_than_the_budget_gives_up_at_once():
    clock = FakeClock()
    fake = FakePrometheus(default=httpx.Response(429, headers={"Retry-After": "3600"}))
    assert failure(fake, clock).reason == "rate_limited"
    assert len(fake.requests) == 1 and clock.waits == []


# --- A6: 400 / 422 -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "response",
    [
        prom_error(
            400,
            "bad_data",
            "exceeded maximum resolution of 11,000 points per timeseries. "
            "Try decreasing the query resolution (?step=XX)",
        ),
        prom_error(422, "execution", "query processing would load too many samples into memory"),
    ],
)
@pytest.mark.fault("A6")
def test_400_and_422_are_never_retried(response):
    clock = FakeClock()
    fake = FakePrometheus(default=response)
    error = failure(fake, clock)
    assert error.reason == "bad_request" and str(response.status_code) in str(error)
    assert len(fake.requests) == 1 and clock.waits == []


def test_other_client_errors_are_not_retried():
    fake = FakePrometheus(default=httpx.Response(404, text="not found"))
    assert failure(fake).reason == "http_error" and len(fake.requests) == 1


# --- A7: partial answers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        matrix({"a": [(T0, "1")]}, warnings=["results truncated due to limit"]),
        matrix({"a": [(T0, "1")]}, warnings=["PromQL info: metric might not be a counter"]),
        matrix({"a": [(T0, "1")]}, partialResponse=True),
        matrix({"a": [(T0, "1")]}, isPartial=True),
    ],
)
@pytest.mark.fault("A7")
def test_warnings_and_partial_flags_mark_the_result_partial(payload):
    with source(FakePrometheus(default=ok(payload))) as client:
        result = client.query_range(EXPR, T0, T0 + 300)
    assert result.partial and len(result.frame) == 1


@pytest.mark.fault("A7")
def test_warnings_of_all_pieces_are_joined_once():
    fake = FakePrometheus(
        ok(matrix({"a": [(T0, "1")]}, warnings=["w1"])),
        ok(matrix({"a": [(T0 + 300, "1")]}, warnings=["w1", "w2"])),
    )
    with source(fake, max_samples_per_request=1000) as client:
        result = client.query_range(EXPR, T0, T0 + 300, series_hint=1000)
    assert result.warnings == ("w1", "w2")


# --- A8: broken answers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (
            httpx.Response(200, headers={"content-type": "text/html"}, text="<html>Login</html>"),
            "bad_response",
        ),
        (httpx.Response(200, headers=JSON, content=json.dumps(ANSWER)[:-7]), "bad_response"),
        (httpx.Response(200, headers=JSON, content=b"<html>oops</html>"), "bad_response"),
        (
            httpx.Response(200, headers={"content-type": "text/plain"}, content=b"{}"),
            "bad_response",
        ),
        (httpx.Response(200, content=json.dumps(ANSWER).encode()), "bad_response"),
        (
            ok({"status": "error", "errorType": "timeout", "error": "query timed out"}),
            "error_status",
        ),
        (ok({"status": "success", "data": {"resultType": "vector", "result": []}}), "bad_response"),
        (ok([1, 2, 3]), "bad_response"),
        (httpx.Response(200, headers=JSON, content=b"[" * 100_000), "bad_response"),
        (
            lambda request: httpx.Response(
                200, headers={**JSON, "content-encoding": "gzip"}, content=iter([b"not gzip"])
            ),
            "bad_response",
        ),
    ],
)
@pytest.mark.fault("A8")
def test_broken_answers_raise_the_right_reason_once(response, reason):
    fake = FakePrometheus(response)
    assert failure(fake).reason == reason
    assert len(fake.requests) == 1


@pytest.mark.fault("A8")
def test_body_over_the_cap_is_refused_while_streaming():
    def stream():
        while True:
            yield b" " * 512

    fake = FakePrometheus(default=httpx.Response(200, headers=JSON, content=stream()))
    assert failure(fake, max_body_bytes=4096).reason == "too_large"


@pytest.mark.fault("A8")
def test_declared_length_over_the_cap_is_refused_before_reading():
    big = json.dumps(matrix({"a": [(T0 + i * 300, "1") for i in range(200)]}))
    fake = FakePrometheus(default=httpx.Response(200, headers=JSON, content=big))
    assert failure(fake, max_body_bytes=1024).reason == "too_large"


@pytest.mark.fault("A10")
def test_tls_failure_is_not_retried_and_has_reason_tls():
    def handshake(request):
        try:
            raise ssl.SSLCertVerificationError(1, "certificate verify failed: self-signed")
        except ssl.SSLError as error:
            raise httpx.ConnectError("TLS handshake failed", request=request) from error

    fake = FakePrometheus(default=handshake)
    assert failure(fake).reason == "tls" and len(fake.requests) == 1


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
@pytest.mark.fault("A8")
def test_arbitrary_bytes_raise_nothing_but_source_error(body):
    fake = FakePrometheus(default=httpx.Response(200, headers=JSON, content=body))
    with source(fake, max_body_bytes=1024) as client:
        try:
            client.query_range(EXPR, T0, T0 + 300)
        except SourceError as error:
            assert error.reason in SOURCE_ERRORS


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
series = st.fixed_dictionaries(
    {
        "metric": st.dictionaries(st.sampled_from(["instance", "job"]), json_values),
        "values": json_values,
    }
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(series | json_values, max_size=3),
    st.sampled_from(["success", "error", None]),
    json_values,
)
@pytest.mark.fault("A8")
def test_hostile_json_answers_raise_nothing_but_source_error(result, status, warnings):
    payload = {"status": status, "data": {"resultType": "matrix", "result": result}}
    payload["warnings"] = warnings
    with source(FakePrometheus(default=ok(payload))) as client:
        try:
            outcome = client.query_range(EXPR, T0, T0 + 300)
        except SourceError as error:
            assert error.reason in SOURCE_ERRORS
        else:
            assert isinstance(outcome, RangeResult)


# --- planner -----------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    st.integers(0, 2_000_000_000),
    st.floats(-2, 12_000),
    st.sampled_from([15, 60, 300, 3600]),
    st.integers(1, 400_000),
    st.integers(1000, 50_000_000),
)
@pytest.mark.fault("A6")
def test_planned_pieces_respect_both_limits_and_tile_the_grid(start, steps, step, hint, limit):
    end = start + int(steps * step)
    pieces = plan_pieces(start, end, step, hint, limit)
    first, last = -(-start // step) * step, end // step * step
    if first > last:
        assert pieces == []
        return
    assert pieces[0][0] == first and pieces[-1][1] == last
    for (_, hi), (lo, _) in itertools.pairwise(pieces):
        assert lo == hi + step  # no overlap, no gap
    for lo, hi in pieces:
        assert lo % step == 0 and hi % step == 0 and lo <= hi
        points = (hi - lo) // step + 1
        assert points <= MAX_POINTS < 11_000
        assert points * hint <= limit or points == 1


def test_points_per_request_never_drops_below_one():
    assert points_per_request(1, 250_000) == MAX_POINTS
    assert points_per_request(100, 250_000) == 2_500
    assert points_per_request(10**9, 250_000) == 1


# --- now, ready, token, lifecycle --------------------------------------------------------------


@pytest.mark.fault("E3")
def test_now_is_prometheus_time_from_time_or_the_date_header():
    scalar = {"status": "success", "data": {"resultType": "scalar", "result": [1.7e9, "1.7e9"]}}
    odd = {"status": "success", "data": {"resultType": "string", "result": "x"}}
    date = {"Date": formatdate(1_700_000_123, usegmt=True)}
    fake = FakePrometheus(ok(scalar), ok(odd, date), ok(odd))
    with source(fake) as client:
        assert client.now() == 1.7e9
        assert fake.requests[0].url.params["query"] == "time()"
        assert client.now() == 1_700_000_123
        with pytest.raises(SourceError, match="bad_response"):
            client.now()


def test_instant_queries_report_errors_with_reasons():
    fake = FakePrometheus(ok({"status": "error", "errorType": "bad_data", "error": "parse"}))
    with source(fake) as client, pytest.raises(SourceError, match="error_status"):
        client.instant("up")


@pytest.mark.fault("A9")
def test_ready_reflects_the_readiness_endpoint_without_retrying():
    fake = FakePrometheus(
        httpx.Response(200, text="Prometheus Server is Ready."),
        httpx.Response(503, text="Service Unavailable"),
        httpx.ConnectError("refused"),
    )
    with source(fake) as client:
        assert [client.ready(), client.ready(), client.ready()] == [True, False, False]
    assert [r.url.path for r in fake.requests] == ["/-/ready"] * 3


@pytest.mark.fault("H4")
def test_bearer_token_is_sent_but_never_logged_or_raised(caplog):
    caplog.set_level(logging.DEBUG)
    fake = FakePrometheus(ok(ANSWER), default=httpx.ConnectError("refused"))
    clock = FakeClock()
    client = PrometheusSource(
        PrometheusSettings(url="http://prom:9090"),
        transport=httpx.MockTransport(fake),
        sleep=clock.sleep,
        clock=clock,
        token=TOKEN,
    )
    with client:
        client.query_range(EXPR, T0, T0 + 300)
        with pytest.raises(SourceError) as caught:
            client.query_range(EXPR, T0, T0 + 300)
    assert fake.requests[0].headers["authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in caplog.text and TOKEN not in str(caught.value)
    assert TOKEN not in repr(client)


def test_closed_source_refuses_requests():
    fake = FakePrometheus(default=ok(ANSWER))
    with source(fake) as client:
        pass
    with pytest.raises(RuntimeError):
        client.query_range(EXPR, T0, T0 + 300)
