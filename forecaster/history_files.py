"""History parquet files read into WIDE frames on the 5-minute grid (see `forecaster.grid`).

A history file is either WIDE (the simulator's format: `instance`, `timestamp`, optional
`profile`, one column per quantity) or LONG (`instance`, `timestamp`, `quantity`, `value`). A
file without the columns or quantities asked for raises `ValueError`; values that are not
numbers become NaN, left for `forecaster.clean`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
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
    names = pq.read_schema(path).names
    if {"quantity", "value"} <= set(names):
        frame = _read_long(path, quantities)
    else:
        require_columns(names, (*KEYS, *quantities), str(path))
        extra = ["profile"] if "profile" in names else []
        frame = pd.read_parquet(path, columns=[*KEYS, *extra, *quantities])
    for name in quantities:
        frame[name] = pd.to_numeric(frame[name], errors="coerce").astype(np.float64)
    return regrid(frame, step)


def _read_long(path: Path, quantities: Sequence[str]) -> pd.DataFrame:
    columns = [*KEYS, "quantity", "value"]
    frame = pd.read_parquet(path, columns=columns, filters=[("quantity", "in", list(quantities))])
    missing = sorted(set(quantities) - set(frame["quantity"].unique()))
    if missing:
        raise ValueError(f"{path}: no rows for quantities {', '.join(missing)}")
    frame["timestamp"] = to_utc(frame["timestamp"])
    frame = frame.drop_duplicates(["instance", "timestamp", "quantity"], keep="last")
    wide = frame.pivot(index=list(KEYS), columns="quantity", values="value")
    return wide.reindex(columns=list(quantities)).rename_axis(columns=None).reset_index()
