"""Listen addresses: parsing `host:port`, and the one rule for when a token is required.

Every listener of the project (the forecaster, the simulator, the retrainer) listens on
127.0.0.1 by default and refuses to start on an address outside the loopback range
(127.0.0.0/8, ::1, `localhost`) without a bearer token: anything that can reach a loopback
address is already on the machine.
"""

from __future__ import annotations

import ipaddress

ALL_ADDRESSES = "0.0.0.0"  # noqa: S104 - what `:9465` (no host) means
LISTEN_HELP = (
    "host:port to listen on; outside 127.0.0.0/8 and ::1 it needs --web.token-file or a "
    "--web.config.file that requires credentials"
)
"""The help of every listener's `--web.listen-address`."""
TOKEN_HELP = "file holding the bearer token that the mutating routes require"  # noqa: S105
"""The help of every listener's `--web.token-file`."""


def split_address(address: str) -> tuple[str, int]:
    """(host, port) of `host:port` (`[::1]:9465` for IPv6; no host means every address);
    ValueError if malformed."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid address {address!r} (expected host:port)")
    return host.strip("[]") or ALL_ADDRESSES, int(port)


def is_loopback(host: str) -> bool:
    """Whether `host` names only the loopback interface: `localhost`, 127.0.0.0/8 or ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
