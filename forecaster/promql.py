"""A thin PromQL HTTP client: only the documented /api/v1 endpoints, bounded requests.

Range queries are split so that no request asks for more than MAX_POINTS points per series
(Prometheus refuses 11,000 or more), and every request has a timeout.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import httpx
import pandas as pd

from forecaster.frames import STEP_SECONDS, SourceError, combine, from_query_range

log = logging.getLogger(__name__)
MAX_POINTS = 10_000
DEFAULT_TIMEOUT = 30.0


def plan_ranges(start: float, end: float, step: int) -> list[tuple[float, float]]:
    """Split [start, end] on the step grid into pieces of at most MAX_POINTS points each."""
    first = -(-int(start) // step) * step
    last = int(end) // step * step
    pieces = []
    while first <= last:
        stop = min(first + (MAX_POINTS - 1) * step, last)
        pieces.append((float(first), float(stop)))
        first = stop + step
    return pieces


def query_range(
    client: httpx.Client, expr: str, start: float, end: float, step: int = STEP_SECONDS
) -> list[dict]:
    """Raw JSON answers of /api/v1/query_range for `expr`, one per planned piece."""
    answers = []
    for lo, hi in plan_ranges(start, end, step):
        try:
            response = client.get(
                "/api/v1/query_range",
                params={"query": expr, "start": lo, "end": hi, "step": step},
            )
        except httpx.TimeoutException as exc:
            raise SourceError("timeout", str(exc)) from None
        except httpx.HTTPError as exc:
            raise SourceError("connection", str(exc)) from None
        if response.status_code >= 400:
            raise SourceError("http_error", f"HTTP {response.status_code}: {response.text[:200]}")
        try:
            answers.append(response.json())
        except ValueError:
            raise SourceError("bad_response", "the answer is not JSON") from None
    return answers


def fetch_history(
    url: str,
    expressions: Mapping[str, str],
    start: float,
    end: float,
    *,
    step: int = STEP_SECONDS,
    timeout: float = DEFAULT_TIMEOUT,
    transport: httpx.BaseTransport | None = None,
) -> pd.DataFrame:
    """A wide frame of every quantity in `expressions` (name -> PromQL) over [start, end]."""
    parts: dict[str, pd.DataFrame] = {}
    with httpx.Client(base_url=url.rstrip("/"), timeout=timeout, transport=transport) as client:
        for name, expr in expressions.items():
            frames = [
                from_query_range(answer, name, step).frame
                for answer in query_range(client, expr, start, end, step)
            ]
            parts[name] = pd.concat(frames, ignore_index=True)
            log.info("fetched %s: %d samples", name, len(parts[name]))
    return combine(parts, step)
