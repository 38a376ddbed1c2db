"""The PromQL client: requests split under the points limit, errors mapped to reasons."""

from __future__ import annotations

import httpx
import pytest

from forecaster.frames import SourceError
from forecaster.promql import MAX_POINTS, fetch_history, plan_ranges


def test_ranges_stay_under_the_points_limit_and_cover_the_grid_once():
    pieces = plan_ranges(0, 300 * 25_000, 300)
    assert all((hi - lo) / 300 + 1 <= MAX_POINTS < 11_000 for lo, hi in pieces)
    steps = [t for lo, hi in pieces for t in range(int(lo), int(hi) + 1, 300)]
    assert steps == list(range(0, 300 * 25_000 + 1, 300))
    assert plan_ranges(301, 899, 300) == [(600.0, 600.0)]
    assert plan_ranges(1000, 900, 300) == []


def _matrix(values):
    return {
        "status": "success",
        "data": {
            "resultType": "matrix",
            "result": [{"metric": {"instance": "ppdb001"}, "values": values}],
        },
    }


def test_history_is_fetched_per_quantity_and_joined():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(dict(request.url.params))
        start = int(float(request.url.params["start"]))
        return httpx.Response(200, json=_matrix([[start, "0.5"], [start + 300, "0.6"]]))

    frame = fetch_history(
        "http://prom",
        {"cpu_utilisation": "up", "memory_utilisation": "up"},
        0,
        300,
        transport=httpx.MockTransport(handler),
    )
    assert len(seen) == 2 and seen[0]["step"] == "300"
    assert list(frame["cpu_utilisation"]) == [0.5, 0.6]
    assert list(frame["instance"]) == ["ppdb001", "ppdb001"]


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (httpx.Response(503, text="unavailable"), "http_error"),
        (httpx.Response(200, text="<html>oops</html>"), "bad_response"),
        (httpx.Response(200, json={"status": "error", "error": "x"}), "error_status"),
    ],
)
def test_failed_answers_raise_source_errors_with_a_reason(response, reason):
    transport = httpx.MockTransport(lambda request: response)
    with pytest.raises(SourceError) as error:
        fetch_history("http://prom", {"cpu_utilisation": "up"}, 0, 300, transport=transport)
    assert error.value.reason == reason


def test_an_unreachable_server_is_a_connection_error():
    def refuse(request):
        raise httpx.ConnectError("refused")

    with pytest.raises(SourceError) as error:
        fetch_history(
            "http://prom", {"cpu_utilisation": "up"}, 0, 300, transport=httpx.MockTransport(refuse)
        )
    assert error.value.reason == "connection"
