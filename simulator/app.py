"""HTTP listener of the simulator: every node's /metrics, the seed's REST control, file_sd.

`build_app(engine, token, web)` takes its dependencies, so tests call it in-process. Mutating
routes (scenario and incident control) need `Authorization: Bearer <token>` when a token is
configured. A web configuration file (`--web.config.file`) with `basic_auth_users` puts every
route behind basic auth, the token accepted instead (`webcommon.webconfig`). Without a token
or such a file, `__main__` refuses any non-loopback listener. Errors are JSON {error, reason}.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
from typing import Annotated

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import generate_latest
from pydantic import BaseModel, Field, field_validator
from starlette.exceptions import HTTPException

from simulator import __version__
from simulator import schedule as sch
from simulator.config import parse_duration
from simulator.engine import Engine
from simulator.exposition import NodeCollector
from webcommon.errors import CatchUnexpected
from webcommon.webconfig import WebConfig

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 64 * 1024
# Only legacy metric names are served, so the classic text format describes the output exactly.
EXPOSITION_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ApiError(HTTPException):
    """An error answered as JSON {error, reason}."""

    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(status, reason)
        self.error = error
        self.reason = reason


class ScenarioRequest(BaseModel):
    """Body of POST /scenario/set."""

    scenario: str


class IncidentRequest(BaseModel):
    """Body of POST /incident/inject; durations are Prometheus strings such as `20m`."""

    node: str = Field(max_length=128)
    kind: str
    ramp: str = "20m"
    hold: str | None = None

    @field_validator("ramp", "hold")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                seconds = parse_duration(value)
            except OverflowError:  # more digits than a float holds: far beyond the bound
                seconds = math.inf
            if not 0 < seconds <= 86400:
                raise ValueError("must be between 1s and 24h")
        return value


def _self_metrics(engine: Engine) -> tuple[CollectorRegistry, Counter]:
    registry = CollectorRegistry()
    scrapes = Counter(
        "simulator_node_scrapes",
        "Node expositions served, by result.",
        ["result"],
        registry=registry,
    )
    fleet = Gauge("simulator_fleet_size", "Simulated nodes.", registry=registry)
    fleet.set(engine.fleet.size)
    info = Gauge("simulator_build_info", "Simulator version.", ["version"], registry=registry)
    info.labels(__version__).set(1)
    return registry, scrapes


async def read_object(request: Request) -> dict:
    """The request's JSON object; ApiError 413 beyond MAX_BODY_BYTES, 400 for anything else."""
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, "body too large", f"at most {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(raw or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, "malformed JSON", str(exc)) from None
    except RecursionError:  # arrays or objects nested beyond the parser's depth
        raise ApiError(400, "malformed JSON", "nested too deeply") from None
    if not isinstance(data, dict):
        raise ApiError(400, "malformed JSON", "expected a JSON object")
    return data


def build_app(engine: Engine, token: str | None = None, web: WebConfig | None = None) -> FastAPI:
    """The FastAPI application over `engine`; `token` guards the mutating routes, `web`'s
    basic auth (if any) every route."""
    app = FastAPI(title="Fleet simulator", version=__version__)
    registry, scrapes = _self_metrics(engine)

    def authorise(authorization: Annotated[str | None, Header()] = None) -> None:
        if token is None:
            return
        if not authorization or not authorization.startswith("Bearer "):
            raise ApiError(401, "unauthorized", "missing bearer token")
        if not hmac.compare_digest(authorization.removeprefix("Bearer ").encode(), token.encode()):
            raise ApiError(403, "forbidden", "wrong bearer token")

    _install_error_handlers(app)

    @app.get("/metrics")
    def metrics(node: Annotated[str | None, Query(max_length=128)] = None) -> Response:
        if node is None:
            return Response(generate_latest(registry), media_type=EXPOSITION_TYPE)
        try:
            view = engine.view(node)
        except KeyError:
            scrapes.labels("unknown_node").inc()
            raise ApiError(404, "unknown node", f"no node named {node!r}") from None
        scrapes.labels("ok").inc()
        return Response(generate_latest(NodeCollector(view)), media_type=EXPOSITION_TYPE)

    @app.get("/status")
    def status() -> dict:
        return {
            "running": True,
            "scenario": engine.scenario,
            "tick_count": engine.tick_count,
            "fleet_size": engine.fleet.size,
            "affected_servers": len(engine.affected_servers()),
            "affected": engine.affected_servers(),
            "epoch": engine.epoch,
            "scenario_changes": engine.changes[-100:],
            "incident_rate": engine.incident_rate,
        }

    @app.post("/scenario/set", dependencies=[Depends(authorise)])
    async def set_scenario(request: Request) -> dict:
        data = ScenarioRequest.model_validate(await read_object(request))
        if data.scenario not in sch.SCENARIOS:
            valid = ", ".join(sch.SCENARIOS)
            raise ApiError(400, "unknown scenario", f"{data.scenario!r}; valid: {valid}")
        engine.set_scenario(data.scenario)
        log.info("scenario set to %s", data.scenario)
        return {"scenario": engine.scenario, "affected_servers": engine.affected_servers()}

    @app.post("/incident/inject", status_code=201, dependencies=[Depends(authorise)])
    async def inject(request: Request) -> dict:
        data = IncidentRequest.model_validate(await read_object(request))
        if data.kind not in sch.KIND_BY_NAME:
            valid = ", ".join(sch.KIND_BY_NAME)
            raise ApiError(400, "unknown incident kind", f"{data.kind!r}; valid: {valid}")
        hold = parse_duration(data.hold) if data.hold else None
        try:
            record = engine.inject(data.node, data.kind, parse_duration(data.ramp), hold)
        except KeyError:
            raise ApiError(404, "unknown node", f"no node named {data.node!r}") from None
        log.info("incident injected: %s", record)
        return record

    @app.get("/incidents")
    def incidents(hours: Annotated[float, Query(gt=0, le=24 * 31)] = 24.0) -> dict:
        return {"incidents": engine.incidents(hours * 3600)}

    @app.get("/-/healthy")
    def healthy() -> Response:
        return Response("Simulator is Healthy.\n", media_type="text/plain")

    @app.get("/-/ready")
    def ready() -> Response:
        return Response("Simulator is Ready.\n", media_type="text/plain")

    if web is not None:
        web.install(app, token)  # outermost: before the error handlers and the routes
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.error, "reason": exc.reason}, status_code=exc.status_code)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": "http error", "reason": str(exc.detail)}, status_code=exc.status_code
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            {"error": "invalid request", "reason": _first_error(exc.errors())}, status_code=400
        )

    @app.exception_handler(ValueError)
    async def bad_value(_: Request, exc: ValueError) -> JSONResponse:
        reason = _first_error(exc.errors()) if hasattr(exc, "errors") else str(exc)
        return JSONResponse({"error": "invalid request", "reason": reason}, status_code=400)

    app.add_middleware(CatchUnexpected, respond=_internal_error)


def _internal_error(exc: Exception) -> JSONResponse:
    return JSONResponse({"error": "internal error", "reason": type(exc).__name__}, status_code=500)


def _first_error(errors) -> str:
    if not errors:
        return "invalid input"
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg"))
