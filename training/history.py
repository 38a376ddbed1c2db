"""Where a history comes from: a parquet file (`data`) or Prometheus, by the contract's PromQL.

The retrainer pulls its training history through `load_history` and probes how much Prometheus
holds with `history_span`; the backtest fetches its range with `fetch_history`. All go through
the one client `forecaster.source.PrometheusSource` and raise `HistoryError` with a reason from
`REASONS` (the retrainer reports it as its run's failure reason).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import httpx
import pandas as pd

from forecaster.config import PrometheusSettings, read_secret
from forecaster.contract import Contract
from forecaster.grid import STEP_SECONDS, combine
from forecaster.history_files import read_history
from forecaster.source import PrometheusSource, SourceError

REASONS = ("source_error", "partial_history", "bad_history")
PROBE_STEP_S = 3600  # the history probe's resolution


class HistoryError(Exception):
    """A history that could not be read or fetched; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Source(Protocol):
    """Where a history lies and how much of it is taken (the retrainer's `RetrainConfig`)."""

    @property
    def prometheus(self) -> PrometheusSettings: ...

    @property
    def data(self) -> Path | None: ...

    @property
    def history(self) -> float: ...


def read_file(path: Path, quantities: Sequence[str]) -> pd.DataFrame:
    """The WIDE history of `quantities` in a parquet file (or directory); `bad_history` if not."""
    try:
        return read_history(path, list(quantities))
    except (OSError, ValueError) as exc:
        raise HistoryError("bad_history", str(exc)) from None


def load_history(
    source: Source,
    contract: Contract,
    quantities: list[str],
    now: float,
    transport: httpx.BaseTransport | None = None,
) -> pd.DataFrame:
    """The latest `source.history` of every quantity, from `source.data` or Prometheus."""
    if source.data is None:
        return fetch_history(
            source.prometheus, contract, quantities, now, source.history, transport=transport
        )
    wide = read_file(source.data, quantities)
    if wide.empty:
        return wide
    first = wide["timestamp"].max() - pd.Timedelta(seconds=source.history)
    return wide[wide["timestamp"] > first].reset_index(drop=True)


def fetch_history(
    prometheus: PrometheusSettings,
    contract: Contract,
    quantities: list[str],
    now: float,
    history: float,
    *,
    transport: httpx.BaseTransport | None = None,
) -> pd.DataFrame:
    """One query_range per quantity over the last `history` seconds up to `now` (on the grid);
    a partial answer (Prometheus warnings, Thanos/VictoriaMetrics partial flags) refuses it."""
    end = now // STEP_SECONDS * STEP_SECONDS
    start = end - history + STEP_SECONDS
    token = read_secret(prometheus.bearer_token_file)
    parts: dict[str, pd.DataFrame] = {}
    try:
        with PrometheusSource(prometheus, transport=transport, token=token) as client:
            for name in quantities:
                result = client.query_range(contract[name].expr, start, end, quantity=name)
                if result.partial:
                    raise HistoryError("partial_history", f"{name}: {'; '.join(result.warnings)}")
                parts[name] = result.frame
    except SourceError as exc:
        raise HistoryError("source_error", f"{exc.reason}: {exc.detail[:200]}") from None
    except KeyError as exc:
        raise HistoryError("bad_history", f"no expression for {exc}") from None
    return combine(parts)


def history_span(
    source: Source,
    contract: Contract,
    quantity: str,
    now: float,
    lookback: float,
    *,
    transport: httpx.BaseTransport | None = None,
) -> float:
    """Seconds of `quantity`'s history that Prometheus (or `source.data`) holds, looking back
    at most `lookback`: one coarse query (a point an hour), so that the retrainer can tell
    when a first run has enough data without pulling it all."""
    if source.data is not None:
        wide = read_file(source.data, [quantity])
        if wide.empty:
            return 0.0
        return float((wide["timestamp"].max() - wide["timestamp"].min()).total_seconds())
    end = now // PROBE_STEP_S * PROBE_STEP_S
    start = end - lookback
    token = read_secret(source.prometheus.bearer_token_file)
    try:
        with PrometheusSource(source.prometheus, transport=transport, token=token) as client:
            result = client.query_range(
                contract[quantity].expr, start, end, step=PROBE_STEP_S, quantity=quantity
            )
    except SourceError as exc:
        raise HistoryError("source_error", f"{exc.reason}: {exc.detail[:200]}") from None
    frame = result.frame.dropna(subset=[quantity])
    if frame.empty:
        return 0.0
    return float(end - frame["timestamp"].min().timestamp())
