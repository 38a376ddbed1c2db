"""The shadow stage: a candidate that passed the gate is scored on history that arrived after it
was trained, for `shadow.cycles` cycles, before it may replace the serving model.

The gate judges a candidate on the latest window of the history its run pulled (the holdout).
A model can pass there and still do worse on the data that comes next (a change in the fleet,
a holdout too calm to tell). With `shadow.cycles` K > 0 the run that passes the gate does not
promote: it records the candidate as in shadow (`<models>/shadow.json`, so a restart carries
on) and every `shadow.interval` a shadow cycle pulls the history since the end of the run's
history (with one encoder of context before it), forecasts it with the candidate and with the
serving model at the same origins, scores both on the realized values and judges them with the
gate's own rules (`training.retrain.steps.backtest_gate`). Its forecasts are never exported as
live series: only the retrainer's status and metrics show them.

- A cycle whose fresh history does not yet hold one whole forecast (an encoder of context, one
  horizon of realized values) waits: it is recorded, not counted.
- After K counted cycles the last one decides: passed, the candidate is promoted; otherwise it
  is rejected and the serving model stays. Either way the cycles are attached to the candidate
  as `shadow.json` and the state is cleared.
- The serving model changed meanwhile (a rollback, a manual promotion): the candidate is
  dropped as `superseded`, as it is when a newer candidate passes the gate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from forecaster.registry import write_json_atomic

STATE = "shadow.json"
DECISIONS = ("promoted", "rejected", "superseded")


def load_state(root: Path) -> dict[str, Any] | None:
    """The candidate in shadow, or None (no file, or one this code cannot read: then the stage
    is abandoned rather than guessed at, and the serving model stays)."""
    try:
        state = json.loads((root / STATE).read_text())
    except (OSError, ValueError):
        return None
    keys = {"candidate": str, "current": (str, type(None)), "since_ts": (int, float)}
    if not isinstance(state, dict) or any(not isinstance(state.get(k), t) for k, t in keys.items()):
        return None
    if not isinstance(state.get("cycles"), list):
        return None
    return state


def save_state(root: Path, state: dict[str, Any]) -> None:
    """Write the state atomically."""
    write_json_atomic(root / STATE, state)


def clear_state(root: Path) -> None:
    """Forget the candidate in shadow."""
    (root / STATE).unlink(missing_ok=True)


def counted(state: dict[str, Any]) -> int:
    """Cycles that scored at least one origin."""
    return sum(1 for cycle in state["cycles"] if cycle.get("counted"))
