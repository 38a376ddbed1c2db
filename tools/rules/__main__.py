"""`python -m tools.rules [--check] [--out FILE]`: write or check prometheus/rules/alerts.yml."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from . import OUTPUT_FILE, diff, write


def main(argv: Sequence[str] | None = None) -> int:
    """Write the rules (0), or with `--check` print how the file differs (1 if it does)."""
    parser = argparse.ArgumentParser(prog="python -m tools.rules", description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    parser.add_argument("--out", default=str(OUTPUT_FILE), help="output file")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.check:
        changes = diff(out)
        if changes:
            print(changes, end="")
            print(f"{out} differs from the generator: run python -m tools.rules")
        return 1 if changes else 0
    print(write(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
