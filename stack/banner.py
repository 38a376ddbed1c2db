"""The text `python -m stack demo` prints once the stack runs: URLs, queries, commands to try."""

from __future__ import annotations

from datetime import UTC, datetime

from stack.config import format_duration
from stack.layout import Layout
from stack.plan import forecaster_urls
from stack.stack import StackInfo

EXAMPLE_QUERIES = (
    "instance:cpu_utilisation:rate5m",
    "topk(5, instance:memory_utilisation:ratio)",
    "instance:request_latency_p95:rate5m",
    '1 - avg by (instance) (rate(node_cpu_seconds_total{mode="idle"}[5m]))',
)
FORECAST_QUERIES = (
    'forecaster_predicted_cpu_utilisation_ratio{q="0.9",horizon="30m"}',
    "topk(5, forecaster_risk_score)",
    'forecaster_breach_probability{window="8h"} > 0.5',
    "sum by (method) (forecaster_series)",
)
EXAMPLE_NODE = "ppdb001"


def _utc(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _services(info: StackInfo) -> list[str]:
    services = [
        ("Prometheus", info.prometheus_url),
        ("Alertmanager", info.alertmanager_url),
        ("node_exporter", info.node_exporter_url),
        ("Simulator", info.simulator_url),
        ("Forecaster", info.forecaster_url),
        ("Receiver", info.receiver_url),
    ]
    return [
        *(f"  {name:<14}{url}" for name, url in services if url is not None),
        f"  {'Work dir':<14}{info.workdir}",
        f"  {'Processes':<14}" + ", ".join(f"{name} {pid}" for name, pid in info.pids.items()),
        f"  {'History':<14}{_utc(info.window.epoch)} to {_utc(info.window.end)}"
        f" ({info.window.hours:g} h) in {info.history_dir}",
        f"  {'Backfilled':<14}up to {_utc(info.backfill_end)}, live scrapes from there on",
    ]


def _forecaster(info: StackInfo) -> list[str]:
    if info.forecaster_url is None:
        return []
    urls = forecaster_urls(info.forecaster_url)
    cycle = format_duration(info.cycle_interval_s) if info.cycle_interval_s else "its interval"
    return [
        "",
        f'Forecaster (shipped model, one cycle every {cycle}; method="heuristic" until the'
        ' model has loaded, then "tft"):',
        f"  {'metrics':<12}{urls['metrics']}",
        f"  {'REST':<12}{urls['predictions']}",
        f"  {'':<12}{urls['predict'].format(instance=EXAMPLE_NODE)}",
        f"  {'':<12}{urls['alerts']}",
        f"  {'status':<12}{urls['status']}",
        f"  {'WebSocket':<12}{urls['websocket']}",
    ]


def _receiver(info: StackInfo) -> list[str]:
    if info.receiver_url is None:
        return []
    return [
        "",
        "Alertmanager notifies the local webhook receiver (no Slack or PagerDuty); each alert is"
        " printed here and logged in",
        f"  {Layout(info.workdir).log('receiver')}  (recent ones: {info.receiver_url}"
        "/notifications)",
    ]


def _commands(info: StackInfo) -> list[str]:
    url = info.simulator_url
    incident = f'{{"node": "{EXAMPLE_NODE}", "kind": "cpu_saturation", "ramp": "20m"}}'
    return [
        "",
        "Switch the simulated fleet's scenario (healthy, degrading, critical):",
        f"  python -m simulator scenario critical --url {url}",
        f"  curl -X POST -H 'Content-Type: application/json' -d '{{\"scenario\": \"critical\"}}'"
        f" {url}/scenario/set",
        f"  curl {url}/status",
        "",
        "Break one node now (memory_leak, filesystem_fill, cpu_saturation, latency_degradation):",
        f"  python -m simulator incident --node {EXAMPLE_NODE} --kind memory_leak --ramp 20m"
        f" --url {url}",
        f"  curl -X POST -H 'Content-Type: application/json' -d '{incident}' {url}/incident/inject",
        f"  curl {url}/incidents",
        "",
    ]


def demo_banner(info: StackInfo) -> str:
    """What the demo prints once everything runs: URLs, queries to try, scenario switches."""
    queries = EXAMPLE_QUERIES + (FORECAST_QUERIES if info.forecaster_url else ())
    return "\n".join(
        [
            "",
            "Stack running; Ctrl-C stops it.",
            "",
            *_services(info),
            "",
            f"PromQL to try at {info.prometheus_url}/graph :",
            *(f"  {query}" for query in queries),
            *_forecaster(info),
            *_receiver(info),
            *_commands(info),
        ]
    )
