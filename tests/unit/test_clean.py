"""The cleaner gives every bad value a defined, counted treatment and finite, masked arrays."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import forecaster.clean
import forecaster.grid
import forecaster.history_files
import forecaster.records
import forecaster.source
from forecaster.clean import MAGNITUDE_LIMIT, REASONS, CleanConfig, Cleaned, clean
from forecaster.contract import Quantity, load_contract

CONTRACT = {q.name: q for q in load_contract().quantities}
CPU, MEM, DISK, LATENCY, LOAD = (
    CONTRACT[name]
    for name in (
        "cpu_utilisation",
        "memory_utilisation",
        "disk_io",
        "request_latency_p95",
        "load1",
    )
)
FREE = Quantity("free", "covariate", "units", (None, None), "instance:free:x", "free")
STEPS = 24
CONFIG = CleanConfig(context_steps=STEPS, min_steps=6, max_fill_gap=3, max_missing_ratio=0.2)
END = pd.Timestamp("2025-10-13T12:00:00Z")
STAMPS = pd.date_range(end=END, periods=STEPS, freq="300s")


def series(instance: str, **columns: list[float]) -> pd.DataFrame:
    """A WIDE frame of one instance whose columns end at END, one value per step."""
    length = len(next(iter(columns.values())))
    return pd.DataFrame({"instance": instance, "timestamp": STAMPS[-length:], **columns})


def ramp(length: int = STEPS, low: float = 0.1, high: float = 0.5) -> list[float]:
    return list(np.linspace(low, high, length))


def run(frame: pd.DataFrame, *quantities: Quantity, config: CleanConfig = CONFIG) -> Cleaned:
    return clean(frame, quantities or (CPU, MEM), END, config)


def column(result: Cleaned, instance: str, quantity: str) -> np.ndarray:
    row = result.instances.index(instance)
    return result.values[row, :, result.quantities.index(quantity)]


def seen(result: Cleaned, instance: str, quantity: str) -> np.ndarray:
    row = result.instances.index(instance)
    return result.observed[row, :, result.quantities.index(quantity)]


def test_complete_series_is_observed_everywhere_and_counts_nothing():
    result = run(series("a", cpu_utilisation=ramp(), memory_utilisation=ramp()))
    assert result.instances == ("a",) and result.quantities == (
        "cpu_utilisation",
        "memory_utilisation",
    )
    assert result.values.shape == (1, STEPS, 2) and result.observed.all()
    np.testing.assert_array_equal(column(result, "a", "cpu_utilisation"), ramp())
    assert list(result.lengths) == [STEPS]
    assert result.skipped == {} and result.counts == {}
    assert result.end == END


@pytest.mark.fault("B1")
def test_nan_and_infinities_become_masked_gaps_and_are_counted():
    cpu = ramp()
    cpu[5], cpu[9], cpu[13] = np.nan, np.inf, -np.inf
    result = run(series("a", cpu_utilisation=cpu, memory_utilisation=ramp()))
    assert result.counts["nan"] == 1 and result.counts["inf"] == 2
    assert result.counts["gap_filled"] == 3
    assert list(np.flatnonzero(~seen(result, "a", "cpu_utilisation"))) == [5, 9, 13]
    assert np.isfinite(result.values).all()


@pytest.mark.fault("B1")
def test_target_missing_over_the_ratio_skips_only_that_instance():
    sparse = ramp()
    for step in range(0, STEPS, 4):  # 6 of 24 missing: 25 % > 20 %
        sparse[step + 1] = np.nan
    frame = pd.concat(
        [
            series("bad", cpu_utilisation=sparse, memory_utilisation=ramp()),
            series("good", cpu_utilisation=ramp(), memory_utilisation=ramp()),
        ]
    )
    result = run(frame)
    assert result.skipped == {"bad": "missing"} and result.counts["missing"] == 1
    assert result.instances == ("good",) and result.observed.all()


@pytest.mark.fault("B2")
def test_out_of_domain_values_are_clipped_to_the_domain_and_counted():
    cpu = ramp()
    cpu[0], cpu[1] = -0.2, 1.7
    disk = [1e6] * STEPS
    disk[2] = -5.0
    result = run(series("a", cpu_utilisation=cpu, disk_io=disk), CPU, DISK)
    assert column(result, "a", "cpu_utilisation")[:2].tolist() == [0.0, 1.0]
    assert column(result, "a", "disk_io")[2] == 0.0
    assert result.counts["out_of_domain"] == 3
    assert result.observed.all()


@pytest.mark.parametrize("gap", [1, 3])
@pytest.mark.fault("B3")
def test_short_gap_is_interpolated_linearly_and_marked_unobserved(gap):
    cpu = [float(step) / 100 for step in range(STEPS)]
    holed = cpu[:10] + [np.nan] * gap + cpu[10 + gap :]
    result = run(series("a", cpu_utilisation=holed, memory_utilisation=ramp()))
    np.testing.assert_allclose(column(result, "a", "cpu_utilisation"), cpu)
    assert not seen(result, "a", "cpu_utilisation")[10 : 10 + gap].any()
    assert result.counts["gap_filled"] == gap and "long_gap" not in result.counts


@pytest.mark.fault("B3")
def test_long_gap_carries_the_last_observation_forward_unobserved():
    config = CleanConfig(context_steps=48, min_steps=6)
    stamps = pd.date_range(end=END, periods=48, freq="300s")
    cpu = [0.1] * 20 + [np.nan] * 5 + [0.9] * 23
    frame = pd.DataFrame(
        {"instance": "a", "timestamp": stamps, "cpu_utilisation": cpu, "memory_utilisation": 0.5}
    )
    result = run(frame, config=config)
    assert column(result, "a", "cpu_utilisation")[20:25].tolist() == [0.1] * 5
    assert not seen(result, "a", "cpu_utilisation")[20:25].any()
    assert result.counts["long_gap"] == 5 and result.skipped == {}


@pytest.mark.parametrize(("silent", "reason"), [(2, "gap_filled"), (4, "long_gap")])
def test_vanished_instance_carries_its_last_observation_to_end(silent, reason):
    frame = series("a", cpu_utilisation=ramp(), memory_utilisation=ramp()).iloc[: STEPS - silent]
    result = run(frame)
    last = ramp()[STEPS - silent - 1]
    assert column(result, "a", "cpu_utilisation")[-silent:].tolist() == [last] * silent
    assert not seen(result, "a", "cpu_utilisation")[-silent:].any()
    assert result.counts[reason] == 2 * silent
    assert list(result.lengths) == [STEPS]


def test_instance_silent_for_longer_than_the_window_is_skipped_without_data():
    old = pd.DataFrame(
        {
            "instance": "gone",
            "timestamp": STAMPS - pd.Timedelta(seconds=300 * 500),
            "cpu_utilisation": ramp(),
            "memory_utilisation": ramp(),
        }
    )
    frame = pd.concat([old, series("here", cpu_utilisation=ramp(), memory_utilisation=ramp())])
    result = run(frame)
    assert result.skipped == {"gone": "no_data"} and result.instances == ("here",)


@pytest.mark.fault("B3")
def test_new_instance_has_short_history_and_zeros_before_its_first_step():
    result = run(series("new", cpu_utilisation=ramp(4), memory_utilisation=ramp(4)))
    assert list(result.lengths) == [4] and result.counts["short"] == 1
    assert not result.observed[0, :-4].any() and result.observed[0, -4:].all()
    assert (result.values[0, :-4] == 0.0).all()


def test_history_starts_once_every_target_has_been_observed():
    result = run(series("a", cpu_utilisation=ramp(), memory_utilisation=[np.nan] * 10 + ramp(14)))
    assert list(result.lengths) == [14]
    assert not result.observed[0, :10].any()
    assert result.skipped == {}


def test_covariate_starting_late_is_backfilled_unobserved():
    load = [np.nan] * 22 + [2.0, 3.0]
    result = run(series("a", cpu_utilisation=ramp(), load1=load), CPU, LOAD)
    assert column(result, "a", "load1")[:22].tolist() == [2.0] * 22
    assert seen(result, "a", "load1").tolist() == [False] * 22 + [True] * 2
    assert result.counts["long_gap"] == 22


def test_absent_quantity_is_zero_and_unobserved_never_invented():
    frame = pd.concat(
        [
            series("node", cpu_utilisation=ramp()),  # plain node_exporter: no latency column
            series("web", cpu_utilisation=ramp(), request_latency_p95=[np.nan] * STEPS),
        ]
    )
    result = run(frame, CPU, LATENCY)
    assert result.instances == ("node", "web") and result.skipped == {}
    assert (result.values[:, :, 1] == 0.0).all() and not result.observed[:, :, 1].any()
    assert result.counts["absent"] == 2


@pytest.mark.fault("B5")
def test_constant_and_all_zero_series_are_kept_finite_and_counted():
    frame = pd.concat(
        [
            series("flat", cpu_utilisation=[0.4] * STEPS, memory_utilisation=ramp()),
            series("zero", cpu_utilisation=[0.0] * STEPS, memory_utilisation=[0.0] * STEPS),
        ]
    )
    result = run(frame)
    assert result.instances == ("flat", "zero")
    assert result.counts["constant"] == 1 and result.counts["all_zero"] == 2
    assert (result.values[1] == 0.0).all() and result.observed.all()


@pytest.mark.fault("B5")
def test_huge_and_subnormal_values_stay_finite():
    disk = [1e308, 1e19, 5e-324, -1e308] + [1e3] * (STEPS - 4)
    free = [-1e308, 1e308, np.nan, 5e-324] + [1.0] * (STEPS - 4)
    result = run(series("a", disk_io=disk, free=free), DISK, FREE)
    assert np.isfinite(result.values).all()
    assert column(result, "a", "disk_io")[:4].tolist() == [
        MAGNITUDE_LIMIT,
        MAGNITUDE_LIMIT,
        5e-324,
        0.0,
    ]
    assert column(result, "a", "free")[:4].tolist() == [
        -MAGNITUDE_LIMIT,
        MAGNITUDE_LIMIT,
        0.5e18,
        5e-324,
    ]
    assert result.counts["out_of_domain"] == 5


@pytest.mark.fault("C6")
def test_unknown_columns_are_ignored_and_counted():
    frame = series("a", cpu_utilisation=ramp(), memory_utilisation=ramp(), vibes=ramp())
    frame["profile"], frame["state"] = "database", "healthy"
    result = run(frame)
    assert result.quantities == ("cpu_utilisation", "memory_utilisation")
    assert result.counts == {"unknown_quantity": 1}


def two_hosts() -> pd.DataFrame:
    cpu = ramp()
    cpu[3], cpu[7] = np.nan, 2.0
    return pd.concat(
        [
            series("b", cpu_utilisation=cpu, memory_utilisation=ramp(20)[:1] * 4 + ramp(20)),
            series("a", cpu_utilisation=ramp(10), memory_utilisation=ramp(10)),
        ],
        ignore_index=True,
    )


def assert_same_arrays(left: Cleaned, right: Cleaned) -> None:
    assert left.instances == right.instances and left.skipped == right.skipped
    np.testing.assert_array_equal(left.values, right.values)
    np.testing.assert_array_equal(left.observed, right.observed)
    np.testing.assert_array_equal(left.lengths, right.lengths)


@pytest.mark.fault("B4")
def test_shuffled_and_duplicated_rows_give_the_arrays_of_the_clean_input():
    frame = two_hosts()
    expected = run(frame)
    messy = pd.concat([frame, frame.iloc[::3]]).sample(frac=1, random_state=7)
    result = run(messy)
    assert_same_arrays(result, expected)
    assert result.counts["duplicate"] == len(frame.iloc[::3]) and result.counts["unsorted"] > 0
    per_input_row = ("duplicate", "unsorted", "nan", "inf")
    assert {k: n for k, n in result.counts.items() if k not in per_input_row} == {
        k: n for k, n in expected.counts.items() if k not in per_input_row
    }


@pytest.mark.fault("B4")
def test_later_of_two_rows_for_one_step_wins():
    frame = series("a", cpu_utilisation=ramp(), memory_utilisation=ramp())
    late = frame.iloc[[-1]].assign(cpu_utilisation=0.99)
    earlier_in_step = frame.iloc[[-2]].assign(
        timestamp=STAMPS[-1] - pd.Timedelta(seconds=100), cpu_utilisation=0.11
    )
    result = run(pd.concat([earlier_in_step, frame, late]))
    assert column(result, "a", "cpu_utilisation")[-1] == 0.99
    result = run(pd.concat([late, frame, earlier_in_step]))
    assert column(result, "a", "cpu_utilisation")[-1] == ramp()[-1]


def test_rows_after_end_and_rows_without_key_are_dropped_and_counted():
    frame = series("a", cpu_utilisation=ramp(), memory_utilisation=ramp())
    future = frame.iloc[[-1]].assign(timestamp=END + pd.Timedelta(minutes=5), cpu_utilisation=0.0)
    broken = frame.iloc[[0, 1]].assign(instance=[None, "a"], timestamp=[STAMPS[0], pd.NaT])
    result = run(pd.concat([frame, future, broken]))
    assert result.counts == {"future": 1, "invalid_row": 2}
    np.testing.assert_array_equal(column(result, "a", "cpu_utilisation"), ramp())


def test_end_off_the_grid_is_refused_and_naive_end_is_utc():
    frame = series("a", cpu_utilisation=ramp(), memory_utilisation=ramp())
    with pytest.raises(ValueError, match="not on the 300 s grid"):
        clean(frame, (CPU,), END + pd.Timedelta(seconds=1), CONFIG)
    assert clean(frame, (CPU,), "2025-10-13T12:00:00", CONFIG).end == END


@pytest.mark.parametrize(
    "fields",
    [
        {"context_steps": 0},
        {"min_steps": 300},
        {"max_fill_gap": -1},
        {"max_missing_ratio": 1.5},
        {"step_seconds": 0},
    ],
)
def test_invalid_config_is_refused(fields):
    with pytest.raises(ValueError):
        CleanConfig(**fields)


def test_empty_frame_gives_empty_arrays():
    result = run(pd.DataFrame({"instance": [], "timestamp": [], "cpu_utilisation": []}))
    assert result.values.shape == (0, STEPS, 2) and result.lengths.shape == (0,)


def test_frame_without_key_columns_is_refused_naming_them():
    with pytest.raises(ValueError, match="missing columns timestamp"):
        run(pd.DataFrame({"instance": ["a"]}))


@pytest.mark.parametrize(
    "module",
    [
        forecaster.clean,
        forecaster.grid,
        forecaster.history_files,
        forecaster.records,
        forecaster.source,
    ],
)
@pytest.mark.fault("B3")
def test_library_validates_without_assert_so_python_O_changes_nothing(module):
    tree = ast.parse(Path(module.__file__).read_text())
    assert not [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Assert)]


# --- properties ---------------------------------------------------------------------------------

VALUE = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 0.5, 1e308, -1e308, 1e19, 5e-324, -5e-324, np.nan, np.inf, -np.inf]),
    st.floats(0, 1),
)
ROW = st.tuples(
    st.sampled_from(["a", "b", "c"]),
    st.integers(-30, 2),  # steps before END: inside, before and after the window
    st.sampled_from([0, -1, -150, -299]),  # seconds off the grid
    VALUE,
    VALUE,
    VALUE,
)
PROPERTY_QUANTITIES = (CPU, DISK, FREE)


def messy_frame(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(
        rows, columns=["instance", "steps", "offset", *(q.name for q in PROPERTY_QUANTITIES)]
    )
    frame["timestamp"] = END + pd.to_timedelta(
        frame.pop("steps") * 300 + frame.pop("offset"), unit="s"
    )
    return frame


@settings(max_examples=200, deadline=None)
@given(st.lists(ROW, max_size=60))
@pytest.mark.fault("B3", "B5")
def test_cleaner_never_raises_and_returns_finite_consistent_arrays(rows):
    result = clean(messy_frame(rows), PROPERTY_QUANTITIES, END, CONFIG)
    count = len(result.instances)
    assert result.values.shape == result.observed.shape == (count, STEPS, 3)
    assert np.isfinite(result.values).all()
    assert ((result.lengths >= 0) & (result.lengths <= STEPS)).all()
    before_history = np.arange(STEPS)[None, :] < (STEPS - result.lengths)[:, None]
    assert not result.observed[before_history].any()
    assert (result.values[before_history] == 0.0).all()
    assert (result.values[:, :, :2] >= 0.0).all() and (result.values[:, :, 0] <= 1.0).all()
    assert (np.abs(result.values) <= MAGNITUDE_LIMIT).all()
    assert set(result.counts) <= set(REASONS) and all(n > 0 for n in result.counts.values())
    assert set(result.skipped).isdisjoint(result.instances)


@settings(max_examples=200, deadline=None)
@given(st.lists(ROW, max_size=60), st.randoms(use_true_random=False))
@pytest.mark.fault("B4")
def test_cleaner_result_does_not_depend_on_row_order_or_repeated_rows(rows, rnd):
    frame = messy_frame(rows).drop_duplicates(["instance", "timestamp"])
    repeated = pd.concat([frame, frame.iloc[::2]])
    shuffled = repeated.sample(frac=1, random_state=rnd.randrange(2**32))
    assert_same_arrays(
        clean(shuffled, PROPERTY_QUANTITIES, END, CONFIG),
        clean(frame, PROPERTY_QUANTITIES, END, CONFIG),
    )
