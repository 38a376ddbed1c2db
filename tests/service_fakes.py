"""A fake PromQL source for service tests: a synthetic fleet answered like `query_range`.

Every value is a pure function of (instance, quantity, time), so a test can ask the same
question twice and compare. `FakeSource.requests` records (quantity, start, end) of every call;
`fail_with` makes the next calls raise a `SourceError`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import parse_qs

import httpx
import numpy as np
import pandas as pd

from forecaster.contract import load_contract
from forecaster.grid import regrid
from forecaster.source import RangeResult, SourceError

CONTRACT = load_contract()
EXPR_TO_NAME = {q.expr: q.name for q in CONTRACT.quantities}
BASE = {
    "cpu_utilisation": 0.4,
    "memory_utilisation": 0.6,
    "filesystem_utilisation": 0.5,
    "disk_io": 2.0e6,
    "request_latency_p95": 0.08,
    "network_receive": 1.0e6,
    "network_transmit": 5.0e5,
    "http_error_ratio": 0.01,
    "gc_pause": 0.02,
    "load1": 2.0,
}
T0 = 1_795_000_000 - 1_795_000_000 % 300  # a grid step in 2026


def value(instance: str, quantity: str, seconds: np.ndarray) -> np.ndarray:
    """A diurnal signal around the quantity's base level, different per instance."""
    phase = (sum(map(ord, instance)) % 24) / 24.0
    day = np.sin(2 * np.pi * (seconds / 86400.0 + phase))
    return BASE[quantity] * (1.0 + 0.2 * day)


@dataclass
class FakeSource:
    """Answers every contract expression for `instances`, from `first` (unix s) on."""

    instances: list[str]
    now_value: float = float(T0 + 30 * 3600 + 20)
    first: float = float(T0)
    missing: dict[str, set[str]] = field(default_factory=dict)  # quantity -> instances without
    requests: list[tuple[str, float, float]] = field(default_factory=list)
    fail_with: str | None = None
    override: dict[tuple[str, str], float] = field(default_factory=dict)  # (inst, q) -> value
    first_of: dict[str, float] = field(default_factory=dict)  # instance -> its own `first`

    def now(self) -> float:
        if self.fail_with:
            raise SourceError(self.fail_with, "injected")
        return self.now_value

    def query_range(
        self,
        expr: str,
        start: float,
        end: float,
        step: int = 300,
        series_hint: int = 1,
        *,
        quantity: str = "value",
    ) -> RangeResult:
        if self.fail_with:
            raise SourceError(self.fail_with, "injected")
        name = EXPR_TO_NAME[expr]
        assert quantity == name
        self.requests.append((name, start, end))
        frames = []
        for instance in self.instances:
            if instance in self.missing.get(name, set()):
                continue
            first = self.first_of.get(instance, self.first)
            times = np.arange(max(start, first), end + 1, step, dtype=np.float64)
            values = value(instance, name, times)
            if (instance, name) in self.override:
                values = np.full_like(values, self.override[(instance, name)])
            frames.append(
                pd.DataFrame(
                    {
                        "instance": instance,
                        "timestamp": pd.to_datetime(times, unit="s", utc=True),
                        name: values,
                    }
                )
            )
        if frames:
            frame = pd.concat(frames, ignore_index=True)
        else:
            frame = pd.DataFrame(
                {
                    "instance": pd.Series(dtype=object),
                    "timestamp": pd.Series(dtype="datetime64[ns, UTC]"),
                    name: pd.Series(dtype=float),
                }
            )
        return RangeResult(regrid(frame, step), (), Counter())


FLEET = ["ppdb001", "ppweb001", "ppml001"]


class FakeClock:
    """Monotonic seconds that only the injected sleep moves; records every wait."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


class FakePrometheus:
    """An httpx MockTransport handler: `time()`, `query_range` and `/-/ready` for FLEET, with
    the values of `value`; `mode` injects one kind of fault: refused, 5xx, 429, garbage,
    error_status, restarting (503 everywhere, as during WAL replay), partial (a truncation
    warning), thanos_partial (a Thanos store warning) or thanos_flag (`partialResponse`)."""

    def __init__(self) -> None:
        self.now = float(T0 + 26 * 3600 + 10)
        self.mode = "ok"
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.mode == "refused":
            raise httpx.ConnectError("connection refused", request=request)
        if self.mode == "5xx":
            return httpx.Response(503, text="unavailable")
        if self.mode == "restarting":
            return httpx.Response(503, text="Service Unavailable")
        if self.mode == "429":
            return httpx.Response(429, headers={"Retry-After": "1"}, text="slow down")
        if self.mode == "garbage":
            return httpx.Response(200, headers={"Content-Type": "text/html"}, text="<html>")
        if self.mode == "error_status":
            body = {"status": "error", "errorType": "execution", "error": "boom"}
            return httpx.Response(200, json=body)
        if request.url.path == "/-/ready":
            return httpx.Response(200, text="Prometheus Server is Ready.")
        params = {k: v[0] for k, v in parse_qs(request.url.query.decode()).items()}
        if request.url.path == "/api/v1/query":
            scalar = {"resultType": "scalar", "result": [self.now, str(self.now)]}
            return httpx.Response(200, json={"status": "success", "data": scalar})
        return httpx.Response(200, json=self._matrix(params))

    def _matrix(self, params: dict[str, str]) -> dict:
        name = EXPR_TO_NAME[params["query"]]
        start, end, step = (float(params[k]) for k in ("start", "end", "step"))
        times = np.arange(start, end + 1, step)
        result = [
            {
                "metric": {"instance": instance},
                "values": [
                    [float(t), str(float(v))]
                    for t, v in zip(times, value(instance, name, times), strict=True)
                ],
            }
            for instance in FLEET
        ]
        body: dict = {"status": "success", "data": {"resultType": "matrix", "result": result}}
        if self.mode == "partial":
            body["warnings"] = ["results truncated due to limit"]
        if self.mode == "thanos_partial":  # a Thanos querier with partial_response enabled
            body["warnings"] = [
                'receive series from Addr: 10.0.0.7:10901 LabelSets: {store="eu-2"}: '
                "rpc error: code = Unavailable desc = connection refused"
            ]
        if self.mode == "thanos_flag":
            body["partialResponse"] = True
        return body

    def range_ends(self) -> set[float]:
        """The `end` of every query_range request so far."""
        return {
            float(r.url.params["end"]) for r in self.requests if r.url.path.endswith("query_range")
        }
