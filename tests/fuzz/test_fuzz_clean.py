"""Fuzz target 2: the cleaner (`forecaster.clean.clean`).

Arbitrary float arrays (NaN, infinities, huge, negative, subnormal values) laid on the grid in
any row order, with timestamps in every encoding `to_utc` reads, under any valid
`CleanConfig`, come out with the documented shape and treatment: dense finite arrays, the
mask of what was observed, each observed value its input clipped to the quantity's domain,
each filled value between observed ones, nothing before an instance's usable history, and
the skip reasons and counts that the module docstring defines. Messy frames (object columns,
strings, booleans, missing keys, duplicated and future rows, odd domains) never raise.

`tests/unit/test_clean.py` checks the invariants on frames of a fixed small shape; these
properties compare every cell with an independent model of the cleaner's rules.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from forecaster.clean import MAGNITUDE_LIMIT, REASONS, CleanConfig, Cleaned, clean
from forecaster.contract import Quantity, load_contract
from forecaster.grid import as_float, regrid
from tests.fuzz.common import FUZZ, ODD_TEXT, any_floats, json_scalars

pytestmark = pytest.mark.fuzz

STEP = 300
END = pd.Timestamp("2025-10-13T12:00:00Z")
CONTRACT = {q.name: q for q in load_contract().quantities}


def custom(name: str, role: str, domain: tuple[float | None, float | None]) -> Quantity:
    return Quantity(name, role, "units", domain, f"instance:{name}:x", name)


QUANTITIES = (
    CONTRACT["cpu_utilisation"],  # target, [0, 1]
    CONTRACT["disk_io"],  # target, [0, None]
    CONTRACT["load1"],  # covariate
    custom("free", "covariate", (None, None)),
    custom("signed", "target", (-5.0, 5.0)),
    custom("wide", "target", (1e-300, 1e300)),
)

configs = st.builds(
    lambda width, min_share, gap, ratio: CleanConfig(
        context_steps=width,
        min_steps=int(min_share * width),
        max_fill_gap=gap,
        max_missing_ratio=ratio,
        step_seconds=STEP,
    ),
    st.integers(1, 16),
    st.floats(0, 1),
    st.integers(0, 5),
    st.sampled_from([0.0, 0.2, 0.5, 1.0]) | st.floats(0, 1),
)
cell_values = any_floats | st.floats(-2, 2) | st.floats(0, 1)


def bounds(quantity: Quantity) -> tuple[float, float]:
    """The clipping bounds the module docstring gives: the domain, within +-MAGNITUDE_LIMIT."""
    low, high = quantity.domain
    low = -MAGNITUDE_LIMIT if low is None else max(low, -MAGNITUDE_LIMIT)
    high = MAGNITUDE_LIMIT if high is None else min(high, MAGNITUDE_LIMIT)
    return low, high


def encode_times(seconds: np.ndarray, kind: str) -> pd.Series:
    """The same instants in one of the encodings a WIDE frame's timestamp column may have."""
    stamps = pd.to_datetime(seconds, unit="s", utc=True)
    if kind == "utc":
        return pd.Series(stamps)
    if kind == "other_zone":
        return pd.Series(stamps.tz_convert("Asia/Kolkata"))
    if kind == "naive":
        return pd.Series(stamps.tz_localize(None))
    if kind == "int_seconds":
        return pd.Series(seconds.astype(np.int64))
    if kind == "float_seconds":
        return pd.Series(seconds.astype(np.float64))
    if kind == "iso":
        return pd.Series([s.isoformat() for s in stamps], dtype=object)
    mixed = [
        s.isoformat() if k % 2 else int(t)
        for k, (s, t) in enumerate(zip(stamps, seconds, strict=True))
    ]
    return pd.Series(mixed, dtype=object)


@st.composite
def grids(draw: st.DrawFn) -> tuple[pd.DataFrame, np.ndarray, tuple[Quantity, ...], CleanConfig]:
    """A WIDE frame with at most one row per (instance, step): the dense input array
    (instances, window, quantities) NaN where no row, and the frame holding it."""
    config = draw(configs)
    chosen = tuple(draw(st.lists(st.sampled_from(QUANTITIES), min_size=1, max_size=4, unique=True)))
    count = draw(st.integers(1, 3))
    before, after = draw(st.integers(0, 3)), draw(st.integers(0, 2))
    steps = before + config.context_steps + after
    values = draw(hnp.arrays(np.float64, (count, steps, len(chosen)), elements=cell_values))
    present = draw(hnp.arrays(np.bool_, (count, steps), elements=st.booleans() | st.just(True)))
    offsets = draw(hnp.arrays(np.int64, (count, steps), elements=st.sampled_from([0, -1, -299])))
    names = draw(
        st.lists(
            st.sampled_from(["a", "b", "ppdb001", "", " ", "中", '"']),
            min_size=count,
            max_size=count,
            unique=True,
        )
    )
    # step k of the input lies (steps - 1 - after - k) steps before END
    back = np.arange(steps)[::-1] - after
    end = END.value // 1_000_000_000
    rows = [
        (names[i], end - back[k] * STEP + offsets[i, k], *values[i, k])
        for i in range(count)
        for k in range(steps)
        if present[i, k]
    ]
    order = draw(st.permutations(range(len(rows))))
    rows = [rows[k] for k in order]
    seconds = np.array([row[1] for row in rows], dtype=np.int64)
    frame = pd.DataFrame(
        {
            "instance": pd.Series([row[0] for row in rows], dtype=object),
            "timestamp": encode_times(seconds, draw(st.sampled_from(TIME_KINDS))),
            **{q.name: [row[2 + j] for row in rows] for j, q in enumerate(chosen)},
        }
    )
    window = {name: np.full((config.context_steps, len(chosen)), np.nan) for name in names}
    for i, name in enumerate(names):
        for k in range(steps):
            position = config.context_steps - 1 - back[k]
            if present[i, k] and 0 <= position < config.context_steps:
                window[name][position] = values[i, k]
    held = sorted({row[0] for row in rows})
    return frame, np.stack([window[name] for name in held]) if held else None, chosen, config


TIME_KINDS = ("utc", "other_zone", "naive", "int_seconds", "float_seconds", "iso", "mixed")


def check_invariants(result: Cleaned, quantities: tuple[Quantity, ...], width: int) -> None:
    count = len(result.instances)
    shape = (count, width, len(quantities))
    assert result.values.shape == result.observed.shape == shape
    assert result.values.dtype == np.float64 and result.observed.dtype == np.bool_
    assert result.lengths.dtype == np.int64 and result.lengths.shape == (count,)
    assert np.isfinite(result.values).all()
    assert (np.abs(result.values) <= MAGNITUDE_LIMIT).all()
    assert ((result.lengths >= 0) & (result.lengths <= width)).all()
    before = np.arange(width)[None, :] < (width - result.lengths)[:, None]
    assert not result.observed[before].any()
    assert (result.values[before] == 0.0).all()
    assert list(result.instances) == sorted(result.instances)
    assert set(result.skipped).isdisjoint(result.instances)
    assert set(result.skipped.values()) <= {"missing", "no_data"}
    assert set(result.counts) <= set(REASONS) and all(n > 0 for n in result.counts.values())
    for j, quantity in enumerate(quantities):
        low, high = bounds(quantity)
        usable = ~before[:, :, None].repeat(1, axis=2)[:, :, 0]
        column = result.values[:, :, j][usable & result.observed.any(axis=1)[:, None, j]]
        if low <= high:  # observed and filled values alike
            assert ((column >= low) & (column <= high)).all(), quantity.name
    assert result.outside is not None and result.outside.shape == (count, len(quantities))
    assert ((result.outside >= 0) & (result.outside <= 1)).all()


@FUZZ
@given(grids())
def test_every_cell_gets_the_documented_treatment(case):
    frame, window, quantities, config = case
    result = clean(frame, quantities, END, config)
    width = config.context_steps
    check_invariants(result, quantities, width)
    names = sorted(set(frame["instance"]))
    assert sorted([*result.instances, *result.skipped]) == names
    if window is None:
        return
    targets = np.array([q.role == "target" for q in quantities])
    low = np.array([bounds(q)[0] for q in quantities])
    high = np.array([bounds(q)[1] for q in quantities])
    finite = np.isfinite(window)
    clipped = np.clip(window, low, high)
    for i, name in enumerate(names):
        seen = finite[i][:, targets]
        firsts = [int(np.argmax(seen[:, t])) for t in range(seen.shape[1]) if seen[:, t].any()]
        length = width - max(firsts) if firsts else 0
        present = seen.any(axis=0)
        unseen = length - seen[width - length :].sum(axis=0)
        sparse = bool((present & (unseen > config.max_missing_ratio * length)).any())
        if length == 0:
            assert result.skipped.get(name) == "no_data"
            continue
        if sparse:
            assert result.skipped.get(name) == "missing"
            continue
        row = result.instances.index(name)
        assert result.lengths[row] == length
        usable = np.arange(width) >= width - length
        observed = finite[i] & usable[:, None]
        assert (result.observed[row] == observed).all()
        assert (result.values[row][observed] == clipped[i][observed]).all()
        for j in range(len(quantities)):
            column, mask = result.values[row, :, j], observed[:, j]
            filled = column[usable & ~mask]
            if mask.any():  # interpolated or carried: between the observed values
                least, most = column[mask].min(), column[mask].max()
                assert ((filled >= least) & (filled <= most)).all()
            else:  # absent: zeros, never invented
                assert (filled == 0.0).all()
    assert result.counts.get("inf", 0) == int(np.isinf(window).sum())
    assert result.counts.get("out_of_domain", 0) == int(
        np.count_nonzero((clipped != window) & np.isfinite(window))
    )


# --- messy frames -------------------------------------------------------------------------------

messy_cells = (
    any_floats
    | json_scalars
    | st.sampled_from([pd.NaT, pd.NA, np.datetime64("NaT"), np.float32(1.5), np.int64(-3)])
)
messy_times = (
    st.integers(-30, 3).map(lambda k: END + pd.Timedelta(seconds=STEP * k))
    | st.integers(-30, 3).map(lambda k: END.value // 10**9 + STEP * k)
    | st.integers(-30, 3).map(lambda k: (END + pd.Timedelta(seconds=STEP * k)).isoformat())
    | st.sampled_from([None, pd.NaT, math.nan, math.inf, 10**400, 1e300, "yesterday", True, ""])
    | st.sampled_from(  # the ends of datetime64 and centuries away: int64 nanoseconds overflow
        [
            pd.Timestamp.max.tz_localize("UTC"),
            pd.Timestamp.min.tz_localize("UTC"),
            pd.Timestamp("1700-01-01", tz="UTC"),
            pd.Timestamp("2261-12-31", tz="UTC"),
            9.2e9 - 1,
        ]
    )
    | json_scalars
)
messy_names = st.sampled_from(["a", "b", None, math.nan, 7, "", *ODD_TEXT[:6]])
odd_domains = st.tuples(
    st.none() | any_floats, st.none() | any_floats
)  # inverted, infinite, NaN bounds: a custom quantity's domain is not validated


@FUZZ
@given(
    st.lists(st.tuples(messy_names, messy_times, messy_cells, messy_cells), max_size=12),
    st.sampled_from(["object", "float"]),
    odd_domains,
    configs,
)
@example(  # crasher: an int beyond float64 in an object column (OverflowError from to_numeric)
    rows=[("a", END, 10**400, 0.0)], kind="object", domain=(None, None), config=CleanConfig(1, 0)
)
def test_messy_frames_never_raise_and_give_finite_arrays(rows, kind, domain, config):
    frame = pd.DataFrame(
        {
            "instance": pd.Series([r[0] for r in rows], dtype=object),
            "timestamp": pd.Series([r[1] for r in rows], dtype=object),
            "cpu_utilisation": pd.Series([r[2] for r in rows], dtype=object),
            "odd": pd.Series([r[3] for r in rows], dtype=object),
            "unknown": 1,
        }
    )
    if kind == "float":
        numbers = [as_float(value) for value in frame["cpu_utilisation"]]
        frame["cpu_utilisation"] = [math.nan if n is None else n for n in numbers]
    quantities = (CONTRACT["cpu_utilisation"], custom("odd", "target", domain))
    result = clean(frame, quantities, END, config)
    width = config.context_steps
    count = len(result.instances)
    assert result.values.shape == result.observed.shape == (count, width, 2)
    assert np.isfinite(result.values).all()
    assert set(result.counts) <= set(REASONS)
    assert result.counts.get("unknown_quantity", 0) == 1


# --- crashers and violations the fuzzer found, kept as regressions ------------------------------


def one_series(values: list[float], name: str = "cpu_utilisation") -> pd.DataFrame:
    stamps = pd.date_range(end=END, periods=len(values), freq=f"{STEP}s")
    return pd.DataFrame({"instance": "a", "timestamp": stamps, name: values})


def test_an_interpolated_value_between_subnormals_does_not_vanish():
    # 5e-324 * 0.5 + 5e-324 * 0.5 is 0.0: below both neighbours
    frame = one_series([5e-324, math.nan, 5e-324])
    config = CleanConfig(context_steps=3, min_steps=0, max_fill_gap=1, max_missing_ratio=1.0)
    result = clean(frame, (CONTRACT["cpu_utilisation"],), END, config)
    assert result.values[0, :, 0].tolist() == [5e-324, 5e-324, 5e-324]


def test_an_interpolated_constant_stays_on_its_domain_bound():
    # 5 * (1 - 1/7) + 5 * (1/7) is 5.000000000000001: past the domain's upper bound
    signed = QUANTITIES[4]
    frame = one_series([5.0, *[math.nan] * 6, 5.0], signed.name)
    config = CleanConfig(context_steps=8, min_steps=0, max_fill_gap=6, max_missing_ratio=1.0)
    result = clean(frame, (signed,), END, config)
    assert (result.values[0, :, 0] == 5.0).all()


def test_a_time_within_a_step_of_datetime64s_end_is_an_invalid_row():
    # found by the long run: its step on the grid overflowed int64 (regrid wrapped it to 1677)
    times = pd.Series([pd.Timestamp.max.tz_localize("UTC"), END])
    frame = pd.DataFrame({"instance": "a", "timestamp": times, "cpu_utilisation": [0.5, 0.6]})
    assert regrid(frame)["timestamp"].tolist() == [END]
    config = CleanConfig(context_steps=4, min_steps=0)
    result = clean(frame, (CONTRACT["cpu_utilisation"],), END, config)
    assert result.counts["invalid_row"] == 1 and "future" not in result.counts


def test_rows_centuries_apart_are_placed_without_overflow():
    # end - step and np.diff overflowed int64: a row of 1700 counted `future` and `unsorted`
    times = pd.Series([pd.Timestamp("1700-01-01", tz="UTC"), END])
    frame = pd.DataFrame({"instance": "a", "timestamp": times, "cpu_utilisation": [0.5, 0.6]})
    config = CleanConfig(context_steps=4, min_steps=0)
    result = clean(frame, (CONTRACT["cpu_utilisation"],), END, config)
    assert "future" not in result.counts and "unsorted" not in result.counts
    assert result.values[0, :, 0].tolist() == [0.0, 0.0, 0.0, 0.6]
