"""Concurrent scrapers: N threads, each a keep-alive HTTP/1.1 connection, for a bounded time.

Each scraper asks for `/metrics` with `Accept-Encoding: gzip`, as Prometheus does, reads the
whole body without decompressing it and records the latency from sending the request to the
last byte. The client is a few lines over a raw socket rather than httpx so that the
scrapers' own CPU use (they share the machine with the server) stays small; responses must
carry a `Content-Length` (Starlette's `Response` does).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from bench.common import percentiles

HEADER_END = b"\r\n\r\n"


class Scraper:
    """One keep-alive connection that GETs a path again and again."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.request = (
            f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            "Accept-Encoding: gzip\r\nUser-Agent: bench-scraper\r\n\r\n"
        ).encode()
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.buffer = b""

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.buffer = sock, b""
        return sock

    def get(self) -> tuple[int, int]:
        """One request: (status, body bytes). Raises OSError or ValueError on failure."""
        sock = self.sock or self._connect()
        sock.sendall(self.request)
        while HEADER_END not in self.buffer:
            self._recv(sock)
        head, _, rest = self.buffer.partition(HEADER_END)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
        length = int({k.lower(): v for k, v in headers.items()}["content-length"])
        while len(rest) < length:
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("connection closed mid-body")
            rest += chunk
        self.buffer = rest[length:]
        return status, length

    def _recv(self, sock: socket.socket) -> None:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("connection closed")
        self.buffer += chunk

    def close(self) -> None:
        """Close the connection (a later `get` reconnects)."""
        if self.sock is not None:
            self.sock.close()
        self.sock = None


def hammer(url: str, *, clients: int, duration: float, warmup: float = 1.0) -> dict[str, Any]:
    """`clients` scrapers for `warmup + duration` seconds; latency and rate after the warm-up."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    sizes: list[int] = []
    start = time.perf_counter() + 0.2
    measure_from, stop = start + warmup, start + warmup + duration

    def work(k: int) -> None:
        scraper = Scraper(url)
        while time.perf_counter() < start:
            time.sleep(0.001)
        while (now := time.perf_counter()) < stop:
            try:
                status, size = scraper.get()
            except (OSError, ValueError, KeyError, IndexError):
                errors[k] += 1
                scraper.close()
                continue
            if status != 200:
                errors[k] += 1
            elif now >= measure_from:
                latencies[k].append(time.perf_counter() - now)
                if k == 0 and not sizes:
                    sizes.append(size)
        scraper.close()

    threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(duration + warmup + 30)
    flat = [x * 1000 for lane in latencies for x in lane]
    stats = percentiles(flat)
    return {
        "clients": clients,
        "duration_s": duration,
        "scrapes": len(flat),
        "rate_per_s": len(flat) / duration,
        "errors": sum(errors),
        "p50_ms": stats["p50"],
        "p90_ms": stats["p90"],
        "p99_ms": stats["p99"],
        "max_ms": stats["max"],
        "body_bytes": sizes[0] if sizes else 0,
    }
