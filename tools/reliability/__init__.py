"""Generator of `docs/RELIABILITY.md`: the fault catalogue, row by row, with the tests of each.

`python -m tools.reliability` writes the page; `--check` exits 1, printing a unified diff, when
the committed page differs from what the generator gives (a test tagged, untagged, renamed or
marked xfail, or a catalogue row changed). The rows come from `catalogue.CATALOGUE`, the tests
from the `@pytest.mark.fault("A1", ...)` markers under tests/ (`collect`). A row counts as
covered when at least one of its tests is not marked xfail. `make faults` runs the same tests
as one stage; `tests/unit/test_reliability_doc.py` runs the check.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from .catalogue import CATALOGUE, GROUPS, NOTES, Scenario
from .collect import TaggedTest, tagged_tests

REPO_ROOT = Path(__file__).resolve().parents[2]
OUTPUT_FILE = REPO_ROOT / "docs" / "RELIABILITY.md"
IDS = tuple(s.id for s in CATALOGUE)
NAME = re.compile(r"(?<![\w:/.])forecaster_\w*(?![\w:]|\.\w)")
CODE_SPAN = re.compile(r"`([^`]*)`")
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def exported_names() -> frozenset[str]:
    """`forecaster_*` families the forecaster's and the retrainer's `/metrics` write."""
    from exporter.families import FAMILIES
    from training.retrain.metrics import RetrainMetrics

    names = {family.name for family in FAMILIES}
    metrics = RetrainMetrics(("promoted", "rejected", "failed"), ("error",), 604800.0)
    names |= {family.name for family in metrics.registry.collect()}
    return frozenset(names)


def _is_exported(name: str, known: frozenset[str]) -> bool:
    if name.startswith("forecaster_predicted_"):
        return True
    return name in known or any(name == k + suffix for k in known for suffix in SUFFIXES)


def mark_unexported(text: str, known: frozenset[str]) -> str:
    """Names of families nothing exports yet become plain, escaped text followed by "(not
    exported yet)" (a code span holding one loses its backticks), so that the page never
    presents a missing metric as a real one."""

    def escape(name: str) -> str:
        return name.replace("_", "\\_")

    def plain(part: str) -> str:
        return NAME.sub(
            lambda m: (
                m.group(0)
                if _is_exported(m.group(0), known)
                else f"{escape(m.group(0))} (not exported yet)"
            ),
            part,
        )

    def span(inner: str) -> str:
        if all(_is_exported(name, known) for name in NAME.findall(inner)):
            return f"`{inner}`"
        return escape(inner) + " (not exported yet)"

    pieces = CODE_SPAN.split(text)  # plain text at even indices, code span contents at odd
    return "".join(span(p) if k % 2 else plain(p) for k, p in enumerate(pieces))


def unknown_ids(tests: Iterable[TaggedTest]) -> dict[str, list[str]]:
    """Node ids per fault ID that the catalogue does not have."""
    unknown: dict[str, list[str]] = {}
    for test in tests:
        for fault_id in test.ids:
            if fault_id not in IDS:
                unknown.setdefault(fault_id, []).append(test.nodeid)
    return unknown


def by_id(tests: Iterable[TaggedTest]) -> dict[str, list[TaggedTest]]:
    """The tests of each catalogue ID, in catalogue order (empty lists for uncovered rows)."""
    table: dict[str, list[TaggedTest]] = {fault_id: [] for fault_id in IDS}
    for test in tests:
        for fault_id in test.ids:
            if fault_id in table:
                table[fault_id].append(test)
    return table


def covered(tests: Iterable[TaggedTest]) -> list[str]:
    """Catalogue IDs with at least one test that is not marked xfail."""
    return [i for i, found in by_id(tests).items() if any(t.xfail is None for t in found)]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _test_entry(test: TaggedTest) -> str:
    tags = sorted(test.markers) + (["xfail"] if test.xfail is not None else [])
    return f"`{test.nodeid}`" + (f" ({', '.join(tags)})" if tags else "")


def _row(scenario: Scenario, tests: list[TaggedTest], clean: Callable[[str], str]) -> str:
    expected = clean(scenario.expected)
    if scenario.id in NOTES:
        expected += f"<br>*Note:* {clean(NOTES[scenario.id])}"
    if tests:
        cell = "<br>".join(_test_entry(t) for t in tests)
        if all(t.xfail is not None for t in tests):
            cell = "known gap (xfail only): " + cell
    else:
        cell = "not covered yet"
    return f"| {scenario.id} | {_cell(clean(scenario.injection))} | {_cell(expected)} | {cell} |"


def render(tests: list[TaggedTest], known: frozenset[str] | None = None) -> str:
    """The text of `docs/RELIABILITY.md` for these tagged tests."""
    known = exported_names() if known is None else known

    def clean(text: str) -> str:
        return mark_unexported(text, known)

    table = by_id(tests)
    done = covered(tests)
    missing = [i for i in IDS if i not in done]
    xfails = [t for t in tests if t.xfail is not None]
    lines = [
        "# Reliability: the fault catalogue and its tests",
        "",
        "<!-- Generated by `python -m tools.reliability` from tools/reliability/catalogue.py and"
        " the tests' `fault` markers. Do not edit: change those and regenerate. -->",
        "",
        "Every scenario of the fault catalogue, with the fault injected, the expected behaviour"
        " (its pass criterion) and the tests that carry its ID in a `@pytest.mark.fault(...)`"
        ' marker. `make faults` runs these tests as one stage (`pytest -m "fault and not'
        ' soak"`) and ends with a count of scenarios and tests; the 10-minute soak (F5) is its'
        " own stage, `make soak`; `tests/unit/test_reliability_doc.py` fails when this"
        " page and the tests disagree. A scenario counts as covered when one of its tests is not"
        " marked xfail; an xfail test states behaviour the catalogue asks for that the code does"
        " not have yet. Tests marked slow, torch or prometheus need the time, torch or the"
        " Debian binaries their marker names.",
        "",
        f"**Covered: {len(done)} of {len(IDS)} scenarios, by {len(tests)} tests"
        f" ({len(xfails)} of them xfail).**"
        + (f" Not covered yet: {', '.join(missing)}." if missing else ""),
    ]
    for letter, (title, column) in GROUPS.items():
        lines += [
            "",
            f"## {letter}. {title}",
            "",
            f"| ID | {column} | Expected | Tests |",
            "|---|---|---|---|",
        ]
        lines += [_row(s, table[s.id], clean) for s in CATALOGUE if s.id[0] == letter]
    if xfails:
        lines += ["", "## Known gaps (xfail tests)", ""]
        lines += [f"- {', '.join(t.ids)}: `{t.nodeid}`: {clean(t.xfail or '')}" for t in xfails]
    return "\n".join(lines) + "\n"


def write(path: Path = OUTPUT_FILE, root: Path = REPO_ROOT) -> Path:
    """Write the page for the tests under `root`; returns its path."""
    path.write_text(render(tagged_tests(root)), encoding="utf-8")
    return path


def diff(path: Path = OUTPUT_FILE, root: Path = REPO_ROOT) -> str:
    """Unified diff from the page at `path` to the generated one; empty when they are equal."""
    committed = path.read_text(encoding="utf-8") if path.is_file() else ""
    lines = difflib.unified_diff(
        committed.splitlines(keepends=True),
        render(tagged_tests(root)).splitlines(keepends=True),
        fromfile=str(path),
        tofile="generated by tools.reliability",
    )
    return "".join(lines)
