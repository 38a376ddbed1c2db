"""History parquet files read into WIDE frames on the 5-minute grid (see `forecaster.grid`).

A history file is either WIDE (the simulator's format: `instance`, `timestamp`, optional
`profile`, one column per quantity) or LONG (`instance`, `timestamp`, `quantity`, `value`). A
file that is not parquet, lacks the columns or quantities asked for, or whose columns pyarrow
cannot read as asked raises `ValueError`; values that are not numbers become NaN, left for
`forecaster.clean`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from forecaster.grid import KEYS, STEP_SECONDS, regrid, require_columns, to_utc

HISTORY_FILE = "server_metrics.parquet"


def read_history(
    path: str | Path, quantities: Sequence[str], step: int = STEP_SECONDS
) -> pd.DataFrame:
    """Read a history parquet file (or a directory holding `server_metrics.parquet`) as WIDE.

    The file is either WIDE (the simulator's format: `instance`, `timestamp`, optional
    `profile`, one column per quantity) or LONG (`instance`, `timestamp`, `quantity`, `value`).
    Only the requested quantities are read. Timestamps may be tz-aware, naive (taken as UTC) or
    unix seconds. Raises `ValueError` naming any missing column or quantity.
    """
    path = Path(path)
    if path.is_dir():
        path = path / HISTORY_FILE
    names = _parquet(pq.read_schema, path).names
    if {"quantity", "value"} <= set(names):
        frame = _read_long(path, quantities)
    else:
        require_columns(names, (*KEYS, *quantities), str(path))
        extra = ["profile"] if "profile" in names else []
        frame = _parquet(pd.read_parquet, path, columns=[*KEYS, *extra, *quantities])
    for name in quantities:
        frame[name] = pd.to_numeric(frame[name], errors="coerce").astype(np.float64)
    return regrid(frame, step)


def _read_long(path: Path, quantities: Sequence[str]) -> pd.DataFrame:
    columns = [*KEYS, "quantity", "value"]
    filters = [("quantity", "in", list(quantities))]
    frame = _parquet(pd.read_parquet, path, columns=columns, filters=filters)
    # names as text and values as float64 before the pivot, as `regrid` and `read_history`
    # make them anyway (pandas can neither key on nor unstack float16, nor hash list cells);
    # missing names stay missing
    frame["instance"] = frame["instance"].astype(str).where(frame["instance"].notna(), None)
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce").astype(np.float64)
    missing = sorted(set(quantities) - set(frame["quantity"].unique()))
    if missing:
        raise ValueError(f"{path}: no rows for quantities {', '.join(missing)}")
    frame["timestamp"] = to_utc(frame["timestamp"])
    frame = frame.drop_duplicates(["instance", "timestamp", "quantity"], keep="last")
    wide = frame.pivot(index=list(KEYS), columns="quantity", values="value")
    return wide.reindex(columns=list(quantities)).rename_axis(columns=None).reset_index()


def _parquet(read: Callable[..., Any], path: Path, **options: Any) -> Any:
    """`read(path, **options)`; a file pyarrow cannot read as asked raises ValueError (an I/O
    failure stays OSError): not parquet, a column of a type the filter or pandas cannot take,
    damaged pandas metadata (read by pyarrow, which then fails with KeyError or TypeError)."""
    try:
        return read(path, **options)
    except OSError:
        raise
    except (pa.ArrowException, LookupError, TypeError, AttributeError, RecursionError) as exc:
        raise ValueError(f"{path}: unreadable history file: {type(exc).__name__}: {exc}") from None
