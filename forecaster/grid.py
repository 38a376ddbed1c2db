"""The 5-minute UTC grid every frame lands on, its step counts, and the frame shapes built on it.

The canonical WIDE frame has the columns `instance` (str), `timestamp` (datetime64[ns, UTC]), an
optional `profile` (str) and one float64 column per quantity; it is sorted by (instance,
timestamp), unique on that pair, and every timestamp lies on the step grid (multiples of the step
in unix time). A LONG frame is the same with a single quantity column. Frames come from PromQL
answers (`forecaster.source`), history files (`forecaster.history_files`) and pushed records
(`forecaster.records`).

Grid convention: a sample belongs to the step it ENDS, so timestamps are rounded UP to the grid
(10:02:30 -> 10:05). That is how Prometheus evaluates `rate(x[5m])` at t over (t - 5m, t], so an
aligned `query_range` answer is left unchanged. Within one (instance, step) the latest sample
wins, column by column (the last non-null value); samples with equal timestamps keep input order,
so the one that arrived last wins.

A frame without the columns asked for raises `ValueError`; rows without an instance or a
parseable timestamp are dropped; NaN/Inf values are left for `forecaster.clean`.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import TypeGuard

import numpy as np
import pandas as pd

from forecaster.contract import Grid, load_contract

GRID: Grid = load_contract().grid
"""The packaged contract's grid: the one source of the constants below, which are the defaults
of the functions on the grid. The service passes its own contract's values explicitly."""
STEP_SECONDS = GRID.step_seconds
SEASON_STEPS = GRID.season_steps
"""One season (24 h) in steps: the period the seasonal methods repeat."""
CONTEXT_STEPS = GRID.context_steps
"""The history the model and the heuristic read (24 h): the least the window holds."""
HORIZON_STEPS = GRID.horizon_steps
"""Steps ahead of every forecast (8 h)."""
DAY_STEPS = 86_400 // STEP_SECONDS
"""Steps in a day of the clock, to turn days of history into steps."""
KEYS = ("instance", "timestamp")
# datetime64[ns] spans about +-292 years around 1970; unix seconds beyond that are invalid.
MAX_UNIX_SECONDS = 9.2e9
NAT = np.iinfo(np.int64).min  # NaT as int64 nanoseconds
_MAX_NANOS = int(MAX_UNIX_SECONDS * 1e9)


def combine(parts: Mapping[str, pd.DataFrame], step: int = STEP_SECONDS) -> pd.DataFrame:
    """Outer-join LONG frames, keyed by quantity, into one WIDE frame (NaN where not given).

    Each part needs `instance`, `timestamp` and a column named by its key; other columns are
    ignored. Parts are re-gridded first, so they may come from different sources.
    """
    columns = []
    for name, part in parts.items():
        require_columns(part, (*KEYS, name), f"part {name!r}")
        gridded = regrid(part.loc[:, [*KEYS, name]], step)
        columns.append(gridded.set_index(list(KEYS))[name].astype(np.float64))
    if not columns:
        return pd.DataFrame(
            {
                "instance": pd.Series(dtype=object),
                "timestamp": pd.Series(dtype="datetime64[ns, UTC]"),
            }
        )
    wide = pd.concat(columns, axis=1, join="outer").sort_index()
    return wide.rename_axis(list(KEYS)).reset_index()


def regrid(frame: pd.DataFrame, step: int = STEP_SECONDS) -> pd.DataFrame:
    """Snap timestamps up to the step grid, keep the latest value per (instance, step), sort.

    Rows without an instance or a parseable timestamp are dropped. Per column, the value of the
    latest sample in the step that is not null wins (see the module docstring).
    """
    require_columns(frame, KEYS, "frame")
    nanos = nanoseconds(to_utc(frame["timestamp"]))
    keep = (frame["instance"].notna() & (nanos != NAT)).to_numpy()
    instance = frame["instance"][keep].astype(str)
    codes, _ = pd.factorize(instance, sort=True)
    step_ns = step * 1_000_000_000
    nanos = nanos[keep]
    snapped = -(-nanos // step_ns) * step_ns
    order = np.lexsort((nanos, codes))  # stable: equal times keep row order
    out = frame.loc[keep].iloc[order]
    out = out.assign(instance=instance.to_numpy()[order], timestamp=utc_index(snapped[order]))
    codes, snapped = codes[order], snapped[order]
    if np.any((codes[1:] == codes[:-1]) & (snapped[1:] == snapped[:-1])):
        return out.groupby(list(KEYS), sort=False).last().reset_index()
    return out.reset_index(drop=True)


def to_utc(values: pd.Series) -> pd.Series:
    """Timestamps as datetime64[ns, UTC]; unparseable ones become NaT.

    Accepts tz-aware datetimes (converted), naive ones (taken as UTC), unix seconds and ISO 8601
    strings, mixed in one object column if need be.
    """
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC").dt.as_unit("ns")
    if pd.api.types.is_datetime64_dtype(values.dtype):
        return values.dt.tz_localize("UTC").dt.as_unit("ns")
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values):
        return seconds_to_utc(values.to_numpy(dtype=np.float64), values.index)
    as_floats = [as_float(value) for value in values]
    seconds = np.array([np.nan if n is None else n for n in as_floats], dtype=np.float64)
    text = values.where(np.array([isinstance(value, str) for value in values], dtype=bool))
    parsed = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601").dt.as_unit("ns")
    is_number = np.array([n is not None for n in as_floats], dtype=bool)
    return seconds_to_utc(seconds, values.index).where(is_number, parsed)


def utc_index(nanos: np.ndarray) -> pd.DatetimeIndex:
    """A UTC DatetimeIndex of int64 unix nanoseconds (`NAT` is NaT)."""
    return pd.DatetimeIndex(nanos.view("datetime64[ns]")).tz_localize("UTC")


def nanoseconds(stamps: pd.Series) -> np.ndarray:
    """Unix nanoseconds (int64) of a datetime64[ns, UTC] series; NaT is the int64 minimum, and
    so is a time beyond `MAX_UNIX_SECONDS` (as for unix seconds: its step on the grid could
    pass what int64 nanoseconds hold)."""
    nanos = stamps.to_numpy(dtype="datetime64[ns]").view(np.int64)
    return np.where((nanos > -_MAX_NANOS) & (nanos < _MAX_NANOS), nanos, NAT)


def seconds_to_utc(seconds: np.ndarray, index: pd.Index | None = None) -> pd.Series:
    """Unix seconds as datetime64[ns, UTC]; non-finite ones and those beyond
    `MAX_UNIX_SECONDS` become NaT."""
    valid = np.isfinite(seconds) & (np.abs(seconds) < MAX_UNIX_SECONDS)
    nanos = np.round(np.where(valid, seconds, 0.0) * 1e9).astype(np.int64)
    nanos[~valid] = NAT
    return pd.Series(utc_index(nanos), index=index)


def _is_number(value: object) -> TypeGuard[numbers.Real]:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def as_float(value: object) -> float | None:
    """A real number as float (NaN and infinities included); None for anything else."""
    if not _is_number(value):
        return None
    try:
        return float(value)
    except OverflowError:  # an integer beyond float64
        return None


def require_columns(frame: pd.DataFrame | Sequence[str], columns: Iterable[str], what: str) -> None:
    """Raise `ValueError` naming the `columns` that `frame` (or a list of names) lacks."""
    have = set(frame.columns if isinstance(frame, pd.DataFrame) else frame)
    missing = [column for column in columns if column not in have]
    if missing:
        raise ValueError(f"{what}: missing columns {', '.join(missing)}")
