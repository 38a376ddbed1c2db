"""The simulated fleet: the seed system's seven server profiles, node names and per-node constants.

Baselines are the healthy business-hours means (weekdays 09:00-17:00 UTC) of each quantity, in
base units; the seed documents give database and ML compute, the others follow the same spirit.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from simulator import rng

MIB = 1024.0**2
GIB = 1024.0**3

# Mode split of busy CPU time (user, system, iowait, irq, softirq, steal, nice); each sums to 1.
CPU_MODES = ("user", "system", "iowait", "irq", "softirq", "steal", "nice")


@dataclass(frozen=True)
class Profile:
    """Constants shared by every node of one server profile."""

    name: str
    prefix: str
    seed_count: int  # nodes of this profile in the seed's 20-server fleet
    cpu: float  # utilisation ratio
    memory: float  # utilisation ratio
    disk_io: float  # bytes/s, read + written
    latency_p95: float  # seconds
    net_rx: float  # bytes/s
    net_tx: float  # bytes/s
    error_ratio: float
    gc_pause: float  # mean GC pause, seconds
    requests: float  # HTTP requests/s
    read_fraction: float  # share of disk I/O that is reads
    cpus: int
    memory_bytes: float
    filesystem_bytes: float
    filesystem: float  # utilisation ratio right after the nightly clean-up
    weekend: float  # load multiplier on Saturdays and Sundays
    cpu_modes: tuple[float, ...]  # split of busy time over CPU_MODES


PROFILES: tuple[Profile, ...] = (
    Profile(
        "ml_compute",
        "ppml",
        3,
        0.45,
        0.55,
        30 * MIB,
        0.008,
        20 * MIB,
        15 * MIB,
        0.001,
        0.025,
        40.0,
        0.7,
        8,
        128 * GIB,
        500 * GIB,
        0.45,
        0.85,
        (0.80, 0.12, 0.03, 0.01, 0.02, 0.01, 0.01),
    ),
    Profile(
        "database",
        "ppdb",
        4,
        0.40,
        0.50,
        85 * MIB,
        0.012,
        30 * MIB,
        35 * MIB,
        0.001,
        0.015,
        80.0,
        0.6,
        8,
        64 * GIB,
        1000 * GIB,
        0.55,
        0.8,
        (0.55, 0.20, 0.17, 0.02, 0.04, 0.01, 0.01),
    ),
    Profile(
        "web_api",
        "ppweb",
        5,
        0.35,
        0.45,
        15 * MIB,
        0.025,
        45 * MIB,
        38 * MIB,
        0.002,
        0.010,
        200.0,
        0.5,
        4,
        16 * GIB,
        100 * GIB,
        0.35,
        0.7,
        (0.62, 0.22, 0.02, 0.04, 0.08, 0.01, 0.01),
    ),
    Profile(
        "conductor_mgmt",
        "ppcon",
        2,
        0.25,
        0.40,
        10 * MIB,
        0.015,
        10 * MIB,
        10 * MIB,
        0.001,
        0.008,
        30.0,
        0.5,
        2,
        8 * GIB,
        100 * GIB,
        0.30,
        0.8,
        (0.65, 0.25, 0.03, 0.02, 0.03, 0.01, 0.01),
    ),
    Profile(
        "data_ingest",
        "ppetl",
        3,
        0.40,
        0.50,
        120 * MIB,
        0.020,
        60 * MIB,
        20 * MIB,
        0.003,
        0.020,
        50.0,
        0.4,
        4,
        32 * GIB,
        2000 * GIB,
        0.50,
        0.9,
        (0.60, 0.18, 0.14, 0.02, 0.04, 0.01, 0.01),
    ),
    Profile(
        "risk_analytics",
        "pprisk",
        2,
        0.55,
        0.60,
        20 * MIB,
        0.018,
        15 * MIB,
        10 * MIB,
        0.001,
        0.030,
        60.0,
        0.7,
        8,
        64 * GIB,
        200 * GIB,
        0.40,
        0.5,
        (0.82, 0.10, 0.03, 0.01, 0.02, 0.01, 0.01),
    ),
    Profile(
        "generic",
        "ppgen",
        1,
        0.30,
        0.40,
        20 * MIB,
        0.015,
        10 * MIB,
        10 * MIB,
        0.002,
        0.012,
        40.0,
        0.5,
        2,
        16 * GIB,
        100 * GIB,
        0.40,
        0.8,
        (0.65, 0.22, 0.05, 0.02, 0.04, 0.01, 0.01),
    ),
)
PROFILE_BY_NAME = {p.name: p for p in PROFILES}
PROFILE_BY_PREFIX = {p.prefix: p for p in PROFILES}
NAME_RE = re.compile(r"^(?P<prefix>[a-z]+)(?P<number>\d+)$")


def profile_of(node: str) -> str:
    """Profile name from the host-name prefix (`ppdb001` -> database); anything else is generic."""
    match = NAME_RE.match(node)
    profile = PROFILE_BY_PREFIX.get(match["prefix"]) if match else None
    return profile.name if profile else "generic"


def server_id(node: str) -> str:
    """Stable SHA-256 encoding of a host name (16 hex digits): no shift when the fleet changes."""
    return hashlib.sha256(node.encode()).hexdigest()[:16]


def fleet_counts(servers: int) -> dict[str, int]:
    """Scale the seed's 3/4/5/2/3/2/1 mix to `servers` nodes (largest-remainder rounding)."""
    if servers < 1:
        raise ValueError("servers must be at least 1")
    total = sum(p.seed_count for p in PROFILES)
    exact = [servers * p.seed_count / total for p in PROFILES]
    counts = [int(x) for x in exact]
    order = sorted(range(len(PROFILES)), key=lambda i: (counts[i] - exact[i], i))
    for i in order[: servers - sum(counts)]:
        counts[i] += 1
    return {p.name: c for p, c in zip(PROFILES, counts, strict=True)}


def node_names(servers: int) -> list[str]:
    """Node names of a fleet of `servers` nodes: ppml001.., ppdb001.., in profile order."""
    names = []
    for profile in PROFILES:
        count = fleet_counts(servers)[profile.name]
        width = max(3, len(str(count)))
        names += [f"{profile.prefix}{i:0{width}d}" for i in range(1, count + 1)]
    return names


@dataclass(frozen=True)
class Fleet:
    """Per-node constants as arrays of shape (nodes,), ready for vectorised evaluation."""

    seed: int
    nodes: tuple[str, ...]
    profiles: tuple[str, ...]
    arrays: dict[str, NDArray[np.float64]] = field(repr=False)
    cpu_modes: NDArray[np.float64] = field(repr=False)  # (nodes, len(CPU_MODES))
    node_keys: NDArray[np.uint64] = field(repr=False)

    @property
    def size(self) -> int:
        """Number of nodes."""
        return len(self.nodes)

    def index(self, node: str) -> int:
        """Position of `node` in the fleet; KeyError if unknown."""
        try:
            return self.nodes.index(node)
        except ValueError:
            raise KeyError(node) from None

    def __getitem__(self, name: str) -> NDArray[np.float64]:
        return self.arrays[name]


def _jitter(seed: int, nodes: list[str], name: str, spread: float) -> NDArray[np.float64]:
    """Per-node multiplicative jitter in [1 - spread, 1 + spread]."""
    keys = np.array([rng.stream_key(seed, "param", name, n) for n in nodes], dtype=np.uint64)
    return 1.0 + spread * (2.0 * rng.uniform(keys, 0) - 1.0)


def _uniform(
    seed: int, nodes: list[str], name: str, low: float, high: float
) -> NDArray[np.float64]:
    keys = np.array([rng.stream_key(seed, "param", name, n) for n in nodes], dtype=np.uint64)
    return low + (high - low) * rng.uniform(keys, 0)


def build_fleet(servers: int = 20, seed: int = 42, nodes: list[str] | None = None) -> Fleet:
    """Build the fleet: the seed's profile mix scaled to `servers`, or the explicit `nodes`."""
    names = list(nodes) if nodes is not None else node_names(servers)
    profiles = [PROFILE_BY_NAME[profile_of(n)] for n in names]

    def per_profile(attr: str) -> NDArray[np.float64]:
        return np.array([getattr(p, attr) for p in profiles], dtype=np.float64)

    arrays = {
        "cpu": per_profile("cpu") * _jitter(seed, names, "cpu", 0.05),
        "memory": per_profile("memory") * _jitter(seed, names, "memory", 0.05),
        "disk_io": per_profile("disk_io") * _jitter(seed, names, "disk_io", 0.1),
        "latency_p95": per_profile("latency_p95") * _jitter(seed, names, "latency", 0.05),
        "net_rx": per_profile("net_rx") * _jitter(seed, names, "net_rx", 0.1),
        "net_tx": per_profile("net_tx") * _jitter(seed, names, "net_tx", 0.1),
        "error_ratio": per_profile("error_ratio") * _jitter(seed, names, "error_ratio", 0.1),
        "gc_pause": per_profile("gc_pause") * _jitter(seed, names, "gc_pause", 0.1),
        "requests": per_profile("requests") * _jitter(seed, names, "requests", 0.1),
        "read_fraction": per_profile("read_fraction"),
        "cpus": per_profile("cpus"),
        "memory_bytes": per_profile("memory_bytes"),
        "filesystem_bytes": per_profile("filesystem_bytes"),
        "filesystem": per_profile("filesystem") + _uniform(seed, names, "fs", -0.08, 0.08),
        "fs_growth": _uniform(seed, names, "fs_growth", 0.005, 0.02),  # ratio per day
        "fs_cleanup_hour": _uniform(seed, names, "fs_cleanup", 0.0, 4.0),
        "weekend": per_profile("weekend"),
        "uptime": _uniform(seed, names, "uptime", 86400.0, 60 * 86400.0),
        "scenario_rank": _uniform(seed, names, "scenario_rank", 0.0, 1.0),
    }
    cpu_modes = np.array([p.cpu_modes for p in profiles], dtype=np.float64)
    node_keys = np.array([rng.stream_key(seed, "node", n) for n in names], dtype=np.uint64)
    return Fleet(seed, tuple(names), tuple(p.name for p in profiles), arrays, cpu_modes, node_keys)


def cpu_imbalance(cpus: int, seed: int, node: str) -> NDArray[np.float64]:
    """Zero-sum per-CPU imbalance weights in [-1, 1], so the average over CPUs is exact."""
    key = rng.stream_key(seed, "cpu_imbalance", node)
    raw = 2.0 * rng.uniform(key, np.arange(cpus)) - 1.0
    centred = raw - raw.mean()
    peak = np.abs(centred).max()
    return centred / peak if peak > 0 else centred
