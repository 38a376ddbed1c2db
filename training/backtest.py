"""`python -m training.backtest`: rolling-origin evaluation of a model against baselines.

At every origin (every `--origin-every`, default 2 h) over held-out history, the TFT (through
the service's fast path) and each baseline forecast the next 8 h from the history before the
origin; all are scored on the same origins and horizons: NQL (the TFT paper's q-risk), WAPE
of the p50 and p10-p90 coverage, per quantity at 30 m, 2 h, 8 h and over all horizons.
Beside them, `served` is what the forecaster itself would have served at each origin: its own
path (`forecaster.clean`, `forecaster.engine.forecast` with the `Guard` and the ramp outlooks,
the service's default settings) replayed from the start of the history at the guard's spacing
(hourly) and at every origin, so the guard has learnt on the history before each origin only.
The result is JSON (attachable to the version as backtest.json), a markdown report and plots.

The history is a parquet file (`--data`) or is fetched from Prometheus (`--prometheus.url`,
`--start`, `--end`) with the contract's PromQL expressions, through the fetch the retrainer
also uses (`training.history.fetch_history`, the one client `forecaster.source.PrometheusSource`),
then written as `server_metrics.parquet` under `--out` and scored from that file.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
import sys
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from exporter.snapshot import QUANTILES
from forecaster.clean import CleanConfig, clean, clean_grid
from forecaster.config import LEAVES as SERVICE_LEAVES
from forecaster.config import (
    Config,
    ConfigError,
    PrometheusSettings,
    describe,
    layered,
    read_secret,
    validated,
)
from forecaster.contract import load_contract
from forecaster.engine import forecast
from forecaster.features import host_id, profile_of
from forecaster.grid import STEP_SECONDS
from forecaster.guard import Guard, guard_params
from forecaster.history_files import HISTORY_FILE, read_history
from forecaster.model.dataset import epoch_seconds
from forecaster.model.fast import Batch, FastPredictor
from forecaster.model.tft import ModelBundle, load_bundle
from forecaster.registry import Registry
from forecaster.window import held_steps
from training.baselines import BASELINES
from training.gates import BACKTEST_CONTEXT
from training.history import HistoryError, fetch_history
from training.metrics import HORIZONS, score_horizons
from training.replay import Chain

log = logging.getLogger("training.backtest")
TFT = "tft"
SERVED = "served"  # what the service would have served (guard included)
MIN_ORIGINS = 3  # fewer origins than this is too little history to judge by
DEFAULT_SPAN_S = 7 * 86_400  # --start defaults to --end minus this
# Every Prometheus setting of the retrainer and the forecaster (`--prometheus.timeout`,
# `--prometheus.tls-config.*` ...): the same settings class (`PrometheusSettings`), the same
# flags. `--prometheus.url` is one of the two sources.
PROMETHEUS_LEAVES = tuple(p for p in SERVICE_LEAVES if p.startswith("prometheus."))
DEFAULT_BASELINES = (
    "naive",
    "seasonal_naive_24h",
    "predict_linear_1h",
    "predict_linear_6h",
    "auto_ets",
)


@dataclass(frozen=True)
class BacktestSpec:
    """Where the origins are and what the baselines see."""

    origin_every: int = 24  # steps between origins (2 h)
    context: int = BACKTEST_CONTEXT  # history handed to the baselines (the TFT reads its encoder's)
    baselines: tuple[str, ...] = DEFAULT_BASELINES


@dataclass(frozen=True)
class Grid:
    """Held-out history on the full 5-minute grid: values (instances, steps, quantities)."""

    instances: tuple[str, ...]
    profiles: tuple[str, ...]
    times: np.ndarray  # unix seconds at the end of each step
    values: np.ndarray
    quantities: tuple[str, ...]

    def column(self, name: str) -> np.ndarray:
        """(instances, steps) of one quantity."""
        return self.values[..., self.quantities.index(name)]


def to_grid(wide: pd.DataFrame, quantities: list[str]) -> Grid:
    """Pivot a wide frame onto a complete (instance, step) grid; missing cells are NaN."""
    seconds = epoch_seconds(wide["timestamp"])
    steps = seconds // STEP_SECONDS
    instances = tuple(sorted(wide["instance"].astype(str).unique()))
    row = pd.Index(instances).get_indexer(wide["instance"].astype(str))
    first, last = int(steps.min()), int(steps.max())
    values = np.full((len(instances), last - first + 1, len(quantities)), np.nan)
    values[row, steps - first] = wide[quantities].to_numpy(np.float64)
    labels = wide.groupby("instance")["profile"].first() if "profile" in wide else {}
    profiles = tuple(profile_of(i, labels.get(i)) for i in instances)
    times = (np.arange(first, last + 1) * STEP_SECONDS).astype(np.int64)
    return Grid(instances, profiles, times, values, tuple(quantities))


def origins(grid: Grid, spec: BacktestSpec, encoder: int, horizon: int) -> np.ndarray:
    """Step indices where forecasts start: enough history behind, a full horizon ahead."""
    first = max(spec.context, encoder)
    return np.arange(first, grid.times.size - horizon + 1, spec.origin_every)


def tft_forecasts(bundle: ModelBundle, grid: Grid, at: np.ndarray) -> np.ndarray:
    """(origins, instances, horizon, targets, quantiles) from the fast path, NaN where the
    service would not serve the TFT.

    Each origin's encoder window goes through the service's cleaning (`forecaster.clean`:
    short gaps interpolated, long ones carried forward, an instance with too much of a target
    missing skipped) before the network sees it, as in the forecaster, so a gap in the history
    costs the TFT only the windows the service would not forecast either."""
    config = bundle.config
    predictor = FastPredictor(bundle)
    contract = load_contract()
    names = [*config.targets, *config.covariates]
    quantities = [contract[name] for name in names]
    columns = [grid.quantities.index(name) for name in names]
    targets = np.arange(len(config.targets))
    covariates = np.arange(len(config.targets), len(names))
    encoder = config.encoder_length
    minimum = max(int(config.min_encoder_length), Config().cycle.warmup_steps)
    settings = CleanConfig(context_steps=encoder, min_steps=minimum)
    row_of = {name: i for i, name in enumerate(grid.instances)}
    hosts = tuple(host_id(i) for i in grid.instances)
    shape = (len(grid.instances), config.horizon, len(config.targets), len(config.quantiles))
    out = np.full((at.size, *shape), np.nan)
    for k, origin in enumerate(tqdm(at, desc="tft", unit="origin", disable=None)):
        window = grid.values[:, origin - encoder : origin][..., columns].copy()
        end = pd.Timestamp(int(grid.times[origin - 1]), unit="s", tz="UTC")
        cleaned = clean_grid(grid.instances, window, quantities, end=end, config=settings)
        rows = np.array([row_of[i] for i in cleaned.instances], dtype=np.int64)
        usable = cleaned.lengths >= minimum
        if not usable.any():
            continue
        values = cleaned.values[usable]
        batch = Batch(
            end=int(grid.times[origin - 1]),
            targets=values[..., targets],
            covariates=values[..., covariates],
            lengths=cleaned.lengths[usable],
            profiles=tuple(grid.profiles[r] for r in rows[usable]),
            hosts=tuple(hosts[r] for r in rows[usable]),
        )
        out[k, rows[usable]] = predictor.predict(batch)
    return out


def baseline_forecasts(
    name: str, y: np.ndarray, at: np.ndarray, spec: BacktestSpec, *, horizon: int, quantiles
) -> np.ndarray:
    """(origins, instances, horizon, quantiles) of one baseline on one quantity."""
    baseline = BASELINES[name]
    return np.stack(
        [baseline.fit_predict(y[:, o - spec.context : o], horizon, quantiles) for o in at]
    )


def actuals(y: np.ndarray, at: np.ndarray, horizon: int) -> np.ndarray:
    """(origins, instances, horizon) of what happened after each origin."""
    return np.stack([y[:, o : o + horizon] for o in at])


def run_backtest(
    bundle: ModelBundle,
    grid: Grid,
    spec: BacktestSpec,
    forecasts: np.ndarray | None = None,
    served: np.ndarray | None = None,
) -> dict[str, Any]:
    """Scores of the TFT and every baseline on the same origins; JSON-ready.

    `forecasts`: the TFT's forecasts already made by `tft_forecasts` at `origins(grid, spec,
    ...)` (the retrainer checks them before scoring); computed here when not given. `served`:
    the service's forecasts at the same origins (`served_forecasts`), scored as `SERVED`.
    Every method is scored on the (origin, instance) pairs where every method has a forecast;
    `forecast_share` gives, per quantity, the share of pairs each method forecast and the
    share judged.
    """
    config = bundle.config
    quantiles = list(config.quantiles)
    at = origins(grid, spec, config.encoder_length, config.horizon)
    if at.size == 0:
        raise ValueError("the held-out history is too short for a single origin")
    started = time.monotonic()
    tft = tft_forecasts(bundle, grid, at) if forecasts is None else forecasts
    if tft.shape[:2] != (at.size, len(grid.instances)):
        raise ValueError(f"forecasts of shape {tft.shape} do not match {at.size} origins")
    if served is not None and served.shape[:2] != (at.size, len(grid.instances)):
        raise ValueError(f"served forecasts of shape {served.shape} do not match {at.size} origins")
    scores: dict[str, dict[str, Any]] = {}
    curves: dict[str, dict[str, Any]] = {}
    forecast_share: dict[str, dict[str, float]] = {}
    for t, quantity in enumerate(config.targets):
        y = actuals(grid.column(quantity), at, config.horizon)
        methods = {TFT: (tft[:, :, :, t], quantiles)}
        if served is not None:
            methods[SERVED] = (served[:, :, :, t], QUANTILES)
        for name in spec.baselines:
            forecast = baseline_forecasts(
                name, grid.column(quantity), at, spec, horizon=config.horizon, quantiles=quantiles
            )
            methods[name] = (forecast, quantiles)
        # every method is judged on the same (origin, instance) pairs: those where all forecast
        made = {name: np.isfinite(f).all(axis=(-2, -1)) for name, (f, _) in methods.items()}
        judged = np.logical_and.reduce(list(made.values()))
        y = np.where(judged[:, :, None], y, np.nan)
        forecast_share[quantity] = {name: float(m.mean()) for name, m in made.items()}
        forecast_share[quantity]["judged"] = float(judged.mean())
        for name, (forecast, probs) in methods.items():
            kept = np.where(judged[:, :, None, None], forecast, 0.0)
            scores.setdefault(name, {})[quantity] = _scores(y, kept, probs)
            curves.setdefault(name, {})[quantity] = _curves(y, kept, probs)
    return {
        "origins": int(at.size),
        "instances": len(grid.instances),
        "first_origin": _iso(grid.times[at[0] - 1]),
        "last_origin": _iso(grid.times[at[-1] - 1]),
        "spec": asdict(spec),
        "quantiles": quantiles,
        "scores": scores,
        "curves": curves,
        "forecast_share": forecast_share,
        "summary": summarise(scores, config.targets),
        "seconds": round(time.monotonic() - started, 1),
    }


def _iso(seconds: float) -> str:
    return pd.Timestamp(int(seconds), unit="s", tz="UTC").isoformat()


def _scores(y, forecast, quantiles) -> dict[str, dict[str, float]]:
    return {
        name: {k: _finite(v) for k, v in asdict(s).items()}
        for name, s in score_horizons(y, forecast, quantiles).items()
    }


def _curves(y, forecast, quantiles) -> dict[str, list[float]]:
    """NQL and coverage at every step ahead, for the plots."""
    per_step = [
        score_horizons(y[..., h : h + 1], forecast[..., h : h + 1, :], quantiles)["all"]
        for h in range(y.shape[-1])
    ]
    return {
        "nql": [_finite(s.nql) for s in per_step],
        "coverage": [_finite(s.coverage) for s in per_step],
    }


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def summarise(scores: dict[str, Any], targets) -> dict[str, Any]:
    """TFT NQL over the best baseline and over seasonal naive at 8 h; TFT coverage per horizon.
    With `SERVED` scores, the same for the served forecast (`served_*` keys)."""
    summary: dict[str, Any] = {}
    for method, prefix in ((TFT, ""), (SERVED, "served_")):
        if method not in scores:
            continue
        summary.update(_ratios(scores, method, targets, prefix))
        summary[f"{method}_coverage"] = {
            h: _mean([scores[method][q][h]["coverage"] for q in targets])
            for h in (*HORIZONS, "all")
        }
    return summary


def _mean(values: list[float | None]) -> float:
    """Mean of the values that are not None (NaN, without a warning, when none is)."""
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else float("nan")


def _ratios(scores: dict[str, Any], method: str, targets, prefix: str) -> dict[str, Any]:
    """`method`'s NQL at 8 h over the best baseline's and over seasonal naive's."""
    best_ratio: dict[str, Any] = {}
    seasonal_ratio: dict[str, float] = {}
    for quantity in targets:
        own = scores[method][quantity]["8h"]["nql"]
        baselines = {
            name: s[quantity]["8h"]["nql"]
            for name, s in scores.items()
            if name not in (TFT, SERVED) and s[quantity]["8h"]["nql"] is not None
        }
        best = min(baselines, key=lambda n: baselines[n]) if baselines else None
        if own is not None and best is not None:
            best_ratio[quantity] = {"ratio": own / baselines[best], "best": best}
        seasonal = baselines.get("seasonal_naive_24h")
        if own is not None and seasonal:
            seasonal_ratio[quantity] = own / seasonal
    return {
        f"{prefix}nql_8h_vs_best_baseline": best_ratio,
        f"{prefix}nql_8h_vs_seasonal_naive": seasonal_ratio,
    }


def served_forecasts(
    wide: pd.DataFrame,
    grid: Grid,
    at: np.ndarray,
    *,
    predictor: Any,
    config: Config,
    targets: tuple[str, ...],
    horizon: int,
) -> tuple[np.ndarray, dict[str, Any]]:
    """(origins, instances, horizon, targets, 3): what the service would have served at each
    origin of `at` (p10/p50/p90; NaN where it serves no forecast), and how it chose.

    The service's own path (`training.replay.Chain` with the window the guard holds, then
    `forecaster.clean.clean` and `forecaster.engine.forecast` with a `Guard` and the ramp
    outlooks) runs from the first step with the service's warm-up of history, at the guard's
    spacing and at every origin, so at each origin the guard has scored the past only.
    """
    chain = Chain.of(config, predictor)
    step = chain.step
    guard = Guard(guard_params(config.guard, step), step) if config.guard.enabled else None
    long = guard is not None or bool(chain.ramps)
    context = config.contract().grid.context_steps
    chain = replace(
        chain, context_steps=held_steps(config.guard.history, step, long=long, context=context)
    )
    warmup = config.cycle.warmup_steps
    wide = wide.sort_values(["timestamp", "instance"], kind="stable").reset_index(drop=True)
    seconds = epoch_seconds(wide["timestamp"])
    at_times = grid.times[at - 1]
    cycles = at_times
    if guard is not None:
        spacing = guard.params.spacing_steps * step
        first = int(grid.times[0]) + (warmup - 1) * step
        cycles = np.union1d(np.arange(first, int(at_times[-1]) + 1, spacing), at_times)
    wanted = {int(t): k for k, t in enumerate(at_times)}
    row_of = {name: i for i, name in enumerate(grid.instances)}
    profiles = dict(zip(grid.instances, grid.profiles, strict=True))
    steps = min(horizon, chain.horizon)
    out = np.full((at.size, len(grid.instances), horizon, len(targets), len(QUANTILES)), np.nan)
    methods: dict[str, Counter[str]] = {name: Counter() for name in targets}
    lo = np.searchsorted(seconds, cycles - chain.context_steps * step, side="right")
    hi = np.searchsorted(seconds, cycles, side="right")
    started = time.monotonic()
    for c in tqdm(range(cycles.size), desc="served", unit="cycle", disable=None):
        if hi[c] <= lo[c]:
            continue
        end = int(cycles[c])
        cleaned = clean(
            wide.iloc[lo[c] : hi[c]],
            chain.quantities,
            pd.Timestamp(end, unit="s", tz="UTC"),
            CleanConfig(context_steps=chain.context_steps, min_steps=warmup, step_seconds=step),
        )
        result = forecast(
            cleaned,
            chain.targets,
            profiles,
            predictor,
            min_steps=warmup,
            horizon=chain.horizon,
            step=step,
            season=chain.season,
            guard=guard,
            ramps=chain.ramps,
        )
        k = wanted.get(end)
        if k is None or not result.instances:
            continue
        rows = np.array([row_of[i] for i in result.instances], dtype=np.int64)
        for t, name in enumerate(targets):
            if name not in result.forecasts:
                continue
            shown = result.available[name]
            values = np.where(shown[:, None, None], result.forecasts[name][:, :steps], np.nan)
            out[k, rows, :steps, t] = values
            methods[name].update(str(m) for m in result.methods[name][shown])
    info = {
        "guard": guard is not None,
        "cycles": int(cycles.size),
        "seconds": round(time.monotonic() - started, 1),
        "switches": guard.switches if guard is not None else 0,
        "methods": {
            name: {m: round(n / max(sum(c.values()), 1), 3) for m, n in sorted(c.items())}
            for name, c in methods.items()
        },
    }
    return out, info


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.backtest", description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="held-out history (parquet)")
    source.add_argument(
        "--prometheus.url",
        dest="prometheus.url",
        metavar="URL",
        help="fetch the history from this Prometheus instead (with --start, --end)",
    )
    parser.add_argument(
        "--start",
        type=_time,
        help="with --prometheus.url: first time, RFC 3339 or unix seconds (default: --end - 7d)",
    )
    parser.add_argument(
        "--end",
        type=_time,
        help="with --prometheus.url: last time, RFC 3339 or unix seconds (default: now)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="with --prometheus.url: directory for the fetched server_metrics.parquet "
        "(default: <report>-history beside --report, else a new temporary directory)",
    )
    for path in PROMETHEUS_LEAVES:
        if path != "prometheus.url":
            parser.add_argument(
                "--" + path.replace("_", "-"),
                dest=path,
                metavar="VALUE",
                help=describe(FetchSettings, path) or "as the retrainer's (docs/TRAINING.md)",
            )
    parser.add_argument("--models.dir", dest="models_dir", type=Path, default=Path("models"))
    parser.add_argument("--version", help="model version (default: the current one)")
    parser.add_argument("--origin-every", type=int, default=24, help="steps between origins")
    parser.add_argument("--baselines", default=",".join(DEFAULT_BASELINES))
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (default 0: torch's default)"
    )
    parser.add_argument(
        "--no-served",
        action="store_true",
        help="skip the replay of the service's own path (the served method, guard included)",
    )
    parser.add_argument(
        "--attach", action="store_true", help="store as the version's backtest.json"
    )
    parser.add_argument("--report", type=Path, help="write a markdown report (plots beside it)")
    parser.add_argument("--incidents", type=Path, help="incidents.parquet for fan charts")
    return parser


_UNIX = re.compile(r"^\d+(\.\d+)?$")
_LATEST_S = 9.2e9  # pandas' last representable second (year 2262)


def _time(text: str) -> float:
    """Unix seconds of an RFC 3339 time (`2026-11-20T00:00:00Z`; without an offset: UTC) or of
    a number of unix seconds."""
    if _UNIX.match(text.strip()):
        value = float(text)
    else:
        try:
            stamp = pd.Timestamp(text.strip())
        except (ValueError, TypeError, OverflowError):
            stamp = pd.NaT
        if pd.isna(stamp):
            raise argparse.ArgumentTypeError(
                f"{text!r} is neither an RFC 3339 time (2026-11-20T00:00:00Z) nor unix seconds"
            )
        if stamp.tzinfo is None:
            stamp = stamp.tz_localize("UTC")
        value = stamp.timestamp()
    if not 0 <= value < _LATEST_S:
        raise argparse.ArgumentTypeError(f"{text!r} is outside 1970 to 2262")
    return value


class FetchSettings(BaseModel):
    """The Prometheus to fetch from (the retrainer's settings class and flags) and the
    `history` (seconds) fetched up to the range's end."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prometheus: PrometheusSettings = PrometheusSettings()
    history: float = Field(gt=0)


@dataclass(frozen=True)
class PrometheusRange:
    """Where and what to fetch: the Prometheus settings, with the range as their `history`
    ending at `end` (both on the 5-minute grid)."""

    config: FetchSettings
    start: int
    end: int

    @property
    def url(self) -> str:
        return self.config.prometheus.url


def _prometheus_range(
    parser: argparse.ArgumentParser, args: argparse.Namespace, now: float
) -> PrometheusRange | None:
    """The validated Prometheus source, None with `--data`; a bad setting exits 2 naming it."""
    settings = {p: getattr(args, p) for p in PROMETHEUS_LEAVES}
    if args.data is not None:
        given = [f"--{f}" for f in ("start", "end", "out") if getattr(args, f) is not None]
        given += [_flag(p) for p, v in settings.items() if v is not None]
        if given:
            parser.error(f"{', '.join(given)}: only with --prometheus.url, not with --data")
        return None
    end = now if args.end is None else args.end
    start = end - DEFAULT_SPAN_S if args.start is None else args.start
    if not start < end:
        parser.error(f"--start ({_iso(start)}) must be before --end ({_iso(end)})")
    first = -(-int(start) // STEP_SECONDS) * STEP_SECONDS
    last = int(end) // STEP_SECONDS * STEP_SECONDS
    if last < first:
        parser.error("--start to --end holds no 5-minute step")
    tree = layered(settings, {}, "", PROMETHEUS_LEAVES)
    try:
        config = validated(FetchSettings, {**tree, "history": last - first + STEP_SECONDS})
        read_secret(config.prometheus.bearer_token_file)
    except ConfigError as exc:
        key = {"token_file": "prometheus.bearer_token_file"}.get(exc.key, exc.key)
        message = str(exc).split(": ", 1)[-1].removeprefix("Value error, ")
        parser.error(f"{_flag(key) if '.' in key else 'the Prometheus settings'}: {message}")
    return PrometheusRange(config, first, last)


def _flag(path: str) -> str:
    return "--" + path.replace("_", "-")


class BacktestError(Exception):
    """A backtest that cannot run: `code` 2 for its input (too little history, no series), 1
    when the history could not be fetched."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def needed_steps(spec: BacktestSpec, encoder: int, horizon: int) -> int:
    """Steps of history a backtest of `MIN_ORIGINS` origins needs."""
    return max(spec.context, encoder) + horizon + (MIN_ORIGINS - 1) * spec.origin_every


def _hours(steps: int) -> str:
    return f"{steps * STEP_SECONDS / 3600:.1f} h"


def _check_length(spec: BacktestSpec, model, have: int, what: str) -> None:
    """Refuse (exit 2) a history of `have` steps too short for `MIN_ORIGINS` origins."""
    need = needed_steps(spec, model.encoder_length, model.horizon)
    if have >= need:
        return
    raise BacktestError(
        2,
        f"too little history: {what} is {_hours(have)} long; a backtest needs at least "
        f"{_hours(need)}: {_hours(max(spec.context, model.encoder_length))} before the first "
        f"origin, {_hours(model.horizon)} ahead of the last and {MIN_ORIGINS} origins "
        f"{spec.origin_every * STEP_SECONDS // 60} min apart. Give an earlier --start (or more "
        "history) or a smaller --origin-every.",
    )


def fetch(
    source: PrometheusRange, quantities: list[str], transport: httpx.BaseTransport | None = None
) -> pd.DataFrame:
    """The WIDE history of `quantities` over the range, by the contract's PromQL expressions:
    `training.history.fetch_history`, the retrainer's too (a partial answer refuses, as there).
    A source that fails or holds no series raises `BacktestError`."""
    log.info(
        "fetching %d quantities from %s, %s to %s",
        len(quantities),
        source.url,
        _iso(source.start),
        _iso(source.end),
    )
    try:
        wide = fetch_history(
            source.config.prometheus,
            load_contract(),
            quantities,
            source.end,
            source.config.history,
            transport=transport,
        )
    except HistoryError as exc:
        code = 2 if exc.reason == "bad_history" else 1
        raise BacktestError(
            code, f"cannot fetch from {source.url}: {exc.reason}: {exc.detail}"
        ) from None
    if wide.empty:
        raise BacktestError(
            2,
            f"{source.url} has no series of any contract quantity from {_iso(source.start)} to "
            f"{_iso(source.end)}: does it scrape node_exporter, and does it keep that much "
            "history (--storage.tsdb.retention.time)?",
        )
    empty = [n for n in quantities if n in wide and not wide[n].notna().any()]
    if empty:
        log.warning("no data for %s: scored n/a", ", ".join(empty))
    return wide


def _history_dir(args: argparse.Namespace) -> Path:
    if args.out is not None:
        return args.out
    if args.report is not None:
        return args.report.with_name(f"{args.report.stem}-history")
    return Path(tempfile.mkdtemp(prefix="backtest-history-"))


def _fetch_to_file(
    args: argparse.Namespace, source: PrometheusRange, spec: BacktestSpec, model
) -> Path:
    """Fetch what the model and the service read and write it as `server_metrics.parquet`."""
    _check_length(spec, model, (source.end - source.start) // STEP_SECONDS + 1, "--start to --end")
    service = Config()
    contract = service.contract()
    names = [*model.targets, *model.covariates]
    wanted = (*service.targets(contract), *service.covariate_quantities(contract))
    names += [q.name for q in wanted if q.name not in names]
    wide = fetch(source, names)
    out = _history_dir(args)
    out.mkdir(parents=True, exist_ok=True)
    path = out / HISTORY_FILE
    wide.to_parquet(path, index=False)
    log.info("history saved to %s (rerun with --data %s)", path, out)
    return path


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2: bad arguments or too little history, 1: the
    history could not be fetched)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.origin_every < 1:
        parser.error("--origin-every must be at least 1 step")
    if args.threads < 0:
        parser.error("--threads must not be negative")
    source = _prometheus_range(parser, args, time.time())
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(message)s")
    warnings.filterwarnings("ignore", module="pytorch_forecasting|lightning|sklearn")
    try:
        _run(args, source, argv)
    except BacktestError as exc:
        log.error("%s", exc)
        return exc.code
    return 0


def _run(args: argparse.Namespace, source: PrometheusRange | None, argv: list[str] | None) -> None:
    contract = load_contract()
    registry = Registry(args.models_dir)
    version = args.version or registry.current()
    if version is None:
        raise SystemExit(f"no model version in {args.models_dir}; train one or pass --version")
    registry.verify(version, contract.version)
    bundle = load_bundle(registry.path(version))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    config = bundle.config
    quantities = [*config.targets, *config.covariates]
    spec = BacktestSpec(origin_every=args.origin_every, baselines=tuple(args.baselines.split(",")))
    data = str(args.data)
    if source is not None:
        args.data = _fetch_to_file(args, source, spec, config)
        data = f"{source.url} from {_iso(source.start)} to {_iso(source.end)}"
    wide = read_history(args.data, quantities)
    if wide.empty:
        raise BacktestError(2, f"too little history: {args.data} holds no rows")
    grid = to_grid(wide, quantities)
    _check_length(spec, config, grid.times.size, f"the history in {args.data}")
    started = time.monotonic()
    served, served_info = (None, None) if args.no_served else _served(bundle, wide, grid, spec)
    forecasts = tft_forecasts(
        bundle, grid, origins(grid, spec, config.encoder_length, config.horizon)
    )
    _warn_unforecast(forecasts)
    result = run_backtest(bundle, grid, spec, forecasts, served)
    result.update(
        version=version,
        data=data,
        history_file=str(args.data),
        served=served_info,
        seconds=round(time.monotonic() - started, 1),  # the served replay and the TFT included
        command=shlex.join(["python", "-m", "training.backtest", *(argv or sys.argv[1:])]),
    )
    if args.attach:
        registry.amend(version, "backtest.json", result, contract.version)
    if args.report:
        from training.backtest_report import write_report

        write_report(result, bundle, grid, args.report, args.incidents)
        with args.report.open("a") as report:
            report.write("\n".join(_served_section(result)) + "\n")
    log.info("backtest of %s: %s", version, json.dumps(result["summary"], indent=1))


def _warn_unforecast(forecasts: np.ndarray) -> None:
    """Say so when the TFT gave no forecast for some (origin, instance) pairs: the service's
    cleaning skipped them (too much of a target missing in the 24 h window, or too little
    history), so the TFT's scores leave them out."""
    missing = ~np.isfinite(forecasts).all(axis=(2, 3, 4))
    if missing.any():
        log.warning(
            "the TFT gave no forecast for %d of %d (origin, instance) pairs: the service's "
            "cleaning skips their window (a target missing in more than %.0f%% of it, or too "
            "little history), so the TFT's scores leave them out",
            int(missing.sum()),
            missing.size,
            100 * CleanConfig().max_missing_ratio,
        )


def _served(bundle: ModelBundle, wide: pd.DataFrame, grid: Grid, spec: BacktestSpec):
    """`served_forecasts` at the backtest's origins with the service's defaults, or (None,
    None) for a model whose quantiles are not the service's p10/p50/p90."""
    config = bundle.config
    if tuple(config.quantiles) != QUANTILES:
        log.warning("the model's quantiles %s are not the service's: no served", config.quantiles)
        return None, None
    return served_forecasts(
        wide,
        grid,
        origins(grid, spec, config.encoder_length, config.horizon),
        predictor=FastPredictor(bundle),
        config=Config(),
        targets=config.targets,
        horizon=config.horizon,
    )


def _served_section(result: dict[str, Any]) -> list[str]:
    """What the report says about the served method and where the history came from."""
    lines = ["", "## History and the served forecast", ""]
    source = f"`{result['history_file']}`"
    if result["data"] != result["history_file"]:
        source = f"{result['data']}, saved as {source} (rerun with `--data` on its directory)"
    lines += [f"History: {source}.", ""]
    info = result.get("served")
    if not info:
        return lines
    methods = (
        "the guard weighing the TFT and the baselines per series"
        if info["guard"]
        else "the TFT where it serves, the heuristic elsewhere"
    )
    lines += [
        "`served` is what the forecaster would have served at each origin with its default "
        f"settings: its own path (cleaning, {methods}, the ramp outlooks) replayed over the "
        f"history in {info['cycles']} cycles ({info['seconds']} s), hourly and at every "
        "origin, so that at each origin the guard has learnt from the history before it only. "
        "Share of the (instance, origin) forecasts by the method with the most weight:",
        "",
    ]
    for quantity, shares in info["methods"].items():
        cells = ", ".join(f"{m} {_share(v)}" for m, v in shares.items()) or "none"
        lines.append(f"- {quantity}: {cells}")
    ratios = result["summary"].get("served_nql_8h_vs_best_baseline", {})
    if ratios:
        cells = ", ".join(f"{q} {r['ratio']:.2f} ({r['best']})" for q, r in ratios.items())
        lines += ["", f"`served` NQL at 8 h over the best baseline's: {cells}."]
    return lines


def _share(value: float) -> str:
    return "<1%" if 0 < value < 0.005 else f"{value:.0%}"


if __name__ == "__main__":
    sys.exit(main())
