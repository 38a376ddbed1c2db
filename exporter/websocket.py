"""The `/ws` endpoint: Origin check, client limit, bounded fan-out, inbound size cap.

Each client gets the latest `predictions` message right after it connects, then one message per
published cycle through its `Broadcaster` queue. A client whose queue fills up is closed
(1008) without delaying the others; beyond `max_clients` a client is closed with 1013; a
foreign `Origin` is refused before the handshake completes (HTTP 403, close code 1008).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection
from urllib.parse import urlsplit

from fastapi import FastAPI, WebSocket

from exporter.hub import Broadcaster, Client, Hub

log = logging.getLogger(__name__)
WS_MAX_MESSAGE_BYTES = 64 * 1024  # also pass `ws_max_size=WS_MAX_MESSAGE_BYTES` to uvicorn
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_TRY_LATER = 1013
CLOSE_TIMEOUT_S = 5.0


def normalise_origin(origin: str) -> str:
    """`scheme://host[:port]` in lower case, without a trailing slash."""
    return origin.strip().rstrip("/").lower()


def origin_allowed(origin: str | None, host: str | None, allowed: Collection[str]) -> bool:
    """No Origin (not a browser), a listed Origin, or one naming the request's own Host."""
    if origin is None:
        return True
    if normalise_origin(origin) in allowed:
        return True
    try:
        netloc = urlsplit(origin.strip()).netloc.lower()
    except ValueError:
        return False
    return bool(host) and bool(netloc) and netloc == (host or "").strip().lower()


async def _pump(websocket: WebSocket, client: Client) -> None:
    while True:
        message = await client.queue.get()
        await websocket.send_text(message)


async def _drain(websocket: WebSocket) -> int | None:
    """Read and discard inbound messages; the close code to send, None once disconnected."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return None
        text, data = message.get("text"), message.get("bytes")
        size = len(text.encode("utf-8", "replace")) if text is not None else len(data or b"")
        if size > WS_MAX_MESSAGE_BYTES:
            return CLOSE_TOO_BIG


async def serve_client(websocket: WebSocket, client: Client) -> None:
    """Run one accepted client until it disconnects, falls behind or sends too much."""
    sender = asyncio.create_task(_pump(websocket, client))
    receiver = asyncio.create_task(_drain(websocket))
    dropped = asyncio.create_task(client.dropped.wait())
    tasks = (sender, receiver, dropped)
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when this task is cancelled (shutdown): never leave the helpers running
        for task in tasks:
            task.cancel()
    await asyncio.wait(tasks)  # let the cancelled helpers unwind
    code = _close_code(sender, receiver, client)
    if code is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(websocket.close(code=code), CLOSE_TIMEOUT_S)


def _close_code(
    sender: asyncio.Task[None], receiver: asyncio.Task[int | None], client: Client
) -> int | None:
    """The close code to send once the first helper finished; None if the client left."""
    if not sender.cancelled() and sender.exception() is not None:
        return CLOSE_POLICY  # sending failed: the connection is broken
    if receiver.cancelled():
        return client.close_code  # dropped (too slow, or shutdown)
    if receiver.exception() is not None:
        return None
    return receiver.result()


def add_websocket_route(
    app: FastAPI, hub: Hub, broadcaster: Broadcaster, allowed_origins: Collection[str]
) -> None:
    """Register `/ws` on `app`."""
    allowed = frozenset(normalise_origin(o) for o in allowed_origins)

    @app.websocket("/ws", name="predictions_stream")
    async def predictions_stream(websocket: WebSocket) -> None:
        origin, host = websocket.headers.get("origin"), websocket.headers.get("host")
        if not origin_allowed(origin, host, allowed):
            log.info("WebSocket from foreign origin refused")
            await websocket.close(code=CLOSE_POLICY)  # before accept: answered with HTTP 403
            return
        hub.attach(broadcaster, asyncio.get_running_loop(), broadcaster.on_publish)
        await websocket.accept()
        client = broadcaster.register(hub.current)
        if client is None:
            await websocket.close(code=CLOSE_TRY_LATER, reason="too many clients")
            return
        try:
            await serve_client(websocket, client)
        finally:
            broadcaster.unregister(client)
