"""`python -m bench [--quick] [--only NAME[,NAME]]`: run the benchmarks, rewrite the report.

Writes `docs/benchmarks.json`, `docs/BENCHMARKS.md` and `docs/img/bench_*.png` (with
`--quick`, into a temporary directory unless `--out` says otherwise). Results of benchmarks not run
this time are kept from the existing JSON. Run it on an otherwise idle machine if you can;
it records the load averages either way. Scratch files go to a temporary directory that is
removed at the end (`--work DIR` keeps them).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, Context, figure, load, log, machine, utc_now
from bench.report import markdown, plots

ORDER = ["render", "inference", "forward", "cycle", "scrape", "websocket", "training", "gpu"]


def _about(module: Any) -> str:
    """The paragraph after the title line of a benchmark module's docstring, as Markdown:
    prose on one line, a bullet list one item a line."""
    paragraphs = (module.__doc__ or "").strip().split("\n\n")
    if len(paragraphs) < 2:
        return ""
    items: list[list[str]] = []
    for line in paragraphs[1].splitlines():
        if line.startswith("- ") or not items:
            items.append([])
        items[-1].append(line.strip())
    return "\n".join(" ".join(item) for item in items)


def run_one(name: str, ctx: Context) -> dict[str, Any]:
    """One benchmark with its machine, command, date and loads; failures become a row."""
    module = importlib.import_module(f"bench.{name}")
    before, date, started = load(), utc_now(), time.perf_counter()
    log.info("benchmark %s: starting (load %s)", name, before)
    try:
        result = module.run(ctx)
    except Exception as exc:  # a benchmark that breaks must not lose the others' results
        log.exception("benchmark %s failed", name)
        result = {"figures": [figure(f"{name} failed", None, "", note=str(exc)[:300])]}
        result["error"] = f"{type(exc).__name__}: {exc}"
    result.update(
        title=getattr(module, "TITLE", name),
        about=_about(module),
        machine=machine(),
        command=ctx.command,
        date=date,
        duration_s=time.perf_counter() - started,
        load_before=before,
        load_after=load(),
        threads=ctx.threads,
        quick=ctx.quick,
    )
    log.info("benchmark %s: done in %.0f s", name, result["duration_s"])
    return result


def write(results: dict[str, dict[str, Any]], out: Path, *, with_plots: bool) -> None:
    """JSON, plots and Markdown under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    if with_plots:
        for name, images in plots(results, out / "img").items():
            results[name]["images"] = images
    (out / "benchmarks.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    titles = {name: r.get("title", name) for name, r in results.items()}
    (out / "BENCHMARKS.md").write_text(markdown(results, ORDER, titles))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds each")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(ORDER)}")
    parser.add_argument("--out", type=Path, help="report directory (default docs/)")
    parser.add_argument("--work", type=Path, help="scratch directory to keep")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads for model work (0: torch default)"
    )
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the report from the JSON, run nothing"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks; 2 for an unknown name."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    selected = ORDER if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in selected if n not in ORDER]
    if unknown:
        print(f"bench: unknown benchmark(s) {unknown}; known: {ORDER}", file=sys.stderr)
        return 2
    quick_out = Path(tempfile.gettempdir()) / "prometheus-forecaster-bench-quick"
    out = args.out or (quick_out if args.quick else REPO / "docs")
    existing = out / "benchmarks.json"
    results: dict[str, dict[str, Any]] = (
        json.loads(existing.read_text()) if existing.is_file() else {}
    )
    if args.report_only:
        write(results, out, with_plots=not args.no_plots)
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-"))
    ctx = Context(
        quick=args.quick,
        work=work,
        command=shlex.join(["python", "-m", "bench", *argv]),
        threads=args.threads,
    )
    try:
        for name in selected:
            results[name] = run_one(name, ctx)
            write(results, out, with_plots=False)  # progress survives a later failure
        write(results, out, with_plots=not args.no_plots)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    log.info("wrote %s", out / "BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
