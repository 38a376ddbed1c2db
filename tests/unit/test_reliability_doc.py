"""docs/RELIABILITY.md is generated from the fault catalogue and the tests' `fault` markers.

`tools.reliability` parses the test files for `@pytest.mark.fault(...)` (no import), so the
page cannot drift from the tests: tagging, untagging, renaming or xfail-marking a test, or
changing a catalogue row, makes the check below fail until `python -m tools.reliability` is
run again.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from tools import reliability
from tools.reliability import __main__ as cli
from tools.reliability.catalogue import CATALOGUE, GROUPS, NOTES
from tools.reliability.collect import MarkerError, tagged_tests, tagged_tests_in

ROOT = Path(__file__).resolve().parents[2]
ROWS = {"A": 10, "B": 10, "C": 7, "D": 10, "E": 5, "F": 5, "G": 4, "H": 9, "I": 5}


def test_the_committed_page_is_what_the_generator_writes():
    changes = reliability.diff()
    assert changes == "", (
        f"docs/RELIABILITY.md is stale: run python -m tools.reliability\n{changes}"
    )


def test_every_fault_marker_names_a_row_of_the_catalogue():
    tests = tagged_tests(ROOT)
    assert len(tests) > 100  # the parser finds the markers it should
    assert reliability.unknown_ids(tests) == {}


def test_the_catalogue_has_its_rows_in_order_and_notes_only_for_them():
    expected = [f"{letter}{n}" for letter, count in ROWS.items() for n in range(1, count + 1)]
    assert [s.id for s in CATALOGUE] == expected
    assert list(GROUPS) == list(ROWS)
    assert set(NOTES) <= set(expected)
    assert all(s.injection.strip() and s.expected.strip() for s in CATALOGUE)


def test_the_parser_reads_decorators_module_and_class_marks_and_xfail(tmp_path):
    path = tmp_path / "tests" / "test_sample.py"
    path.parent.mkdir()
    path.write_text(
        textwrap.dedent(
            """
            import pytest
            from pytest import mark

            pytestmark = [pytest.mark.slow, pytest.mark.fault("I3")]

            @pytest.mark.parametrize("x", [1, 2])
            @pytest.mark.fault("A1", "A2")
            def test_decorated(x):
                pass

            @mark.fault("B1")
            @pytest.mark.xfail(strict=True, reason="not yet")
            def test_missing():
                pass

            def helper():
                pass

            @pytest.mark.fault("C1")
            class TestGroup:
                pytestmark = pytest.mark.torch

                def test_method(self):
                    pass
            """
        )
    )
    found = {t.nodeid: t for t in tagged_tests_in(path, tmp_path)}
    assert set(found) == {
        "tests/test_sample.py::test_decorated",
        "tests/test_sample.py::test_missing",
        "tests/test_sample.py::TestGroup::test_method",
    }
    decorated = found["tests/test_sample.py::test_decorated"]
    assert decorated.ids == ("I3", "A1", "A2") and decorated.markers == {"slow"}
    assert decorated.xfail is None
    assert found["tests/test_sample.py::test_missing"].xfail == "not yet"
    method = found["tests/test_sample.py::TestGroup::test_method"]
    assert method.ids == ("I3", "C1") and method.markers == {"slow", "torch"}


def test_fault_ids_that_are_not_literals_are_refused(tmp_path):
    path = tmp_path / "test_bad.py"
    path.write_text('import pytest\nID = "A1"\n@pytest.mark.fault(ID)\ndef test_x():\n    pass\n')
    try:
        tagged_tests_in(path, tmp_path)
    except MarkerError as error:
        assert "test_bad.py:3" in str(error)
    else:
        raise AssertionError("a non-literal fault ID was accepted")


def test_a_row_counts_as_covered_only_with_a_test_that_is_not_xfail(tmp_path):
    path = tmp_path / "tests" / "test_rows.py"
    path.parent.mkdir()
    path.write_text(
        "import pytest\n"
        '@pytest.mark.fault("A1")\ndef test_a():\n    pass\n'
        '@pytest.mark.fault("A2")\n@pytest.mark.xfail(strict=True, reason="gap")\n'
        "def test_b():\n    pass\n"
    )
    tests = tagged_tests(tmp_path)
    assert reliability.covered(tests) == ["A1"]
    page = reliability.render(tests, known=frozenset())
    assert f"**Covered: 1 of {len(CATALOGUE)} scenarios, by 2 tests (1 of them xfail).**" in page
    assert "| A2 |" in page and "known gap (xfail only): `tests/test_rows.py::test_b`" in page
    assert "| A3 | Responds after 60 s |" in page and "not covered yet" in page


def test_names_of_families_nothing_exports_are_marked_as_such():
    known = frozenset({"forecaster_source_up", "forecaster_cycles"})
    text = "`forecaster_source_up 0`, `forecaster_cycles_total`; `forecaster_nope_total` rises"
    assert reliability.mark_unexported(text, known) == (
        "`forecaster_source_up 0`, `forecaster_cycles_total`; "
        "forecaster\\_nope\\_total (not exported yet) rises"
    )
    assert reliability.mark_unexported("plain forecaster_nope here", known) == (
        "plain forecaster\\_nope (not exported yet) here"
    )


def test_check_exits_1_on_a_stale_page_and_0_once_written(tmp_path, capsys):
    out = tmp_path / "RELIABILITY.md"
    out.write_text("# stale\n")
    assert cli.main(["--check", "--out", str(out)]) == 1
    assert "differs from the generator" in capsys.readouterr().out
    assert cli.main(["--out", str(out)]) == 0
    assert cli.main(["--check", "--out", str(out)]) == 0
