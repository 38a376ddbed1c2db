"""A tiny local Alertmanager webhook receiver: prints every notified alert on one line.

`python -m stack.receiver --listen 127.0.0.1:9095` takes Alertmanager's webhook notifications
(`POST` on any path, version 4 payload) and prints one line per alert:

    2026-12-01T18:20:00Z firing ForecastCPUSaturationSoon instance=ppdb001 severity=critical
        receiver=pagerduty-critical: CPU on ppdb001 forecast above 95% within 30m

`GET /notifications` returns the last alerts received as JSON (newest last), `GET /-/ready` and
`GET /-/healthy` answer 200. The demo stack points every Slack / PagerDuty receiver of its
Alertmanager work copy here, so nothing leaves the machine. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

MAX_BODY_BYTES = 1 << 20  # Alertmanager caps a group at far fewer alerts than this holds
KEPT_ALERTS = 500
DEFAULT_LISTEN = "127.0.0.1:9095"


def alert_lines(payload: Any, received_at: datetime) -> list[str]:
    """One line per alert of a webhook payload: time, status, alertname, instance, severity,
    receiver and summary; a payload that is not an Alertmanager notification gives one line
    saying so."""
    alerts = payload.get("alerts") if isinstance(payload, dict) else None
    if not isinstance(alerts, list):
        return [f"{_stamp(received_at)} ignored: not an Alertmanager notification"]
    receiver = payload.get("receiver", "?")
    return [
        _alert_line(alert, receiver, received_at) for alert in alerts if isinstance(alert, dict)
    ]


def alert_record(alert: dict[str, Any], receiver: str) -> dict[str, str]:
    """The fields of one alert that the receiver prints and keeps."""
    labels = alert.get("labels") or {}
    annotations = alert.get("annotations") or {}
    return {
        "status": str(alert.get("status", "?")),
        "alertname": str(labels.get("alertname", "?")),
        "instance": str(labels.get("instance", "-")),
        "severity": str(labels.get("severity", "-")),
        "receiver": str(receiver),
        "summary": " ".join(str(annotations.get("summary", "")).split()),
    }


def _alert_line(alert: dict[str, Any], receiver: str, received_at: datetime) -> str:
    record = alert_record(alert, receiver)
    return (
        f"{_stamp(received_at)} {record['status']} {record['alertname']}"
        f" instance={record['instance']} severity={record['severity']}"
        f" receiver={record['receiver']}: {record['summary']}"
    )


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY_BYTES:
            self._answer(HTTPStatus.BAD_REQUEST, {"error": "body missing or too large"})
            return
        try:
            payload = json.loads(self.rfile.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            self._answer(HTTPStatus.BAD_REQUEST, {"error": f"malformed JSON: {error}"})
            return
        self.server.record(payload)
        self._answer(HTTPStatus.OK, {"status": "received"})

    def do_GET(self) -> None:
        if self.path in ("/-/ready", "/-/healthy"):
            self._answer(HTTPStatus.OK, {"status": "ok"})
        elif self.path == "/notifications":
            self._answer(HTTPStatus.OK, {"alerts": self.server.recent()})
        else:
            self._answer(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path}"})

    def _answer(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged: the alert lines are the output."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self._lock = threading.Lock()
        self._alerts: deque[dict[str, str]] = deque(maxlen=KEPT_ALERTS)

    def record(self, payload: Any) -> None:
        """Print the payload's alert lines and keep its alerts for `/notifications`."""
        lines = alert_lines(payload, datetime.now(UTC))
        with self._lock:
            if isinstance(payload, dict) and isinstance(payload.get("alerts"), list):
                receiver = payload.get("receiver", "?")
                self._alerts.extend(
                    alert_record(alert, receiver)
                    for alert in payload["alerts"]
                    if isinstance(alert, dict)
                )
            print("\n".join(lines), flush=True)

    def recent(self) -> list[dict[str, str]]:
        """The alerts kept so far, oldest first."""
        with self._lock:
            return list(self._alerts)


def parse_listen(text: str) -> tuple[str, int]:
    """`host:port` into its parts; the port must lie in 1-65535."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, e.g. {DEFAULT_LISTEN}; got {text!r}")
    return host, int(port)


def _stop(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; exit 0."""
    parser = argparse.ArgumentParser(
        prog="python -m stack.receiver", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--listen", type=parse_listen, default=DEFAULT_LISTEN, help=f"({DEFAULT_LISTEN})"
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    server = _Server(args.listen)
    signal.signal(signal.SIGTERM, _stop)
    print(f"webhook receiver listening on {args.listen[0]}:{args.listen[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
