"""Fuzz target 5: every artefact loader, fed files that are broken in every way.

- The persisted snapshot (`forecaster.persist.load_snapshot`): any bytes, a valid file with
  bytes overwritten, its JSON part replaced or changed key by key, its arrays of other dtypes
  and shapes, a planted pickle: None, or a snapshot the service can serve (the hub renders and
  publishes it, every REST body serialises); never an exception, never unpickling. A saved
  snapshot loads back equal.
- The model registry (`Registry.pointer` and `Registry.checked`, with the artefact schemas of
  `forecaster.model.schema`): the shipped version with one value of `model_config.json`,
  `dataset_parameters.json` (the dataset parameters training writes and the loader rebuilds),
  `calibration.json`, `server_mapping.json` or the manifest replaced by any JSON, a key
  removed or added, bytes of a file or of the safetensors header overwritten, any pointer:
  the version is accepted or refused with `RegistryError` (a reason of its `REASONS`); the
  pointer reads as names or fails the way `ModelHolder.check` handles.
- History files (`forecaster.history_files.read_history`): any bytes, a valid parquet file
  with bytes overwritten, and parquet files whose columns have any type: a WIDE frame on the
  grid, or `ValueError` / `OSError` (what the training jobs turn into `bad_history`).

Each property works in one temporary directory of its own (module fixtures), restored after
every example.
"""

from __future__ import annotations

import copy
import io
import json
import pickle
import shutil
import struct
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import assume, event, example, given
from hypothesis import strategies as st

from exporter.hub import Hub
from exporter.snapshot import ServiceState, Snapshot
from exporter.views import alerts_body, dumps, server_body, status_body
from forecaster.grid import STEP_SECONDS
from forecaster.history_files import read_history
from forecaster.persist import FILENAME, load_snapshot, save_snapshot
from forecaster.registry import MANIFEST, POINTER, Manifest, Registry, RegistryError, sha256_of
from tests.exporter_fixtures import fixed_snapshot
from tests.fuzz.common import FUZZ, any_floats, any_ints, any_text, deep_json, json_values, mutated
from tests.fuzz.snapshots import NOW, STALE_AFTER, snapshots

pytestmark = pytest.mark.fuzz

ROOT = Path(__file__).resolve().parents[2]
SHM = Path("/dev/shm")


def scratch() -> Path:
    """A temporary directory, in memory where there is one (fsync is then free)."""
    base = SHM if SHM.is_dir() and SHM.stat().st_mode & 0o002 else None
    return Path(tempfile.mkdtemp(prefix="fuzz-", dir=base))


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    path = scratch()
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --- JSON documents changed at one place --------------------------------------------------------


def paths(document: Any, depth: int = 3, prefix: tuple = ()) -> list[tuple]:
    """Every key path (dict keys, list indices) into `document`, at most `depth` deep."""
    found = [prefix] if prefix else []
    if depth == 0:
        return found
    if isinstance(document, dict):
        for key, value in document.items():
            found += paths(value, depth - 1, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document[:3]):
            found += paths(value, depth - 1, (*prefix, index))
    return found


def changed(document: Any, path: tuple, how: str, value: Any) -> Any:
    """A copy of `document` with the value at `path` replaced, removed, or given a sibling."""
    out = copy.deepcopy(document)
    parent = out
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if how == "remove":
        del parent[last]
    elif how == "add" and isinstance(parent, dict):
        parent["unexpected_key"] = value
    elif how == "add":
        parent.append(value)
    else:
        parent[last] = value
    return out


def changes(document: Any, depth: int = 3) -> st.SearchStrategy[Any]:
    """`document` changed at one of its paths: a value replaced by any JSON value (or one of
    another type close to the original), removed, or a stranger added beside it."""
    where = paths(document, depth)
    near = st.sampled_from([0, -1, 1.5, 10**9, 1e308, "16", "", True, None, [], {}])
    return st.builds(
        lambda path, how, value: changed(document, path, how, value),
        st.sampled_from(where),
        st.sampled_from(["replace", "replace", "replace", "remove", "add"]),
        json_values | near,
    )


def to_json(document: Any) -> bytes:
    return json.dumps(document, allow_nan=True).encode()


# --- the persisted snapshot ---------------------------------------------------------------------


def servable(snapshot: Snapshot) -> None:
    """What the service does with a loaded snapshot: publish it on the hub (render `/metrics`,
    the WebSocket message), then serve the REST bodies."""
    hub = Hub(stale_after=STALE_AFTER)
    published = hub.publish(snapshot, ServiceState(), now=NOW)
    assert isinstance(published.rendered.body, bytes)
    published.predictions_json(NOW, STALE_AFTER)
    state = ServiceState()
    dumps(status_body(snapshot, state, ready=True))
    dumps(alerts_body(snapshot.instances.values()))
    for instance in snapshot.instances.values():
        dumps(server_body(instance))


def snapshot_file() -> tuple[dict[str, np.ndarray], dict[str, Any], bytes]:
    """The arrays, the JSON part and the bytes of the fixed snapshot's file."""
    directory = scratch()
    try:
        raw = save_snapshot(fixed_snapshot(), directory).read_bytes()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    with np.load(io.BytesIO(raw), allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    meta = json.loads(bytes(arrays.pop("meta")).decode())
    return arrays, meta, raw


ARRAYS, META, SNAPSHOT_BYTES = snapshot_file()


def npz(arrays: dict[str, np.ndarray], meta: bytes) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, meta=np.frombuffer(meta, dtype=np.uint8))
    return buffer.getvalue()


odd_arrays = st.sampled_from(
    [
        np.zeros(0),
        np.float64(1.0),
        np.zeros((2, 2, 2)),
        np.arange(6, dtype=np.int64).reshape(2, 3),
        np.array([True, False]),
        np.array(["a", "b"]),
        np.array([1 + 2j]),
        np.full((96, 3), np.nan),
        np.full((96, 3), np.inf),
    ]
)


@st.composite
def snapshot_files(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["meta", "meta", "array", "bytes", "garbage"]))
    if kind == "garbage":
        return draw(st.binary(max_size=256) | st.just(b"PK\x03\x04" + bytes(60)))
    if kind == "bytes":
        return draw(mutated(SNAPSHOT_BYTES))
    arrays, meta = dict(ARRAYS), to_json(META)
    if kind == "array":
        arrays[draw(st.sampled_from(sorted(arrays)))] = draw(odd_arrays)
    else:
        meta = draw(
            changes(META, depth=5).map(to_json)
            | json_values.map(to_json)
            | deep_json.map(str.encode)
            | mutated(meta)
        )
    return npz(arrays, meta)


def broken_member(content: bytes, method: int | None = None) -> bytes:
    """A zip of one member `meta.npy` holding `content`, its compression method overwritten."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("meta.npy", content)
    raw = bytearray(buffer.getvalue())
    if method is not None:
        for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
            at = raw.find(signature) + offset
            raw[at : at + 2] = struct.pack("<H", method)
    return bytes(raw)


_HEADER = b"{'descr': '<f8', 'fortran_order': False, 'shape': (96, 3"  # unterminated
UNTERMINATED_HEADER = broken_member(
    b"\x93NUMPY\x01\x00" + struct.pack("<H", 119) + _HEADER.ljust(118) + b"\n" + bytes(2304)
)  # crasher (long run): tokenize.TokenError from numpy's .npy header parser
UNKNOWN_COMPRESSION = broken_member(b"x", method=99)  # crasher: NotImplementedError


def meta_with(path: tuple, value: Any) -> bytes:
    """The fixed snapshot's file with one value of its JSON part replaced."""
    return npz(ARRAYS, to_json(changed(META, path, "replace", value)))


class Planted:
    """Unpickling this calls `Planted.run` (it never should)."""

    ran = False

    def __reduce__(self) -> tuple:
        return (Planted.run, ())

    @staticmethod
    def run() -> None:
        Planted.ran = True


def pickled_files() -> list[bytes]:
    """A pickle as the file, and a file whose JSON part is an object array (pickled inside)."""
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.array([Planted()], dtype=object), allow_pickle=True)
    return [pickle.dumps(Planted()), buffer.getvalue()]


@FUZZ
@given(snapshot_files())
@example(npz(ARRAYS, b"[]"))  # crasher: AttributeError ('list' has no .get)
@example(npz(ARRAYS, b"[" * 100_000 + b"]" * 100_000))  # crasher: RecursionError
@example(b"")  # crasher: EOFError from np.load
@example(UNTERMINATED_HEADER)
@example(UNKNOWN_COMPRESSION)
@example(npz({**ARRAYS, "q0_0": np.float64(1.0)}, to_json(META)))  # crasher: IndexError, 0-d
@example(npz({**ARRAYS, "q0_0": np.full((96, 3), 1 + 2j)}, to_json(META)))  # was cast silently
@example(meta_with(("instances", 0, "instance"), 7))  # crashers at publish: TypeError (sort)
@example(meta_with(("instances", 0, "profile"), None))  # AttributeError (safe_label)
@example(meta_with(("thresholds", 0, 1), 5))  # TypeError (sort)
@example(meta_with(("instances", 0, "breaches", "cpu_utilisation", "probability", "30m"), "0.5"))
@example(meta_with(("instances", 0, "warmup_steps"), 1e400))  # OverflowError
@example(meta_with(("instances", 0, "forecasts", "cpu_utilisation", "method"), "\ud800"))
def test_any_snapshot_file_loads_as_none_or_a_servable_snapshot(workdir, raw):
    (workdir / FILENAME).write_bytes(raw)
    snapshot = load_snapshot(workdir)
    if snapshot is not None:
        assert isinstance(snapshot, Snapshot)
        servable(snapshot)


@pytest.mark.parametrize("raw", pickled_files(), ids=["pickle", "object-array"])
def test_a_planted_pickle_is_never_unpickled(tmp_path, raw):
    (tmp_path / FILENAME).write_bytes(raw)
    assert load_snapshot(tmp_path) is None
    assert not Planted.ran


def canonical(snapshot: Snapshot) -> str:
    """The snapshot as JSON text, arrays as lists: equal snapshots give equal text."""

    def plain(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return {"array": value.tolist(), "shape": list(value.shape)}
        if hasattr(value, "__dataclass_fields__"):
            return {name: plain(getattr(value, name)) for name in value.__dataclass_fields__}
        if hasattr(value, "items"):
            return [[plain(k), plain(v)] for k, v in value.items()]
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        return value

    return json.dumps(plain(snapshot), allow_nan=True)


@FUZZ
@given(snapshots())
def test_a_saved_snapshot_loads_back_equal(workdir, snapshot):
    save_snapshot(snapshot, workdir)
    loaded = load_snapshot(workdir)
    shapes = [f.quantiles.ndim for i in snapshot.instances.values() for f in i.forecasts.values()]
    if any(ndim != 2 for ndim in shapes):  # not (horizon, quantiles): the file is refused
        assert loaded is None
        return
    assert loaded is not None
    assert canonical(loaded) == canonical(snapshot)


# --- the model registry -------------------------------------------------------------------------

VERSION = "fuzz-v1"
SOURCE = ROOT / "models" / "default-v4"
LISTED = (
    "model.safetensors",
    "model_config.json",
    "dataset_parameters.json",
    "calibration.json",
    "server_mapping.json",
)
DOCUMENTS = {name: json.loads((SOURCE / name).read_text()) for name in LISTED[1:]}
MANIFEST_DOC = {
    **{k: v for k, v in json.loads((SOURCE / MANIFEST).read_text()).items() if k != "files"},
    "version": VERSION,
}
CONTRACT_VERSION = MANIFEST_DOC["contract_version"]
WEIGHTS = (SOURCE / "model.safetensors").read_bytes()
HEADER = 8 + int.from_bytes(WEIGHTS[:8], "little")


@pytest.fixture(scope="module")
def registry(workdir: Path) -> Registry:
    """A registry holding the shipped version's artefacts as `fuzz-v1`, current."""
    root = workdir / "models"
    (root / VERSION).mkdir(parents=True)
    for name in LISTED:
        shutil.copy(SOURCE / name, root / VERSION / name)
    write_manifest(Registry(root), MANIFEST_DOC)
    (root / POINTER).write_text(json.dumps({"version": VERSION, "previous": None}))
    registry = Registry(root)
    registry.checked(VERSION, CONTRACT_VERSION)  # the good version passes
    return registry


def write_manifest(registry: Registry, document: Any, files: dict | None = None) -> None:
    directory = registry.root / VERSION
    if files is None:
        files = {name: sha256_of(directory / name) for name in LISTED}
    if isinstance(document, dict) and "files" not in document:
        document = {**document, "files": files}
    (directory / MANIFEST).write_bytes(to_json(document))


@st.composite
def registry_changes(draw: st.DrawFn) -> tuple[str, bytes]:
    """(file name, new content) for one artefact, the manifest or the pointer."""
    name = draw(st.sampled_from([*LISTED, MANIFEST, POINTER]))
    if name == "model.safetensors":
        head = draw(mutated(WEIGHTS[:HEADER]))
        return name, head + WEIGHTS[HEADER:]
    if name == POINTER:
        pointer = {"version": VERSION, "previous": None}
        return name, draw(
            changes(pointer).map(to_json)
            | json_values.map(to_json)
            | st.binary(max_size=32)
            | deep_json.map(str.encode)
        )
    document = MANIFEST_DOC if name == MANIFEST else DOCUMENTS[name]
    raw = to_json(document)
    content = draw(
        changes(document).map(to_json)
        | changes(document).map(to_json)
        | json_values.map(to_json)
        | mutated(raw[:4096]).map(lambda head: head + raw[4096:])
        | deep_json.map(str.encode)
    )
    return name, content


def original(name: str) -> bytes:
    if name == POINTER:
        return json.dumps({"version": VERSION, "previous": None}).encode()
    if name == "model.safetensors":
        return WEIGHTS
    return (SOURCE / name).read_bytes()


@FUZZ
@given(registry_changes())
@example((MANIFEST, to_json({**MANIFEST_DOC, "files": [[1, 2]]})))  # crasher: TypeError
@example((MANIFEST, to_json({**MANIFEST_DOC, "files": {"x" * 300 + ".json": "0" * 64}})))
@example((POINTER, to_json({"version": 5})))  # crasher: TypeError from Registry.path
@example((POINTER, to_json({"version": ["a"]})))
@example((POINTER, b"[" * 100_000 + b"]" * 100_000))  # crasher: RecursionError from pointer()
@example((MANIFEST, b"[" * 100_000 + b"]" * 100_000))  # crasher: RecursionError from verify()
def test_any_artefact_change_is_accepted_or_refused_with_a_registry_error(registry, change):
    name, content = change
    directory = registry.root / VERSION
    where = registry.root / POINTER if name == POINTER else directory / name
    where.write_bytes(content)
    try:
        if name not in (MANIFEST, POINTER):
            write_manifest(registry, MANIFEST_DOC)  # re-hashed: only the schemas can tell
        try:
            pointer = registry.pointer()
        except (OSError, ValueError, AttributeError):  # what ModelHolder.check handles
            pointer = {"version": VERSION, "previous": None}
        assert set(pointer) == {"version", "previous"}
        for version in pointer.values():
            if version is None:
                continue
            try:
                manifest = registry.checked(version, CONTRACT_VERSION)  # type: ignore[arg-type]
            except RegistryError as error:
                assert error.reason in RegistryError.REASONS
                assert "\n" not in str(error)
            else:
                assert isinstance(manifest, Manifest)
    finally:
        where.write_bytes(original(name))
        write_manifest(registry, MANIFEST_DOC)


# --- history files ------------------------------------------------------------------------------

QUANTITIES = ("cpu_utilisation", "disk_io")
T0 = 1_760_000_100


def valid_history() -> bytes:
    times = pd.to_datetime([T0 + 300 * k for k in range(4)], unit="s", utc=True)
    frame = pd.DataFrame(
        {
            "instance": ["a", "a", "b", "b"],
            "timestamp": times,
            "cpu_utilisation": 0.5,
            "disk_io": 1e6,
            "profile": "web",
        }
    )
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    return buffer.getvalue()


HISTORY_BYTES = valid_history()


def arrow_column(kind: str, values: list) -> pa.Array:
    """`values` as an arrow column of `kind`, or nulls of it where a value does not fit."""
    types = {
        "str": pa.string(),
        "large_str": pa.large_string(),
        "binary": pa.binary(),
        "int": pa.int64(),
        "uint8": pa.uint8(),
        "float": pa.float64(),
        "float16": pa.float16(),
        "bool": pa.bool_(),
        "ts_s": pa.timestamp("s"),
        "ts_ns_utc": pa.timestamp("ns", tz="UTC"),
        "ts_ms_zone": pa.timestamp("ms", tz="Asia/Kolkata"),
        "date": pa.date32(),
        "decimal": pa.decimal128(38, 2),
        "list": pa.list_(pa.float64()),
        "null": pa.null(),
    }
    kind_type = types[kind]
    converted = []
    for value in values:
        try:
            pa.array([value], type=kind_type)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            converted.append(None)
        else:
            converted.append(value)
    if kind == "float16":
        with np.errstate(over="ignore"):
            half = np.array([np.nan if v is None else v for v in converted], np.float16)
        return pa.array(half)
    return pa.array(converted, type=kind_type)


column_kinds = st.sampled_from(
    [
        "str",
        "large_str",
        "binary",
        "int",
        "uint8",
        "float",
        "float16",
        "bool",
        "ts_s",
        "ts_ns_utc",
        "ts_ms_zone",
        "date",
        "decimal",
        "list",
        "null",
    ]
)
cells = (
    st.integers(-20, 20).map(lambda k: T0 + 300 * k)
    | st.floats(0, 1)
    | st.sampled_from(["a", "b"])
    | any_floats
    | any_ints
    | any_text
    | st.booleans()
    | st.none()
    | st.lists(st.floats(), max_size=2)
)
dictionary_encoded = st.booleans()
LIKELY_KINDS = {  # the types a history file's columns usually have, drawn half of the time
    "instance": st.sampled_from(["str", "large_str"]),
    "timestamp": st.sampled_from(["ts_s", "ts_ns_utc", "ts_ms_zone", "int", "float"]),
    **{name: st.sampled_from(["float", "int"]) for name in (*QUANTITIES, "value")},
}


@st.composite
def history_tables(draw: st.DrawFn) -> bytes:
    """A parquet file, WIDE or LONG, whose columns are of any type."""
    length = draw(st.integers(0, 6) | st.integers(1, 6))
    long = draw(st.booleans())
    names = ["instance", "timestamp", *(("quantity", "value") if long else QUANTITIES)]
    names += draw(st.lists(st.sampled_from(["profile", "extra", "value", "quantity"]), max_size=2))
    names = [n for n in names if draw(st.integers(0, 12)) > 0]  # sometimes a column is missing
    columns = {}
    for name in dict.fromkeys(names):
        kind = draw(LIKELY_KINDS.get(name, column_kinds) | column_kinds)
        if name == "quantity" and draw(st.booleans()):
            values = draw(
                st.lists(
                    st.sampled_from([*QUANTITIES, "load1", ""]), min_size=length, max_size=length
                )
            )
            kind = "str"
        else:
            values = draw(st.lists(cells, min_size=length, max_size=length))
        column = arrow_column(kind, values)
        if kind in ("str", "int") and draw(dictionary_encoded):
            column = column.dictionary_encode()
        columns[name] = column
    buffer = io.BytesIO()
    try:
        pq.write_table(pa.table(columns), buffer)
    except pa.ArrowException:  # e.g. seconds beyond what the file's milliseconds hold
        assume(False)
    return buffer.getvalue()


def parquet(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


WIDE_ROW = {"instance": ["a"], "timestamp": [T0], "cpu_utilisation": [0.5], "disk_io": [1.0]}
UINT8_QUANTITY = parquet(
    pa.table(
        {
            "instance": ["a"],
            "timestamp": [T0],
            "quantity": pa.array([1], pa.uint8()),
            "value": [1.0],
        }
    )
)  # crasher: ArrowTypeError (a TypeError) from the `quantity in [...]` filter
EMPTY_PANDAS_METADATA = parquet(pa.table(WIDE_ROW).replace_schema_metadata({b"pandas": b"{}"}))
# crasher: KeyError 'columns' from pyarrow's reading of the pandas metadata
ODD_PANDAS_METADATA = parquet(
    pa.table(WIDE_ROW).replace_schema_metadata({b"pandas": b'{"index_columns": 5, "columns": 3}'})
)  # crasher: TypeError, the same way


def long_file(instance: object, value: object = (1, 2)) -> bytes:
    """A LONG history file of two rows with these `instance` and `value` columns."""
    quantity = ["cpu_utilisation", "disk_io"]
    columns = {"instance": instance, "timestamp": [T0, T0], "quantity": quantity, "value": value}
    return parquet(pa.table(columns))


FLOAT16_INSTANCE = long_file(pa.array(np.array([1.0, np.nan], np.float16)))
# crasher (long run): NotImplementedError, pandas cannot key the pivot on float16
LIST_INSTANCE = long_file(pa.array([[1.0], None], pa.list_(pa.float64())))
# crasher: TypeError from drop_duplicates, list cells are unhashable
FLOAT16_VALUE = long_file(["a", "a"], pa.array(np.array([1, 2], np.float16)))
# crasher (long run): TypeError "No matching signature found", pandas cannot unstack float16

END_OF_TIME = parquet(
    pa.table(
        {
            **WIDE_ROW,
            "timestamp": pa.array([2**63 - 1], pa.timestamp("ns", tz="UTC")),
        }
    )
)  # found by the long run: regrid's step of it overflowed int64, off the grid, unsorted

history_files = (
    history_tables()
    | history_tables()
    | mutated(HISTORY_BYTES)
    | st.binary(max_size=256)
    | st.binary(max_size=64).map(lambda junk: b"PAR1" + junk + b"PAR1")
)


def check_history(frame: pd.DataFrame) -> None:
    assert list(frame.columns[:2]) == ["instance", "timestamp"]
    assert set(frame.columns[2:]) - {"profile"} == set(QUANTITIES)
    assert isinstance(frame["timestamp"].dtype, pd.DatetimeTZDtype)
    for name in QUANTITIES:
        assert frame[name].dtype == np.float64
    nanos = frame["timestamp"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    assert (nanos % (STEP_SECONDS * 1_000_000_000) == 0).all()
    assert all(isinstance(name, str) for name in frame["instance"])
    keys = list(zip(frame["instance"], nanos, strict=True))
    assert keys == sorted(set(keys))


@FUZZ
@given(history_files)
@example(UINT8_QUANTITY)
@example(EMPTY_PANDAS_METADATA)
@example(ODD_PANDAS_METADATA)
@example(FLOAT16_INSTANCE)
@example(LIST_INSTANCE)
@example(END_OF_TIME)
@example(FLOAT16_VALUE)
@example(b"")
def test_any_history_file_reads_as_a_grid_frame_or_a_value_error(workdir, raw):
    path = workdir / "history.parquet"
    path.write_bytes(raw)
    try:
        frame = read_history(path, QUANTITIES)
    except (ValueError, OSError) as error:  # what training turns into `bad_history`
        event(f"refused: {type(error).__name__}: {str(error).replace(str(path), '')[:40]}")
        return
    event(f"read: {'empty' if frame.empty else 'rows'}")
    check_history(frame)
