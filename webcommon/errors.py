"""The last-resort error answer of an ASGI app."""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)


class CatchUnexpected:
    """ASGI middleware: an exception no handler took is logged once, with its traceback, and
    answered with `respond(exc)` (a JSON 500 without the message or a traceback). Starlette's
    own catch-all, `exception_handler(Exception)`, answers too, but then re-raises the
    exception for the server to log a second time."""

    def __init__(self, app: ASGIApp, respond: Callable[[Exception], Response]) -> None:
        self.app = app
        self.respond = respond

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            log.error("unhandled %s in a request handler", type(exc).__name__, exc_info=exc)
            if not started:  # otherwise the client sees the response cut short
                await self.respond(exc)(scope, receive, send)
