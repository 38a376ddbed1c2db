"""Model-ready arrays from a WIDE frame: every bad value gets a defined treatment and a reason.

`clean` places a WIDE frame (see `forecaster.grid`) on the context window, the
`context_steps` grid steps ending at `end`, and returns dense arrays of shape
(instances, context_steps, quantities) with no NaN or Inf, a mask of what was really observed,
and a `Counter` over `REASONS`:

reason (what it counts): treatment
- invalid_row (rows): no instance or no timestamp; dropped.
- future (rows): after `end`; dropped. Rows before the window are simply outside it.
- unsorted (rows earlier than the previous row of their instance): placed by time anyway.
- duplicate (rows beyond the first of a step): the latest sample wins, column by column.
- nan, inf (values): missing; a non-numeric cell counts as nan.
- out_of_domain (values): clipped to the quantity's domain and to +-MAGNITUDE_LIMIT.
- gap_filled (values): a run of <= max_fill_gap missing steps; linear interpolation inside the
  history, the nearest observation at its start or end.
- long_gap (values): a longer run; the last observation carried forward (the first one carried
  backward before it).
- absent ((instance, quantity) pairs): never observed in the usable history; zeros.
- constant, all_zero ((instance, quantity) pairs): kept as they are.
- short (instances): kept, with `lengths` below min_steps; the caller picks the heuristic.
- missing (instances): skipped; a target it has in the window is unobserved in more than
  max_missing_ratio of its usable history.
- no_data (instances): skipped; no target observed in the window.
- unknown_quantity (columns): ignored.

An instance's usable history starts when every target it has in the window has been seen (the
latest of their first observations); `lengths` counts steps from there to `end`, and the steps
before it hold zeros with `observed` False. Every filled value has `observed` False. Rows in any
order, or repeated, give the same arrays as the sorted, unique frame.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from forecaster.contract import MAGNITUDE_LIMIT, Quantity
from forecaster.grid import CONTEXT_STEPS, STEP_SECONDS, nanoseconds, require_columns, to_utc

REASONS = (
    "invalid_row",
    "future",
    "unsorted",
    "duplicate",
    "nan",
    "inf",
    "out_of_domain",
    "gap_filled",
    "long_gap",
    "absent",
    "constant",
    "all_zero",
    "short",
    "missing",
    "no_data",
    "unknown_quantity",
)
# Columns of a WIDE frame that are not quantities.
META_COLUMNS = ("instance", "timestamp", "profile", "state")


@dataclass(frozen=True)
class CleanConfig:
    """Window and tolerance of the cleaner, in grid steps."""

    context_steps: int = CONTEXT_STEPS
    min_steps: int = 36
    max_fill_gap: int = 3
    max_missing_ratio: float = 0.2
    step_seconds: int = STEP_SECONDS

    def __post_init__(self) -> None:
        if self.context_steps < 1 or self.step_seconds < 1:
            raise ValueError("context_steps and step_seconds must be at least 1")
        if not 0 <= self.min_steps <= self.context_steps:
            raise ValueError("min_steps must lie in [0, context_steps]")
        if self.max_fill_gap < 0:
            raise ValueError("max_fill_gap must not be negative")
        if not 0.0 <= self.max_missing_ratio <= 1.0:
            raise ValueError("max_missing_ratio must lie in [0, 1]")


DEFAULT_CONFIG = CleanConfig()


@dataclass(frozen=True)
class Cleaned:
    """Dense, finite context windows of the usable instances, with what was really observed."""

    instances: tuple[str, ...]  # rows of the arrays, sorted; skipped instances are not here
    quantities: tuple[str, ...]
    end: pd.Timestamp  # time of the last grid step (the 'now' step)
    values: np.ndarray  # (instances, context_steps, quantities) float64, finite
    observed: np.ndarray  # same shape, bool: True where the value was observed, not filled
    lengths: np.ndarray  # (instances,) int64: usable steps, the last `lengths` of the window
    skipped: dict[str, str]  # instance -> reason ("missing" or "no_data")
    counts: Counter[str]  # reason -> count, zero counts left out
    # (instances, quantities): share of observed values outside the domain before clipping
    # (0 with fewer than 3 observed), and the largest observed value (NaN without any)
    outside: np.ndarray | None = None
    peak: np.ndarray | None = None


def clean(
    frame: pd.DataFrame,
    quantities: Sequence[Quantity],
    end: pd.Timestamp | str,
    config: CleanConfig = DEFAULT_CONFIG,
) -> Cleaned:
    """Clean the window of `config.context_steps` steps ending at `end` (on the step grid).

    `quantities` give the column names, domains and roles (targets decide skipping and where
    history starts); columns absent from `frame` are `absent` for every instance. Raises
    `ValueError` only for a programming error: no instance/timestamp column, `end` off the grid.
    """
    end = _grid_end(end, config.step_seconds)
    names = [q.name for q in quantities]
    counts: Counter[str] = Counter()
    counts["unknown_quantity"] += sum(c not in (*names, *META_COLUMNS) for c in frame.columns)
    instances, grid = _place(frame, names, end, config, counts)
    return clean_grid(instances, grid, quantities, end=end, config=config, counts=counts)


def clean_grid(
    instances: Sequence[str] | np.ndarray,
    grid: np.ndarray,
    quantities: Sequence[Quantity],
    *,
    end: pd.Timestamp,
    config: CleanConfig = DEFAULT_CONFIG,
    counts: Counter[str] | None = None,
) -> Cleaned:
    """`clean` of a window already placed on the grid: `grid` (instances, context_steps,
    quantities) in the order of `quantities`, NaN where nothing was observed (an infinite
    value counts as `inf` and is missing); `end` the time of its last step. Every treatment
    but the placement of rows is `clean`'s; `grid` is modified in place."""
    if grid.shape[1] != config.context_steps or grid.shape[2] != len(quantities):
        raise ValueError(
            f"grid of shape {grid.shape} for {config.context_steps} steps and "
            f"{len(quantities)} quantities"
        )
    names = [q.name for q in quantities]
    instances = np.asarray(instances, dtype=object)
    counts = Counter() if counts is None else counts
    infinite = np.isinf(grid)
    counts["inf"] += int(np.count_nonzero(infinite))
    grid[infinite] = np.nan
    outside, peak = _clip(grid, quantities, counts)
    observed = np.isfinite(grid)
    targets = np.array([q.role == "target" for q in quantities], dtype=bool)
    in_window = observed[:, :, targets].any(axis=1)
    start = _history_start(observed[:, :, targets], in_window)
    width = config.context_steps
    observed &= (np.arange(width)[None, :] >= start[:, None])[:, :, None]
    lengths = np.where(start >= 0, width - start, 0)
    seen = np.count_nonzero(observed[:, :, targets], axis=1)
    reasons = _skip_reasons(seen, in_window, lengths, config.max_missing_ratio)
    skipped = {str(instances[i]): str(reasons[i]) for i in np.flatnonzero(reasons != "")}
    counts.update(skipped.values())
    keep = reasons == ""
    grid, observed, start, lengths = grid[keep], observed[keep], start[keep], lengths[keep]
    outside, peak = outside[keep], peak[keep]
    values = _fill(grid, observed, start, config.max_fill_gap, counts)
    _count_flat(values, observed, counts)
    counts["short"] += int(np.count_nonzero(lengths < config.min_steps))
    return Cleaned(
        instances=tuple(str(name) for name in instances[keep]),
        quantities=tuple(names),
        end=end,
        values=values,
        observed=observed,
        lengths=lengths.astype(np.int64),
        skipped=skipped,
        counts=+counts,
        outside=outside,
        peak=peak,
    )


def _grid_end(end: pd.Timestamp | str, step: int) -> pd.Timestamp:
    stamp = pd.Timestamp(end)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    stamp = stamp.as_unit("ns")
    if stamp.value % (step * 1_000_000_000):
        raise ValueError(f"end {stamp} is not on the {step} s grid")
    return stamp


def _place(
    frame: pd.DataFrame, names: list[str], end: pd.Timestamp, config: CleanConfig, counts: Counter
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted instance names and the (instances, steps, quantities) grid, NaN where no value."""
    require_columns(frame, ("instance", "timestamp"), "frame")
    nanos = nanoseconds(to_utc(frame["timestamp"]))
    present = (frame["instance"].notna() & (nanos != np.iinfo(np.int64).min)).to_numpy()
    counts["invalid_row"] += int(np.count_nonzero(~present))
    codes, instances = pd.factorize(frame["instance"][present].astype(str), sort=True)
    nanos = nanos[present]
    step_ns = config.step_seconds * 1_000_000_000
    steps_back = end.value // step_ns + nanos // -step_ns  # its step, ceiled; no int64 overflow
    counts["future"] += int(np.count_nonzero(steps_back < 0))
    counts["unsorted"] += _count_unsorted(codes, nanos)
    width = config.context_steps
    inside = (steps_back >= 0) & (steps_back < width)
    order = np.lexsort((nanos[inside], codes[inside]))  # stable: equal times keep row order
    rows = np.flatnonzero(present)[inside][order]
    cells = (codes[inside] * width + (width - 1 - steps_back[inside]))[order]
    counts["duplicate"] += int(np.count_nonzero(cells[1:] == cells[:-1]))
    grid = np.full((len(instances) * width, len(names)), np.nan)
    for column, name in enumerate(names):
        if name in frame.columns:
            _scatter(frame[name], rows, cells, grid[:, column], counts)
    return np.asarray(instances, dtype=object), grid.reshape(len(instances), width, len(names))


def _count_unsorted(codes: np.ndarray, nanos: np.ndarray) -> int:
    """Rows earlier than the row before them of the same instance, in input order."""
    by_instance = np.argsort(codes, kind="stable")
    same = codes[by_instance][1:] == codes[by_instance][:-1]
    times = nanos[by_instance]
    return int(np.count_nonzero(same & (times[1:] < times[:-1])))  # np.diff could overflow


def _scatter(
    column: pd.Series, rows: np.ndarray, cells: np.ndarray, out: np.ndarray, counts: Counter
) -> None:
    """Write the latest finite value per cell of `column` (rows sorted by cell, then time)."""
    values = _as_float64(column)[rows]
    counts["nan"] += int(np.count_nonzero(np.isnan(values)))
    counts["inf"] += int(np.count_nonzero(np.isinf(values)))
    finite = np.isfinite(values)
    cells, values = cells[finite], values[finite]
    last = np.ones(cells.size, dtype=bool)
    last[:-1] = cells[1:] != cells[:-1]
    out[cells[last]] = values[last]


def _as_float64(column: pd.Series) -> np.ndarray:
    """A column as float64: a cell that is no real number, or none float64 holds, is NaN."""
    try:
        numbers = pd.to_numeric(column, errors="coerce")
        return numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    except (OverflowError, TypeError, ValueError):  # an int beyond float64, a complex number
        return np.array([_cell_float64(value) for value in column], dtype=np.float64)


def _cell_float64(value: object) -> float:
    if not pd.api.types.is_scalar(value):
        return math.nan
    try:
        return float(pd.to_numeric(value, errors="coerce"))  # type: ignore[arg-type]
    except (OverflowError, TypeError, ValueError):
        return math.nan


def _clip(
    grid: np.ndarray, quantities: Sequence[Quantity], counts: Counter
) -> tuple[np.ndarray, np.ndarray]:
    """Clip observed values in place to each quantity's domain and to +-MAGNITUDE_LIMIT.

    Returns, per (instance, quantity), the share of its observed values that lay outside
    (0 with fewer than 3 of them) and the largest value before clipping (NaN without any).
    """
    low, high = _domain(quantities, 0), _domain(quantities, 1)
    with np.errstate(invalid="ignore"):
        outside = (grid < low) | (grid > high)
    counts["out_of_domain"] += int(np.count_nonzero(outside))
    seen = np.isfinite(grid).sum(axis=1)
    share = np.where(seen >= 3, outside.sum(axis=1) / np.maximum(seen, 1), 0.0)
    with np.errstate(all="ignore"):
        peak = np.where(seen > 0, np.nanmax(np.where(seen[:, None] > 0, grid, 0.0), axis=1), np.nan)
    np.clip(grid, low, high, out=grid)
    return share, peak


def _domain(quantities: Sequence[Quantity], side: int) -> np.ndarray:
    """Lower (side 0) or upper (side 1) bounds, open ends included, within +-MAGNITUDE_LIMIT."""
    open_end = MAGNITUDE_LIMIT if side else -MAGNITUDE_LIMIT
    bounds = [open_end if q.domain[side] is None else q.domain[side] for q in quantities]
    return np.clip(np.array(bounds, dtype=np.float64), -MAGNITUDE_LIMIT, MAGNITUDE_LIMIT)


def _history_start(observed: np.ndarray, in_window: np.ndarray) -> np.ndarray:
    """First usable step per instance: the latest first observation of the targets it has in
    the window (`observed`: instances x steps x targets); -1 where it has none."""
    first = np.where(in_window, observed.argmax(axis=1), -1)
    return first.max(axis=1, initial=-1)


def _skip_reasons(
    seen: np.ndarray, in_window: np.ndarray, lengths: np.ndarray, max_missing: float
) -> np.ndarray:
    """Per instance "" (kept), "no_data" or "missing": a target it has in the window is
    unobserved in more than `max_missing` of its usable history (`seen`: observed steps)."""
    unseen = lengths[:, None] - seen
    too_sparse = (in_window & (unseen > max_missing * lengths[:, None])).any(axis=1)
    return np.where(lengths == 0, "no_data", np.where(too_sparse, "missing", ""))


def _fill(
    grid: np.ndarray, observed: np.ndarray, start: np.ndarray, max_gap: int, counts: Counter
) -> np.ndarray:
    """Finite values: observations, gaps filled (see the module docstring), zeros elsewhere."""
    width = grid.shape[1]
    step = np.arange(width, dtype=np.int32)[None, :, None]
    before = np.maximum.accumulate(np.where(observed, step, -1), axis=1)
    after = np.flip(
        np.minimum.accumulate(np.flip(np.where(observed, step, width), axis=1), axis=1), axis=1
    )
    present = observed.any(axis=1, keepdims=True)
    counts["absent"] += int(np.count_nonzero(~present))
    row, at, column = np.nonzero(~observed & present & (step >= start[:, None, None]))
    prev, next_ = before[row, at, column], after[row, at, column]
    left = grid[row, np.maximum(prev, 0), column]
    right = grid[row, np.minimum(next_, width - 1), column]
    inner = (prev >= 0) & (next_ < width)
    run = np.where(
        inner, next_ - prev - 1, np.where(prev >= 0, width - 1 - prev, next_ - start[row])
    )
    short = run <= max_gap
    counts["gap_filled"] += int(np.count_nonzero(short))
    counts["long_gap"] += int(np.count_nonzero(~short))
    weight = (at - prev) / np.maximum(next_ - prev, 1)
    # between its neighbours even where rounding is not (x * (1 - w) + x * w can be x + 1 ulp,
    # past a domain bound; a product of subnormals can vanish)
    between = np.clip(
        left * (1.0 - weight) + right * weight, np.minimum(left, right), np.maximum(left, right)
    )
    values = np.where(observed, grid, 0.0)
    values[row, at, column] = np.where(inner & short, between, np.where(prev >= 0, left, right))
    return values


def _count_flat(values: np.ndarray, observed: np.ndarray, counts: Counter) -> None:
    """Count observed (instance, quantity) series that are constant, or all zero."""
    present = observed.any(axis=1)
    low = np.where(observed, values, np.inf).min(axis=1)
    high = np.where(observed, values, -np.inf).max(axis=1)
    flat = present & (low == high)
    zero = flat & (high == 0.0)
    counts["all_zero"] += int(np.count_nonzero(zero))
    counts["constant"] += int(np.count_nonzero(flat & ~zero))
