"""`PrometheusSource.fetch_history`, training's way in: one range per quantity, joined WIDE."""

from __future__ import annotations

import httpx
import pytest

from forecaster.config import PrometheusSettings
from forecaster.source import PrometheusSource, SourceError

JSON = {"content-type": "application/json"}


def _matrix(values, **extra):
    return {
        "status": "success",
        "data": {
            "resultType": "matrix",
            "result": [{"metric": {"instance": "ppdb001"}, "values": values}],
        },
        **extra,
    }


def _source(handler, retries=0):
    settings = PrometheusSettings(url="http://prom", retries=retries)
    return PrometheusSource(settings, transport=httpx.MockTransport(handler), sleep=lambda s: None)


def test_history_is_fetched_per_quantity_and_joined():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(dict(request.url.params))
        start = int(request.url.params["start"])
        return httpx.Response(200, json=_matrix([[start, "0.5"], [start + 300, "0.6"]]))

    with _source(handler) as source:
        frame = source.fetch_history({"cpu_utilisation": "up", "memory_utilisation": "up"}, 0, 300)
    assert len(seen) == 2 and seen[0]["step"] == "300"
    assert list(frame["cpu_utilisation"]) == [0.5, 0.6]
    assert list(frame["memory_utilisation"]) == [0.5, 0.6]
    assert list(frame["instance"]) == ["ppdb001", "ppdb001"]


def test_long_ranges_are_fetched_in_pieces_within_the_points_limit():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        lo, hi = int(request.url.params["start"]), int(request.url.params["end"])
        seen.append((hi - lo) // 300 + 1)
        return httpx.Response(200, json=_matrix([[t, "1"] for t in range(lo, hi + 1, 300)]))

    with _source(handler) as source:
        frame = source.fetch_history({"cpu_utilisation": "up"}, 0, 300 * 25_000)
    assert max(seen) < 11_000 and sum(seen) == 25_001
    assert len(frame) == 25_001 and frame["timestamp"].is_unique


def test_a_partial_answer_is_kept_and_logged(caplog):
    answer = _matrix([[0, "0.5"]], warnings=["a store was down"])
    with _source(lambda request: httpx.Response(200, json=answer)) as source:
        frame = source.fetch_history({"cpu_utilisation": "up"}, 0, 0)
    assert list(frame["cpu_utilisation"]) == [0.5]
    assert "a store was down" in caplog.text


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (httpx.Response(503, text="unavailable"), "http_error"),
        (httpx.Response(200, text="<html>oops</html>"), "bad_response"),
        (httpx.Response(200, json={"status": "error", "error": "x"}), "error_status"),
        (httpx.Response(422, json={"status": "error", "error": "too many"}), "bad_request"),
    ],
)
def test_failed_answers_raise_source_errors_with_a_reason(response, reason):
    with (
        _source(lambda request: response, retries=2) as source,
        pytest.raises(SourceError) as error,
    ):
        source.fetch_history({"cpu_utilisation": "up"}, 0, 300)
    assert error.value.reason == reason


def test_an_unreachable_server_is_a_connection_error():
    def refuse(request):
        raise httpx.ConnectError("refused")

    with _source(refuse) as source, pytest.raises(SourceError) as error:
        source.fetch_history({"cpu_utilisation": "up"}, 0, 300)
    assert error.value.reason == "connection"
