"""Replay of the service's forecast path with and without the guard, scored per series.

`python -m training.evaluation.guard --data DIR [--data DIR ...] --report docs/GUARD.md`
replays, for every history (the simulator's `server_metrics.parquet` layout, or a converted
real dataset), the forecaster's own path at hourly origins after a warm-up of `--warmup`
(default 3 days, the history the guard holds): `forecaster.clean.clean` on the window the
service holds, then `forecaster.engine.forecast` with the service's `Guard` and ramp outlooks
(`served`), and on the same origins the TFT alone, the service without the guard (`unguarded`:
the TFT where it serves, the heuristic elsewhere), seasonal naive 24 h with bands from its own
past errors (`seasonal_naive`) and the heuristic's damped trend (`heuristic`, the guard's third
candidate and the service's fallback on a 24 h window). Every contract quantity is a column of
the window, so a history without some of them feeds the model what the service would (absent
inputs as zeros).

Scores, per (series = instance x target quantity) and method: NQL (the TFT paper's q-risk,
`training.metrics.nql`) over all origins at 30 min, 2 h and 8 h and over the whole horizon;
p10-p90 coverage at the same horizons. The report gives per dataset and quantity the ratio to
seasonal naive (geometric mean over series), the share of series at most 1.0x seasonal naive
at every horizon, aggregate NQL ratios, coverage, and how often the guard chose each method.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from exporter.snapshot import QUANTILES
from forecaster.clean import CleanConfig, clean
from forecaster.config import PrometheusSettings, load_config
from forecaster.engine import forecast
from forecaster.features import profile_of
from forecaster.grid import STEP_SECONDS
from forecaster.guard import Guard, guard_params
from forecaster.heuristic import heuristic_forecast
from forecaster.history_files import read_history
from forecaster.serving import ModelHolder
from forecaster.source import PrometheusSource
from forecaster.trend import ramp_rules
from training.metrics import HORIZONS, coverage, nql

log = logging.getLogger(__name__)
REPORTED = HORIZONS  # the scored horizons of training.metrics
METHODS = ("served", "tft", "unguarded", "seasonal_mean", "seasonal_naive", "heuristic")


@dataclass
class SeriesScores:
    """Forecasts and actual values of one series over every origin, per method."""

    actual: list[np.ndarray] = field(default_factory=list)  # (horizon,) per origin
    forecasts: dict[str, list[np.ndarray]] = field(default_factory=dict)  # method -> (H, 3)
    chosen: Counter[str] = field(default_factory=Counter)


def replay(
    wide: pd.DataFrame,
    config,
    predictor,
    *,
    warmup_steps: int,
    spacing_steps: int = 12,
) -> tuple[dict[tuple[str, str], SeriesScores], dict[str, Any]]:
    """Replay `wide` (WIDE frame of one history) and collect every series' forecasts."""
    contract = config.contract()
    step, horizon = contract.step_seconds, contract.grid.horizon_steps
    quantities = contract.quantities
    present = [q for q in config.targets(contract) if q.name in wide.columns]
    present = [q for q in present if wide[q.name].notna().any()]
    for q in quantities:
        if q.name not in wide.columns:
            wide[q.name] = np.nan
    held = int(config.guard.history // step)
    guard = Guard(guard_params(config.guard, step), step)
    ramps = ramp_rules(config, step)  # the ramp outlook serves where it takes over, as live
    times = pd.to_datetime(wide["timestamp"], utc=True)
    first = int(times.min().value // 1_000_000_000)
    last = int(times.max().value // 1_000_000_000)
    start = first + (warmup_steps - 1) * step
    start -= start % step
    origins = np.arange(start, last - horizon * step + 1, spacing_steps * step)
    profiles = {name: profile_of(name, None) for name in wide["instance"].unique()}
    series: dict[tuple[str, str], SeriesScores] = {}
    grid = wide.assign(seconds=times.astype("int64") // 1_000_000_000)
    lookup = {
        (inst, q.name): group.set_index("seconds")[q.name]
        for inst, group in grid.groupby("instance")
        for q in present
    }
    seconds_started = time.monotonic()
    for origin in origins:
        window = grid[(grid["seconds"] > origin - held * step) & (grid["seconds"] <= origin)]
        cleaned = clean(
            window.drop(columns="seconds"),
            quantities,
            pd.Timestamp(int(origin), unit="s", tz="UTC"),
            CleanConfig(context_steps=held, min_steps=config.cycle.warmup_steps, step_seconds=step),
        )
        guarded = forecast(
            cleaned,
            present,
            profiles,
            predictor,
            min_steps=config.cycle.warmup_steps,
            horizon=horizon,
            step=step,
            season=contract.grid.season_steps,
            guard=guard,
            ramps=ramps,
        )
        column = {name: i for i, name in enumerate(cleaned.quantities)}
        targets_at = origin + step * np.arange(1, horizon + 1)
        for quantity in present:
            name = quantity.name
            y = np.where(
                cleaned.observed[:, :, column[name]], cleaned.values[:, :, column[name]], np.nan
            )
            options = guarded.candidates[name]
            context = contract.grid.context_steps  # 24 h, as before
            fallback = heuristic_forecast(y[:, -context:], horizon, QUANTILES)
            for r, instance in enumerate(cleaned.instances):
                if not guarded.available[name][r]:
                    continue
                actual = lookup[(instance, name)].reindex(targets_at).to_numpy(dtype=float)
                item = series.setdefault((instance, name), SeriesScores())
                item.actual.append(actual)
                tft = options.get("tft")
                tft_row = tft[r] if tft is not None and np.isfinite(tft[r]).all() else None
                parts = {
                    "served": guarded.forecasts[name][r],
                    "unguarded": tft_row if tft_row is not None else fallback[r],
                    "seasonal_mean": options["seasonal_mean"][r],
                    "seasonal_naive": options["seasonal_naive"][r],
                    "heuristic": options["heuristic"][r],
                    "tft": tft_row,
                }
                for method, values in parts.items():
                    empty = np.full((horizon, 3), np.nan)
                    item.forecasts.setdefault(method, []).append(
                        empty if values is None else values
                    )
                item.chosen[str(guarded.methods[name][r])] += 1
    info = {
        "origins": len(origins),
        "first_origin": _iso(origins[0]) if len(origins) else None,
        "last_origin": _iso(origins[-1]) if len(origins) else None,
        "seconds": round(time.monotonic() - seconds_started, 1),
        "switches": guard.switches,
        "quantities": [q.name for q in present],
    }
    return series, info


def score_series(item: SeriesScores) -> dict[str, dict[str, float]]:
    """Per method: NQL and coverage at the reported horizons and NQL over the whole horizon."""
    y = np.stack(item.actual)
    out: dict[str, dict[str, float]] = {}
    for method, values in item.forecasts.items():
        f = np.stack(values)
        if not np.isfinite(f).all(axis=(1, 2)).any():
            continue
        ok = np.isfinite(f).all(axis=(1, 2))
        scores: dict[str, float] = {"nql_all": nql(y[ok], f[ok], QUANTILES)}
        for label, steps in REPORTED.items():
            yk, fk = y[ok, steps - 1], f[ok, steps - 1]
            scores[f"nql_{label}"] = nql(yk[:, None], fk[:, None, :], QUANTILES)
            scores[f"coverage_{label}"] = coverage(yk, fk[:, 0], fk[:, 2])
        scores["origins"] = float(ok.sum())
        out[method] = scores
    return out


def summarise(
    scores: dict[tuple[str, str], dict[str, dict[str, float]]],
    chosen: dict[tuple[str, str], Counter[str]],
) -> dict[str, Any]:
    """Per quantity and over all series: ratios to seasonal naive, shares, coverage, choices."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for key in scores:
        groups.setdefault(key[1], []).append(key)
    groups["all"] = list(scores)
    out: dict[str, Any] = {}
    for group, keys in groups.items():
        entry: dict[str, Any] = {"series": len(keys)}
        for method in METHODS:
            rows = [
                scores[k] for k in keys if method in scores[k] and "seasonal_naive" in scores[k]
            ]
            if not rows:
                continue
            ratios = {
                label: [
                    r[method][f"nql_{label}"] / r["seasonal_naive"][f"nql_{label}"]
                    for r in rows
                    if r["seasonal_naive"][f"nql_{label}"] > 0
                ]
                for label in (*REPORTED, "all")
            }
            at_most = [
                all(
                    r[method][f"nql_{label}"] <= r["seasonal_naive"][f"nql_{label}"] + 1e-12
                    for label in (*REPORTED, "all")
                )
                for r in rows
            ]
            entry[method] = {
                "series": len(rows),
                "geomean_ratio": {k: _geomean(v) for k, v in ratios.items()},
                "share_at_most_1x": float(np.mean(at_most)),
                "mean_nql": {
                    label: float(np.mean([r[method][f"nql_{label}"] for r in rows]))
                    for label in (*REPORTED, "all")
                },
                "coverage": {
                    label: float(np.nanmean([r[method][f"coverage_{label}"] for r in rows]))
                    for label in REPORTED
                },
            }
        total: Counter[str] = Counter()
        for k in keys:
            total.update(chosen[k])
        entry["chosen"] = {m: round(c / max(sum(total.values()), 1), 3) for m, c in total.items()}
        out[group] = entry
    return out


def _aggregate(per_series: dict[str, Any], group: str, method: str) -> str:
    """Summed NQL of `method` over summed NQL of seasonal naive, at 8 h and over the horizon."""
    rows = [
        scores
        for key, scores in per_series.items()
        if (group == "all" or key.split("/", 1)[1] == group)
        and method in scores
        and "seasonal_naive" in scores
    ]
    if not rows:
        return "n/a"
    parts = [
        sum(r[method][f"nql_{h}"] for r in rows)
        / sum(r["seasonal_naive"][f"nql_{h}"] for r in rows)
        for h in ("8h", "all")
    ]
    return f"{parts[0]:.2f} / {parts[1]:.2f}"


def plot_fans(arrays: Path, keys: Sequence[str], out: Path, origin_index: int = -1) -> Path:
    """Fan charts (p10-p90 and p50) of the served forecast and the TFT against the actual
    values, one panel per series key `instance|quantity`, at one origin of the replay."""
    from matplotlib.figure import Figure  # only the report needs matplotlib

    data = np.load(arrays)
    figure = Figure(figsize=(6.0 * len(keys), 3.6), layout="constrained")
    axes = figure.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys, strict=True):
        actual = data[f"{key}|actual"][origin_index]
        steps = np.arange(1, actual.shape[-1] + 1) * STEP_SECONDS / 3600  # hours ahead
        for method, color in (("tft", "tab:red"), ("served", "tab:blue")):
            band = data[f"{key}|{method}"][origin_index]
            ax.fill_between(steps, band[:, 0], band[:, 2], color=color, alpha=0.2)
            ax.plot(steps, band[:, 1], color=color, label=f"{method} p50, p10-p90")
        ax.plot(steps, actual, color="black", linewidth=1.2, label="actual")
        ax.set_title(key.replace("|", " / "))
        ax.set_xlabel("hours ahead")
        ax.legend(fontsize=7)
    figure.savefig(out, dpi=90)
    return out


def _geomean(values: Sequence[float]) -> float:
    finite = [v for v in values if np.isfinite(v) and v > 0]
    return float(np.exp(np.mean(np.log(finite)))) if finite else float("nan")


def _iso(seconds: float) -> str:
    return pd.Timestamp(int(seconds), unit="s", tz="UTC").isoformat()


def render(results: dict[str, Any], meta: dict[str, Any]) -> str:
    """The markdown report."""
    lines = [
        "# The forecast guard on real and simulated series",
        "",
        meta["header"],
        "",
        "Regenerate:",
        "",
        "```sh",
        *meta["commands"],
        "```",
        "",
        "Ratios are NQL of the method over NQL of seasonal naive 24 h on the same series and "
        "origins (geometric mean over series; below 1 is better). `at most 1x` is the share of "
        "series whose NQL is at most seasonal naive's at 30 min, 2 h, 8 h and over the whole "
        "horizon. Coverage: share of actual values inside p10-p90 (nominal 0.80).",
        "",
    ]
    for dataset, result in results.items():
        lines += [f"## {dataset}", "", result["description"], ""]
        lines += [
            "| quantity | method | series | ratio 30m | ratio 2h | ratio 8h | ratio all "
            "| at most 1x | aggregate 8h / all | coverage 30m / 2h / 8h | NQL 8h (mean) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for group, entry in result["summary"].items():
            for method in METHODS:
                if method not in entry:
                    continue
                e = entry[method]
                g, c = e["geomean_ratio"], e["coverage"]
                agg = _aggregate(result.get("per_series", {}), group, method)
                bold = "**" if method == "served" else ""
                lines.append(
                    f"| {group} | {bold}{method}{bold} | {e['series']} | {g['30m']:.2f} | "
                    f"{g['2h']:.2f} | {g['8h']:.2f} | {g['all']:.2f} | "
                    f"{e['share_at_most_1x']:.0%} | {agg} | {c['30m']:.2f} / {c['2h']:.2f} / "
                    f"{c['8h']:.2f} | {e['mean_nql']['8h']:.3f} |"
                )
        lines += ["", "Methods the guard served (share of series x origins):", ""]
        for group, entry in result["summary"].items():
            chosen = ", ".join(f"{m} {s:.0%}" for m, s in sorted(entry["chosen"].items()))
            lines.append(f"- {group}: {chosen}")
        info = result["info"]
        lines += [
            "",
            f"Replay: {info['origins']} hourly origins from {info['first_origin']} to "
            f"{info['last_origin']} in {info['seconds']} s; the guard switched methods "
            f"{info['switches']} times.",
            "",
        ]
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluation.guard",
        description=__doc__,
        epilog="Any other flag is a forecaster setting, e.g. --guard.power 4.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", action="append", default=[], help="history dir or parquet")
    parser.add_argument(
        "--prometheus.url",
        dest="prometheus_url",
        help="score your own fleet: every contract quantity from this Prometheus",
    )
    parser.add_argument("--start", type=pd.Timestamp, help="with --prometheus.url: range start")
    parser.add_argument("--end", type=pd.Timestamp, help="with --prometheus.url: range end")
    parser.add_argument("--notes", type=Path, help="markdown appended to the report")
    parser.add_argument(
        "--render-only", type=Path, help="rebuild the report from this --json output, no replay"
    )
    parser.add_argument(
        "--fan",
        nargs=4,
        action="append",
        metavar=("NPZ", "KEYS", "ORIGIN", "PNG"),
        help="with --render-only: fan charts of KEYS (instance|quantity,...) at origin index "
        "ORIGIN from an --arrays file",
    )
    parser.add_argument("--name", action="append", help="a title per --data (default: path)")
    parser.add_argument("--describe", action="append", help="a sentence per --data")
    parser.add_argument("--models.dir", dest="models_dir", default="models")
    parser.add_argument("--warmup-days", type=float, default=3.0)
    parser.add_argument("--report", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--arrays", type=Path, help="also write every forecast to this .npz")
    parser.add_argument("--header", default="")
    parser.add_argument("--command", action="append", default=[], help="a line for the report")
    return parser


def main(argv: list[str] | None = None) -> int:
    args, settings = _parser().parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.render_only:
        return _render_only(args)
    config = load_config(
        ["--model.dir", args.models_dir, "--model.device", "cpu", "--state.dir", "", *settings],
        {},
    )
    model = ModelHolder(config.model, config.contract().version).check()
    if model is None:
        log.error("no model could be loaded from %s", args.models_dir)
        return 1
    sources: list[str] = list(args.data)
    if args.prometheus_url:
        if args.start is None or args.end is None:
            log.error("--prometheus.url needs --start and --end")
            return 2
        sources.append(args.prometheus_url)
    if not sources:
        log.error("give --data or --prometheus.url")
        return 2
    results = {
        _title(args.name, k, path): _evaluate(args, k, path, config, model.predictor)
        for k, path in enumerate(sources)
    }
    meta = {
        "header": args.header or f"Model `{model.version}`.",
        "commands": args.command or ["python -m training.evaluation.guard " + " ".join(argv or [])],
    }
    if args.json:
        saved = {"results": results, "meta": meta}
        args.json.write_text(json.dumps(saved, indent=1, sort_keys=True) + "\n")
    if args.report:
        notes = args.notes.read_text() if args.notes else ""
        args.report.write_text(render(results, meta) + notes)
    return 0


def _title(names: list[str] | None, k: int, default: str) -> str:
    return names[k] if names and k < len(names) else default


def _evaluate(args: argparse.Namespace, k: int, path: str, config, predictor) -> dict[str, Any]:
    """Replay and score one source (a history path or the Prometheus URL)."""
    contract = config.contract()
    if path == args.prometheus_url:
        expressions = {q.name: q.expr for q in contract.quantities}
        with PrometheusSource(PrometheusSettings(url=path)) as source:
            wide = source.fetch_history(expressions, args.start.timestamp(), args.end.timestamp())
    else:
        schema = set(pd.read_parquet(_file(path)).columns)
        wide = read_history(path, [q.name for q in contract.quantities if q.name in schema])
    warmup = int(args.warmup_days * 86_400 // contract.step_seconds)
    series, info = replay(wide, config, predictor, warmup_steps=warmup)
    scores = {key: score_series(item) for key, item in series.items()}
    if args.arrays:
        _save_arrays(args.arrays.with_suffix(f".{k}.npz"), series)
    chosen = {key: item.chosen for key, item in series.items()}
    result = {
        "description": _title(args.describe, k, ""),
        "summary": summarise(scores, chosen),
        "info": info,
        "per_series": {
            f"{i}/{q}": {m: {s: round(v, 5) for s, v in d.items()} for m, d in sc.items()}
            for (i, q), sc in scores.items()
        },
    }
    log.info("%s: %s", _title(args.name, k, path), json.dumps(result["summary"]["all"]))
    return result


def _render_only(args: argparse.Namespace) -> int:
    """The report again from a `--json` output (no replay)."""
    if not args.report:
        log.error("--render-only needs --report")
        return 2
    saved = json.loads(args.render_only.read_text())
    if "results" not in saved:  # a file of results alone
        saved = {"results": saved, "meta": {}}
    meta = {
        "header": args.header or saved["meta"].get("header", ""),
        "commands": args.command or saved["meta"].get("commands", []),
    }
    notes = args.notes.read_text() if args.notes else ""
    figures = ""
    for npz, keys, origin, png in args.fan or []:
        path = plot_fans(Path(npz), keys.split(","), Path(png), int(origin))
        figures += f"\n![{path.stem}]({path.relative_to(args.report.parent)})\n"
    args.report.write_text(render(saved["results"], meta) + figures + notes)
    return 0


def _save_arrays(path: Path, series: dict[tuple[str, str], SeriesScores]) -> None:
    """Every series' actual values and forecasts per method, for offline analysis."""
    arrays: dict[str, np.ndarray] = {}
    for (instance, quantity), item in series.items():
        key = f"{instance}|{quantity}"
        arrays[f"{key}|actual"] = np.stack(item.actual)
        for method, values in item.forecasts.items():
            arrays[f"{key}|{method}"] = np.stack(values)
    np.savez_compressed(path, **arrays)


def _file(path: str) -> Path:
    p = Path(path)
    return p / "server_metrics.parquet" if p.is_dir() else p


if __name__ == "__main__":
    raise SystemExit(main())
