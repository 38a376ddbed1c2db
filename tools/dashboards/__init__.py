"""Generator of the Grafana dashboards in `grafana/dashboards/` (Python, grafana-foundation-sdk).

`python -m tools.dashboards` writes `fleet-forecast.json`, `node-forecast.json` and
`forecaster-health.json`; `--check` exits 1 if a committed file differs from what the generator
gives. The JSON is deterministic (sorted keys, panel ids in order), so a regenerated dashboard
is byte for byte the committed one and a change shows as a readable diff. The quantities and
their PromQL come from the data contract (`forecaster/contract_v1.yaml`), the metric names and
horizons from `exporter.snapshot`, so the panels follow the exported metrics.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.cog.encoder import JSONEncoder

from . import fleet, health, node
from .common import REPO_ROOT, load_targets

OUTPUT_DIR = REPO_ROOT / "grafana" / "dashboards"


def _builders() -> dict[str, Callable[[], Any]]:
    quantities = {q.name: q for q in load_targets()}
    return {
        fleet.UID: lambda: fleet.build(quantities),
        node.UID: lambda: node.build(quantities),
        health.UID: health.build,
    }


def render_all() -> dict[str, str]:
    """File name -> JSON text of every dashboard, in a stable order."""
    return {f"{uid}.json": _dumps(make().build()) for uid, make in _builders().items()}


def _dumps(board: Any) -> str:
    return json.dumps(board, cls=JSONEncoder, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def write(directory: Path = OUTPUT_DIR) -> list[Path]:
    """Write every dashboard under `directory`; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in render_all().items():
        path = directory / name
        path.write_text(content, encoding="utf-8")
        written.append(path)
    return written


def stale(directory: Path = OUTPUT_DIR) -> list[str]:
    """Names of the dashboards whose file under `directory` differs from the generator's."""
    return [
        name
        for name, content in render_all().items()
        if not (directory / name).is_file()
        or (directory / name).read_text(encoding="utf-8") != content
    ]
