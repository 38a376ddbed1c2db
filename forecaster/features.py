"""Model inputs derived from the host key and the clock: profile, host encoding, calendar.

Calendar features use UTC only (no local time, no DST): hour of day and day of week as sin/cos.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike, NDArray

DAY = 86400
# Host-name prefix -> profile, as the seed system named its fleet; anything else is generic.
PROFILE_PREFIXES: Mapping[str, str] = {
    "ppml": "ml_compute",
    "ppdb": "database",
    "ppweb": "web_api",
    "ppcon": "conductor_mgmt",
    "ppetl": "data_ingest",
    "pprisk": "risk_analytics",
}
PROFILES = (*PROFILE_PREFIXES.values(), "generic")
UNKNOWN = "unknown"  # profile and host category the model learns for hosts it never saw
CALENDAR = ("hour_sin", "hour_cos", "dow_sin", "dow_cos")
_PREFIX = re.compile(r"^([a-z]+)")


def profile_of(instance: str, label: str | None = None) -> str:
    """A host's profile: its `profile` label if it names a known one, else from the prefix."""
    if label in PROFILES:
        return str(label)
    match = _PREFIX.match(instance)
    return PROFILE_PREFIXES.get(match.group(1), "generic") if match else "generic"


def host_id(instance: str) -> str:
    """Stable SHA-256 encoding of the host key (16 hex digits): no shift when the fleet changes."""
    return hashlib.sha256(instance.encode()).hexdigest()[:16]


def shard_of(instance: str, count: int) -> int:
    """The shard owning `instance`: its SHA-256 host id modulo `count` (no coordination)."""
    return int(host_id(instance), 16) % count


def calendar(seconds: ArrayLike) -> dict[str, NDArray[np.float64]]:
    """Hour-of-day and day-of-week as sin/cos pairs for unix times in seconds (UTC)."""
    t = np.asarray(seconds, dtype=np.float64)
    hour = np.mod(t, DAY) / 3600.0
    dow = np.mod(np.floor_divide(t, DAY) + 3, 7)  # Monday = 0; 1970-01-01 was a Thursday
    return {
        "hour_sin": np.sin(2 * np.pi * hour / 24),
        "hour_cos": np.cos(2 * np.pi * hour / 24),
        "dow_sin": np.sin(2 * np.pi * dow / 7),
        "dow_cos": np.cos(2 * np.pi * dow / 7),
    }
