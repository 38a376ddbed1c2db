"""Reading the generated dashboards back: every panel, every target, variables substituted.

The tests use these to check the committed JSON (each panel has a target and the datasource
variable) and to run every query against a real Prometheus, as Grafana would.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

# Panel types that show no data, hence have no target.
NO_DATA_PANELS = frozenset({"row", "text"})
_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")


@dataclass(frozen=True)
class Target:
    """One query of one panel: where it is, its PromQL, and how Grafana runs it."""

    dashboard: str
    panel_id: int
    panel_title: str
    panel_type: str
    ref_id: str
    expr: str
    instant: bool
    datasource: str

    @property
    def name(self) -> str:
        """`<dashboard uid>/<panel id>/<ref id>`, for messages."""
        return f"{self.dashboard}/{self.panel_id}/{self.ref_id}"


def panels(board: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included, in order."""
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def targets(board: Mapping[str, Any]) -> Iterator[Target]:
    """Every target of every panel."""
    for panel in panels(board):
        for target in panel.get("targets", []):
            yield Target(
                dashboard=board["uid"],
                panel_id=panel["id"],
                panel_title=panel.get("title", ""),
                panel_type=panel["type"],
                ref_id=target["refId"],
                expr=target["expr"],
                instant=bool(target.get("instant")) and not target.get("range"),
                datasource=target.get("datasource", {}).get("uid", ""),
            )


def variables(text: str) -> set[str]:
    """Names of the `$name` / `${name}` / `${name:format}` variables in `text`."""
    return {a or b for a, b in _VARIABLE.findall(text)}


def substitute(text: str, values: Mapping[str, str]) -> str:
    """`text` with each variable replaced by its value; KeyError names a missing one."""

    def replace(match: re.Match[str]) -> str:
        return values[match.group(1) or match.group(2)]

    return _VARIABLE.sub(replace, text)
