"""Frames from every source on one 5-minute UTC grid: PromQL answers, history files, pushes.

The canonical WIDE frame has the columns `instance` (str), `timestamp` (datetime64[ns, UTC]), an
optional `profile` (str) and one float64 column per quantity; it is sorted by (instance,
timestamp), unique on that pair, and every timestamp lies on the step grid (multiples of the step
in unix time). A LONG frame is the same with a single quantity column.

Grid convention: a sample belongs to the step it ENDS, so timestamps are rounded UP to the grid
(10:02:30 -> 10:05). That is how Prometheus evaluates `rate(x[5m])` at t over (t - 5m, t], so an
aligned `query_range` answer is left unchanged. Within one (instance, step) the latest sample
wins, column by column (the last non-null value); samples with equal timestamps keep input order,
so the one that arrived last wins.

Bad input raises only `SourceError` (a broken PromQL answer, with a reason from `SOURCE_ERRORS`)
or `ValueError` (a frame or history file without the columns asked for); anything else is
dropped and counted (`SERIES_DROPS`, `RECORD_ERRORS`) or left as NaN/Inf for `forecaster.clean`.
Pushed records are validated one by one before any of them is put in a frame, so a bad record
is refused alone and never costs the others.
"""

from __future__ import annotations

import math
import numbers
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import TypeGuard

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from forecaster.contract import Domain, load_contract, possible_range

STEP_SECONDS = 300
KEYS = ("instance", "timestamp")
HISTORY_FILE = "server_metrics.parquet"
# Answers that cannot be parsed, and (raised by forecaster.promql) requests that failed.
SOURCE_ERRORS = (
    "bad_response",
    "error_status",
    "timeout",
    "connection",
    "http_error",
    # raised by forecaster.source
    "too_large",
    "rate_limited",
    "bad_request",
    "tls",
)
SERIES_DROPS = ("no_instance", "bad_instance", "duplicate_instance")
RECORD_ERRORS = (
    "not_an_object",
    "missing_server_name",
    "invalid_server_name",
    "missing_timestamp",
    "invalid_timestamp",
    "invalid_profile",
    "outside_window",
    "non_numeric_value",
    "impossible_value",
    "conflicting_quantity",
    "no_quantity",
)
# Pushed names are user input: the allow-list keeps them safe in PromQL selectors and paths.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
# Label values from Prometheus may hold any UTF-8 (the exposition escapes them); longer ones go.
MAX_LABEL_BYTES = 256
# datetime64[ns] spans about +-292 years around 1970; unix seconds beyond that are invalid.
MAX_UNIX_SECONDS = 9.2e9
MIB = 1024.0 * 1024.0
NAT = np.iinfo(np.int64).min  # NaT as int64 nanoseconds
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
# The seed system's field -> (contract quantity, divisor to base units).
SEED_FIELDS: dict[str, tuple[str, float]] = {
    "cpu_pct": ("cpu_utilisation", 100.0),
    "mem_pct": ("memory_utilisation", 100.0),
    "disk_percent": ("filesystem_utilisation", 100.0),
    "disk_io_mb_s": ("disk_io", 1.0 / MIB),
    "latency_ms": ("request_latency_p95", 1000.0),
    "net_in_mb_s": ("network_receive", 1.0 / MIB),
    "net_out_mb_s": ("network_transmit", 1.0 / MIB),
    "error_rate": ("http_error_ratio", 1.0),
    "gc_pause_ms": ("gc_pause", 1000.0),
}


class SourceError(Exception):
    """A PromQL answer that cannot be used; `reason` is one of `SOURCE_ERRORS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class RangeResult:
    """A parsed `query_range` answer: the LONG frame, Prometheus' warnings, dropped series."""

    frame: pd.DataFrame
    warnings: tuple[str, ...]
    dropped: Counter[str]

    @property
    def partial(self) -> bool:
        """True when Prometheus warned, i.e. the answer may be incomplete."""
        return bool(self.warnings)


@dataclass(frozen=True)
class RecordError:
    """A pushed record that was refused: its position in the batch and a `RECORD_ERRORS` reason."""

    index: int
    reason: str


def from_query_range(payload: object, quantity: str, step: int = STEP_SECONDS) -> RangeResult:
    """Parse a `/api/v1/query_range` answer into a LONG frame (instance, timestamp, quantity).

    Sample values are strings ("1.5", "NaN", "+Inf"); they become float64 as they are. A series
    without an `instance` label is dropped (`no_instance`), one whose instance is longer than
    `MAX_LABEL_BYTES` too (`bad_instance`); of several series for one instance the one with the
    most points is kept (the first on ties) and each other one counts `duplicate_instance`.
    Raises `SourceError` for an error status or a malformed answer.
    """
    result, warnings = _matrix(payload)
    series, dropped = _select_series(result)
    counts = [len(values) for values in series.values()]
    points = [point for values in series.values() for point in values]
    try:
        seconds = np.fromiter((t for t, _ in points), dtype=np.float64, count=len(points))
        values = np.array([v for _, v in points], dtype=str).astype(np.float64)
    except (TypeError, ValueError, OverflowError) as error:
        raise SourceError("bad_response", f"malformed sample: {error}") from None
    if values.shape != seconds.shape:
        raise SourceError("bad_response", "a sample value is not a scalar")
    frame = pd.DataFrame(
        {
            "instance": np.repeat(np.array(list(series), dtype=object), counts),
            "timestamp": _seconds_to_utc(seconds),
            quantity: values,
        }
    )
    return RangeResult(regrid(frame, step), warnings, dropped)


def _matrix(payload: object) -> tuple[list, tuple[str, ...]]:
    if not isinstance(payload, Mapping):
        raise SourceError("bad_response", "the answer is not a JSON object")
    status = payload.get("status")
    if status == "error":
        detail = f"{payload.get('errorType', 'unknown')}: {payload.get('error', '')}"
        raise SourceError("error_status", detail)
    data = payload.get("data")
    if status != "success" or not isinstance(data, Mapping):
        raise SourceError("bad_response", f"status {status!r} without a data object")
    if data.get("resultType") != "matrix":
        raise SourceError("bad_response", f"resultType {data.get('resultType')!r}, not matrix")
    result, warnings = data.get("result"), payload.get("warnings", [])
    if not isinstance(result, list) or not isinstance(warnings, list):
        raise SourceError("bad_response", "result or warnings is not a list")
    return result, tuple(str(warning) for warning in warnings)


def _select_series(result: list) -> tuple[dict[str, list], Counter[str]]:
    chosen: dict[str, list] = {}
    dropped: Counter[str] = Counter()
    for series in result:
        metric = series.get("metric") if isinstance(series, Mapping) else None
        values = series.get("values", []) if isinstance(series, Mapping) else None
        if not isinstance(metric, Mapping) or not isinstance(values, list):
            raise SourceError("bad_response", "a series without a metric object or values list")
        instance = metric.get("instance")
        if not isinstance(instance, str) or not instance:
            dropped["no_instance"] += 1
            continue
        if len(instance.encode()) > MAX_LABEL_BYTES:
            dropped["bad_instance"] += 1
            continue
        if instance in chosen:
            dropped["duplicate_instance"] += 1
            if len(values) <= len(chosen[instance]):
                continue
        chosen[instance] = values
    return chosen, dropped


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


def from_records(
    records: Sequence[object],
    quantities: Sequence[str],
    step: int = STEP_SECONDS,
    *,
    domains: Mapping[str, Domain] | None = None,
    window: tuple[float, float] | None = None,
) -> tuple[pd.DataFrame, list[RecordError]]:
    """Validate records pushed to `POST /feed/data` into a WIDE frame with `profile`.

    A record holds `server_name` (the instance), `timestamp` (ISO 8601, naive = UTC, or unix
    seconds), an optional `profile` and quantity fields, by contract name in base units or by
    the seed's name and unit (`SEED_FIELDS`); null fields and other fields are ignored. NaN and
    infinite values are kept for the cleaner; a value no measurement can take (outside
    `forecaster.contract.possible_range` of its quantity's domain, in base units) refuses its
    record. `domains` maps quantity names to domains (default: the packaged contract's, for
    the names it has); `window`, (oldest, newest] in unix seconds, refuses records that would
    fall outside the history the caller holds. Each record is checked on its own first;
    refused ones are reported by index with a `RECORD_ERRORS` reason, the others are kept.
    """
    known = set(quantities)
    domains = _packaged_domains() if domains is None else domains
    possible = {q: possible_range(domains.get(q, (None, None))) for q in quantities}
    rows: list[dict[str, object]] = []
    stamps: list[int] = []
    errors: list[RecordError] = []
    for index, record in enumerate(records):
        checked = _record_row(record, known, possible, window)
        if isinstance(checked, str):
            errors.append(RecordError(index, checked))
        else:
            stamps.append(checked[0])
            rows.append(checked[1])
    frame = pd.DataFrame(rows, columns=["instance", "profile", *quantities])
    frame.insert(1, "timestamp", _utc(np.array(stamps, dtype=np.int64)))
    frame[list(quantities)] = frame[list(quantities)].astype(np.float64)
    return regrid(frame, step), errors


@cache
def _packaged_domains() -> Mapping[str, Domain]:
    return MappingProxyType({q.name: q.domain for q in load_contract().quantities})


def _record_row(
    record: object,
    known: set[str],
    possible: Mapping[str, tuple[float, float]],
    window: tuple[float, float] | None,
) -> tuple[int, dict[str, object]] | str:
    """The record's time in unix nanoseconds and its row in base units, or the reason it is
    refused."""
    if not isinstance(record, Mapping):
        return "not_an_object"
    name, stamp, profile = (record.get(k) for k in ("server_name", "timestamp", "profile"))
    nanos = _unix_nanos(stamp)
    reason = (
        ("missing_server_name", name is None),
        ("invalid_server_name", not isinstance(name, str) or not NAME_PATTERN.fullmatch(name)),
        ("missing_timestamp", stamp is None),
        ("invalid_timestamp", nanos == NAT),
        ("invalid_profile", profile is not None and not _is_label(profile)),
        ("outside_window", window is not None and not window[0] < nanos / 1e9 <= window[1]),
    )
    for error, failed in reason:
        if failed:
            return error
    row: dict[str, object] = {"instance": name, "profile": profile}
    for field, value in record.items():
        quantity, divisor = (field, 1.0) if field in known else SEED_FIELDS.get(field, ("", 1.0))
        if quantity not in known or value is None:
            continue
        if quantity in row:
            return "conflicting_quantity"
        number = _as_float(value)
        if number is None:
            return "non_numeric_value"
        converted = number / divisor
        if not _possible(number, converted, possible[quantity]):
            return "impossible_value"
        row[quantity] = converted
    return (nanos, row) if len(row) > 2 else "no_quantity"


def _unix_nanos(stamp: object) -> int:
    """Unix nanoseconds of a record's timestamp (unix seconds or ISO 8601, naive = UTC); NAT
    for anything else, or for a time datetime64[ns] cannot hold."""
    if isinstance(stamp, str):
        try:
            moment = datetime.fromisoformat(stamp)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            micros = (moment - EPOCH) // MICROSECOND
        except (ValueError, OverflowError):
            return NAT
        return micros * 1000 if abs(micros) < MAX_UNIX_SECONDS * 1e6 else NAT
    seconds = _as_float(stamp)
    if seconds is None or not abs(seconds) < MAX_UNIX_SECONDS:  # NaN fails the comparison too
        return NAT
    return round(seconds * 1e9)


def _possible(number: float, value: float, bounds: tuple[float, float]) -> bool:
    """Whether `value` (`number` in base units) can be a measurement; NaN and infinities in
    the input are missing values, left for the cleaner."""
    if not math.isfinite(number):
        return True
    return math.isfinite(value) and bounds[0] <= value <= bounds[1]


def _is_number(value: object) -> TypeGuard[numbers.Real]:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _as_float(value: object) -> float | None:
    """A real number as float (NaN and infinities included); None for anything else."""
    if not _is_number(value):
        return None
    try:
        return float(value)
    except OverflowError:  # an integer beyond float64
        return None


def _is_label(value: object) -> bool:
    return isinstance(value, str) and NAME_PATTERN.fullmatch(value) is not None


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
    out = out.assign(instance=instance.to_numpy()[order], timestamp=_utc(snapped[order]))
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
        return _seconds_to_utc(values.to_numpy(dtype=np.float64), values.index)
    as_floats = [_as_float(value) for value in values]
    seconds = np.array([np.nan if n is None else n for n in as_floats], dtype=np.float64)
    text = values.where(np.array([isinstance(value, str) for value in values], dtype=bool))
    parsed = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601").dt.as_unit("ns")
    is_number = np.array([n is not None for n in as_floats], dtype=bool)
    return _seconds_to_utc(seconds, values.index).where(is_number, parsed)


def _utc(nanos: np.ndarray) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(nanos.view("datetime64[ns]")).tz_localize("UTC")


def nanoseconds(stamps: pd.Series) -> np.ndarray:
    """Unix nanoseconds (int64) of a datetime64[ns, UTC] series; NaT is the int64 minimum."""
    return stamps.to_numpy(dtype="datetime64[ns]").view(np.int64)


def _seconds_to_utc(seconds: np.ndarray, index: pd.Index | None = None) -> pd.Series:
    valid = np.isfinite(seconds) & (np.abs(seconds) < MAX_UNIX_SECONDS)
    nanos = np.round(np.where(valid, seconds, 0.0) * 1e9).astype(np.int64)
    nanos[~valid] = NAT
    return pd.Series(_utc(nanos), index=index)


def require_columns(frame: pd.DataFrame | Sequence[str], columns: Iterable[str], what: str) -> None:
    """Raise `ValueError` naming the `columns` that `frame` (or a list of names) lacks."""
    have = set(frame.columns if isinstance(frame, pd.DataFrame) else frame)
    missing = [column for column in columns if column not in have]
    if missing:
        raise ValueError(f"{what}: missing columns {', '.join(missing)}")
