"""The node_exporter-compatible series of one node, as functions of integrated counters.

One source for both outputs: the live `/metrics?node=` exposition (one sample per series) and
the OpenMetrics history (many samples per series) call `node_samples` with the same inputs.

Counter channels are integrals of per-step rates since the simulation epoch; series add a
per-node offset for the uptime before the epoch, so counters look like long-running hosts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from simulator import schedule as sch
from simulator.fleet import CPU_MODES, Fleet, cpu_imbalance
from simulator.signals import LATENCY_BUCKETS

# Integrated channels, in order: the rate of each is derived from `signals.evaluate` output.
CHANNELS = (
    "cpu_busy",
    "cpu_spread",
    "disk_read",
    "disk_write",
    "net_rx",
    "net_tx",
    "requests_ok",
    "requests_error",
    "gc_count",
    "gc_sum",
    "latency_sum",
    *(f"bucket_{le}" for le in LATENCY_BUCKETS),
    "bucket_inf",
)
CH = {name: i for i, name in enumerate(CHANNELS)}
FIRST_BUCKET = CH[f"bucket_{LATENCY_BUCKETS[0]}"]
CPU_SPREAD = 0.3  # per-CPU deviation from the node's utilisation, as a share of the headroom
LOOPBACK_RATE = 50_000.0  # bytes/s on `lo`

# (type, help) per metric family; sample names add _total/_bucket/_sum/_count as usual.
FAMILIES: dict[str, tuple[str, str]] = {
    "node_cpu_seconds": ("counter", "Seconds the CPUs spent in each mode."),
    "node_memory_MemTotal_bytes": ("gauge", "Memory information field MemTotal_bytes."),
    "node_memory_MemAvailable_bytes": ("gauge", "Memory information field MemAvailable_bytes."),
    "node_memory_MemFree_bytes": ("gauge", "Memory information field MemFree_bytes."),
    "node_memory_Cached_bytes": ("gauge", "Memory information field Cached_bytes."),
    "node_memory_Buffers_bytes": ("gauge", "Memory information field Buffers_bytes."),
    "node_filesystem_size_bytes": ("gauge", "Filesystem size in bytes."),
    "node_filesystem_avail_bytes": (
        "gauge",
        "Filesystem space available to non-root users in bytes.",
    ),
    "node_filesystem_free_bytes": ("gauge", "Filesystem free space in bytes."),
    "node_disk_read_bytes": ("counter", "The total number of bytes read successfully."),
    "node_disk_written_bytes": ("counter", "The total number of bytes written successfully."),
    "node_network_receive_bytes": ("counter", "Network device statistic receive_bytes."),
    "node_network_transmit_bytes": ("counter", "Network device statistic transmit_bytes."),
    "node_load1": ("gauge", "1m load average."),
    "node_boot_time_seconds": ("gauge", "Node boot time, in unixtime."),
    "node_uname_info": (
        "gauge",
        "Labeled system information as provided by the uname system call.",
    ),
    "http_requests": ("counter", "HTTP requests served, by status code."),
    "http_request_duration_seconds": ("histogram", "HTTP request latency."),
    "jvm_gc_pause_seconds": ("summary", "Time spent in GC pauses."),
    "simulator_node_state": ("gauge", "Ground truth: 1 for the node's current simulated state."),
    "simulator_incident_active": ("gauge", "Ground truth: 1 while an incident of this kind runs."),
    "simulator_scenario": ("gauge", "Ground truth: 1 for the fleet's current scenario."),
}


def channel_rates(values: dict[str, NDArray]) -> NDArray[np.float64]:
    """Per-step rates of every channel, shape (nodes, steps, channels), from `evaluate` output."""
    cpu = values["cpu_utilisation"]
    requests = values["requests"]
    errors = values["http_error_ratio"]
    columns = [
        cpu,
        np.minimum(cpu, 1.0 - cpu),
        values["disk_read"],
        values["disk_write"],
        values["network_receive"],
        values["network_transmit"],
        requests * (1.0 - errors),
        requests * errors,
        values["gc_rate"],
        values["gc_rate"] * values["gc_pause"],
        requests * values["latency_mean"],
    ]
    buckets = requests[..., None] * values["latency_shares"]
    return np.concatenate([np.stack(columns, axis=-1), buckets], axis=-1)


@dataclass(frozen=True)
class NodeStatic:
    """Constants of one node that its series need."""

    name: str
    profile: str
    cpus: int
    boot_time: float
    memory_bytes: float
    filesystem_bytes: float
    imbalance: NDArray[np.float64]  # per CPU, zero-sum
    modes: NDArray[np.float64]  # busy-time split over CPU_MODES
    offsets: NDArray[np.float64]  # counter value at the epoch, per channel

    @classmethod
    def of(cls, fleet: Fleet, index: int, epoch: float) -> NodeStatic:
        """Constants of node `index` for a simulation that starts at `epoch`."""
        name = fleet.nodes[index]
        uptime = float(fleet["uptime"][index])
        nominal = {
            "cpu_busy": fleet["cpu"][index] * 0.7,
            "cpu_spread": 0.2,
            "disk_read": fleet["disk_io"][index] * fleet["read_fraction"][index] * 0.7,
            "disk_write": fleet["disk_io"][index] * (1 - fleet["read_fraction"][index]) * 0.7,
            "net_rx": fleet["net_rx"][index] * 0.7,
            "net_tx": fleet["net_tx"][index] * 0.7,
        }
        offsets = np.array([nominal.get(ch, 0.0) * uptime for ch in CHANNELS])
        cpus = int(fleet["cpus"][index])
        return cls(
            name,
            fleet.profiles[index],
            cpus,
            epoch - uptime,
            float(fleet["memory_bytes"][index]),
            float(fleet["filesystem_bytes"][index]),
            cpu_imbalance(cpus, fleet.seed, name),
            fleet.cpu_modes[index],
            offsets,
        )


Sample = tuple[str, dict[str, str], NDArray[np.float64]]


def node_samples(
    node: NodeStatic,
    t: NDArray[np.float64],
    counters: NDArray[np.float64],
    gauges: dict[str, NDArray],
    scenario: str,
) -> Iterator[Sample]:
    """Every sample of one node: (sample name, labels, values over the M times in `t`).

    `counters` has shape (M, channels) (integrals since the epoch); `gauges` maps the gauge
    quantities and the ground-truth codes `state` and `incident` to arrays of shape (M,).
    """
    c = counters + node.offsets
    yield from _cpu_samples(node, t, c)
    yield from _memory_samples(node, gauges)
    yield from _filesystem_samples(node, gauges)
    yield "node_disk_read_bytes_total", {"device": "sda"}, c[:, CH["disk_read"]]
    yield "node_disk_written_bytes_total", {"device": "sda"}, c[:, CH["disk_write"]]
    lo = LOOPBACK_RATE * (t - node.boot_time)
    for direction, channel in (("receive", "net_rx"), ("transmit", "net_tx")):
        name = f"node_network_{direction}_bytes_total"
        yield name, {"device": "eth0"}, c[:, CH[channel]]
        yield name, {"device": "lo"}, lo
    yield "node_load1", {}, gauges["load1"]
    yield "node_boot_time_seconds", {}, np.full(t.shape, node.boot_time)
    uname = {
        "machine": "x86_64",
        "nodename": node.name,
        "release": "6.1.0-simulated",
        "sysname": "Linux",
        "version": "#1 SMP Debian 6.1.0",
        "domainname": "(none)",
    }
    yield "node_uname_info", uname, np.ones(t.shape)
    yield from _application_samples(c)
    yield from _ground_truth_samples(gauges, scenario)


def _cpu_samples(node: NodeStatic, t, c) -> Iterator[Sample]:
    elapsed = t - node.boot_time
    for cpu in range(node.cpus):
        busy = c[:, CH["cpu_busy"]] + CPU_SPREAD * node.imbalance[cpu] * c[:, CH["cpu_spread"]]
        labels = {"cpu": str(cpu)}
        yield "node_cpu_seconds_total", {**labels, "mode": "idle"}, elapsed - busy
        for mode, share in zip(CPU_MODES, node.modes, strict=True):
            yield "node_cpu_seconds_total", {**labels, "mode": mode}, busy * share


def _memory_samples(node: NodeStatic, gauges) -> Iterator[Sample]:
    total = np.full(gauges["memory_utilisation"].shape, node.memory_bytes)
    available = total * (1.0 - gauges["memory_utilisation"])
    yield "node_memory_MemTotal_bytes", {}, total
    yield "node_memory_MemAvailable_bytes", {}, available
    yield "node_memory_MemFree_bytes", {}, available * 0.35
    yield "node_memory_Cached_bytes", {}, available * 0.55
    yield "node_memory_Buffers_bytes", {}, available * 0.05


def _filesystem_samples(node: NodeStatic, gauges) -> Iterator[Sample]:
    labels = {"device": "/dev/sda1", "fstype": "ext4", "mountpoint": "/"}
    size = np.full(gauges["filesystem_utilisation"].shape, node.filesystem_bytes)
    available = size * (1.0 - gauges["filesystem_utilisation"])
    yield "node_filesystem_size_bytes", labels, size
    yield "node_filesystem_avail_bytes", labels, available
    yield "node_filesystem_free_bytes", labels, available + 0.05 * size * (available > 0)


def _application_samples(c) -> Iterator[Sample]:
    yield "http_requests_total", {"code": "200"}, c[:, CH["requests_ok"]]
    yield "http_requests_total", {"code": "500"}, c[:, CH["requests_error"]]
    for i, le in enumerate(LATENCY_BUCKETS):
        yield "http_request_duration_seconds_bucket", {"le": _le(le)}, c[:, FIRST_BUCKET + i]
    yield "http_request_duration_seconds_bucket", {"le": "+Inf"}, c[:, CH["bucket_inf"]]
    yield "http_request_duration_seconds_sum", {}, c[:, CH["latency_sum"]]
    yield "http_request_duration_seconds_count", {}, c[:, CH["bucket_inf"]]
    yield "jvm_gc_pause_seconds_sum", {}, c[:, CH["gc_sum"]]
    yield "jvm_gc_pause_seconds_count", {}, c[:, CH["gc_count"]]


def _ground_truth_samples(gauges, scenario: str) -> Iterator[Sample]:
    shape = gauges["state"].shape
    for code, state in enumerate(sch.STATES):
        yield "simulator_node_state", {"state": state}, (gauges["state"] == code).astype(float)
    for code, kind in enumerate(sch.INCIDENT_KINDS):
        active = (gauges["incident"] == code).astype(float)
        yield "simulator_incident_active", {"kind": kind.name}, active
    for name in sch.SCENARIOS:
        yield "simulator_scenario", {"scenario": name}, np.full(shape, float(name == scenario))


def _le(bound: float) -> str:
    """Bucket bound as Prometheus client libraries write it (0.005, 1.0, 10.0)."""
    return repr(float(bound))


def family_of(sample_name: str) -> str:
    """The metric family a sample name belongs to."""
    if sample_name in FAMILIES:
        return sample_name
    for suffix in ("_total", "_bucket", "_sum", "_count"):
        base = sample_name.removesuffix(suffix)
        if base != sample_name and base in FAMILIES:
            return base
    raise KeyError(sample_name)
