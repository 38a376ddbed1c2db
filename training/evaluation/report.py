"""Markdown report of `python -m training.evaluation` (early warning on incidents).

The plots it embeds are drawn by `training.evaluation.plots` into `img/` beside the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.evaluation.plots import draw_plots

OURS = "forecast_rules"
GOAL_RECALL = 0.9
GOAL_PRECISION = 0.9
GOAL_LEAD_MINUTES = 120.0


def write_report(result: dict[str, Any], extra: dict[str, Any], path: Path) -> None:
    """Write `path` (markdown) and its plots into `path.parent / img`."""
    images = path.parent / "img"
    images.mkdir(parents=True, exist_ok=True)
    stem = path.stem.lower()
    figures = draw_plots(result, extra, images, stem)
    lines = [*_header(result), *_goal(result), *_findings(result), *_overall(result)]
    lines += _per_kind(result)
    lines += _per_shape(result)
    lines += [*_tuning(result), *_definitions(result), *_replay_notes(result)]
    lines += ["## Plots", ""]
    lines += [f"![{f.stem}](img/{f.name})\n" for f in figures]
    path.write_text("\n".join(lines) + "\n")


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _lead(minutes: float | None) -> str:
    if minutes is None:
        return "n/a"
    return f"{minutes / 60:.1f} h" if minutes >= 60 else f"{minutes:.0f} min"


def _header(result: dict[str, Any]) -> list[str]:
    data, tune, replay = result["data"], result["tune_data"], result["replay"]
    counts = ", ".join(f"{k} {v}" for k, v in data["incidents_by_kind"].items())
    machine = result["machine"]
    dirty = " (working tree with uncommitted changes)" if result["git_dirty"] else ""
    span = result["model_training"].get("data") or {}
    same = _tuned_on_training(result)
    return [
        "# Early warning on labelled incidents",
        "",
        f"Model `{result['model_version']}` (trained on `{span.get('source')}`, "
        f"{span.get('start')} to {span.get('end')}), replayed through the forecaster's own path "
        "at every 5-minute origin of a simulator history it was not trained on: seed "
        f"{data['seed']}, {data['servers']} servers, {data['start']} to {data['end']} "
        f"({data['days']} days), incidents by kind: {counts}. Baselines tuned on seed "
        f"{tune['seed']} ({tune['servers']} servers, {tune['start']} to {tune['end']}"
        + (", the model's training period" if same else "")
        + "). Forecast alert rules applied as written in "
        f"`{result['rules_file']}` (no tuning on the evaluation data).",
        "",
        f"Generated {result['generated']} at git revision `{result['git_revision']}`{dirty} on "
        f"{machine['cpu']} ({machine['cpu_count']} cores, torch {machine['torch']} with "
        f"{machine['torch_threads']} thread(s), {machine['platform']}). Replay: "
        f"{replay['origins']} origins x {replay['instances']} instances in "
        f"{replay['seconds']:.0f} s ({replay['ms_per_origin']:.0f} ms per origin)"
        + (
            f"; this report was rebuilt from the cached replays in {result['seconds']:.0f} s."
            if replay.get("from_cache")
            else f"; whole run {result['seconds']:.0f} s."
        ),
        "",
        "Regenerate:",
        "",
        "```sh",
        data["command"].replace("python ", ".venv/bin/python ", 1),
        tune["command"].replace("python ", ".venv/bin/python ", 1),
        result["command"].replace("python ", ".venv/bin/python ", 1),
        "```",
        "",
    ]


def _tuned_on_training(result: dict[str, Any]) -> bool:
    """Whether the tuning history spans the model's training period (an optimistic tuning)."""
    span = result["model_training"].get("data") or {}
    tune = result["tune_data"]
    return [str(span.get(k)).replace(" ", "T") for k in ("start", "end")] == [
        tune["start"],
        tune["end"],
    ]


def _goal(result: dict[str, Any]) -> list[str]:
    ours = result["methods"][OURS]
    lines = [
        "## Against the goal",
        "",
        f"Goal: recall at least {GOAL_RECALL} at precision at least {GOAL_PRECISION}, median "
        f"lead time at least {_lead(GOAL_LEAD_MINUTES)}. Forecast rules as shipped:",
        "",
        "| kind | recall | precision | median lead | recall met | precision met | lead met | "
        "precursor (first visible change to breach) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    precursors = result["data"].get("precursor_minutes", {})
    for kind, m in [*ours["per_kind"].items(), ("overall", ours["overall"])]:
        lead = m["lead_minutes"]["median"]
        cells = [
            _yes(m["recall"], GOAL_RECALL),
            _yes(m["precision"], GOAL_PRECISION),
            _yes(lead, GOAL_LEAD_MINUTES),
        ]
        p = precursors.get(kind)
        span = f"{_lead(p['min'])} - {_lead(p['max'])}, median {_lead(p['median'])}" if p else ""
        lines.append(
            f"| {kind} | {_fmt(m['recall'])} | {_fmt(m['precision'])} | {_lead(lead)} | "
            + " | ".join(cells)
            + f" | {span} |"
        )
    return [*lines, "", *_shortfalls(result), "", *_best_per_kind(result), ""]


def _best_per_kind(result: dict[str, Any]) -> list[str]:
    """Per kind, the method with the highest recall among those at the precision goal."""
    lines = [
        "Best method per kind in this run (highest recall among the methods with precision at "
        f"least {GOAL_PRECISION}; ties: longer median lead):",
        "",
    ]
    methods = result["methods"]
    for kind in methods[OURS]["per_kind"]:
        rows = [
            (name, entry["per_kind"][kind])
            for name, entry in methods.items()
            if (entry["per_kind"][kind]["precision"] or 0.0) >= GOAL_PRECISION
        ]
        if not rows:
            lines.append(f"- {kind}: no method reaches precision {GOAL_PRECISION}.")
            continue
        name, m = max(
            rows, key=lambda r: (r[1]["recall"] or 0.0, r[1]["lead_minutes"]["median"] or 0.0)
        )
        lines.append(
            f"- {kind}: `{name}`, recall {_fmt(m['recall'])}, precision {_fmt(m['precision'])}, "
            f"median lead {_lead(m['lead_minutes']['median'])}."
        )
    return lines


def _findings(result: dict[str, Any]) -> list[str]:
    """Plain sentences computed from the results: what limits each method."""
    methods, replay = result["methods"], result["replay"]
    ours, critical = methods[OURS]["overall"], methods[f"{OURS}_critical_only"]["overall"]
    lines = [
        "## Findings",
        "",
        f"- As shipped, the forecast rules catch {ours['caught']} of {ours['incidents']} "
        f"incidents (recall {_fmt(ours['recall'])}) at precision {_fmt(ours['precision'])}, "
        f"median lead {_lead(ours['lead_minutes']['median'])}; {ours['late']} of their "
        f"{ours['episodes']} episodes start only after the breach (late). The critical rules "
        f"alone catch {critical['caught']}.",
    ]
    if all(r["op"] == ">" and r["threshold"] == 0.5 for r in result["rules"]):
        lines.append(
            "- Every forecast rule compares the breach probability with 0.5. "
            "`forecaster.risk.breach_probability` interpolates the CDF through p10, p50 and "
            "p90, so the probability exceeds 0.5 exactly when the p50 passes the critical "
            "threshold: these rules fire on the p50 alone, and the width of the band (or a "
            "calibration of it) does not change when they fire. In the fan charts the p50 "
            "stays level or heads back to normal during the ramps that precede a breach."
        )
    windows = replay.get("windows", {})
    if windows:
        shares = [w["equal_share"] for w in windows.values()]
        lines.append(
            f"- The 8 h and the 30 min breach probabilities are equal at {min(shares):.0%} to "
            f"{max(shares):.0%} of the (instance, origin) pairs: the forecast is riskiest within "
            "its first 30 minutes (flat or heading back to normal beyond), so the 8 h warning "
            "rule seldom fires before the 30 min critical one and the 8 h horizon adds little "
            "lead time."
        )
    lines += _calibration_finding(replay.get("calibration", {}))
    tuned = methods.get(f"{OURS}_tuned_probability")
    if tuned:
        m = tuned["overall"]
        thresholds = ", ".join(
            f"{result['data']['kinds'].get(q, q)} {p['probability_threshold']:g}"
            for q, p in tuned["params"].items()
        )
        lines.append(
            f"- With a probability threshold tuned per kind on the tuning history ({thresholds}) "
            f"the same rules reach recall {_fmt(m['recall'])} at precision "
            f"{_fmt(m['precision'])}, median lead {_lead(m['lead_minutes']['median'])}"
            + (
                "; the tuning history is the model's training data, so this line is optimistic."
                if _tuned_on_training(result)
                else " (tuned on the tuning fleet, which the model never saw)."
            )
        )
    lines += _overfit_finding(methods)
    lines += _precursor_finding(result)
    return [*lines, ""]


def _calibration_finding(calibration: dict[str, Any]) -> list[str]:
    if not calibration:
        return []
    cells = "; ".join(
        f"{q} " + " / ".join(f"{v['coverage']:.2f}" for v in per.values())
        for q, per in calibration.items()
    )
    horizons = " / ".join(next(iter(calibration.values())))
    last = list(next(iter(calibration.values())))[-1]
    below = "; ".join(f"{q} {per[last]['below'][1]:.2f}" for q, per in calibration.items())
    return [
        f"- p10-p90 coverage of the replayed forecasts at {horizons} (nominal 0.80): {cells}. "
        f"Share of actual values below the p50 at {last} (nominal 0.50): {below}."
    ]


def _overfit_finding(methods: dict[str, Any]) -> list[str]:
    """Tuned methods whose precision falls below the goal on the evaluation fleet."""
    drops = []
    for name, entry in methods.items():
        for kind, m in entry.get("tuning", {}).items():
            now = entry["per_kind"][kind]["precision"]
            if (m["precision"] or 0) >= GOAL_PRECISION and now is not None and now < GOAL_PRECISION:
                drops.append(f"`{name}` on {kind} ({m['precision']:.3f} -> {now:.3f})")
    if not drops:
        return []
    return [
        "- The tuning rule sets each threshold at the edge of the precision target on the "
        "tuning fleet; on the evaluation fleet (other hosts, other base levels) precision "
        "falls below it for: " + ", ".join(drops) + "."
    ]


def _per_shape(result: dict[str, Any]) -> list[str]:
    """Recall and median lead per kind and precursor shape, for our rules and the baselines."""
    methods = {n: m for n, m in result["methods"].items() if "per_shape" in m}
    if OURS not in methods:
        return []
    names = [n for n in methods if n != f"{OURS}_critical_only"]
    lines = [
        "## Per precursor shape",
        "",
        "What is and is not predictable: recall (median lead) per kind and shape of the "
        "precursor. `sudden` incidents step from normal to breach within one 5-minute step; "
        "they are left out of every other table's recall (an alert just before one still "
        "counts as true, one during it as late).",
        "",
        "| kind | shape | incidents | " + " | ".join(f"`{n}`" for n in names) + " |",
        "|---|---|---|" + "---|" * len(names),
    ]
    for kind, shapes in methods[OURS]["per_shape"].items():
        for shape, first in shapes.items():
            cells = []
            for name in names:
                m = methods[name]["per_shape"].get(kind, {}).get(shape)
                cells.append(
                    "n/a"
                    if m is None
                    else f"{_fmt(m['recall'])} ({_lead(m['lead_minutes']['median'])})"
                )
            lines.append(f"| {kind} | {shape} | {first['incidents']} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _precursor_finding(result: dict[str, Any]) -> list[str]:
    precursors = result["data"].get("precursor_minutes", {})
    short = [k for k, p in precursors.items() if p["max"] < GOAL_LEAD_MINUTES + 1]
    if not short:
        return []
    text = ", ".join(f"{k} (at most {_lead(precursors[k]['max'])})" for k in short)
    return [
        f"- The precursors of {text} are no longer than the lead-time goal: nothing in the "
        "data changes earlier, so no method here can warn of them 2 h ahead without "
        "alerting on healthy hosts."
    ]


def _yes(value: float | None, goal: float) -> str:
    return "n/a" if value is None else ("yes" if value >= goal else "**no**")


def _shortfalls(result: dict[str, Any]) -> list[str]:
    """Plain sentences on where the shipped rules miss the goal."""
    ours = result["methods"][OURS]["per_kind"]
    out = []
    for kind, m in ours.items():
        misses = []
        if m["recall"] is not None and m["recall"] < GOAL_RECALL:
            misses.append(f"recall {m['recall']:.2f} ({m['caught']}/{m['incidents']})")
        if m["precision"] is not None and m["precision"] < GOAL_PRECISION:
            misses.append(f"precision {m['precision']:.2f} ({m['false']} false episodes)")
        lead = m["lead_minutes"]["median"]
        if lead is not None and lead < GOAL_LEAD_MINUTES:
            misses.append(f"median lead {_lead(lead)}")
        if misses:
            out.append(f"- {kind}: short of the goal on " + ", ".join(misses) + ".")
    return out or ["- Every kind meets the goal."]


def _row(name: str, entry: dict[str, Any], m: dict[str, Any]) -> str:
    lead = m["lead_minutes"]
    spread = f"{_lead(lead['p25'])} - {_lead(lead['p75'])}" if lead["p25"] is not None else "n/a"
    return (
        f"| {name} | {_fmt(m['recall'])} ({m['caught']}/{m['incidents']}) | "
        f"{_fmt(m['precision'])} ({_fmt(m.get('precision_strict'))}) | "
        f"{_lead(lead['median'])} | {spread} | "
        f"{_fmt(m['false_per_node_day'], 3)} | {m['true']} / {m['late']} / {m['false']} |"
    )


_TABLE = [
    "| method | recall (caught/incidents) | precision (late as false) | median lead | "
    "lead p25 - p75 | "
    "false alerts per node-day | episodes true / late / false |",
    "|---|---|---|---|---|---|---|",
]


def _overall(result: dict[str, Any]) -> list[str]:
    lines = ["## All kinds together", "", *_TABLE]
    for name, entry in result["methods"].items():
        lines.append(_row(f"`{name}`", entry, entry["overall"]))
    lines += ["", "Methods:", ""]
    lines += [f"- `{name}`: {entry['label']}" for name, entry in result["methods"].items()]
    return [*lines, ""]


def _per_kind(result: dict[str, Any]) -> list[str]:
    lines = ["## Per incident kind", ""]
    kinds = list(next(iter(result["methods"].values()))["per_kind"])
    for kind in kinds:
        lines += [f"### {kind}", "", *_TABLE]
        for name, entry in result["methods"].items():
            lines.append(_row(f"`{name}`", entry, entry["per_kind"][kind]))
        lines.append("")
    return lines


def _tuning(result: dict[str, Any]) -> list[str]:
    lines = [
        "## Tuned parameters (chosen on the tuning history)",
        "",
        "| method | kind | parameters | tuning recall | tuning precision | tuning median lead |",
        "|---|---|---|---|---|---|",
    ]
    kinds = result["data"]["kinds"]
    for name, entry in result["methods"].items():
        for quantity, params in entry["params"].items():
            kind = kinds.get(quantity, quantity)
            m = entry.get("tuning", {}).get(kind)
            text = ", ".join(f"{k} {v:g}" for k, v in params.items())
            if m is None:
                continue
            lines.append(
                f"| `{name}` | {kind} | {text} | {_fmt(m['recall'])} | "
                f"{_fmt(m['precision'])} | {_lead(m['lead_minutes']['median'])} |"
            )
    return [*lines, ""]


def _definitions(result: dict[str, Any]) -> list[str]:
    d = result["definitions"]
    rules = result["rules"]
    lines = [
        "## Definitions",
        "",
        "- Alert episode: per instance and quantity, a maximal run of 5-minute origins at which "
        "the alert fires; for the forecast rules warning and critical both count (one episode "
        "while either fires); `forecast_rules_critical_only` counts the critical rules alone.",
        f"- Caught: an episode of the incident's instance and quantity started in "
        f"[B - {d['lookback_s'] // 3600} h, B), B the breach time; lead time = B - start of "
        "the first such episode. An alert at or after B does not count.",
        f"- True episode: a breach of its instance and quantity at or after its start, no later "
        f"than {d['lookahead_s'] // 3600} h after it or while it is still firing. Late episode: it "
        f"starts while an incident of its instance and quantity is in breach (from B to the "
        f"incident's end plus {d['grace_s'] // 60} min, the simulator's recovery phase): not "
        "counted as false, not counted as caught. Precision = (true + late) / episodes; false "
        "alerts per node-day = false episodes / (instances x days over which episodes are judged).",
        f"- Scored incidents: breach at least {d['lookback_s'] // 3600} h after the first origin "
        "and no later than the last one; judged episodes: starting at least "
        f"{d['lookahead_s'] // 3600} h before the last origin. The rest are counted as excluded "
        "in `evaluation.json`.",
        "- `for:`: the condition must hold at every origin over the `for` duration, i.e. at "
        "ceil(for / 5 min) + 1 consecutive origins. Prometheus evaluates rules every minute, but "
        "the forecaster's window ends on the 5-minute grid, so its breach probabilities change "
        "once per step and the minute-by-minute evaluation fires at the same origin. The delay of "
        "the real pipeline (cycle up to 60 s, scrape and rule intervals) is not modelled: real "
        "lead times are shorter by about 1-2 min.",
        f"- Tuning rule (every baseline, and the optional tuned probability line): per quantity, "
        f"the candidate with the highest recall among those with precision at least "
        f"{d['target_precision']} on the tuning history (ties: longer median lead, then fewer "
        "false episodes); the highest F1 when none reaches it. Candidates: threshold = factor x "
        f"the critical threshold, factor {d['factors'][0]:g} to 1.5 in steps of 0.01, then to "
        f"{d['factors'][1]:g} in steps of 0.05, "
        f"`for:` {', '.join(f'{s / 60:g}m' for s in d['for_options_s'])}.",
        "- `predict_linear(x[W], H) > threshold`: least squares over the last W of the 5-minute "
        "series (origin included), extrapolated H past the origin, as PromQL does. node-mixin's "
        "`NodeFilesystemSpaceFillingUp` uses `predict_linear(avail[6h], 4*60*60) < 0` together "
        "with a current-level condition (available space below 15-40 %); here the level "
        "condition is left out and the extrapolated utilisation is compared with a tuned "
        "threshold instead, for every quantity.",
        "",
        "Forecast rules replayed (parsed from the rules file):",
        "",
        "| alert | severity | expression | for |",
        "|---|---|---|---|",
    ]
    for r in rules:
        expr = (
            f'forecaster_breach_probability{{quantity="{r["quantity"]}",window="{r["window"]}"}} '
            f"{r['op']} {r['threshold']:g}"
        )
        lines.append(f"| {r['alert']} | {r['severity']} | `{expr}` | {r['for_seconds'] / 60:g}m |")
    if result["rules_not_replayed"]:
        lines += [
            "",
            "Not replayed (not per quantity): "
            + "; ".join(f"`{s}`" for s in result["rules_not_replayed"])
            + ".",
        ]
    return [*lines, ""]


def _replay_notes(result: dict[str, Any]) -> list[str]:
    replay = result["replay"]
    check = replay["service_check"]
    tft = sum(v for k, v in replay["methods"].items() if k.endswith(":tft"))
    heuristic = sum(v for k, v in replay["methods"].items() if k.endswith(":heuristic"))
    return [
        "## Replay",
        "",
        f"- Origins: {replay['origins']} (every 5 min from {result['data']['first_origin']}); the "
        f"first {replay['skipped_origins']} origins of the history (under the model's minimum "
        "of 36 steps, 3 h) are excluded. Windows up to 24 h: the first day runs on partial "
        "history, as after a restart.",
        f"- Forecast rows: {tft} by the TFT, {heuristic} by the heuristic fallback.",
        f"- Path: `forecaster.clean.clean` -> `forecaster.engine.forecast` -> "
        "`forecaster.risk.breach_outlook`, as `forecaster.service.Service` chains them. Checked "
        f"against `Service.run_cycle` on a source answering `query_range` from the same history "
        f"at {len(check['origins'])} origins ({check['values_compared']} probabilities): largest "
        f"difference {check['max_abs_difference']:.2g}.",
        *_window_notes(replay.get("windows", {})),
        f"- Duration: {replay['seconds']:.0f} s for the evaluation history "
        f"({replay['ms_per_origin']:.0f} ms per origin of {replay['instances']} instances)"
        + (
            f", {replay['tune_seconds']:.0f} s for the tuning history."
            if replay.get("tune_seconds")
            else "."
        ),
        "",
    ]


def _window_notes(windows: dict[str, Any]) -> list[str]:
    if not windows:
        return []
    cells = "; ".join(
        f"{q} {w['equal_share']:.1%} (above 0.5: {w['above_8h']} origins at 8h, "
        f"{w['above_30m']} at 30m)"
        for q, w in windows.items()
    )
    return [
        "- Share of (instance, origin) pairs whose 8 h breach probability equals the 30 min one, "
        "i.e. whose forecast is riskiest within its first 30 minutes: " + cells + ". Where "
        "they are equal the 8 h warning rule can add no lead time over the 30 min critical one."
    ]
