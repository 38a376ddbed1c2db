"""The PromQL client, for the service and for training: bounded, retried requests to any
Prometheus-compatible HTTP API, and the parsing of their answers into frames on the grid.

`PrometheusSource` uses only the documented endpoints (`/api/v1/query_range`, `/api/v1/query`,
`/-/ready`) and turns every failure into a `SourceError` whose `reason` is one of
`SOURCE_ERRORS` (RELIABILITY.md section A):

| failure | reason | retried |
|---|---|---|
| connection refused / reset, broken transfer | `connection` | yes |
| timeout (per request `timeout`, or the budget ran out) | `timeout` | yes |
| HTTP 5xx | `http_error` | yes |
| HTTP 429 | `rate_limited` | yes, waiting at least `Retry-After` |
| HTTP 400 / 422 (too many points or samples, bad PromQL) | `bad_request` | never |
| other HTTP status (401, 403, 404, redirects) | `http_error` | no |
| TLS failure (unknown CA, wrong host name, expired); never falls back to insecure | `tls` | no |
| body over `max_body_bytes` | `too_large` | no |
| HTML, wrong content type, truncated or non-JSON body, malformed answer | `bad_response` | no |
| `"status": "error"` inside a 200 | `error_status` | no |

Retries: at most `settings.retries` more attempts, waiting `uniform(0, min(8, 0.5 * 2**n))`
seconds ("full jitter") before retry n, all inside a budget of 2 x `timeout` per request; a
wait that would pass the budget ends the request with the last error instead. `sleep`, `clock`
and `rng` are injected so tests run without waiting. The bearer token goes into the
`Authorization` header only and is never logged.

Range queries are split so that no request holds more than `MAX_POINTS` points per series or
`max_samples_per_request` samples (points x series, where the series count is the caller's
hint, raised to the count of the last answer), then joined into one LONG frame;
`PrometheusSource.fetch_history` joins one such range per quantity into a WIDE frame.

`from_query_range` parses a `query_range` answer into a LONG frame on `forecaster.grid`'s grid:
a broken answer raises only `SourceError`; series it cannot use are dropped and counted
(`SERIES_DROPS`); NaN/Inf values are left for `forecaster.clean`.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import ssl
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx
import numpy as np
import pandas as pd

from forecaster.config import PrometheusSettings, TLSClientSettings
from forecaster.grid import STEP_SECONDS, combine, regrid, seconds_to_utc
from webcommon.webconfig import client_ssl_context

log = logging.getLogger(__name__)
# Answers that cannot be parsed (`from_query_range`), then requests that failed.
SOURCE_ERRORS = (
    "bad_response",
    "error_status",
    "timeout",
    "connection",
    "http_error",
    "too_large",
    "rate_limited",
    "bad_request",
    "tls",
)
SERIES_DROPS = ("no_instance", "bad_instance", "duplicate_instance")
# Label values from Prometheus may hold any UTF-8 (the exposition escapes them); longer ones go.
MAX_LABEL_BYTES = 256
# Points per series in one range request (Prometheus refuses 11,000 or more).
MAX_POINTS = 10_000
BACKOFF_BASE = 0.5
BACKOFF_CAP = 8.0
ERROR_DETAIL_BYTES = 4096
NEVER_RETRIED = frozenset({400, 422})
JSON_TYPES = frozenset({"application/json"})
_EMPTY_MATRIX = {"status": "success", "data": {"resultType": "matrix", "result": []}}


class SourceError(Exception):
    """A PromQL request or answer that cannot be used; `reason` is one of `SOURCE_ERRORS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class RangeResult:
    """A parsed `query_range` answer: the LONG frame, Prometheus' warnings, dropped series."""

    frame: pd.DataFrame
    warnings: tuple[str, ...]
    dropped: Counter[str]

    @property
    def partial(self) -> bool:
        """True when Prometheus warned, i.e. the answer may be incomplete."""
        return bool(self.warnings)


@dataclass(frozen=True)
class InstantResult:
    """A parsed `/api/v1/query` answer; `date` is the answer's `Date` header (unix seconds)."""

    result_type: str
    result: object
    warnings: tuple[str, ...]
    date: float | None


@dataclass(frozen=True)
class _Answer:
    payload: object
    headers: httpx.Headers


class _RetryableError(Exception):
    """An attempt failed in a way worth retrying; `wait` is the least wait the server asked."""

    def __init__(self, error: SourceError, wait: float = 0.0) -> None:
        super().__init__(str(error))
        self.error = error
        self.wait = wait


def points_per_request(series: int, max_samples: int) -> int:
    """Points per series in one request: under `MAX_POINTS` and `max_samples / series`."""
    return max(1, min(MAX_POINTS, max_samples // max(1, series)))


def grid_span(start: float, end: float, step: int) -> tuple[int, int]:
    """The first and last grid times inside [start, end] (first > last when there is none)."""
    return -(-int(start) // step) * step, int(end) // step * step


def plan_pieces(
    start: float, end: float, step: int = STEP_SECONDS, series: int = 1, max_samples: int = 250_000
) -> list[tuple[int, int]]:
    """Split [start, end] on the step grid into consecutive pieces within both limits.

    Each piece (lo, hi) covers the grid times lo, lo + step, ..., hi inclusive; together they
    tile the grid inside [start, end] without overlap or gap. If `series` alone exceeds
    `max_samples`, pieces are one point long (time cannot be split further).
    """
    first, last = grid_span(start, end, step)
    points = points_per_request(series, max_samples)
    pieces = []
    while first <= last:
        stop = min(first + (points - 1) * step, last)
        pieces.append((first, stop))
        first = stop + step
    return pieces


class PrometheusSource:
    """A PromQL HTTP client with limits, retries and bounded failure reasons (module docs)."""

    def __init__(
        self,
        settings: PrometheusSettings,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        token: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        budget: float | None = None,
    ) -> None:
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._settings = settings
        self._client = httpx.Client(
            base_url=settings.url.rstrip("/"),
            timeout=settings.timeout,
            transport=transport,
            headers=headers,
            follow_redirects=False,
            verify=_tls_context(settings.tls_config),
            event_hooks=_server_name_hooks(settings.tls_config.server_name),
        )
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - jitter only
        self._clock = clock
        self._budget = 2.0 * settings.timeout if budget is None else float(budget)

    def __enter__(self) -> PrometheusSource:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def query_range(
        self,
        expr: str,
        start: float,
        end: float,
        step: int = STEP_SECONDS,
        series_hint: int = 1,
        *,
        quantity: str = "value",
    ) -> RangeResult:
        """`expr` on the grid inside [start, end], fetched in pieces within the limits.

        The frame is LONG (instance, timestamp, `quantity`), sorted, one row per grid step.
        Warnings of every piece are joined (Prometheus' `warnings`, Thanos' `partialResponse`,
        VictoriaMetrics' `isPartial`): the result is `partial` when there is any.
        """
        frames: list[pd.DataFrame] = []
        warnings: dict[str, None] = {}  # insertion-ordered set
        dropped: Counter[str] = Counter()
        series = max(1, int(series_hint))
        first, last = grid_span(start, end, step)
        while first <= last:
            points = points_per_request(series, self._settings.max_samples_per_request)
            stop = min(first + (points - 1) * step, last)
            params = {"query": expr, "start": str(first), "end": str(stop), "step": str(step)}
            answer = self._send("/api/v1/query_range", params)
            piece = _parse_range(answer.payload, quantity, step)
            frames.append(piece.frame)
            warnings.update(dict.fromkeys(piece.warnings))
            dropped.update(piece.dropped)
            series = max(series, _series_count(answer.payload))
            first = stop + step
        if not frames:
            return from_query_range(_EMPTY_MATRIX, quantity, step)
        if len(frames) > 1:
            frames = [regrid(pd.concat(frames, ignore_index=True), step)]
        return RangeResult(frames[0], tuple(warnings), dropped)

    def fetch_history(
        self,
        expressions: Mapping[str, str],
        start: float,
        end: float,
        step: int = STEP_SECONDS,
    ) -> pd.DataFrame:
        """A WIDE frame of every quantity in `expressions` (name -> PromQL) over [start, end].

        One `query_range` per quantity, split within the limits; warnings of a partial answer
        are logged, the answer is kept.
        """
        parts: dict[str, pd.DataFrame] = {}
        for name, expr in expressions.items():
            result = self.query_range(expr, start, end, step, quantity=name)
            if result.partial:
                log.warning("%s: partial answer: %s", name, "; ".join(result.warnings))
            parts[name] = result.frame
            log.info("fetched %s: %d samples", name, len(result.frame))
        return combine(parts, step)

    def instant(self, expr: str, at: float | None = None) -> InstantResult:
        """An instant query (`/api/v1/query`), at Prometheus' now unless `at` is given."""
        params = {"query": expr} if at is None else {"query": expr, "time": str(at)}
        answer = self._send("/api/v1/query", params)
        try:
            result_type, result, warnings = _instant_data(answer.payload)
        except (AttributeError, TypeError, ValueError) as error:
            raise SourceError("bad_response", f"malformed answer: {error}") from None
        return InstantResult(result_type, result, warnings, _http_date(answer.headers))

    def now(self) -> float:
        """Prometheus' time (unix seconds): the value of `time()`, else the `Date` header."""
        answer = self.instant("time()")
        if answer.result_type == "scalar" and isinstance(answer.result, list):
            try:
                return float(answer.result[0])
            except (IndexError, TypeError, ValueError, OverflowError):  # 10**400: no float
                pass
        if answer.date is not None:
            return answer.date
        raise SourceError("bad_response", "time() gave neither a scalar nor a Date header")

    def ready(self) -> bool:
        """Whether `/-/ready` answers 200 (False on any error; one attempt, never retried)."""
        try:
            with self._client.stream("GET", "/-/ready") as response:
                return response.status_code == 200
        except httpx.HTTPError as error:
            log.debug("readiness probe failed: %s", type(error).__name__)
            return False

    def _send(self, path: str, params: Mapping[str, str]) -> _Answer:
        """One logical request: attempts with backoff inside the budget, or a SourceError."""
        deadline = self._clock() + self._budget
        for attempt in range(1, self._settings.retries + 2):
            try:
                return self._attempt(path, params, deadline)
            except _RetryableError as failure:
                if attempt > self._settings.retries:
                    raise failure.error from None
                wait = max(failure.wait, self._backoff(attempt))
                if self._clock() + wait >= deadline:
                    log.debug("%s: giving up, a %.1fs wait passes the budget", path, wait)
                    raise failure.error from None
                log.debug("%s: %s, retry %d in %.2fs", path, failure.error.reason, attempt, wait)
                self._sleep(wait)
        raise SourceError("connection", "no attempt made")  # unreachable: retries >= 0

    def _backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff before retry `attempt` (1-based)."""
        return self._rng.uniform(0.0, min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** (attempt - 1)))

    def _attempt(self, path: str, params: Mapping[str, str], deadline: float) -> _Answer:
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise SourceError("timeout", f"request budget of {self._budget:.0f}s spent")
        timeout = min(self._settings.timeout, remaining)
        try:
            with self._client.stream("GET", path, params=params, timeout=timeout) as response:
                return self._answer(response, deadline)
        except httpx.TimeoutException as error:
            reason = SourceError("timeout", f"{type(error).__name__} after {timeout:g}s")
            raise _RetryableError(reason) from None
        except httpx.DecodingError as error:
            raise SourceError("bad_response", f"undecodable body: {error}") from None
        except httpx.HTTPError as error:
            if _is_tls(error):
                raise SourceError("tls", f"TLS failure: {error}") from None
            if isinstance(error, httpx.TransportError):
                reason = SourceError("connection", f"{type(error).__name__}: {error}")
                raise _RetryableError(reason) from None
            raise SourceError("connection", f"{type(error).__name__}: {error}") from None

    def _answer(self, response: httpx.Response, deadline: float) -> _Answer:
        status = response.status_code
        if 200 <= status < 300:
            kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if kind not in JSON_TYPES:
                raise SourceError("bad_response", f"content type {kind or 'none'!r}, not JSON")
            body = self._read(response, self._settings.max_body_bytes, deadline, strict=True)
            return _Answer(_decode(body), response.headers)
        detail = _error_detail(self._read(response, ERROR_DETAIL_BYTES, deadline, strict=False))
        message = f"HTTP {status}: {detail}"
        if status in NEVER_RETRIED:
            raise SourceError("bad_request", message)
        if status == 429:
            wait = _retry_after(response.headers)
            raise _RetryableError(SourceError("rate_limited", message), wait)
        if status >= 500:
            raise _RetryableError(SourceError("http_error", message))
        raise SourceError("http_error", message)

    def _read(self, response: httpx.Response, cap: int, deadline: float, *, strict: bool) -> bytes:
        """The body up to `cap` bytes: beyond it `too_large` (strict) or cut (not strict)."""
        length = response.headers.get("content-length", "")
        if strict and length.isdigit() and int(length) > cap:
            raise SourceError("too_large", f"Content-Length {length} over {cap} bytes")
        chunks, size = [], 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > cap:
                if strict:
                    raise SourceError("too_large", f"body over {cap} bytes")
                chunks.append(chunk[: cap - size + len(chunk)])
                break
            chunks.append(chunk)
            if self._clock() > deadline:
                raise _RetryableError(
                    SourceError("timeout", "body still arriving when the budget ran out")
                )
        return b"".join(chunks)


def _decode(body: bytes) -> object:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError
        raise SourceError("bad_response", f"not JSON: {type(error).__name__}") from None


def from_query_range(payload: object, quantity: str, step: int = STEP_SECONDS) -> RangeResult:
    """Parse a `/api/v1/query_range` answer into a LONG frame (instance, timestamp, quantity).

    Sample values are strings ("1.5", "NaN", "+Inf"); they become float64 as they are. A series
    without an `instance` label is dropped (`no_instance`), one whose instance is longer than
    `MAX_LABEL_BYTES` too (`bad_instance`); of several series for one instance the one with the
    most points is kept (the first on ties) and each other one counts `duplicate_instance`.
    Raises `SourceError` for an error status or a malformed answer.
    """
    result, warnings = _matrix(payload)
    series, dropped = _select_series(result)
    counts = [len(values) for values in series.values()]
    points = [point for values in series.values() for point in values]
    try:
        seconds = np.fromiter((t for t, _ in points), dtype=np.float64, count=len(points))
        values = np.array([v for _, v in points], dtype=str).astype(np.float64)
    except (TypeError, ValueError, OverflowError) as error:
        raise SourceError("bad_response", f"malformed sample: {error}") from None
    if values.shape != seconds.shape:
        raise SourceError("bad_response", "a sample value is not a scalar")
    frame = pd.DataFrame(
        {
            "instance": np.repeat(np.array(list(series), dtype=object), counts),
            "timestamp": seconds_to_utc(seconds),
            quantity: values,
        }
    )
    return RangeResult(regrid(frame, step), warnings, dropped)


def _matrix(payload: object) -> tuple[list, tuple[str, ...]]:
    if not isinstance(payload, Mapping):
        raise SourceError("bad_response", "the answer is not a JSON object")
    status = payload.get("status")
    if status == "error":
        detail = f"{payload.get('errorType', 'unknown')}: {payload.get('error', '')}"
        raise SourceError("error_status", detail)
    data = payload.get("data")
    if status != "success" or not isinstance(data, Mapping):
        raise SourceError("bad_response", f"status {status!r} without a data object")
    if data.get("resultType") != "matrix":
        raise SourceError("bad_response", f"resultType {data.get('resultType')!r}, not matrix")
    result, warnings = data.get("result"), payload.get("warnings", [])
    if not isinstance(result, list) or not isinstance(warnings, list):
        raise SourceError("bad_response", "result or warnings is not a list")
    return result, tuple(str(warning) for warning in warnings)


def _select_series(result: list) -> tuple[dict[str, list], Counter[str]]:
    chosen: dict[str, list] = {}
    dropped: Counter[str] = Counter()
    for series in result:
        metric = series.get("metric") if isinstance(series, Mapping) else None
        values = series.get("values", []) if isinstance(series, Mapping) else None
        if not isinstance(metric, Mapping) or not isinstance(values, list):
            raise SourceError("bad_response", "a series without a metric object or values list")
        instance = metric.get("instance")
        if not isinstance(instance, str) or not instance:
            dropped["no_instance"] += 1
            continue
        if _label_bytes(instance) > MAX_LABEL_BYTES:  # too long, or no UTF-8 text at all
            dropped["bad_instance"] += 1
            continue
        if instance in chosen:
            dropped["duplicate_instance"] += 1
            if len(values) <= len(chosen[instance]):
                continue
        chosen[instance] = values
    return chosen, dropped


def _parse_range(payload: object, quantity: str, step: int) -> RangeResult:
    """`from_query_range` plus partial-response flags; malformed answers -> `bad_response`."""
    try:
        result = from_query_range(payload, quantity, step)
    except SourceError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError, OverflowError) as error:
        raise SourceError("bad_response", f"malformed answer: {error}") from None
    extra = _partial_flags(payload)
    if not extra:
        return result
    return RangeResult(result.frame, result.warnings + extra, result.dropped)


def _partial_flags(payload: object) -> tuple[str, ...]:
    """Warnings for partial answers flagged outside Prometheus' `warnings` list."""
    if not isinstance(payload, Mapping):
        return ()
    data = payload.get("data")
    places = (payload, data) if isinstance(data, Mapping) else (payload,)
    flags = []
    for name in ("partialResponse", "isPartial"):
        if any(place.get(name) is True for place in places):
            flags.append(f"partial response ({name})")
    return tuple(flags)


def _series_count(payload: object) -> int:
    if isinstance(payload, Mapping) and isinstance(payload.get("data"), Mapping):
        result = payload["data"].get("result")
        if isinstance(result, list):
            return len(result)
    return 0


def _instant_data(payload: object) -> tuple[str, object, tuple[str, ...]]:
    if not isinstance(payload, Mapping):
        raise SourceError("bad_response", "the answer is not a JSON object")
    if payload.get("status") == "error":
        detail = f"{payload.get('errorType', 'unknown')}: {payload.get('error', '')}"
        raise SourceError("error_status", detail)
    data = payload.get("data")
    if payload.get("status") != "success" or not isinstance(data, Mapping):
        raise SourceError("bad_response", "status is not success, or no data object")
    result_type = data.get("resultType")
    if result_type not in ("scalar", "vector", "matrix", "string"):
        raise SourceError("bad_response", f"resultType {result_type!r}")
    warnings = payload.get("warnings", [])
    if not isinstance(warnings, list):
        raise SourceError("bad_response", "warnings is not a list")
    return str(result_type), data.get("result"), tuple(str(w) for w in warnings)


def _error_detail(body: bytes) -> str:
    """Prometheus' `error` field of an error answer, else the start of the body."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        payload = None
    if isinstance(payload, Mapping) and isinstance(payload.get("error"), str):
        return f"{payload.get('errorType', 'error')}: {payload['error']}"[:500]
    return body[:200].decode("utf-8", "replace")


def _http_date(headers: httpx.Headers) -> float | None:
    value = headers.get("date")
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _retry_after(headers: httpx.Headers) -> float:
    """Seconds asked by `Retry-After` (delta seconds or an HTTP date); 0 if absent or bad."""
    value = headers.get("retry-after", "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return 0.0
    now = _http_date(headers)
    return max(0.0, when - (now if now is not None else time.time()))


def _tls_context(tls: TLSClientSettings) -> ssl.SSLContext | bool:
    """The context that verifies Prometheus (`tls_config`); httpx's default without one."""
    if not tls.configured:
        return True
    if tls.insecure_skip_verify:
        log.warning("prometheus.tls_config.insecure_skip_verify: Prometheus is not verified")
    return client_ssl_context(tls.ca_file, tls.cert_file, tls.key_file, tls.insecure_skip_verify)


def _server_name_hooks(server_name: str | None) -> dict[str, list[Callable[..., Any]]]:
    """Event hooks that send `server_name` as SNI and verify the certificate against it
    (httpcore's `sni_hostname` extension) instead of the URL's host."""
    if not server_name:
        return {}

    def sni(request: httpx.Request) -> None:
        request.extensions["sni_hostname"] = server_name

    return {"request": [sni]}


def _is_tls(error: BaseException) -> bool:
    """Whether an exception chain holds an SSL error (certificate, host name, handshake)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError | ssl.CertificateError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _label_bytes(value: str) -> int:
    """The UTF-8 length of a label value; beyond `MAX_LABEL_BYTES` for one that no UTF-8 can
    hold (a lone surrogate, as JSON's "\\ud800" decodes): Prometheus never sends one."""
    try:
        return len(value.encode())
    except UnicodeEncodeError:
        return MAX_LABEL_BYTES + 1
