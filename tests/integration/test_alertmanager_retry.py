"""A receiver that fails: Alertmanager retries and delivers after recovery (RELIABILITY I5).

The real Alertmanager (Debian's prometheus-alertmanager) on 127.0.0.1 notifies a loopback
webhook that answers 500 to its first posts, compressed from the catalogue's two minutes to
a few retries. Alertmanager's own retry loop (exponential backoff) must keep trying, count
every failed attempt, and deliver once the receiver answers 200. Alertmanager 0.25 counts
attempts in `alertmanager_notification_requests_failed_total` (the catalogue's "notifications
failed ... rises"); `alertmanager_notifications_failed_total` counts only notifications that
failed after every retry, so it stays 0 here. No fixed sleep: everything is polled against a
deadline.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

from stack.ports import pick_free_ports
from tests.unit.test_repo_rules import system_tool

pytestmark = pytest.mark.prometheus

FAILURES = 3  # posts answered 500 before the receiver recovers
DEADLINE_S = 60.0


class FlakyReceiver(ThreadingHTTPServer):
    """Answers 500 to the first `failures` posts, then 200; records every post's status."""

    daemon_threads = True

    def __init__(self, failures: int) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.failures = failures
        self.lock = threading.Lock()
        self.statuses: list[int] = []
        self.delivered: list[dict] = []


class _Handler(BaseHTTPRequestHandler):
    server: FlakyReceiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            failing = len(self.server.statuses) < self.server.failures
            status = 500 if failing else 200
            self.server.statuses.append(status)
            if not failing:
                self.server.delivered.append(json.loads(body))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the statuses are the record."""


@contextmanager
def flaky_receiver(failures: int) -> Iterator[FlakyReceiver]:
    server = FlakyReceiver(failures)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def poll(check, what: str, deadline_s: float = DEADLINE_S):
    """The first truthy `check()` before the deadline; fails naming `what` after it."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            found = check()
        except httpx.HTTPError:
            found = None
        if found:
            return found
        time.sleep(0.1)
    pytest.fail(f"{what} not within {deadline_s} s")


def counter(metrics: str, name: str, integration: str) -> float:
    prefix = f'{name}{{integration="{integration}"}} '
    values = [
        float(line[len(prefix) :]) for line in metrics.splitlines() if line.startswith(prefix)
    ]
    return values[0] if values else 0.0


@pytest.mark.timeout(120)
@pytest.mark.fault("I5")
def test_alertmanager_retries_a_failing_receiver_and_delivers_after_recovery(tmp_path: Path):
    binary = system_tool("prometheus-alertmanager", "prometheus-alertmanager")
    port = pick_free_ports(1)[0]
    url = f"http://127.0.0.1:{port}"
    with flaky_receiver(FAILURES) as receiver:
        host, sink_port = receiver.server_address[:2]
        config = {
            "route": {
                "receiver": "flaky",
                "group_by": ["alertname"],
                "group_wait": "1s",
                "group_interval": "1m",
                "repeat_interval": "1h",
            },
            "receivers": [
                {
                    "name": "flaky",
                    "webhook_configs": [
                        {"url": f"http://{host}:{sink_port}/hook", "send_resolved": False}
                    ],
                }
            ],
        }
        config_file = tmp_path / "alertmanager.yml"
        config_file.write_text(yaml.safe_dump(config))
        command = [
            binary,
            f"--config.file={config_file}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            poll(lambda: httpx.get(f"{url}/-/ready", timeout=2).status_code == 200, "ready")
            alert = [{"labels": {"alertname": "ReceiverDown", "severity": "warning"}}]
            assert httpx.post(f"{url}/api/v2/alerts", json=alert, timeout=5).status_code == 200
            poll(lambda: receiver.delivered, "a delivery after the receiver recovered")
            metrics = poll(
                lambda: (
                    text
                    if counter(
                        text := httpx.get(f"{url}/metrics", timeout=5).text,
                        "alertmanager_notification_requests_failed_total",
                        "webhook",
                    )
                    >= FAILURES
                    else None
                ),
                f"the failed attempts counted ({receiver.statuses})",
            )
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert receiver.statuses[:FAILURES] == [500] * FAILURES and 200 in receiver.statuses
    value = counter  # per attempt: requests; per notification (after every retry): notifications
    assert value(metrics, "alertmanager_notification_requests_failed_total", "webhook") == FAILURES
    assert value(metrics, "alertmanager_notification_requests_total", "webhook") == FAILURES + 1
    assert value(metrics, "alertmanager_notifications_total", "webhook") == 1
    assert value(metrics, "alertmanager_notifications_failed_total", "webhook") == 0  # delivered
    (delivered,) = receiver.delivered
    assert [a["labels"]["alertname"] for a in delivered["alerts"]] == ["ReceiverDown"]
