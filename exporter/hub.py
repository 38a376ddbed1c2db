"""The hand-over point between the forecast cycle and the HTTP surface.

`Hub.publish` is called from any thread (the cycle runs in a worker thread): it renders the
`/metrics` body and the WebSocket message off the event loop, swaps one reference to a frozen
`Published` (readers see the old or the new state, never a mix), then schedules the WebSocket
fan-out on the app's event loop with `loop.call_soon_threadsafe`. `Hub.rerender` re-renders the
current snapshot between cycles so that forecasts older than `stale_after` are withdrawn.

`Broadcaster` fans one pre-serialized message out to every WebSocket client through a bounded
per-client queue; a client whose queue is full is dropped at once, so a stalled reader never
delays the others. It runs on the event loop only.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from exporter.collector import GZIP_LEVEL, Rendered, prerender
from exporter.snapshot import EMPTY_SNAPSHOT, ServiceState, Snapshot
from exporter.views import current_body, dumps, fresh_instances, ws_message

log = logging.getLogger(__name__)
Listener = Callable[["Published"], None]
CLOSE_GOING_AWAY = 1001
CLOSE_TOO_SLOW = 1008  # policy: the client does not keep up with the fan-out


class _JsonCache:
    """`/predictions/current` bytes, computed lazily once per published snapshot.

    The key is the set of instances withdrawn as stale, so the body changes only when an
    instance goes stale; concurrent first requests compute it once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[str, ...] | None = None
        self._body = b""
        self._gzipped: bytes | None = None

    def get(self, published: Published, now: float, stale_after: float, gzipped: bool) -> bytes:
        snapshot = published.snapshot
        fresh = fresh_instances(snapshot, now, stale_after)
        names = {i.instance for i in fresh}
        key = tuple(sorted(n for n in snapshot.instances if n not in names))
        with self._lock:
            if self._key != key:
                self._body = dumps(current_body(snapshot, published.state, fresh))
                self._gzipped = None
                self._key = key
            if not gzipped:
                return self._body
            if self._gzipped is None:
                self._gzipped = gzip.compress(self._body, compresslevel=GZIP_LEVEL, mtime=0)
            return self._gzipped


@dataclass(frozen=True)
class Published:
    """Everything served for one cycle; replaced as a whole, never mutated."""

    snapshot: Snapshot
    state: ServiceState
    rendered: Rendered
    message: str  # the WebSocket `predictions` message, serialized once
    sequence: int  # 0 before the first publish
    ready: bool
    cache: _JsonCache = field(default_factory=_JsonCache, compare=False, repr=False)

    def predictions_json(self, now: float, stale_after: float, gzipped: bool = False) -> bytes:
        """The `/predictions/current` body, plain or gzip (computed once per snapshot)."""
        return self.cache.get(self, now, stale_after, gzipped)


class Hub:
    """Holds the current `Published` behind one reference; thread-safe publish."""

    def __init__(self, *, stale_after: float = 1800.0, clock: Callable[[], float] = time.time):
        self.stale_after = stale_after
        self.clock = clock
        self._write_lock = threading.Lock()  # serialises publishers (held while rendering)
        self._listeners_lock = threading.Lock()  # short: the event loop takes it on connect
        self._listeners: dict[int, tuple[asyncio.AbstractEventLoop, Listener]] = {}
        self._current = self._build(EMPTY_SNAPSHOT, ServiceState(), clock(), 0, ready=False)

    @property
    def current(self) -> Published:
        """The latest published state (one atomic read)."""
        return self._current

    @property
    def ready(self) -> bool:
        """Whether a first (or persisted) snapshot has been published."""
        return self._current.ready

    def _build(
        self, snapshot: Snapshot, state: ServiceState, now: float, sequence: int, *, ready: bool
    ) -> Published:
        rendered = prerender(snapshot, state, now=now, stale_after=self.stale_after)
        message = ws_message(snapshot, fresh_instances(snapshot, now, self.stale_after))
        return Published(snapshot, state, rendered, message, sequence, ready)

    def publish(
        self, snapshot: Snapshot, state: ServiceState, now: float | None = None
    ) -> Published:
        """Render and swap in a new cycle's state, then fan it out to WebSocket clients."""
        at = self.clock() if now is None else now
        with self._write_lock:
            published = self._build(snapshot, state, at, self._current.sequence + 1, ready=True)
            self._current = published  # the one atomic swap readers observe
        with self._listeners_lock:
            listeners = list(self._listeners.values())
        for loop, listener in listeners:
            try:
                loop.call_soon_threadsafe(listener, published)
            except RuntimeError:  # the loop has closed: the app stopped
                log.debug("event loop closed; WebSocket fan-out skipped")
        return published

    def rerender(self, now: float | None = None) -> Published:
        """Re-render the current snapshot at `now` (withdraws stale forecasts); no fan-out."""
        at = self.clock() if now is None else now
        with self._write_lock:
            old = self._current
            rendered = prerender(old.snapshot, old.state, now=at, stale_after=self.stale_after)
            published = Published(
                old.snapshot, old.state, rendered, old.message, old.sequence, old.ready, old.cache
            )
            self._current = published
        return published

    def attach(self, key: object, loop: asyncio.AbstractEventLoop, listener: Listener) -> None:
        """Call `listener(published)` on `loop` after every publish (replaces `key`'s entry)."""
        with self._listeners_lock:
            self._listeners[id(key)] = (loop, listener)

    def detach(self, key: object) -> None:
        """Stop calling `key`'s listener."""
        with self._listeners_lock:
            self._listeners.pop(id(key), None)


@dataclass(eq=False)
class Client:
    """One WebSocket client's outbound queue; `dropped` is set when it fell behind."""

    queue: asyncio.Queue[str]
    dropped: asyncio.Event = field(default_factory=asyncio.Event)
    last_sequence: int = -1
    close_code: int = CLOSE_TOO_SLOW

    def drop(self, code: int = CLOSE_TOO_SLOW) -> None:
        """Ask the connection to close with `code` (idempotent; the first code wins)."""
        if not self.dropped.is_set():
            self.close_code = code
            self.dropped.set()

    def offer(self, sequence: int, message: str) -> bool:
        """Queue `message` unless already sent; False (and dropped) when the queue is full."""
        if self.dropped.is_set():
            return False
        if sequence <= self.last_sequence:
            return True
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.drop(CLOSE_TOO_SLOW)
            return False
        self.last_sequence = sequence
        return True


class Broadcaster:
    """Bounded WebSocket fan-out: at most `max_clients`, each with `queue_size` messages."""

    def __init__(self, *, max_clients: int = 250, queue_size: int = 8) -> None:
        self.max_clients = max_clients
        self.queue_size = queue_size
        self.clients: set[Client] = set()
        self.dropped_total = 0

    def register(self, latest: Published | None = None) -> Client | None:
        """A new client (None when full), with the latest message queued for it."""
        if len(self.clients) >= self.max_clients:
            return None
        client = Client(asyncio.Queue(maxsize=self.queue_size))
        if latest is not None and latest.ready:
            client.offer(latest.sequence, latest.message)
        self.clients.add(client)
        return client

    def unregister(self, client: Client) -> None:
        """Forget `client` (idempotent)."""
        self.clients.discard(client)

    def broadcast(self, sequence: int, message: str) -> int:
        """Queue `message` for every client; drop those that fell behind. Returns drops."""
        dropped = [c for c in list(self.clients) if not c.offer(sequence, message)]
        for client in dropped:
            self.clients.discard(client)
        if dropped:
            self.dropped_total += len(dropped)
            log.warning("dropped %d WebSocket client(s) whose queue was full", len(dropped))
        return len(dropped)

    def on_publish(self, published: Published) -> None:
        """Hub listener: fan out a newly published cycle."""
        self.broadcast(published.sequence, published.message)

    def close_all(self, code: int = CLOSE_GOING_AWAY) -> None:
        """Close every client with `code` (1001 on shutdown); run on the event loop."""
        for client in list(self.clients):
            client.drop(code)
        self.clients.clear()
