"""The tests that carry `@pytest.mark.fault(...)`, found by parsing the test files (no import).

Parsing instead of collecting keeps this fast and free of torch: no test module is imported.
A test is tagged by a `fault` decorator on its function, on its class, or by the module's (or
the class's) `pytestmark`; the IDs must be string literals. The other markers the page shows
(`slow`, `torch`, `prometheus`, `bench`, `xfail`) are read the same way.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

SHOWN_MARKERS = ("slow", "torch", "prometheus", "bench")


@dataclass(frozen=True)
class TaggedTest:
    """One test function (all its parametrized cases) and the catalogue rows it covers."""

    nodeid: str  # tests/unit/test_x.py::test_y or tests/unit/test_x.py::TestZ::test_y
    ids: tuple[str, ...]
    markers: frozenset[str]  # of SHOWN_MARKERS
    xfail: str | None  # the reason of an xfail marker ("" without one), None if not xfail


@dataclass(frozen=True)
class _Mark:
    name: str
    args: tuple[str, ...]
    reason: str


class MarkerError(ValueError):
    """A `fault` marker whose IDs are not string literals."""


def _mark_name(node: ast.expr) -> str | None:
    """`slow` for `pytest.mark.slow` or `mark.slow`; None for anything else."""
    if isinstance(node, ast.Attribute):
        owner = node.value
        if (
            isinstance(owner, ast.Attribute)
            and owner.attr == "mark"
            and isinstance(owner.value, ast.Name)
            and owner.value.id == "pytest"
        ):
            return node.attr
        if isinstance(owner, ast.Name) and owner.id == "mark":
            return node.attr
    return None


def _marks(node: ast.expr, where: str) -> Iterator[_Mark]:
    """The markers one decorator or `pytestmark` value applies (a mark, or a list of them);
    `where` is the file, for the error on a non-literal ID."""
    if isinstance(node, ast.List | ast.Tuple):
        for element in node.elts:
            yield from _marks(element, where)
        return
    call = node if isinstance(node, ast.Call) else None
    name = _mark_name(call.func if call else node)
    if name is None:
        return
    args: list[str] = []
    reason = ""
    if call is not None:
        for arg in call.args:
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                args.append(arg.value)
            elif name == "fault":
                raise MarkerError(f"{where}:{arg.lineno}: fault IDs must be string literals")
        for keyword in call.keywords:
            if keyword.arg == "reason" and isinstance(keyword.value, ast.Constant):
                reason = str(keyword.value.value)
    if name == "xfail" and not reason and args:
        reason = args[0]  # xfail(condition_string) is rare; a positional reason is kept
    yield _Mark(name, tuple(args), reason)


def _pytestmark(body: Iterable[ast.stmt], where: str) -> list[_Mark]:
    marks: list[_Mark] = []
    for statement in body:
        targets: list[ast.expr] = []
        value: ast.expr | None = None
        if isinstance(statement, ast.Assign):
            targets, value = statement.targets, statement.value
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
            targets, value = [statement.target], statement.value
        if value is not None and any(
            isinstance(t, ast.Name) and t.id == "pytestmark" for t in targets
        ):
            marks += _marks(value, where)
    return marks


def _decorators(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef, where: str):
    return [mark for decorator in node.decorator_list for mark in _marks(decorator, where)]


def _tagged(nodeid: str, marks: list[_Mark]) -> TaggedTest | None:
    ids = tuple(dict.fromkeys(i for m in marks if m.name == "fault" for i in m.args))
    if not ids:
        return None
    xfails = [m for m in marks if m.name == "xfail"]
    return TaggedTest(
        nodeid=nodeid,
        ids=ids,
        markers=frozenset(m.name for m in marks if m.name in SHOWN_MARKERS),
        xfail=xfails[0].reason if xfails else None,
    )


def tagged_tests_in(path: Path, root: Path) -> list[TaggedTest]:
    """The tagged tests of one test file; node ids relative to `root`."""
    relative = path.relative_to(root).as_posix()
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=relative)
    module_marks = _pytestmark(tree.body, relative)
    found: list[TaggedTest] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith(
            "test"
        ):
            test = _tagged(f"{relative}::{node.name}", module_marks + _decorators(node, relative))
            if test:
                found.append(test)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            class_marks = (
                module_marks + _decorators(node, relative) + _pytestmark(node.body, relative)
            )
            for method in node.body:
                if isinstance(
                    method, ast.FunctionDef | ast.AsyncFunctionDef
                ) and method.name.startswith("test"):
                    marks = class_marks + _decorators(method, relative)
                    test = _tagged(f"{relative}::{node.name}::{method.name}", marks)
                    if test:
                        found.append(test)
    return found


def tagged_tests(root: Path, tests_dir: str = "tests") -> list[TaggedTest]:
    """Every tagged test under `root/tests_dir` (files named test_*.py), sorted by node id."""
    found: list[TaggedTest] = []
    for path in sorted((root / tests_dir).rglob("test_*.py")):
        found += tagged_tests_in(path, root)
    return sorted(found, key=lambda t: t.nodeid)
