"""Suite-wide hooks: the count of the fault-catalogue stage (`make faults`, `pytest -m fault`).

When the `-m` expression selects the `fault` marker, the run ends with one line:
"fault catalogue: N of 65 scenarios (IDs) covered by M test cases, all passed" (or what
failed).
A scenario counts once one of its tests passed; xfail tests (behaviour still missing) and
skipped ones are counted apart. Without `fault` in `-m` the hooks do nothing.
"""

from __future__ import annotations

import re

import pytest

_IDS = pytest.StashKey[dict[str, tuple[str, ...]]]()


def _fault_stage(config: pytest.Config) -> bool:
    return re.search(r"\bfault\b", config.getoption("markexpr") or "") is not None


def pytest_collection_finish(session: pytest.Session) -> None:
    if not _fault_stage(session.config):
        return
    found = {
        item.nodeid: tuple(i for mark in item.iter_markers("fault") for i in mark.args)
        for item in session.items
    }
    tagged = {nodeid: ids for nodeid, ids in found.items() if ids}
    if tagged:  # `-m "not fault"` selects none: nothing to count
        session.config.stash[_IDS] = tagged


def _outcomes(reporter) -> dict[str, str]:
    """nodeid -> passed, failed, error, skipped, xfailed or xpassed (the worst phase wins)."""
    order = ("passed", "xfailed", "skipped", "xpassed", "failed", "error")
    outcome: dict[str, str] = {}
    for key in order:
        for report in reporter.stats.get(key, []):
            nodeid = getattr(report, "nodeid", None)
            if nodeid is None:
                continue
            previous = outcome.get(nodeid)
            if previous is None or order.index(key) > order.index(previous):
                outcome[nodeid] = key
    return outcome


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not _fault_stage(config) or _IDS not in config.stash:
        return
    ids = config.stash[_IDS]
    outcome = _outcomes(terminalreporter)
    try:
        from tools.reliability.catalogue import CATALOGUE

        order = [s.id for s in CATALOGUE]
    except ImportError:  # run from outside the repository root
        order = sorted({i for found in ids.values() for i in found})
    passed = {i for nodeid, found in ids.items() if outcome.get(nodeid) == "passed" for i in found}
    covered = [i for i in order if i in passed]
    counts = {k: sum(1 for n in ids if outcome.get(n) == k) for k in set(outcome.values())}
    bad = counts.get("failed", 0) + counts.get("error", 0) + counts.get("xpassed", 0)
    if bad:
        verdict = (
            f"{counts.get('failed', 0)} failed, {counts.get('error', 0)} errors, "
            f"{counts.get('xpassed', 0)} xpassed"
        )
    elif counts.get("skipped") or len(outcome.keys() & ids.keys()) < len(ids):
        not_run = len(ids) - len(outcome.keys() & ids.keys())
        verdict = "none failed, but not all ran" + (f" ({not_run} not run)" if not_run else "")
    else:
        verdict = "all passed"
    extra = [f"{counts[k]} {k}" for k in ("xfailed", "skipped") if counts.get(k)]
    terminalreporter.write_sep(
        "=",
        f"fault catalogue: {len(covered)} of {len(order)} scenarios ({' '.join(covered)}) "
        f"covered by {len(ids)} test cases, {verdict}"
        + (f" ({', '.join(extra)})" if extra else ""),
    )
    uncovered = [i for i in order if i not in passed]
    if uncovered:
        terminalreporter.write_line(
            f"fault catalogue: not covered in this run: {' '.join(uncovered)}"
        )
