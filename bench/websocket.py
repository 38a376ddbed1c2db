"""WebSocket fan-out: 250 clients, 10 of them never reading, 2 messages a second of ~20 KB.

`bench.serve_child --mode ws` serves the exporter's app through uvicorn and, once every client
is connected, publishes synthetic snapshots through `Hub.publish`; each message carries the
time of the publish call (`generated_at`), so a reading client's latency is its receive time
minus that (same machine, same clock), rendering and fan-out included. The stalled clients
connect with a 4 KiB receive buffer and a one-message queue and never read: the server's
bounded per-client queue must drop them without delaying the others. Goal (RELIABILITY
target 10): p99 at most 250 ms, server RSS at most 100 MB.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import time
from typing import Any

from bench.common import Context, figure, load, percentiles
from bench.scrape import last_json
from stack.ports import pick_free_ports
from stack.process import Supervisor, wait_until_ready

NAME = "websocket"
TITLE = "WebSocket fan-out"
FULL = {"clients": 250, "stalled": 10, "messages": 100, "rate": 2.0, "hosts": 110}
QUICK = {"clients": 30, "stalled": 3, "messages": 10, "rate": 5.0, "hosts": 110}
GENERATED_AT = re.compile(rb'"generated_at":\s*([0-9.eE+-]+)')


async def _reader(uri: str, expected: int, deadline: float, latencies: list[float]) -> int:
    from websockets.asyncio.client import connect

    received = 0
    async with connect(uri, max_size=2**22, open_timeout=60) as ws:
        while received < expected:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                message = await asyncio.wait_for(ws.recv(decode=False), left)
            except (TimeoutError, Exception):  # closed or timed out: stop reading
                break
            now = time.time()
            match = GENERATED_AT.search(message[:200])
            if match:
                latencies.append(now - float(match.group(1)))
            received += 1
    return received


async def _stalled(uri: str, port: int, hold: asyncio.Event) -> bool:
    """Connect with a tiny receive buffer, never read; True if the server closed on us."""
    from websockets.asyncio.client import connect

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    async with connect(uri, sock=sock, max_queue=1, open_timeout=60) as ws:
        await hold.wait()
        return ws.close_code is not None or ws.state.name != "OPEN"


async def _clients(port: int, spec: dict[str, Any]) -> dict[str, Any]:
    uri = f"ws://127.0.0.1:{port}/ws"
    readers = spec["clients"] - spec["stalled"]
    deadline = time.monotonic() + 60 + spec["messages"] / spec["rate"] + 30
    latencies: list[float] = []
    hold = asyncio.Event()
    stalled = [asyncio.create_task(_stalled(uri, port, hold)) for _ in range(spec["stalled"])]
    tasks = [
        asyncio.create_task(_reader(uri, spec["messages"], deadline, latencies))
        for _ in range(readers)
    ]
    received = await asyncio.gather(*tasks, return_exceptions=True)
    hold.set()
    closed = await asyncio.gather(*stalled, return_exceptions=True)
    return {
        "received": [r if isinstance(r, int) else -1 for r in received],
        "latencies": latencies,
        "stalled_closed": sum(1 for c in closed if c is True),
    }


def measure(ctx: Context, spec: dict[str, Any]) -> dict[str, Any]:
    """Serve, connect, publish, collect."""
    (port,) = pick_free_ports(1)
    argv = [
        *(ctx.python, "-m", "bench.serve_child", "--mode", "ws", "--port", str(port)),
        *("--clients", str(spec["clients"]), "--messages", str(spec["messages"])),
        *("--rate", str(spec["rate"]), "--hosts", str(spec["hosts"])),
    ]
    with Supervisor() as supervisor:
        child = supervisor.start("serve-ws", argv, ctx.path("logs", "serve-ws.log"))
        wait_until_ready(child, f"http://127.0.0.1:{port}/-/healthy", timeout_s=120)
        clients = asyncio.run(_clients(port, spec))
        try:
            child.process.wait(timeout=60)
        except subprocess.TimeoutExpired:  # it did not stop by itself: stop it
            supervisor.stop([child])
        server = last_json(child.log_path)
    latencies_ms = [x * 1000 for x in clients["latencies"]]
    after = server.get("clients_after", [])
    gone = [k + 1 for k, n in enumerate(after) if n <= spec["clients"] - spec["stalled"]]
    stats = percentiles(latencies_ms)
    expected = (spec["clients"] - spec["stalled"]) * spec["messages"]
    return {
        **spec,
        "delivered": len(latencies_ms),
        "expected": expected,
        "p50_ms": stats["p50"],
        "p99_ms": stats["p99"],
        "max_ms": stats["max"],
        "connected": server.get("connected"),
        "dropped_by_server": server.get("dropped_total"),
        "stalled_closed": clients["stalled_closed"],
        "stalled_gone_after_messages": gone[0] if gone else None,
        "clients_after": after,
        "message_bytes": server.get("message_bytes"),
        "publish_p50_ms": percentiles([x * 1000 for x in server.get("publish_s", [])])["p50"],
        "server_rss_mib": server.get("rss_mib"),
        "server_peak_mib": server.get("peak_mib"),
        "load": load(),
    }


def run(ctx: Context) -> dict[str, Any]:
    """One fan-out run; latency, delivery, drops and server memory."""
    row = measure(ctx, QUICK if ctx.quick else FULL)
    readers = row["clients"] - row["stalled"]
    figures = [
        figure(
            f"p99 delivery latency, {readers} reading clients, {row['message_bytes']:,} B "
            f"messages at {row['rate']:g}/s",
            row["p99_ms"],
            "ms",
            goal_op="<=",
            goal_value=250.0,
        ),
        figure("p50 delivery latency", row["p50_ms"], "ms"),
        figure(
            f"messages delivered to reading clients (of {row['expected']:,})",
            row["delivered"],
            "",
            goal_op=">=",
            goal_value=row["expected"],
            digits=0,
        ),
        figure(
            f"stalled clients dropped for a full queue (of {row['stalled']})",
            row["dropped_by_server"],
            "",
            digits=0,
        ),
        figure(
            "messages published until every stalled client was gone (queue or ping timeout)",
            row["stalled_gone_after_messages"],
            "",
            digits=0,
        ),
        figure(
            "server RSS at the end (peak in the notes)",
            row["server_rss_mib"],
            "MiB",
            goal_op="<=",
            goal_value=100.0,
            digits=1,
        ),
    ]
    return {"figures": figures, "rows": [row]}
