"""The retrainer's HTTP listener: /metrics, /status, POST /retrain, POST /rollback.

`build_app(retrainer, token)` takes its dependencies, so tests call it in-process. The two
mutating routes need `Authorization: Bearer <token>` when a token is configured (401 without,
403 wrong, compared with `hmac.compare_digest`); without one, `python -m training.retrain`
refuses any non-loopback listener. Errors are JSON {error, reason}.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header
from fastapi.responses import JSONResponse, Response
from prometheus_client.exposition import generate_latest
from starlette.exceptions import HTTPException

from forecaster.registry import RegistryError
from training.retrain.retrainer import BusyError, Retrainer

EXPOSITION_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ApiError(HTTPException):
    """An error answered as JSON {error, reason}."""

    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(status, reason)
        self.error = error
        self.reason = reason


def build_app(retrainer: Retrainer, token: str | None = None) -> FastAPI:
    """The FastAPI application over `retrainer`; `token` guards the mutating routes."""
    app = FastAPI(title="Forecaster retrainer", docs_url=None, redoc_url=None, openapi_url=None)

    def authorise(authorization: Annotated[str | None, Header()] = None) -> None:
        if token is None:
            return
        if not authorization or not authorization.startswith("Bearer "):
            raise ApiError(401, "unauthorized", "missing bearer token")
        offered = authorization.removeprefix("Bearer ").encode()
        if not hmac.compare_digest(offered, token.encode()):
            raise ApiError(403, "forbidden", "wrong bearer token")

    @app.exception_handler(HTTPException)
    async def _error(_request, exc: HTTPException) -> JSONResponse:
        error = getattr(exc, "error", "error")
        reason = getattr(exc, "reason", str(exc.detail))
        return JSONResponse({"error": error, "reason": reason}, status_code=exc.status_code)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(retrainer.metrics.registry), media_type=EXPOSITION_TYPE)

    @app.get("/status")
    def status() -> dict[str, Any]:
        return retrainer.status()

    @app.post("/retrain", dependencies=[Depends(authorise)], status_code=202)
    def retrain() -> dict[str, Any]:
        if not retrainer.trigger("http"):
            raise ApiError(409, "conflict", "a retrain is already in progress")
        return {"started": True}

    @app.post("/rollback", dependencies=[Depends(authorise)])
    def rollback() -> dict[str, Any]:
        try:
            version = retrainer.rollback()
        except BusyError:
            raise ApiError(409, "conflict", "a retrain is in progress") from None
        except RegistryError as exc:
            raise ApiError(409, "rollback refused", exc.reason) from None
        return {"version": version}

    return app
