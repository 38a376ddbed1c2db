"""`python -m tools.reliability [--check] [--out FILE]`: write or check docs/RELIABILITY.md."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from . import OUTPUT_FILE, REPO_ROOT, diff, unknown_ids, write
from .collect import tagged_tests


def main(argv: Sequence[str] | None = None) -> int:
    """Write the page (0), or with `--check` print how it differs (1 if it does); 2 when a
    `fault` marker names an ID the catalogue does not have."""
    parser = argparse.ArgumentParser(prog="python -m tools.reliability", description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    parser.add_argument("--out", default=str(OUTPUT_FILE), help="output file")
    args = parser.parse_args(argv)
    out = Path(args.out)
    unknown = unknown_ids(tagged_tests(REPO_ROOT))
    if unknown:
        for fault_id, nodeids in sorted(unknown.items()):
            print(f"unknown fault ID {fault_id!r} in {', '.join(nodeids)}", file=sys.stderr)
        return 2
    if args.check:
        changes = diff(out)
        if changes:
            print(changes, end="")
            print(f"{out} differs from the generator: run python -m tools.reliability")
        return 1 if changes else 0
    print(write(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
