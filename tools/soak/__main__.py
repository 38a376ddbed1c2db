"""`python -m tools.soak [--seconds 600] [--report docs/SOAK.md]`: one soak run, its verdict.

Exit 0 when it passed, 1 when a limit failed (the report says which); see `tools.soak`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from . import SoakSettings, report, run_soak


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.soak", description=__doc__)
    parser.add_argument("--seconds", type=float, default=SoakSettings.seconds)
    parser.add_argument("--warmup", type=float, default=SoakSettings.warmup_s, help="seconds")
    parser.add_argument("--promote-every", type=float, default=SoakSettings.promote_every_s)
    parser.add_argument("--report", type=Path, help="write the markdown report here")
    parser.add_argument("--workdir", type=Path, help="kept work directory (default: temporary)")
    args = parser.parse_args(argv)
    settings = SoakSettings(
        seconds=args.seconds, warmup_s=args.warmup, promote_every_s=args.promote_every
    )
    command = "python -m tools.soak " + shlex.join(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        workdir = args.workdir or Path(tmp) / "soak"
        result = run_soak(settings, workdir)
    page = report(result, command.strip())
    if args.report:
        args.report.write_text(page)
    print(page)
    return 1 if result.problems() else 0


if __name__ == "__main__":
    sys.exit(main())
