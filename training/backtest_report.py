"""Markdown report and PNG plots of a backtest (coverage and NQL per horizon, fan charts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from forecaster.features import host_id
from forecaster.model.fast import Batch, FastPredictor
from forecaster.model.tft import ModelBundle

GOAL_RATIO = 0.7
GOAL_COVERAGE = (0.75, 0.85)
LEAD_STEPS = 24  # fan charts start 2 h before the breach


def write_report(
    result: dict[str, Any], bundle: ModelBundle, grid: Any, path: Path, incidents: Path | None
) -> None:
    """Write `path` (markdown) and its plots into `path.parent / img`."""
    images = path.parent / "img"
    images.mkdir(parents=True, exist_ok=True)
    stem = path.stem.lower()
    figures = [_curve_plot(result, "coverage", images / f"{stem}_coverage.png")]
    figures.append(_curve_plot(result, "nql", images / f"{stem}_nql.png"))
    if incidents is not None and incidents.exists():
        figures += _fan_charts(bundle, grid, pd.read_parquet(incidents), images, stem)
    lines = [*_header(result), *_summary(result), *_tables(result)]
    lines += ["## Plots", ""]
    lines += [f"![{f.stem}](img/{f.name})" for f in figures]
    path.write_text("\n".join(lines) + "\n")


def _header(result: dict[str, Any]) -> list[str]:
    return [
        f"# Backtest of model `{result['version']}`",
        "",
        f"Held-out data `{result['data']}`: {result['instances']} instances, "
        f"{result['origins']} origins from {result['first_origin']} to {result['last_origin']} "
        f"(every {result['spec']['origin_every'] * 5} min), forecasts 8 h ahead; baselines read "
        f"{result['spec']['context'] * 5 / 60:g} h of history, the TFT its last 24 h. "
        f"Regenerate with `{result['command']}` ({result['seconds']} s).",
        "",
        "NQL is the TFT paper's normalised quantile loss (q-risk, 2·Σpinball/Σ|y|, mean over "
        "p10/p50/p90); WAPE scores the p50; coverage is the share of actual values inside "
        "p10-p90 (nominal 0.80). Lower NQL and WAPE are better.",
        "",
    ]


def _summary(result: dict[str, Any]) -> list[str]:
    summary = result["summary"]
    lines = [
        "## Against the goals",
        "",
        f"Goal: TFT NQL at 8 h at most {GOAL_RATIO}x the best baseline; p10-p90 coverage "
        f"within {GOAL_COVERAGE[0]:.2f}-{GOAL_COVERAGE[1]:.2f} at every horizon.",
        "",
        "| quantity | TFT / best baseline at 8 h | best baseline | TFT / seasonal naive 24 h "
        "at 8 h | goal met |",
        "|---|---|---|---|---|",
    ]
    for quantity, ratio in summary["nql_8h_vs_best_baseline"].items():
        seasonal = summary["nql_8h_vs_seasonal_naive"].get(quantity)
        met = "yes" if ratio["ratio"] <= GOAL_RATIO else "no"
        seasonal_text = f"{seasonal:.2f}" if seasonal is not None else "n/a"
        lines.append(
            f"| {quantity} | {ratio['ratio']:.2f} | {ratio['best']} | {seasonal_text} | {met} |"
        )
    coverage = summary["tft_coverage"]
    cells = ", ".join(f"{h}: {v:.2f}" for h, v in coverage.items())
    inside = all(GOAL_COVERAGE[0] <= v <= GOAL_COVERAGE[1] for v in coverage.values())
    lines += [
        "",
        f"TFT p10-p90 coverage (mean over quantities) {cells}: "
        f"{'inside' if inside else 'outside'} the goal band.",
        "",
    ]
    return lines


def _tables(result: dict[str, Any]) -> list[str]:
    lines = ["## Scores per quantity", ""]
    quantities = list(result["scores"]["tft"])
    for quantity in quantities:
        lines += [
            f"### {quantity}",
            "",
            "| method | NQL 30m | NQL 2h | NQL 8h | NQL all | WAPE 8h | coverage 8h | "
            "coverage all |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for method, scores in result["scores"].items():
            s = scores[quantity]
            cells = [
                s["30m"]["nql"],
                s["2h"]["nql"],
                s["8h"]["nql"],
                s["all"]["nql"],
                s["8h"]["wape"],
                s["8h"]["coverage"],
                s["all"]["coverage"],
            ]
            text = " | ".join("n/a" if c is None else f"{c:.3f}" for c in cells)
            lines.append(f"| {method} | {text} |")
        lines.append("")
    return lines


def _curve_plot(result: dict[str, Any], metric: str, path: Path) -> Path:
    figure = Figure(figsize=(8, 4.5))
    axis = figure.subplots()
    steps = np.arange(1, 97) * 5 / 60
    for method, per_quantity in result["curves"].items():
        values = np.array(
            [[np.nan if v is None else v for v in c[metric]] for c in per_quantity.values()],
            dtype=float,
        )
        axis.plot(
            steps,
            np.nanmean(values, axis=0),
            label=method,
            linewidth=2.5 if method == "tft" else 1.2,
        )
    if metric == "coverage":
        axis.axhspan(*GOAL_COVERAGE, color="green", alpha=0.1, label="goal band")
        axis.axhline(0.8, color="grey", linestyle=":")
    axis.set_xlabel("hours ahead")
    axis.set_ylabel("p10-p90 coverage" if metric == "coverage" else "NQL")
    axis.set_title(f"{metric.upper()} per horizon, mean over quantities")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


def _fan_charts(bundle, grid, incidents: pd.DataFrame, images: Path, stem: str) -> list[Path]:
    """One chart per incident kind: the forecast made 2 h before the breach."""
    paths = []
    predictor = FastPredictor(bundle)
    config = bundle.config
    for kind, rows in incidents.groupby("kind"):
        for row in rows.itertuples():
            chart = _fan_chart(predictor, config, grid, row)
            if chart is not None:
                path = images / f"{stem}_fan_{kind}.png"
                chart.savefig(path, dpi=110)
                paths.append(path)
                break
    return paths


def _fan_chart(predictor, config, grid, incident):
    if incident.instance not in grid.instances or incident.quantity not in config.targets:
        return None
    breach = int(pd.Timestamp(incident.breach).timestamp())
    origin = int(np.searchsorted(grid.times, breach)) - LEAD_STEPS + 1
    if origin < config.encoder_length or origin + config.horizon > grid.times.size:
        return None
    n = grid.instances.index(incident.instance)
    window = grid.values[n : n + 1, origin - config.encoder_length : origin]
    targets = [grid.quantities.index(t) for t in config.targets]
    covariates = [grid.quantities.index(c) for c in config.covariates]
    batch = Batch(
        int(grid.times[origin - 1]),
        window[..., targets],
        window[..., covariates],
        np.array([config.encoder_length]),
        (grid.profiles[n],),
        (host_id(incident.instance),),
    )
    t = config.targets.index(incident.quantity)
    forecast = predictor.predict(batch)[0, :, t]
    series = grid.column(incident.quantity)[n]
    hours = (grid.times - grid.times[origin - 1]) / 3600
    past = slice(origin - 144, origin)
    future = slice(origin, origin + config.horizon)
    figure = Figure(figsize=(8, 4.5))
    axis = figure.subplots()
    axis.plot(hours[past], series[past], color="black", label="actual")
    axis.plot(hours[future], series[future], color="black", linestyle="--", label="actual (after)")
    axis.fill_between(hours[future], forecast[:, 0], forecast[:, -1], alpha=0.3, label="p10-p90")
    axis.plot(hours[future], forecast[:, config.quantiles.index(0.5)], label="p50")
    axis.axhline(incident.threshold, color="red", linestyle=":", label="breach threshold")
    axis.axvline((breach - grid.times[origin - 1]) / 3600, color="red", alpha=0.5)
    axis.set_title(f"{incident.kind} on {incident.instance}: forecast made 2 h before the breach")
    axis.set_xlabel("hours from the forecast origin")
    axis.set_ylabel(incident.quantity)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure
