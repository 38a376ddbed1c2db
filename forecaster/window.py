"""The in-memory history window: the last `context_steps` of every quantity, step by step.

Each cycle asks `plan(end)` which range to fetch: the steps that are new since the last cycle
plus `overlap_steps` already held (the newest step of a `rate()` can still change while its
samples arrive), or the first `first_steps` (24 h) after a restart or a gap longer than that.
When the window is to hold more than it fetched first (the guard's days of history),
`backfill_plan(end)` names the next older chunk of at most `chunk_steps`, one per cycle, until
the window reaches back `context_steps` (or the source had nothing older). `merge` folds the
answers in (the newest non-null value of a step wins), `push` adds records that arrived
through `POST /feed/data`, and both trim what fell out of the window.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from forecaster.grid import CONTEXT_STEPS, KEYS, STEP_SECONDS, combine, nanoseconds, regrid


def held_steps(
    history_seconds: float, step: int, *, long: bool, context: int = CONTEXT_STEPS
) -> int:
    """Steps the service's window holds: `history_seconds` (at least the `context` the model
    and the heuristic read, a day) when something reads two seasons back or more (the forecast
    guard, a ramp outlook), else the `context`."""
    return max(context, int(history_seconds // step)) if long else context


PUSH_LEAD_SECONDS = 600.0
"""How far past the clock a pushed record may lie (a pusher whose clock runs ahead of ours)."""


@dataclass(frozen=True)
class FetchPlan:
    """The range one cycle fetches: [start, end] on the grid; `full` after a restart or gap."""

    start: int
    end: int
    full: bool

    @property
    def steps(self) -> int:
        """Grid steps in the range."""
        return (self.end - self.start) // STEP_SECONDS + 1


class HistoryWindow:
    """WIDE frame of the last `context_steps` grid steps; thread-safe."""

    def __init__(
        self,
        quantities: tuple[str, ...],
        context_steps: int = CONTEXT_STEPS,
        step: int = STEP_SECONDS,
        overlap_steps: int = 2,
        *,
        first_steps: int | None = None,
        chunk_steps: int = 144,
    ) -> None:
        self.quantities = quantities
        self.context_steps = context_steps
        self.first_steps = min(first_steps or context_steps, context_steps)
        self.chunk_steps = max(1, chunk_steps)
        self.step = step
        self.overlap_steps = overlap_steps
        self._lock = threading.Lock()
        self._frame = _empty(quantities)
        self._end: int | None = None
        self._start: int | None = None  # oldest grid step fetched (or tried) so far

    @property
    def end(self) -> int | None:
        """The last grid step fetched from the source, None before the first fetch."""
        return self._end

    def plan(self, end: int) -> FetchPlan:
        """What to fetch so that the window ends at grid step `end`."""
        span = self.first_steps * self.step
        first = end - (self.first_steps - 1) * self.step
        if self._end is None or end - self._end >= span or end < self._end:
            return FetchPlan(first, end, True)
        start = max(first, self._end - self.overlap_steps * self.step)
        return FetchPlan(start, end, False)

    def backfill_plan(self, end: int) -> FetchPlan | None:
        """The next older chunk to fetch for a window ending at `end`, None when held."""
        if self._start is None:
            return None
        oldest = end - (self.context_steps - 1) * self.step
        if self._start <= oldest:
            return None
        start = max(oldest, self._start - self.chunk_steps * self.step)
        return FetchPlan(start, self._start - self.step, False)

    def merge(self, parts: Mapping[str, pd.DataFrame], plan: FetchPlan) -> None:
        """Fold LONG answers (quantity -> frame) covering `plan` into the window."""
        new = combine(parts, self.step)
        with self._lock:
            if plan.full:  # what the window holds stays under it: pushed records survive
                self._frame = self._fit(_concat(self._frame, new), plan.end)
                self._start = plan.start
            elif self._end is not None and plan.end < self._end:  # a backfilled chunk
                self._frame = self._fit(_concat(new, self._frame), self._end)
                self._start = min(plan.start, self._start or plan.start)
                return
            else:
                self._frame = self._fit(_concat(self._frame, new), plan.end)
            self._end = plan.end

    def push(self, frame: pd.DataFrame) -> None:
        """Add a WIDE frame of pushed records (any quantities of the window, any order)."""
        columns = [c for c in (*KEYS, "profile", *self.quantities) if c in frame.columns]
        with self._lock:
            ends = [e for e in (self._end, _last_step(frame, self.step)) if e is not None]
            end = max(ends) if ends else None
            self._frame = self._fit(_concat(self._frame, frame.loc[:, columns]), end)

    def push_span(self, now: float, lead: float = PUSH_LEAD_SECONDS) -> tuple[float, float]:
        """(oldest, newest]: the unix times a pushed record must carry for the window to use it.

        A record no later than `context_steps` before the window's last fetched step (`now`
        before the first fetch) would be trimmed at once; one more than `lead` after `now` (or
        after that step, if the source's clock is ahead) lies in the future and would move the
        window's end, pushing held history out. Give it to `records.from_records` as `window`.
        """
        end = float(self._end) if self._end is not None else float(now)
        return end - self.context_steps * self.step, max(end, float(now)) + lead

    def frame(self) -> pd.DataFrame:
        """The current WIDE frame (a snapshot; callers may not mutate it)."""
        with self._lock:
            return self._frame

    def drop(self, instances: set[str]) -> None:
        """Forget `instances` (vanished or out of this shard)."""
        if not instances:
            return
        with self._lock:
            keep = ~self._frame["instance"].isin(instances)
            self._frame = self._frame.loc[keep].reset_index(drop=True)

    def last_seen(self) -> dict[str, float]:
        """Per instance, the unix time of its newest step holding any value."""
        frame = self.frame()
        present = [q for q in self.quantities if q in frame.columns]
        if frame.empty or not present:
            return {}
        has_value = frame[present].notna().any(axis=1).to_numpy()
        seconds = nanoseconds(frame["timestamp"]) // 1_000_000_000
        rows = frame.loc[has_value, ["instance"]].assign(t=seconds[has_value])
        return {str(k): float(v) for k, v in rows.groupby("instance")["t"].max().items()}

    def _fit(self, frame: pd.DataFrame, end: int | None) -> pd.DataFrame:
        """Grid, de-duplicate (newest wins) and trim to the context window ending at `end`."""
        frame = regrid(frame, self.step)
        if end is None or frame.empty:
            return frame.reset_index(drop=True)
        seconds = nanoseconds(frame["timestamp"]) // 1_000_000_000
        inside = (seconds > end - self.context_steps * self.step) & (seconds <= end)
        return frame.loc[inside].reset_index(drop=True)


def _empty(quantities: tuple[str, ...]) -> pd.DataFrame:
    data: dict[str, pd.Series] = {
        "instance": pd.Series(dtype=object),
        "timestamp": pd.Series(dtype="datetime64[ns, UTC]"),
    }
    data.update({q: pd.Series(dtype=np.float64) for q in quantities})
    return pd.DataFrame(data)


def _concat(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Old rows first, so that in a duplicated step the new value wins."""
    if old.empty:
        return new
    if new.empty:
        return old
    return pd.concat([old, new], ignore_index=True, sort=False)


def _last_step(frame: pd.DataFrame, step: int) -> int | None:
    if frame.empty:
        return None
    newest = int(nanoseconds(frame["timestamp"]).max() // 1_000_000_000)
    return -(-newest // step) * step
