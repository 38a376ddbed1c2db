"""Frames from PromQL answers, history files and pushed records land on one 5-minute UTC grid."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forecaster.grid import combine, regrid
from forecaster.history_files import read_history
from forecaster.records import RECORD_ERRORS, RecordError, from_records
from forecaster.source import SERIES_DROPS, SOURCE_ERRORS, SourceError, from_query_range

T0 = 1_760_000_100  # a multiple of 300 s: 2025-10-09T08:55:00Z
QUANTITIES = ("cpu_utilisation", "memory_utilisation", "disk_io", "request_latency_p95")

# A `query_range` answer (step=300) in the shape Prometheus 2.42 returns, written by hand to carry
# the special values, a series without `instance`, a duplicate instance and a warning.
RECORDED = json.loads(
    """
{
  "status": "success",
  "data": {
    "resultType": "matrix",
    "result": [
      {"metric": {"instance": "ppdb001"},
       "values": [[1760000100, "0.25"], [1760000400, "NaN"], [1760000700, "+Inf"]]},
      {"metric": {"instance": "ppweb001"},
       "values": [[1760000100, "-Inf"], [1760000400, "0.5"], [1760000700, "1e-320"]]},
      {"metric": {"job": "node"},
       "values": [[1760000100, "0.9"]]},
      {"metric": {"instance": "ppweb001", "job": "other"},
       "values": [[1760000700, "0.7"]]}
    ]
  },
  "warnings": ["PromQL info: metric might not be a counter"]
}
"""
)


def utc(seconds: float) -> pd.Timestamp:
    return pd.Timestamp(seconds, unit="s", tz="UTC")


def matrix(*series: tuple[dict, list]) -> dict:
    result = [{"metric": metric, "values": values} for metric, values in series]
    return {"status": "success", "data": {"resultType": "matrix", "result": result}}


# --- from_query_range ---------------------------------------------------------------------------


@pytest.mark.fault("B1")
def test_query_range_parses_nan_and_infinities_as_floats():
    frame = from_query_range(RECORDED, "cpu_utilisation").frame
    db = frame[frame["instance"] == "ppdb001"]["cpu_utilisation"].to_numpy()
    web = frame[frame["instance"] == "ppweb001"]["cpu_utilisation"].to_numpy()
    assert db[0] == 0.25 and np.isnan(db[1]) and db[2] == np.inf
    assert web[0] == -np.inf and web[1] == 0.5 and web[2] == 1e-320


def test_query_range_frame_has_utc_grid_timestamps_sorted_by_instance_and_time():
    frame = from_query_range(RECORDED, "cpu_utilisation").frame
    assert list(frame.columns) == ["instance", "timestamp", "cpu_utilisation"]
    assert str(frame["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert frame["cpu_utilisation"].dtype == np.float64
    assert list(frame["instance"]) == ["ppdb001"] * 3 + ["ppweb001"] * 3
    assert list(frame["timestamp"][:3]) == [utc(T0), utc(T0 + 300), utc(T0 + 600)]


def test_query_range_drops_series_without_instance_and_counts_it():
    result = from_query_range(RECORDED, "cpu_utilisation")
    assert result.dropped["no_instance"] == 1
    assert set(result.frame["instance"]) == {"ppdb001", "ppweb001"}


def test_query_range_keeps_the_series_with_more_points_for_a_duplicate_instance():
    result = from_query_range(RECORDED, "cpu_utilisation")
    assert result.dropped["duplicate_instance"] == 1
    assert len(result.frame[result.frame["instance"] == "ppweb001"]) == 3
    longer_second = matrix(
        ({"instance": "a", "job": "x"}, [[T0, "1"]]),
        ({"instance": "a", "job": "y"}, [[T0, "2"], [T0 + 300, "3"]]),
    )
    frame = from_query_range(longer_second, "q").frame
    assert list(frame["q"]) == [2.0, 3.0]


@pytest.mark.fault("B6")
def test_query_range_drops_instance_longer_than_the_label_limit():
    result = from_query_range(matrix(({"instance": "x" * 257}, [[T0, "1"]])), "q")
    assert result.dropped == Counter({"bad_instance": 1})
    assert result.frame.empty


def test_query_range_warnings_mark_the_answer_partial():
    assert from_query_range(RECORDED, "q").partial
    assert from_query_range(RECORDED, "q").warnings == (
        "PromQL info: metric might not be a counter",
    )
    assert not from_query_range(matrix(), "q").partial


def test_query_range_snaps_off_grid_evaluation_times_up_to_the_step():
    frame = from_query_range(matrix(({"instance": "a"}, [[T0 + 10.5, "1"]])), "q").frame
    assert list(frame["timestamp"]) == [utc(T0 + 300)]


def test_query_range_empty_result_gives_empty_frame_with_its_columns():
    frame = from_query_range(matrix(), "q").frame
    assert frame.empty
    assert list(frame.columns) == ["instance", "timestamp", "q"]


def test_query_range_error_status_raises_source_error_naming_prometheus_error():
    payload = {"status": "error", "errorType": "timeout", "error": "query timed out"}
    with pytest.raises(SourceError) as raised:
        from_query_range(payload, "q")
    assert raised.value.reason == "error_status"
    assert "timeout" in str(raised.value)


@pytest.mark.parametrize(
    "payload",
    [
        "<html>502 Bad Gateway</html>",
        None,
        {},
        {"status": "success"},
        {"status": "success", "data": {"resultType": "vector", "result": []}},
        {"status": "success", "data": {"resultType": "matrix", "result": {}}},
        {"status": "success", "data": {"resultType": "matrix", "result": []}, "warnings": "w"},
        matrix(({"instance": "a"}, [[T0, None]])),
        matrix(({"instance": "a"}, [[T0, "1", "extra"]])),
        matrix(({"instance": "a"}, [[T0, "one"]])),
        matrix(({"instance": "a"}, [[T0, ["1", "2"]]])),
        matrix(({"instance": "a"}, [[10**400, "1"]])),
        {"status": "success", "data": {"resultType": "matrix", "result": [{"values": []}]}},
        {"status": "success", "data": {"resultType": "matrix", "result": ["x"]}},
    ],
)
def test_query_range_malformed_answer_raises_bad_response(payload):
    with pytest.raises(SourceError) as raised:
        from_query_range(payload, "q")
    assert raised.value.reason == "bad_response"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
SAMPLE = st.tuples(
    st.integers(T0, T0 + 3000) | st.floats() | st.text(max_size=4),
    st.sampled_from(["1", "NaN", "+Inf", "-Inf", "1e308", "5e-324"]) | JSON,
)
SERIES = st.fixed_dictionaries(
    {
        "metric": st.fixed_dictionaries({"instance": st.sampled_from(["a", "b"])})
        | st.dictionaries(st.sampled_from(["instance", "job"]), JSON),
        "values": st.lists(SAMPLE.map(list), max_size=4)
        | st.lists(SAMPLE.map(list) | JSON, max_size=4),
    }
)
RANGE_ANSWER = st.lists(SERIES, max_size=4).map(
    lambda series: {"status": "success", "data": {"resultType": "matrix", "result": series}}
)


@settings(max_examples=200, deadline=None)
@given(JSON | RANGE_ANSWER)
def test_query_range_parser_raises_only_source_error_on_any_json(payload):
    try:
        result = from_query_range(payload, "q")
    except SourceError as error:
        assert error.reason in SOURCE_ERRORS
        return
    assert set(result.dropped) <= set(SERIES_DROPS)
    assert not result.frame.duplicated(["instance", "timestamp"]).any()


# --- combine ------------------------------------------------------------------------------------


def long(instance: str, name: str, values: list[float], first: int = T0) -> pd.DataFrame:
    stamps = [utc(first + 300 * i) for i in range(len(values))]
    return pd.DataFrame({"instance": instance, "timestamp": stamps, name: values})


def test_combine_outer_joins_quantities_into_a_wide_frame():
    cpu = pd.concat([long("a", "cpu", [0.1, 0.2]), long("b", "cpu", [0.3])])
    disk = long("a", "disk", [5.0], first=T0 + 300)
    wide = combine({"cpu": cpu, "disk": disk})
    assert list(wide.columns) == ["instance", "timestamp", "cpu", "disk"]
    assert list(wide["instance"]) == ["a", "a", "b"]
    assert list(wide["cpu"]) == [0.1, 0.2, 0.3]
    assert np.isnan(wide["disk"][0]) and wide["disk"][1] == 5.0 and np.isnan(wide["disk"][2])


def test_combine_of_no_parts_is_an_empty_wide_frame():
    wide = combine({})
    assert wide.empty and list(wide.columns) == ["instance", "timestamp"]


def test_combine_names_the_missing_column_of_a_part():
    with pytest.raises(ValueError, match="part 'disk': missing columns disk"):
        combine({"disk": long("a", "cpu", [1.0])})


# --- read_history -------------------------------------------------------------------------------


def simulator_history(stamps) -> pd.DataFrame:
    """The simulator's parquet layout: sorted by (timestamp, instance), with profile and state."""
    return pd.DataFrame(
        {
            "timestamp": stamps,
            "instance": ["ppdb001", "ppweb001"] * 2,
            "profile": ["database", "web_api"] * 2,
            "cpu_utilisation": [0.1, 0.2, 0.3, 0.4],
            "disk_io": [1.0, 2.0, 3.0, 4.0],
            "state": "healthy",
        }
    )


def test_read_history_reads_the_simulator_directory_selecting_quantities(tmp_path):
    stamps = np.repeat(pd.to_datetime([T0, T0 + 300], unit="s", utc=True), 2)
    simulator_history(stamps).to_parquet(tmp_path / "server_metrics.parquet")
    wide = read_history(tmp_path, ["disk_io"])
    assert list(wide.columns) == ["instance", "timestamp", "profile", "disk_io"]
    assert list(wide["instance"]) == ["ppdb001", "ppdb001", "ppweb001", "ppweb001"]
    assert list(wide["disk_io"]) == [1.0, 3.0, 2.0, 4.0]
    assert list(wide["timestamp"][:2]) == [utc(T0), utc(T0 + 300)]


@pytest.mark.parametrize(
    "stamps",
    [
        np.repeat(pd.to_datetime([T0, T0 + 300], unit="s"), 2),  # naive: taken as UTC
        np.repeat(pd.to_datetime([T0, T0 + 300], unit="s", utc=True).tz_convert("Asia/Tokyo"), 2),
        np.repeat([float(T0), float(T0 + 300)], 2),  # unix seconds
    ],
    ids=["naive", "tokyo", "unix_seconds"],
)
def test_read_history_gives_utc_timestamps_from_any_timestamp_encoding(tmp_path, stamps):
    path = tmp_path / "h.parquet"
    simulator_history(stamps).to_parquet(path)
    wide = read_history(path, ["cpu_utilisation"])
    assert str(wide["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert list(wide["timestamp"][:2]) == [utc(T0), utc(T0 + 300)]


def test_read_history_error_names_the_missing_quantity(tmp_path):
    path = tmp_path / "h.parquet"
    simulator_history(pd.to_datetime([T0] * 4, unit="s", utc=True)).to_parquet(path)
    with pytest.raises(ValueError, match="missing columns gc_pause"):
        read_history(path, ["cpu_utilisation", "gc_pause"])


def long_history() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "instance": ["a", "a", "a", "b"],
            "timestamp": pd.to_datetime([T0, T0, T0 + 300, T0], unit="s", utc=True),
            "quantity": ["cpu_utilisation", "disk_io", "cpu_utilisation", "gc_pause"],
            "value": [0.5, 7.0, 0.6, 0.01],
        }
    )


def test_read_history_pivots_the_long_format(tmp_path):
    path = tmp_path / "long.parquet"
    long_history().to_parquet(path)
    wide = read_history(path, ["cpu_utilisation", "disk_io"])
    assert list(wide.columns) == ["instance", "timestamp", "cpu_utilisation", "disk_io"]
    assert list(wide["instance"]) == ["a", "a"]
    assert list(wide["cpu_utilisation"]) == [0.5, 0.6]
    assert wide["disk_io"][0] == 7.0 and np.isnan(wide["disk_io"][1])


def test_read_history_long_format_error_names_the_missing_quantity(tmp_path):
    path = tmp_path / "long.parquet"
    long_history().to_parquet(path)
    with pytest.raises(ValueError, match="no rows for quantities load1"):
        read_history(path, ["cpu_utilisation", "load1"])


# --- from_records -------------------------------------------------------------------------------


SEED_RECORD = {
    "timestamp": "2025-10-13T10:30:00",
    "server_name": "ppdb001",
    "profile": "database",
    "state": "healthy",
    "cpu_pct": 45.2,
    "mem_pct": 62.1,
    "disk_io_mb_s": 120.5,
    "latency_ms": 8.2,
    "net_in_mb_s": 45.3,
    "net_out_mb_s": 38.7,
    "error_rate": 0.002,
    "gc_pause_ms": 15.4,
}


def test_from_records_converts_seed_fields_to_contract_base_units():
    names = (*QUANTITIES, "network_receive", "network_transmit", "http_error_ratio", "gc_pause")
    frame, errors = from_records([SEED_RECORD], names)
    assert errors == []
    row = frame.iloc[0]
    assert row["instance"] == "ppdb001" and row["profile"] == "database"
    assert row["timestamp"] == pd.Timestamp("2025-10-13T10:30:00Z")
    assert row["cpu_utilisation"] == pytest.approx(0.452)
    assert row["memory_utilisation"] == pytest.approx(0.621)
    assert row["disk_io"] == pytest.approx(120.5 * 1024 * 1024)
    assert row["request_latency_p95"] == pytest.approx(0.0082)
    assert row["network_receive"] == pytest.approx(45.3 * 1024 * 1024)
    assert row["network_transmit"] == pytest.approx(38.7 * 1024 * 1024)
    assert row["http_error_ratio"] == pytest.approx(0.002)
    assert row["gc_pause"] == pytest.approx(0.0154)


def test_from_records_accepts_contract_names_unix_seconds_and_utc_offsets():
    records = [
        {"server_name": "a", "timestamp": T0, "cpu_utilisation": 0.5},
        {"server_name": "b", "timestamp": "2025-10-09T10:55:00+02:00", "disk_io": 3},
    ]
    frame, errors = from_records(records, QUANTITIES)
    assert errors == []
    assert list(frame["timestamp"]) == [utc(T0), utc(T0)]
    assert frame["cpu_utilisation"][0] == 0.5 and frame["disk_io"][1] == 3.0
    assert frame["profile"].isna().all()


GOOD = {"server_name": "ppdb001", "timestamp": T0, "cpu_pct": 50}


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ("not a record", "not_an_object"),
        ({"timestamp": T0, "cpu_pct": 1}, "missing_server_name"),
        (GOOD | {"server_name": 'a"} or vector(1) or x{y="'}, "invalid_server_name"),
        (GOOD | {"server_name": "x" * 129}, "invalid_server_name"),
        (GOOD | {"server_name": ""}, "invalid_server_name"),
        (GOOD | {"server_name": 7}, "invalid_server_name"),
        ({"server_name": "a", "cpu_pct": 1}, "missing_timestamp"),
        (GOOD | {"timestamp": "yesterday"}, "invalid_timestamp"),
        (GOOD | {"timestamp": 1e300}, "invalid_timestamp"),
        (GOOD | {"timestamp": [T0]}, "invalid_timestamp"),
        (GOOD | {"profile": "web api"}, "invalid_profile"),
        (GOOD | {"cpu_pct": "50"}, "non_numeric_value"),
        (GOOD | {"cpu_pct": True}, "non_numeric_value"),
        (GOOD | {"cpu_pct": 10**400}, "non_numeric_value"),
        (GOOD | {"cpu_utilisation": 0.5}, "conflicting_quantity"),
        ({"server_name": "a", "timestamp": T0, "load1": 1, "cpu_pct": None}, "no_quantity"),
    ],
)
@pytest.mark.fault("B7")
def test_from_records_reports_an_invalid_record_and_keeps_the_valid_ones(record, reason):
    frame, errors = from_records([GOOD, record, GOOD | {"server_name": "b"}], QUANTITIES)
    assert errors == [RecordError(1, reason)]
    assert list(frame["instance"]) == ["b", "ppdb001"]


def test_from_records_keeps_nan_and_infinity_for_the_cleaner():
    frame, errors = from_records([GOOD | {"cpu_pct": float("nan"), "mem_pct": 1e999}], QUANTITIES)
    assert errors == []
    assert np.isnan(frame["cpu_utilisation"][0]) and frame["memory_utilisation"][0] == np.inf


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(JSON, st.dictionaries(st.sampled_from(list(GOOD)), JSON)), max_size=5))
def test_from_records_never_raises_and_reports_every_refused_record(records):
    frame, errors = from_records(records, QUANTITIES)
    assert all(error.reason in RECORD_ERRORS for error in errors)
    assert len({error.index for error in errors}) == len(errors)
    assert not frame.duplicated(["instance", "timestamp"]).any()


@pytest.mark.parametrize(
    "stamp",
    [
        10**400,
        -(10**400),
        2**63,
        float("inf"),
        float("nan"),
        "9999-12-31T23:59:59Z",
        "2025-10-09T10:55:00+99:00",
        "2025-10-09T24:00:00",
    ],
)
def test_a_timestamp_no_datetime_holds_refuses_only_its_own_record(stamp):
    records = [GOOD, GOOD | {"server_name": "big", "timestamp": stamp}, GOOD | {"server_name": "b"}]
    frame, errors = from_records(records, QUANTITIES)
    assert errors == [RecordError(1, "invalid_timestamp")]
    assert list(frame["instance"]) == ["b", "ppdb001"]
    assert list(frame["timestamp"]) == [utc(T0), utc(T0)]


ANY_VALUE = JSON | st.integers(-(10**400), 10**400) | st.floats(-1e308, 1e308)
ONE_FIELD_OFF = st.builds(
    lambda field, value: GOOD | {"server_name": "x", field: value},
    st.sampled_from(["timestamp", "cpu_pct", "cpu_utilisation", "disk_io", "profile"]),
    ANY_VALUE,
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(JSON, st.dictionaries(st.sampled_from(list(GOOD)), ANY_VALUE), ONE_FIELD_OFF),
        max_size=5,
    ),
    st.data(),
)
def test_every_good_record_is_kept_whatever_the_others_hold(junk, data):
    good = [GOOD | {"server_name": f"good{k}", "timestamp": T0 + 300 * k} for k in range(3)]
    records = list(junk)
    for record in good:
        records.insert(data.draw(st.integers(0, len(records))), record)
    frame, errors = from_records(records, QUANTITIES)
    refused = {error.index for error in errors}
    assert not refused & {records.index(record) for record in good}
    kept = frame.set_index("instance")
    for k in range(3):
        assert kept.loc[f"good{k}", "timestamp"] == utc(T0 + 300 * k)
        assert kept.loc[f"good{k}", "cpu_utilisation"] == 0.5


WINDOW = (T0 - 3000, T0 + 600)  # (oldest, newest] unix seconds a record may carry


@pytest.mark.parametrize(
    ("stamp", "reason"),
    [
        (0, "outside_window"),  # 1970
        ("1970-01-01T00:00:00Z", "outside_window"),
        (T0 - 3000, "outside_window"),
        (T0 - 2999, None),
        (T0, None),
        ("2025-10-09T08:55:00Z", None),
        (T0 + 600, None),
        (T0 + 601, "outside_window"),
        (T0 + 86_400 * 365, "outside_window"),
    ],
)
def test_records_outside_the_window_are_refused_with_a_reason(stamp, reason):
    records = [GOOD, GOOD | {"server_name": "other", "timestamp": stamp}]
    frame, errors = from_records(records, QUANTITIES, window=WINDOW)
    assert errors == ([RecordError(1, reason)] if reason else [])
    assert set(frame["instance"]) == ({"ppdb001"} if reason else {"ppdb001", "other"})


@pytest.mark.parametrize(
    "fields",
    [
        {"cpu_pct": 1e308},  # a ratio of 1e306
        {"cpu_utilisation": 1e306},
        {"cpu_utilisation": -5000.0},
        {"mem_pct": 2e5},  # 2000 as a ratio: no unit mistake explains it
        {"disk_io_mb_s": 1e308},  # finite in, beyond float64 once converted to bytes/s
        {"disk_io": 1e19},  # beyond any plausible magnitude
        {"latency_ms": -1e300},
    ],
)
def test_impossible_values_refuse_their_record(fields):
    records = [GOOD, {"server_name": "b", "timestamp": T0, "mem_pct": 40} | fields]
    frame, errors = from_records(records, QUANTITIES)
    assert errors == [RecordError(1, "impossible_value")]
    assert list(frame["instance"]) == ["ppdb001"]


def test_values_merely_outside_the_domain_are_kept_for_the_cleaner_to_clip():
    records = [
        GOOD | {"cpu_pct": 101.5},  # rounding
        GOOD | {"server_name": "b", "cpu_pct": None, "cpu_utilisation": 45.0},  # percent
        GOOD | {"server_name": "c", "disk_io": -3.0, "cpu_pct": None},
    ]
    frame, errors = from_records(records, QUANTITIES)
    assert errors == []
    assert frame.set_index("instance")["cpu_utilisation"].to_dict() == pytest.approx(
        {"b": 45.0, "c": np.nan, "ppdb001": 1.015}, nan_ok=True
    )


def test_domains_can_be_given_for_quantities_the_packaged_contract_lacks():
    names = (*QUANTITIES, "queue_ratio")
    records = [
        GOOD | {"queue_ratio": 0.25},
        GOOD | {"server_name": "b", "queue_ratio": 5000.0},
        GOOD | {"server_name": "c", "queue_ratio": 1e19},
    ]
    _, magnitude_only = from_records(records, names)
    frame, errors = from_records(records, names, domains={"queue_ratio": (0, 1)})
    assert magnitude_only == [RecordError(2, "impossible_value")]
    assert errors == [RecordError(1, "impossible_value"), RecordError(2, "impossible_value")]
    assert frame["queue_ratio"].tolist() == [0.25]


# --- regrid -------------------------------------------------------------------------------------


def test_regrid_snaps_each_sample_up_to_the_step_it_ends():
    frame = pd.DataFrame(
        {"instance": "a", "timestamp": [utc(T0), utc(T0 + 1), utc(T0 + 450)], "q": [1.0, 2.0, 3.0]}
    )
    out = regrid(frame)
    assert list(out["timestamp"]) == [utc(T0), utc(T0 + 300), utc(T0 + 600)]
    assert list(out["q"]) == [1.0, 2.0, 3.0]


@pytest.mark.fault("B4")
def test_regrid_keeps_the_latest_sample_of_a_step_whatever_the_row_order():
    frame = pd.DataFrame(
        {
            "instance": ["b", "a", "a", "a"],
            "timestamp": [utc(T0), utc(T0 + 290), utc(T0 + 10), utc(T0 + 150)],
            "q": [9.0, 3.0, 1.0, 2.0],
        }
    )
    out = regrid(frame)
    assert list(out["instance"]) == ["a", "b"]
    assert list(out["q"]) == [3.0, 9.0]
    assert list(out["timestamp"]) == [utc(T0 + 300), utc(T0)]


def test_regrid_takes_the_latest_non_null_value_of_each_column():
    frame = pd.DataFrame(
        {
            "instance": "a",
            "timestamp": [utc(T0 + 10), utc(T0 + 20)],
            "q": [1.0, np.nan],
            "r": [np.nan, 2.0],
        }
    )
    out = regrid(frame)
    assert len(out) == 1 and out["q"][0] == 1.0 and out["r"][0] == 2.0


def test_regrid_equal_timestamps_keep_the_row_that_came_last():
    frame = pd.DataFrame({"instance": "a", "timestamp": [utc(T0)] * 2, "q": [1.0, 2.0]})
    assert list(regrid(frame)["q"]) == [2.0]


def test_regrid_drops_rows_without_instance_or_timestamp():
    frame = pd.DataFrame(
        {"instance": ["a", None, "a"], "timestamp": [utc(T0), utc(T0), pd.NaT], "q": [1.0] * 3}
    )
    assert len(regrid(frame)) == 1


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("abc"), st.integers(-(10**6), 10**6), st.floats()), max_size=30
    ),
    st.randoms(use_true_random=False),
)
@pytest.mark.fault("B4")
def test_regrid_output_is_unique_sorted_on_grid_and_independent_of_row_order(rows, rnd):
    frame = pd.DataFrame(rows, columns=["instance", "seconds", "q"]).drop_duplicates(
        ["instance", "seconds"]
    )
    frame["timestamp"] = frame.pop("seconds") + T0
    out = regrid(frame)
    shuffled = regrid(frame.sample(frac=1, random_state=rnd.randrange(2**32)))
    pd.testing.assert_frame_equal(out, shuffled)
    seconds = out["timestamp"].astype("int64") // 10**9
    assert (seconds % 300 == 0).all()
    assert not out.duplicated(["instance", "timestamp"]).any()
    assert out.equals(out.sort_values(["instance", "timestamp"]))
