"""`python -m tools.dashboards [--check] [--out DIR]`: write or check the Grafana dashboards."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from . import OUTPUT_DIR, stale, write


def main(argv: Sequence[str] | None = None) -> int:
    """Write the dashboards (0), or with `--check` report stale ones (1 if any)."""
    parser = argparse.ArgumentParser(prog="python -m tools.dashboards", description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    parser.add_argument("--out", default=str(OUTPUT_DIR), help="output directory")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.check:
        differ = stale(out)
        for name in differ:
            print(f"{out / name} differs from the generator: run python -m tools.dashboards")
        return 1 if differ else 0
    for path in write(out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
