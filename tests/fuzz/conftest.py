"""The fuzz stage: hypothesis profiles (`tests/fuzz/common.py`) and the long, timed run.

Without `FUZZ_SECONDS` every property runs once under the `fuzz-ci` profile (500
derandomized examples) and these hooks do nothing. With `FUZZ_SECONDS=300` (the `fuzz-long`
profile) each target module gets about that many seconds, shared among its properties: a
property is called again and again, each call a fresh random run of `LONG_CHUNK` examples,
until its share is spent (the last call may overrun it by part of a chunk). A failure ends
that property at once and fails it, with hypothesis' minimal example as usual. With
`FUZZ_REPORT=path` the session also writes, per property, the examples run (shrinking
included), the seconds, the calls and the failure, as JSON: `python -m tools.fuzz` reads it
to write `docs/FUZZ.md`.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import hypothesis
import pytest

from tests.fuzz.common import active_profile, fuzz_seconds

REPORT_VARIABLE = "FUZZ_REPORT"
_BUDGET = pytest.StashKey[float]()
_HERE = Path(__file__).resolve().parent
_RESULTS: list[dict[str, Any]] = []


def _is_property(item: pytest.Item) -> bool:
    function = getattr(item, "obj", None)
    return (
        isinstance(item, pytest.Function)
        and Path(item.path).resolve().is_relative_to(_HERE)
        and getattr(function, "is_hypothesis_test", False)
    )


def pytest_report_header(config: pytest.Config) -> str:
    seconds = fuzz_seconds()
    budget = f", {seconds:g} s per target module" if seconds is not None else ""
    return f"fuzz profile: {active_profile()}{budget} (hypothesis {hypothesis.__version__})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    seconds = fuzz_seconds()
    if seconds is None:
        return
    properties = [item for item in items if _is_property(item)]
    per_module = Counter(item.path for item in properties)
    for item in properties:
        item.stash[_BUDGET] = seconds / per_module[item.path]


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run a property repeatedly for its share of `FUZZ_SECONDS` (long profile only)."""
    budget = pyfuncitem.stash.get(_BUDGET, None)
    if budget is None:
        return None
    test = pyfuncitem.obj
    arguments = {name: pyfuncitem.funcargs[name] for name in inspect.signature(test).parameters}
    handle = test.hypothesis
    inner = handle.inner_test
    examples = 0

    @functools.wraps(inner)
    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal examples
        examples += 1
        return inner(*args, **kwargs)

    handle.inner_test = counted
    start = time.monotonic()
    calls, failure = 0, None
    try:
        while True:
            begun = time.monotonic()
            test(**arguments)
            calls += 1
            now = time.monotonic()
            if now - start + 0.5 * (now - begun) >= budget:
                break
    except BaseException as error:
        failure = "".join(traceback.format_exception_only(error)).strip()
        raise
    finally:
        handle.inner_test = inner
        _RESULTS.append(
            {
                "nodeid": pyfuncitem.nodeid,
                "module": Path(pyfuncitem.path).stem,
                "budget_s": budget,
                "seconds": time.monotonic() - start,
                "examples": examples,
                "calls": calls,
                "failure": failure,
            }
        )
    return True


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get(REPORT_VARIABLE)
    if not path or fuzz_seconds() is None:
        return
    report = {
        "profile": active_profile(),
        "seconds_per_target": fuzz_seconds(),
        "hypothesis": hypothesis.__version__,
        "exitstatus": int(exitstatus),
        "properties": _RESULTS,
    }
    Path(path).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
