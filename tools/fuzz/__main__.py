"""`python -m tools.fuzz [--seconds 300] [--report docs/FUZZ.md] [--merge] [TARGET ...]`.

The long run: every target of `tests/fuzz` (or those named) for about `--seconds` each, one
after the other, then the report; with `--merge`, the report keeps the results of the targets
not run now from its previous version (to rerun one target after a fix). Exits 1 when a
target in the report failed, 2 for an unknown target.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from . import OUTPUT_FILE, kept_part, previous_results, render, run_target, targets


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.fuzz", description=__doc__)
    parser.add_argument("--seconds", type=float, default=300.0, help="budget per target")
    parser.add_argument("--report", default=str(OUTPUT_FILE), help="markdown report to write")
    parser.add_argument(
        "--merge", action="store_true", help="keep the report's results of targets not run"
    )
    parser.add_argument("targets", nargs="*", help="targets to run (default: all)")
    args = parser.parse_args(argv)
    if not args.seconds > 0:
        parser.error("--seconds must be positive")
    found = targets()
    unknown = [name for name in args.targets if name not in found]
    if unknown:
        print(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(found)}", file=sys.stderr)
        return 2
    chosen = {name: found[name] for name in (args.targets or found)}
    results = []
    for name, path in chosen.items():
        print(f"fuzz {name}: {args.seconds:g} s ...", flush=True)
        result = run_target(name, path, args.seconds)
        examples = sum(p["examples"] for p in result.properties)
        verdict = "ok" if result.passed else f"FAILED (pytest exit {result.exitstatus})"
        print(f"fuzz {name}: {examples:,} examples in {result.wall_s:.0f} s, {verdict}", flush=True)
        if result.tail:
            print(result.tail, file=sys.stderr)
        results.append(result)
    report = Path(args.report)
    if args.merge:
        fresh = {result.name for result in results}
        kept = [r for r in previous_results(report) if r.name not in fresh and r.name in found]
        results = sorted([*kept, *results], key=lambda r: list(found).index(r.name))
    command = "python -m tools.fuzz " + " ".join(sys.argv[1:] if argv is None else argv)
    text = render(results, command=command.strip(), kept=kept_part(report))
    report.write_text(text, encoding="utf-8")
    print(f"wrote {report}")
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
