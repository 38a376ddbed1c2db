"""Validation of records pushed to `POST /feed/data` into a WIDE frame on the 5-minute grid.

Pushed records are validated one by one before any of them is put in a frame, so a bad record
is refused alone (with a reason from `RECORD_ERRORS`) and never costs the others; nothing here
raises on bad input. NaN and infinite values are kept for `forecaster.clean`. The frame shape
and grid are `forecaster.grid`'s.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from types import MappingProxyType

import numpy as np
import pandas as pd

from forecaster.contract import Domain, load_contract, possible_range
from forecaster.grid import MAX_UNIX_SECONDS, NAT, STEP_SECONDS, as_float, regrid, utc_index

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
MIB = 1024.0 * 1024.0
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


@dataclass(frozen=True)
class RecordError:
    """A pushed record that was refused: its position in the batch and a `RECORD_ERRORS` reason."""

    index: int
    reason: str


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
    frame.insert(1, "timestamp", utc_index(np.array(stamps, dtype=np.int64)))
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
        number = as_float(value)
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
    seconds = as_float(stamp)
    if seconds is None or not abs(seconds) < MAX_UNIX_SECONDS:  # NaN fails the comparison too
        return NAT
    return round(seconds * 1e9)


def _possible(number: float, value: float, bounds: tuple[float, float]) -> bool:
    """Whether `value` (`number` in base units) can be a measurement; NaN and infinities in
    the input are missing values, left for the cleaner."""
    if not math.isfinite(number):
        return True
    return math.isfinite(value) and bounds[0] <= value <= bounds[1]


def _is_label(value: object) -> bool:
    return isinstance(value, str) and NAME_PATTERN.fullmatch(value) is not None
