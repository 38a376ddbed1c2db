"""PNG plots of `python -m training.evaluation` (matplotlib, no pyplot state).

* a fan chart around one incident of each kind (the median precursor length among those the
  replay kept): the actual series, the forecast band from the first early alert (or from 1 h
  before the breach), the critical threshold, the breach, our alert episodes shaded, the first
  alert of every baseline marked, and below it the 30 min and 8 h breach probabilities;
* the lead-time histogram of every method, stacked by kind;
* precision against recall of every method, one panel per kind, with the goal's corner;
* calibration per horizon: p10-p90 coverage, and the shares below p10, p50 and p90.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from forecaster.grid import STEP_SECONDS
from training.evaluation import alerts as ar

KIND_COLOURS = {
    "memory_leak": "tab:blue",
    "filesystem_fill": "tab:green",
    "cpu_saturation": "tab:red",
    "latency_degradation": "tab:purple",
}


def draw_plots(
    result: dict[str, Any], extra: dict[str, Any], images: Path, stem: str
) -> list[Path]:
    """Write every plot into `images` as `<stem>_*.png`; their paths in report order."""
    figures = _fan_charts(result, extra, images, stem)
    figures.append(_save(_lead_histograms(result), images / f"{stem}_lead_times.png"))
    figures.append(_save(_precision_recall(result), images / f"{stem}_precision_recall.png"))
    figures.append(_save(_calibration(extra["state"]), images / f"{stem}_coverage.png"))
    return figures


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _lead(minutes: float | None) -> str:
    if minutes is None:
        return "n/a"
    return f"{minutes / 60:.1f} h" if minutes >= 60 else f"{minutes:.0f} min"


def _lead_histograms(result: dict[str, Any]) -> Figure:
    methods = result["methods"]
    columns = 2
    rows = -(-len(methods) // columns)
    figure = Figure(figsize=(11, 2.6 * rows))
    axes = figure.subplots(rows, columns, squeeze=False, sharex=True)
    bins = np.arange(0, 8 * 60 + 1, 15) / 60
    for axis, (name, entry) in zip(axes.flat, methods.items(), strict=False):
        stacks, labels, colours = [], [], []
        for kind, m in entry["per_kind"].items():
            stacks.append(np.asarray(m["leads_minutes"], dtype=float) / 60)
            labels.append(kind)
            colours.append(KIND_COLOURS.get(kind, "grey"))
        axis.hist(stacks, bins=bins, stacked=True, label=labels, color=colours)
        overall = entry["overall"]
        axis.axvline(2, color="black", linestyle=":", linewidth=1)
        axis.set_title(
            f"{name}: recall {_fmt(overall['recall'])}, "
            f"median {_lead(overall['lead_minutes']['median'])}",
            fontsize=9,
        )
        axis.set_ylabel("incidents")
    for axis in axes.flat[len(methods) :]:
        axis.set_visible(False)
    for axis in axes[-1]:
        axis.set_xlabel("lead time (h, breach - first alert)")
    axes.flat[0].legend(fontsize=7)
    return figure


def _precision_recall(result: dict[str, Any]) -> Figure:
    """Every method's operating point per kind (recall, precision), marker size by lead."""
    methods = result["methods"]
    kinds = list(next(iter(methods.values()))["per_kind"])
    figure = Figure(figsize=(11, 3.2 * -(-len(kinds) // 2)))
    axes = figure.subplots(-(-len(kinds) // 2), 2, squeeze=False)
    markers = "os^vD<>P*X"
    for axis, kind in zip(axes.flat, kinds, strict=False):
        axis.axhspan(0.9, 1.02, xmin=0.92 / 1.04, color="tab:green", alpha=0.12, label="goal")
        for k, (name, entry) in enumerate(methods.items()):
            m = entry["per_kind"][kind]
            if m["recall"] is None or m["precision"] is None:
                continue
            lead = m["lead_minutes"]["median"] or 0.0
            axis.scatter(
                m["recall"],
                m["precision"],
                s=20 + lead / 2,
                marker=markers[k % len(markers)],
                label=f"{name} ({_lead(m['lead_minutes']['median'])})",
            )
        axis.set_xlim(-0.02, 1.02)
        axis.set_ylim(-0.02, 1.02)
        axis.set_title(kind, fontsize=9)
        axis.set_xlabel("recall")
        axis.set_ylabel("precision")
        axis.legend(fontsize=6, loc="center", framealpha=0.6)
    for axis in axes.flat[len(kinds) :]:
        axis.set_visible(False)
    return figure


def _calibration(state: Any) -> Figure:
    figure = Figure(figsize=(11, 4.2))
    left, right = figure.subplots(1, 2)
    hours = np.arange(1, 97) * 5 / 60
    for quantity, counts in state.calibration.items():
        n = np.maximum(counts[3], 1)
        line = left.plot(hours, (counts[2] - counts[0]) / n, label=quantity)[0]
        for j, style in enumerate((":", "-", "--")):
            right.plot(hours, counts[j] / n, linestyle=style, color=line.get_color(), linewidth=1)
    left.axhline(0.8, color="grey", linestyle=":")
    left.set_title("p10-p90 coverage per horizon (nominal 0.8)", fontsize=10)
    left.set_xlabel("hours ahead")
    left.set_ylabel("share of actual values inside")
    left.legend(fontsize=7)
    for level in (0.1, 0.5, 0.9):
        right.axhline(level, color="grey", linestyle=":", linewidth=0.8)
    right.set_title("share of actual values below p10 (:), p50 (-), p90 (--)", fontsize=10)
    right.set_xlabel("hours ahead")
    return figure


def _fan_charts(result, extra, images: Path, stem: str) -> list[Path]:
    state, data = extra["state"], extra["data"]
    paths = []
    by_kind: dict[str, list[str]] = {}
    for key in state.fans:
        by_kind.setdefault(key.split("|")[0], []).append(key)
    length = _precursor_seconds(data)
    for kind, stored in sorted(by_kind.items()):
        keys = sorted(stored, key=lambda k: length.get(tuple(k.split("|")[1:]), 0.0))
        key = keys[len(keys) // 2]
        figure = _fan_chart(key, state, data, extra["methods"], result)
        paths.append(_save(figure, images / f"{stem}_fan_{kind}.png"))
    return paths


def _precursor_seconds(data) -> dict[tuple[str, str], float]:
    """(instance, breach unix seconds as text) -> precursor length in seconds."""
    rows = data.incidents
    epoch = pd.Timestamp(0, tz="UTC")
    breach = (rows["breach"] - epoch) // pd.Timedelta(seconds=1)
    start = (rows["precursor_start"] - epoch) // pd.Timedelta(seconds=1)
    return {
        (str(i), str(int(b))): float(b - s)
        for i, b, s in zip(rows["instance"], breach, start, strict=True)
    }


def _fan_chart(key: str, state, data, methods, result) -> Figure:
    kind, instance, breach_text = key.split("|")
    breach = int(breach_text)
    quantity = next(q for q, k in result["data"]["kinds"].items() if k == kind)
    row = state.instances.index(instance)
    threshold = result["thresholds"][quantity]
    firing = {m.name: m.firing[quantity][row] for m in methods}
    ours = ar.episodes(firing["forecast_rules"][None, :], state.times)
    early = [s for s in ours.start if breach - ar.LOOKBACK <= s < breach]
    origins, forecasts = state.fan_times[key], state.fans[key]
    origin = int(early[0]) if early else breach - ar.HOUR
    k = int(np.clip(np.searchsorted(origins, origin), 0, len(origins) - 1))
    figure = Figure(figsize=(10, 6))
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
    column = data.grid.column(quantity)[row]
    span = (data.grid.times >= breach - 10 * ar.HOUR) & (data.grid.times <= breach + 2 * ar.HOUR)
    hours = (data.grid.times[span] - breach) / 3600
    top.plot(hours, column[span], color="black", linewidth=1.2, label="actual")
    ahead = (origins[k] + STEP_SECONDS * np.arange(1, forecasts.shape[1] + 1) - breach) / 3600
    top.fill_between(ahead, forecasts[k, :, 0], forecasts[k, :, 2], alpha=0.3, label="p10-p90")
    top.plot(ahead, forecasts[k, :, 1], color="tab:blue", label="p50")
    top.axhline(threshold, color="red", linestyle=":", label="critical threshold")
    _marks(top, bottom, firing, state.times, breach)
    _probabilities(bottom, state, quantity, row, breach)
    top.set_xlim(-10, 2)
    top.set_ylabel(quantity)
    top.set_title(
        f"{kind} on {instance}: forecast from {_lead((breach - origins[k]) / 60)} before the "
        "breach" + (" (first alert)" if early else " (no early alert)"),
        fontsize=10,
    )
    top.legend(fontsize=7, loc="upper left")
    return figure


def _marks(top, bottom, firing, times, breach: int) -> None:
    """Breach line, our alert episodes shaded, the first alert of every baseline ticked."""
    for axis in (top, bottom):
        axis.axvline(0, color="red", linewidth=1.5)
    found = ar.episodes(firing["forecast_rules"][None, :], times)
    for i, (s, e) in enumerate(zip(found.start, found.end, strict=True)):
        if e >= breach - 10 * ar.HOUR and s <= breach + 2 * ar.HOUR:
            label = (
                "forecast alert firing" if i == 0 or not top.get_legend_handles_labels() else None
            )
            top.axvspan(
                (s - breach) / 3600,
                (e + STEP_SECONDS - breach) / 3600,
                color="orange",
                alpha=0.2,
                label=label,
            )
    y = top.get_ylim()[1]
    for j, (name, values) in enumerate(firing.items()):
        if name.startswith("forecast_rules"):
            continue
        starts = ar.episodes(values[None, :], times).start
        early = [s for s in starts if breach - ar.LOOKBACK <= s <= breach + 2 * ar.HOUR]
        if early:
            top.plot(
                (early[0] - breach) / 3600,
                y,
                marker="v",
                linestyle="none",
                color=f"C{j + 2}",
                label=f"first {name}",
            )


def _probabilities(axis, state, quantity: str, row: int, breach: int) -> None:
    hours = (state.times - breach) / 3600
    inside = (hours >= -10) & (hours <= 2)
    for window, style in (("8h", "-"), ("30m", "--")):
        values = state.probability[quantity][window][row]
        axis.plot(hours[inside], values[inside], linestyle=style, label=f"P(breach) {window}")
    axis.axhline(0.5, color="grey", linestyle=":")
    axis.set_ylim(-0.02, 1.02)
    axis.set_ylabel("probability")
    axis.set_xlabel("hours from the breach")
    axis.legend(fontsize=7, loc="upper left")
