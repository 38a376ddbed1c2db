"""Benchmark results -> `docs/BENCHMARKS.md`, `docs/benchmarks.json` and `docs/img/bench_*.png`.

The Markdown is generated from the JSON alone, so a run of one benchmark (`--only`) keeps the
other benchmarks' earlier results, each with the machine, command and date it was measured on.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

GOAL_SIGN = {"<=": "≤", ">=": "≥"}


def fmt(value: float | None, unit: str) -> str:
    """A measured value with its unit, or a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if unit == "bool":
        return "yes" if value else "no"
    if unit == "x":
        return f"{value:,.1f}x"
    if abs(value) >= 100 or float(value).is_integer():
        text = f"{value:,.0f}"
    elif abs(value) >= 1:
        text = f"{value:,.2f}"
    elif abs(value) >= 0.001 or value == 0:
        text = f"{value:.3f}"
    else:
        text = f"{value:.1e}"
    return f"{text} {unit}".strip()


def goal_text(row: dict[str, Any]) -> str:
    """`≤ 5 s`, `≥ 500 /s`, or a dash."""
    if row.get("goal_op") is None:
        return "—"
    if row["unit"] == "bool":
        return "yes"
    return f"{GOAL_SIGN[row['goal_op']]} {fmt(row['goal_value'], row['unit'])}"


def met_text(row: dict[str, Any]) -> str:
    """yes / **no** / a dash."""
    if row.get("met") is None:
        return "—"
    return "yes" if row["met"] else "**no**"


def load_text(load: list[float] | None) -> str:
    """The 1/5/15-minute load averages."""
    return " / ".join(f"{x:.1f}" for x in load) if load else "—"


def machine_text(machine: dict[str, Any]) -> str:
    """One line naming the machine."""
    return (
        f"{machine.get('cpu_model', '?')}, {machine.get('nproc', '?')} cores, "
        f"{machine.get('memory_gib', '?')} GiB, Python {machine.get('python', '?')}"
    )


def figure_table(figures: list[dict[str, Any]]) -> list[str]:
    """The figure rows of one benchmark as a Markdown table."""
    lines = ["| figure | goal | measured | met? | load 1/5/15 min |", "|---|---|---|---|---|"]
    for row in figures:
        measured = fmt(row["value"], row["unit"])
        if row.get("note"):
            measured = f"{measured} ({row['note']})" if row["value"] is not None else row["note"]
        lines.append(
            f"| {row['name']} | {goal_text(row)} | {measured} | {met_text(row)} | "
            f"{load_text(row.get('load'))} |"
        )
    return lines


def summary_table(results: dict[str, dict[str, Any]], order: list[str]) -> list[str]:
    """Every figure that has a goal, across benchmarks."""
    lines = ["| benchmark | figure | goal | measured | met? |", "|---|---|---|---|---|"]
    for name in order:
        result = results.get(name)
        if not result:
            continue
        for row in result["figures"]:
            if row.get("goal_op") is None and not row.get("note"):
                continue
            measured = fmt(row["value"], row["unit"]) if row["value"] is not None else row["note"]
            lines.append(
                f"| {name} | {row['name']} | {goal_text(row)} | {measured} | {met_text(row)} |"
            )
    return lines


def _details(name: str, result: dict[str, Any]) -> list[str]:
    """Extra tables per benchmark (stages, scenarios)."""
    if name == "cycle" and result.get("rows"):
        return _cycle_details(result["rows"])
    if name == "scrape" and result.get("rows"):
        lines = [
            "",
            "| scenario | samples | scrapes/s | p50 | p90 | p99 | max | errors | cycles | load |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in result["rows"]:
            lines.append(
                f"| {row['scenario']} | {row['samples']:,} | {row['rate_per_s']:,.0f} | "
                f"{row['p50_ms']:.1f} ms | {row['p90_ms']:.1f} ms | {row['p99_ms']:.1f} ms | "
                f"{row['max_ms']:.1f} ms | {row['errors']} | {row['cycles_during']} | "
                f"{load_text(row.get('load'))} |"
            )
        return lines
    if name == "websocket" and result.get("rows"):
        row = result["rows"][0]
        return [
            "",
            f"{row['connected']} clients connected; {row['delivered']:,} of "
            f"{row['expected']:,} messages reached the reading clients; `Hub.publish` itself "
            f"(rendering `/metrics` and the message, included in the latency) took "
            f"{row['publish_p50_ms']:.0f} ms (p50); "
            + (
                f"the stalled clients were gone after {row['stalled_gone_after_messages']} "
                f"messages, {row['dropped_by_server']} of them for a full queue (the others by "
                "uvicorn's WebSocket ping timeout, 20 s + 20 s); "
                if row.get("stalled_gone_after_messages")
                else f"the {row['stalled']} stalled clients were still connected at the end; "
            )
            + f"server peak RSS {row['server_peak_mib']:.0f} MiB.",
        ]
    return []


def _cycle_details(rows: list[dict[str, Any]]) -> list[str]:
    stages = ("fetch", "clean", "forecast", "score", "build", "publish")
    header = " | ".join(stages)
    lines = [
        "",
        f"| servers | cycle | wall | {header} | peak RSS |",
        "|---|---|---|" + "---|" * len(stages) + "---|",
    ]
    for row in rows:
        for kind in ("first", "steady"):
            part = row[kind]
            cells = " | ".join(f"{part['stages'].get(s, 0.0):.2f}" for s in stages)
            lines.append(
                f"| {row['servers']:,} | {kind} | {part['wall_s']:.2f} s | {cells} | "
                f"{row['peak_rss_mib'] / 1024:.2f} GiB |"
            )
    lines.append("")
    lines.append(
        "Stages in seconds: fetch = PromQL `query_range` of the 10 contract quantities, "
        "parsing and the window merge; clean; forecast = TFT fast path + heuristic; score = "
        "online accuracy; build = risk, breach outlook and the snapshot; publish = rendering "
        "`/metrics` (+ gzip) and the WebSocket message. Setup per size (not part of the cycle): "
        + "; ".join(
            f"{r['servers']:,} servers: history {r['setup']['history_s']:.1f} s, OpenMetrics "
            f"{r['setup']['openmetrics_s']:.1f} s, promtool backfill of "
            f"{r['gauge_samples']:,} samples {r['setup']['backfill_s']:.1f} s, model load "
            f"{r['model_load_s']:.1f} s"
            for r in rows
        )
        + "."
    )
    return lines


def markdown(results: dict[str, dict[str, Any]], order: list[str], titles: dict[str, str]) -> str:
    """The whole `docs/BENCHMARKS.md`."""
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python -m bench` from `docs/benchmarks.json`; do not edit by hand. "
        "`python -m bench` reruns everything (about 15-25 minutes on 2 cores), "
        "`python -m bench --only NAME` one benchmark (the others keep their earlier figures), "
        "`--quick` a small smoke run (its report goes to a temporary directory). "
        "Ratios are measured in one run, one path right after the other; tests never assert "
        "wall-clock times. The machine is shared with other work: the load averages "
        "(1/5/15 min, `os.getloadavg()`) next to each figure say how noisy it was; on 2 "
        "cores a load above 2 means the benchmark got only part of the CPU.",
        "",
        "## Goals",
        "",
        *summary_table(results, order),
        "",
    ]
    for name in order:
        result = results.get(name)
        if not result:
            continue
        lines += [f"## {titles.get(name, name)}", ""]
        lines += [
            f"Machine: {machine_text(result.get('machine', {}))}. Command: "
            f"`{result.get('command', '?')}`. Date: {result.get('date', '?')} (UTC), "
            f"{result.get('duration_s', 0):.0f} s. Load before / after: "
            f"{load_text(result.get('load_before'))} → {load_text(result.get('load_after'))}.",
            "",
        ]
        if result.get("about"):
            lines += [result["about"], ""]
        lines += figure_table(result["figures"])
        lines += _details(name, result)
        for image in result.get("images", []):
            lines += ["", f"![{name}](img/{image})"]
        for note in result.get("notes", []):
            lines += ["", f"Note: {note}"]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# --- plots ----------------------------------------------------------------------------------


def plots(results: dict[str, dict[str, Any]], directory: Path) -> dict[str, list[str]]:
    """PNG plots per benchmark; returns benchmark -> image file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    made: dict[str, list[str]] = {}
    makers = {
        "render": _plot_render,
        "inference": _plot_inference,
        "cycle": _plot_cycle,
        "scrape": _plot_scrape,
        "websocket": _plot_websocket,
    }
    for name, maker in makers.items():
        result = results.get(name)
        if not result or not result.get("rows"):
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        maker(ax, result)
        fig.tight_layout()
        filename = f"bench_{name}.png"
        fig.savefig(directory / filename, dpi=100)
        plt.close(fig)
        made[name] = [filename]
    return made


def _plot_render(ax: Any, result: dict[str, Any]) -> None:
    rows = result["rows"]
    samples = [r["samples"] for r in rows]
    ax.loglog(samples, [r["library_s"] for r in rows], "o-", label="generate_latest")
    ax.loglog(samples, [r["fast_s"] for r in rows], "o-", label="exporter.render")
    ax.axhline(0.5, color="grey", linestyle=":", label="goal at 20k samples: 0.5 s")
    ax.set_xlabel("samples in the exposition")
    ax.set_ylabel("render time (s)")
    ax.set_title("/metrics render time vs size")
    ax.legend()


def _plot_inference(ax: Any, result: dict[str, Any]) -> None:
    rows = result["rows"]
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["library_s"] for r in rows], 0.4, label="library")
    ax.bar([i + 0.2 for i in x], [r["fast_s"] for r in rows], 0.4, label="fast path")
    ax.set_xticks(list(x), [f"{r['servers']:,} servers" for r in rows])
    ax.set_yscale("log")
    ax.set_ylabel("seconds")
    ax.set_title("TFT inference: library predict() vs fast path")
    ax.legend()


def _plot_cycle(ax: Any, result: dict[str, Any]) -> None:
    stages = ("fetch", "clean", "forecast", "score", "build", "publish")
    rows = result["rows"]
    labels, bottoms, bars = [], [], {s: [] for s in stages}
    for row in rows:
        for kind in ("first", "steady"):
            labels.append(f"{row['servers']:,}\n{kind}")
            for s in stages:
                bars[s].append(row[kind]["stages"].get(s, 0.0))
    bottoms = [0.0] * len(labels)
    for s in stages:
        ax.bar(labels, bars[s], bottom=bottoms, label=s)
        bottoms = [b + v for b, v in zip(bottoms, bars[s], strict=True)]
    ax.axhline(5.0, color="grey", linestyle=":", label="goal at 1,000: 5 s")
    ax.set_ylabel("seconds")
    ax.set_title("forecast cycle time by stage vs fleet size")
    ax.legend(fontsize=8)


def _plot_scrape(ax: Any, result: dict[str, Any]) -> None:
    rows = result["rows"]
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["p50_ms"] for r in rows], 0.4, label="p50")
    ax.bar([i + 0.2 for i in x], [r["p99_ms"] for r in rows], 0.4, label="p99")
    ax.axhline(25.0, color="grey", linestyle=":", label="p99 goal 25 ms")
    ax.set_xticks(list(x), [f"{r['scenario']}\n{r['rate_per_s']:,.0f}/s" for r in rows])
    ax.set_ylabel("ms")
    ax.set_title(f"/metrics latency, {result.get('clients', 16)} scrapers")
    ax.legend()


def _plot_websocket(ax: Any, result: dict[str, Any]) -> None:
    row = result["rows"][0]
    after = row.get("clients_after") or []
    ax.plot(range(1, len(after) + 1), after, label="connected clients")
    ax.set_xlabel("messages published")
    ax.set_ylabel("clients")
    ax.set_title("WebSocket clients while publishing (stalled ones leave)")
    ax.legend()
