"""The forecaster's HTTP surface: `/metrics`, the seed's REST API, `POST /feed/data`, `/ws`.

`build_app(hub, ...)` takes its dependencies (the `Hub` the forecast cycle publishes to, and the
callables the forecaster injects to ingest records and reload), so tests build it
in-process. Handlers only read the hub's current `Published` state: `/metrics` serves bytes
rendered at publish time and never computes. Mutating routes need `Authorization: Bearer
<token>` when a token is configured (refusing a non-loopback listener without one is the
service's job). Every error body is JSON `{"error", "reason"}`, without tracebacks or paths.
"""

from __future__ import annotations

import asyncio
import gzip
import hmac
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from exporter import schemas
from exporter.collector import CONTENT_TYPE, GZIP_LEVEL, is_stale
from exporter.hub import Broadcaster, Hub, Published
from exporter.views import (
    alerts_body,
    current_body,
    dumps,
    fresh_instances,
    server_body,
    status_body,
)
from exporter.websocket import add_websocket_route
from webcommon.errors import CatchUnexpected

log = logging.getLogger(__name__)
API_VERSION = "1.0.0"
SERVER_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON_TYPE = "application/json"
Ingest = Callable[[list[Any]], tuple[int, Sequence[tuple[int, str]]]]
Reload = Callable[[], object]
"""Backs `POST /-/reload`: raises `ReloadError` when the reload failed."""
_SLUGS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "too_many_requests",
    503: "unavailable",
}


class ReloadError(Exception):
    """Raised by the injected reload callable when the reload failed; `POST /-/reload`
    answers 500 with its message as the reason (as Prometheus' own `/-/reload` does)."""


class ApiError(HTTPException):
    """An error answered as JSON {error, reason}."""

    def __init__(
        self, status: int, error: str, reason: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status, reason, headers)
        self.error = error
        self.reason = reason


def _error(status: int, error: str, reason: str, headers: Any = None) -> JSONResponse:
    return JSONResponse({"error": error, "reason": reason}, status_code=status, headers=headers)


def _json(body: object, status: int = 200) -> Response:
    return Response(dumps(body), status_code=status, media_type=JSON_TYPE)


def accepts_gzip(header: str | None) -> bool:
    """Whether an `Accept-Encoding` header allows gzip (q > 0, directly or through `*`)."""
    if not header:
        return False
    verdict: dict[str, bool] = {}
    for part in header.split(","):
        coding, _, params = part.partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        verdict[coding.strip().lower()] = quality > 0
    return verdict.get("gzip", verdict.get("*", False))


def bearer_dependency(token: str | None) -> Callable[..., None]:
    """The auth dependency of every mutating route: a no-op when no token is configured."""
    expected = token.encode("utf-8") if token else None
    challenge = {"WWW-Authenticate": "Bearer"}

    def require_token(authorization: Annotated[str | None, Header()] = None) -> None:
        if expected is None:
            return
        scheme, _, value = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise ApiError(401, "unauthorized", "missing bearer token", challenge)
        if not hmac.compare_digest(value.strip().encode("utf-8"), expected):
            raise ApiError(403, "forbidden", "wrong bearer token")

    return require_token


def unguarded_mutating_routes(app: FastAPI, dependency: Callable[..., None]) -> list[str]:
    """`METHOD path` of every mutating route that lacks `dependency` (should be empty)."""
    missing = []
    for route in app.routes:
        if not isinstance(route, APIRoute):
            continue
        methods = set(route.methods or ())
        if not methods & MUTATING_METHODS:
            continue
        if not any(d.call is dependency for d in route.dependant.dependencies):
            missing.append(f"{'/'.join(sorted(methods))} {route.path}")
    return missing


async def read_capped(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 beyond `limit` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise ApiError(400, "bad_request", "invalid Content-Length")
        if int(declared) > limit:
            raise ApiError(413, "payload_too_large", f"body larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "payload_too_large", f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def is_json_type(header: str | None) -> bool:
    """Whether a `Content-Type` header declares JSON: `application/json`, `application/*+json`."""
    media = (header or "").partition(";")[0].strip().lower()
    kind, _, subtype = media.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


def parse_records(raw: bytes) -> list[Any]:
    """The records of a feed body: `{"records": [...]}` or a bare JSON list."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError(400, "malformed_json", "the body is not valid JSON") from None
    if isinstance(data, dict) and isinstance(data.get("records"), list):
        return data["records"]  # type: ignore[no-any-return]
    if isinstance(data, list):
        return data
    raise ApiError(400, "bad_request", 'expected {"records": [...]} or a JSON list of records')


def feed_result(accepted: int, rejected: Sequence[tuple[int, str]], total: int) -> Response:
    """200 when every record was kept, else 422 with the per-record reasons, summed up by
    reason (most frequent first) in `reason`."""
    refused = [{"index": int(index), "reason": str(reason)} for index, reason in rejected]
    body: dict[str, Any] = {"accepted": int(accepted), "rejected": refused}
    if not refused:
        return _json(body)
    counts = Counter(item["reason"] for item in refused).most_common()
    summary = ", ".join(f"{count} {reason}" for reason, count in counts)
    reason = f"{len(refused)} of {total} records refused: {summary}"
    return _json({"error": "rejected_records", "reason": reason, **body}, 422)


def build_app(
    hub: Hub,
    *,
    ingest: Ingest | None = None,
    reload: Reload | None = None,
    token: str | None = None,
    max_body_bytes: int = 1_048_576,
    ws_max_clients: int = 250,
    ws_queue: int = 8,
    stale_after: float = 1800.0,
    allowed_origins: Collection[str] | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """The FastAPI application serving `hub`; the keyword arguments are its dependencies.

    `ingest(records) -> (accepted, [(index, reason), ...])` backs `POST /feed/data`;
    `reload()` backs `POST /-/reload` (raising `ReloadError`: 500); `token` guards every
    mutating route; `stale_after` (seconds) withdraws old forecasts from the REST answers as
    the hub does from `/metrics`.
    """
    broadcaster = Broadcaster(max_clients=ws_max_clients, queue_size=ws_queue)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        hub.attach(broadcaster, asyncio.get_running_loop(), broadcaster.on_publish)
        try:
            yield
        finally:
            hub.detach(broadcaster)
            broadcaster.close_all()

    app = FastAPI(
        title="prometheus-forecaster",
        version=API_VERSION,
        description=schemas.QUANTITY_DOC,
        lifespan=lifespan,
    )
    require_token = bearer_dependency(token)
    app.state.hub, app.state.broadcaster, app.state.require_token = hub, broadcaster, require_token
    install_error_handlers(app)
    _metrics_route(app, hub)
    _probe_routes(app, hub)
    _read_routes(app, hub, stale_after, clock)
    _write_routes(app, require_token, ingest, reload, max_body_bytes)
    add_websocket_route(app, hub, broadcaster, allowed_origins or ())
    missing = unguarded_mutating_routes(app, require_token)
    if missing:  # a programming error: fail at build time, not in production
        raise RuntimeError(f"mutating routes without auth: {missing}")
    return app


def _metrics_route(app: FastAPI, hub: Hub) -> None:
    @app.get(
        "/metrics",
        summary="Prometheus exposition of the latest cycle",
        description="Text format 0.0.4, rendered once per cycle (gzip when accepted); "
        "never computed at scrape time. Forecasts carry a `horizon` label, no timestamp.",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE: {}}}},
    )
    async def metrics(accept_encoding: Annotated[str | None, Header()] = None) -> Response:
        rendered = hub.current.rendered
        headers = {"Vary": "Accept-Encoding"}
        if accepts_gzip(accept_encoding):
            headers["Content-Encoding"] = "gzip"
            return Response(rendered.gzipped, media_type=CONTENT_TYPE, headers=headers)
        return Response(rendered.body, media_type=CONTENT_TYPE, headers=headers)


def _probe_routes(app: FastAPI, hub: Hub) -> None:
    @app.get("/-/healthy", summary="Liveness probe", response_class=PlainTextResponse)
    async def healthy() -> PlainTextResponse:
        return PlainTextResponse("Forecaster is Healthy.\n")

    @app.get(
        "/-/ready",
        summary="Readiness probe: 200 once a first (or persisted) snapshot is published",
        response_class=PlainTextResponse,
        responses={503: {"model": schemas.ErrorBody}},
    )
    async def ready() -> PlainTextResponse:
        if not hub.ready:
            raise ApiError(503, "not_ready", "no forecast snapshot published yet")
        return PlainTextResponse("Forecaster is Ready.\n")

    @app.get(
        "/health", summary="Health (seed shape)", responses={200: {"model": schemas.HealthBody}}
    )
    async def health() -> Response:
        published = hub.current
        return _json(
            {
                "status": "healthy",
                "ready": published.ready,
                "model_loaded": published.state.model_loaded,
                "source_up": published.state.source_up,
                "servers": len(published.snapshot.instances),
            }
        )

    @app.get(
        "/status",
        summary="Warm-up, model, last cycle, source and shard (seed section 10 shape)",
        responses={200: {"model": schemas.StatusBody}},
    )
    async def status() -> Response:
        published = hub.current
        return _json(status_body(published.snapshot, published.state, ready=published.ready))


def _read_routes(app: FastAPI, hub: Hub, stale_after: float, clock: Callable[[], float]) -> None:
    @app.get(
        "/predictions/current",
        summary="Every fresh server's forecasts, the active alerts and the fleet outlook",
        description=schemas.QUANTITY_DOC
        + " Servers whose forecast is older than stale_after are left out. With `limit`, one"
        " page of servers in name order from `offset`, its alerts and the fleet outlook;"
        " `metadata.total` and `metadata.next_offset` (null on the last page) say what is left.",
        responses={200: {"model": schemas.CurrentBody}},
    )
    async def predictions_current(
        accept_encoding: Annotated[str | None, Header()] = None,
        limit: Annotated[
            int | None,
            Query(ge=1, le=MAX_PAGE, description="servers per page (default: every server)"),
        ] = None,
        offset: Annotated[
            int, Query(ge=0, description="with limit: servers to skip, in name order")
        ] = 0,
    ) -> Response:
        published, now = hub.current, clock()
        gzipped = accepts_gzip(accept_encoding)
        if limit is not None:
            body = await run_in_threadpool(
                _page, published, now, stale_after, (offset, limit), gzipped
            )
        else:
            body = await run_in_threadpool(published.predictions_json, now, stale_after, gzipped)
        headers = {"Vary": "Accept-Encoding"}
        if gzipped:
            headers["Content-Encoding"] = "gzip"
        return Response(body, media_type=JSON_TYPE, headers=headers)

    @app.get(
        "/predict/{server}",
        summary="One server: forecasts, risk, breach outlook and drivers",
        description=schemas.QUANTITY_DOC,
        responses={200: {"model": schemas.ServerBody}, 404: {"model": schemas.ErrorBody}},
    )
    async def predict(
        server: Annotated[str, Path(pattern=SERVER_PATTERN, description="Instance label.")],
    ) -> Response:
        instance = hub.current.snapshot.instances.get(server)
        if instance is None:
            raise ApiError(404, "not_found", f"no forecast for server {server!r}")
        if is_stale(instance, clock(), stale_after):
            raise ApiError(404, "not_found", f"the forecast for server {server!r} is stale")
        return _json(server_body(instance))

    @app.get(
        "/alerts/active",
        summary="Servers with a positive risk score, highest first",
        responses={200: {"model": schemas.AlertsBody}},
    )
    async def alerts_active() -> Response:
        snapshot = hub.current.snapshot
        return _json(alerts_body(fresh_instances(snapshot, clock(), stale_after)))


def _write_routes(
    app: FastAPI,
    require_token: Callable[..., None],
    ingest: Ingest | None,
    reload: Reload | None,
    max_body_bytes: int,
) -> None:
    guarded = [Depends(require_token)]

    @app.post(
        "/feed/data",
        summary="Push records (seed format); good records are kept even if others are refused",
        description='JSON body `{"records": [...]}` or a bare list, at most max_body_bytes. '
        "200 when every record was accepted, 422 with per-record reasons otherwise; "
        "each record is checked on its own, so refused ones never cost the others.",
        dependencies=guarded,
        responses={
            200: {"model": schemas.FeedResult},
            422: {"model": schemas.FeedResult},
            413: {"model": schemas.ErrorBody},
            415: {"model": schemas.ErrorBody},
            503: {"model": schemas.ErrorBody},
        },
    )
    async def feed_data(request: Request) -> Response:
        if ingest is None:
            raise ApiError(503, "unavailable", "record ingestion is not configured")
        if not is_json_type(request.headers.get("content-type")):
            reason = "the body must be JSON (Content-Type: application/json)"
            raise ApiError(415, "unsupported_media_type", reason)
        records = parse_records(await read_capped(request, max_body_bytes))
        accepted, rejected = await run_in_threadpool(ingest, records)
        return feed_result(accepted, rejected, len(records))

    @app.post(
        "/-/reload",
        summary="Reload the configuration file and the current model from the registry",
        description="200 once the configuration is applied (after a cycle in progress) and "
        "the model registry is being re-read; 500 `reload_failed` with the reason when the "
        "configuration is invalid: the running one is kept, as Prometheus does.",
        dependencies=guarded,
        responses={
            200: {"model": schemas.ReloadResult},
            500: {"model": schemas.ErrorBody},
            503: {"model": schemas.ErrorBody},
        },
    )
    async def reload_model() -> Response:
        if reload is None:
            raise ApiError(503, "unavailable", "model reload is not configured")
        try:
            await run_in_threadpool(reload)
        except ReloadError as exc:
            raise ApiError(500, "reload_failed", str(exc)) from None
        return _json({"status": "reload requested"})


def _internal_error(_: Exception) -> JSONResponse:
    return _error(500, "internal_error", "unexpected error; see the forecaster's log")


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error as JSON {error, reason}; never a traceback or a path."""
    app.add_middleware(CatchUnexpected, respond=_internal_error)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        if isinstance(exc, ApiError):
            return _error(exc.status_code, exc.error, exc.reason, exc.headers)
        slug = _SLUGS.get(exc.status_code, "http_error")
        return _error(exc.status_code, slug, str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, "bad_request", first_error(exc.errors()))


def first_error(errors: Sequence[Any]) -> str:
    """`where: message` of the first validation error (no input echoed)."""
    if not errors:
        return "invalid request"
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "path", "query"))
    message = str(first.get("msg", "invalid"))
    return f"{where}: {message}" if where else message


MAX_PAGE = 1000
"""The most servers one `/predictions/current?limit=` page holds."""


def _page(
    published: Published, now: float, stale_after: float, window: tuple[int, int], gzipped: bool
) -> bytes:
    """One page of `/predictions/current`: the fresh servers in name order from `offset`, their
    alerts, the fleet outlook, and where the next page starts (`metadata.next_offset`, null on
    the last page)."""
    offset, limit = window
    fresh = sorted(fresh_instances(published.snapshot, now, stale_after), key=lambda i: i.instance)
    page = fresh[offset : offset + limit]
    body = current_body(published.snapshot, published.state, page)
    following = offset + limit
    body["metadata"].update(
        total=len(fresh),
        offset=offset,
        limit=limit,
        next_offset=following if following < len(fresh) else None,
    )
    data = dumps(body)
    return gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0) if gzipped else data
