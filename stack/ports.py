"""Free TCP ports on the loopback interface for the services of one stack."""

from __future__ import annotations

import socket
from contextlib import ExitStack

LOOPBACK = "127.0.0.1"


def pick_free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """`count` distinct ports that were free on `host` a moment ago.

    All sockets stay bound until every port is chosen, so the ports differ from each other.
    Another process may still take one before the service binds it; the service then fails to
    start and says so in its log.
    """
    with ExitStack() as sockets:
        ports = []
        for _ in range(count):
            sock = sockets.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def address(port: int, host: str = LOOPBACK) -> str:
    """`host:port` as flags and file_sd targets write it."""
    return f"{host}:{port}"
