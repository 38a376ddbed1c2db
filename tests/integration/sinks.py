"""Loopback stand-ins for Slack and PagerDuty: one HTTP server in a thread that records posts.

Alertmanager's real notifiers post here: `slack_configs` to the URL read from `api_url_file`
(`<base>/slack`), `pagerduty_configs` to their `url:` (`<base>/pagerduty`, the Events API v2
enqueue endpoint). Each JSON body is kept with its path and arrival time; Slack gets `ok` as
Slack's incoming webhooks answer, PagerDuty `202 Accepted` with the body of the Events API.
Standard library only; listens on 127.0.0.1 and a free port.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SLACK_PATH = "/slack"
PAGERDUTY_PATH = "/pagerduty"
MAX_BODY_BYTES = 1 << 20


@dataclass(frozen=True)
class Post:
    """One notification as received: path, decoded JSON body, arrival (monotonic) and headers."""

    path: str
    body: dict[str, Any]
    received: float
    headers: dict[str, str]


class _Handler(BaseHTTPRequestHandler):
    server: _SinkServer

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if 0 < length <= MAX_BODY_BYTES else b""
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            body = None
        if not isinstance(body, dict):
            self._answer(HTTPStatus.BAD_REQUEST, b'{"status":"invalid event"}', "application/json")
            return
        path = self.path.split("?", 1)[0]
        self.server.record(Post(path, body, time.monotonic(), dict(self.headers.items())))
        if path == PAGERDUTY_PATH:
            answer = {"status": "success", "message": "Event processed"}
            answer["dedup_key"] = str(body.get("dedup_key", ""))
            self._answer(HTTPStatus.ACCEPTED, json.dumps(answer).encode(), "application/json")
        else:
            self._answer(HTTPStatus.OK, b"ok", "text/plain")

    def _answer(self, status: HTTPStatus, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the posts are the record."""


class _SinkServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self._lock = threading.Lock()
        self._posts: list[Post] = []

    def record(self, post: Post) -> None:
        with self._lock:
            self._posts.append(post)

    def posts(self) -> list[Post]:
        with self._lock:
            return list(self._posts)


class Sinks:
    """The running sink: its URLs and what Slack and PagerDuty were sent so far."""

    def __init__(self, server: _SinkServer) -> None:
        self._server = server
        host, port = server.server_address[:2]
        self.base_url = f"http://{host}:{port}"

    @property
    def slack_url(self) -> str:
        """Where a Slack incoming webhook would be: the content of `api_url_file`."""
        return self.base_url + SLACK_PATH

    @property
    def pagerduty_url(self) -> str:
        """The Events API v2 enqueue endpoint: `url:` of `pagerduty_configs`."""
        return self.base_url + PAGERDUTY_PATH

    def slack(self) -> list[Post]:
        """Slack webhook posts, oldest first."""
        return [post for post in self._server.posts() if post.path == SLACK_PATH]

    def pagerduty(self) -> list[Post]:
        """PagerDuty Events v2 posts, oldest first."""
        return [post for post in self._server.posts() if post.path == PAGERDUTY_PATH]

    def others(self) -> list[Post]:
        """Posts to any other path (none expected)."""
        known = (SLACK_PATH, PAGERDUTY_PATH)
        return [post for post in self._server.posts() if post.path not in known]


@contextmanager
def running_sinks() -> Iterator[Sinks]:
    """Serve the sinks in a daemon thread until the block ends."""
    server = _SinkServer()
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
    )
    thread.start()
    try:
        yield Sinks(server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
