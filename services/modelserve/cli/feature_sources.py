"""A feature view's offline source (Parquet or CSV), read client-side for materialisation.

The whole file is read and checked before anything is written: every column the view needs
must exist with a type that converts without loss, every entity key must suit the view, no
value may be null. Of the rows whose event time is in the window, only the newest per entity
is kept (ties: the later created timestamp, then the later row of the file), so memory grows
with the number of entities, not of rows. Files are read a row group / block at a time.

Accepted column types, by feature datatype (lossless widenings only): FP32 <- float16/32,
FP64 <- float16/32/64, INT32 <- int8/16/32, uint8/16, INT64 <- int8..64, uint8..32,
BOOL <- bool, BYTES <- string/binary. A feature of shape [3] is a list column whose rows hold
3 values each, [2, 3] a list of lists; CSV has no lists, so its features are scalars.
Entity keys: STRING views take string columns, INT64 views integer columns. Event (and
created) times: Parquet timestamps of any unit, or ISO 8601 text (always so in CSV); times
without a zone are UTC.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from modelserve.proto.modelserve.v1 import featurestore_pb2

# The feature store refuses later event times (featurestore.rows.MAX_EVENT_MS: Redis compares
# them as doubles); checking here keeps a bad file from failing half-way through the writes.
MAX_EVENT_MS = 2**53 - 1
MAX_KEY_BYTES = 1024  # featurestore.online.MAX_KEY_BYTES
DEFAULT_CHUNK_ROWS = 65_536
_CSV_BLOCK_BYTES = 4 << 20
# Pending chunks are merged into the running winners once they outgrow them (and this):
# amortised O(n log n) over the file instead of a sort per chunk.
_MERGE_MIN_ROWS = 1 << 20

_TARGET = {
    "FP32": pa.float32(),
    "FP64": pa.float64(),
    "INT32": pa.int32(),
    "INT64": pa.int64(),
    "BOOL": pa.bool_(),
    "BYTES": pa.binary(),
}
_TEXT = (pa.string(), pa.large_string())
_ACCEPTED = {
    "FP32": (pa.float16(), pa.float32()),
    "FP64": (pa.float16(), pa.float32(), pa.float64()),
    "INT32": (pa.int8(), pa.int16(), pa.int32(), pa.uint8(), pa.uint16()),
    "INT64": (pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32()),
    "BOOL": (pa.bool_(),),
    "BYTES": (*_TEXT, pa.binary(), pa.large_binary()),
}
_KEY_ACCEPTED = {"STRING": _TEXT, "INT64": (*_ACCEPTED["INT64"], pa.uint64())}
_KEY, _EVENT, _CREATED, _ROW = "__key", "__event", "__created", "__row"  # no feature starts "_"


class SourceError(ValueError):
    """The source does not match the view (or cannot be read); nothing has been written."""


@dataclass(frozen=True)
class SourceFeature:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class SourceSpec:
    """What a view expects of its source file: the columns, their roles and their types."""

    view: str
    format: str
    entity_column: str
    entity_type: str
    event_column: str
    created_column: str
    features: tuple[SourceFeature, ...]

    @classmethod
    def from_view(cls, view: featurestore_pb2.FeatureView) -> SourceSpec:
        if not view.HasField("source"):
            raise SourceError(
                f"view {view.name!r} has no source; apply it with a source (format, "
                "event_timestamp_column) to materialise it"
            )
        return cls(
            view=view.name,
            format=view.source.format,
            entity_column=view.entity_key,
            entity_type=view.entity_type,
            event_column=view.source.event_timestamp_column,
            created_column=view.source.created_timestamp_column,
            features=tuple(
                SourceFeature(f.name, f.datatype, tuple(f.shape)) for f in view.features
            ),
        )

    @property
    def columns(self) -> list[str]:
        times = [self.event_column, *([self.created_column] if self.created_column else [])]
        return [self.entity_column, *times, *(f.name for f in self.features)]

    def schema(self) -> pa.Schema:
        """The schema of kept rows: key, times in unix ms, file row, features (exact shape)."""
        key_type = pa.string() if self.entity_type == "STRING" else pa.int64()
        fields = [
            (_KEY, key_type),
            (_EVENT, pa.int64()),
            (_CREATED, pa.int64()),
            (_ROW, pa.int64()),
        ]
        return pa.schema([*fields, *((f.name, _feature_type(f)) for f in self.features)])


@dataclass(frozen=True)
class LatestRows:
    """The newest row per entity in the window, with what reading the file counted."""

    table: pa.Table
    features: tuple[SourceFeature, ...]
    entity_type: str
    rows_read: int
    rows_in_window: int

    def __len__(self) -> int:
        return self.table.num_rows

    def slice(self, start: int, stop: int) -> tuple[list[str], list[int], dict[str, np.ndarray]]:
        """Rows [start, stop) as (entity keys, event unix ms, feature -> [n, *shape] array)."""
        part = self.table.slice(start, stop - start)
        keys = [str(k) for k in part.column(_KEY).to_pylist()]
        events = part.column(_EVENT).to_pylist()
        columns = {f.name: _to_numpy(part.column(f.name), f, part.num_rows) for f in self.features}
        return keys, events, columns


def read_latest(
    spec: SourceSpec,
    path: Path,
    *,
    from_ms: int,
    until_ms: int,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> LatestRows:
    """Read and check all of ``path``; keep the newest row per entity with an event time in
    [from_ms, until_ms). Blocking: call it off the event loop. Raises SourceError."""
    if spec.format == "csv":
        batches = _csv_batches(spec, path)
    elif spec.format == "parquet":
        batches = _parquet_batches(spec, path, chunk_rows)
    else:
        raise SourceError(f"view {spec.view!r}: unknown source format {spec.format!r}")
    schema = spec.schema()
    latest = _Latest(schema)
    read = kept = 0
    try:
        for batch in batches:
            chunk = _prepare(spec, schema, batch, read, from_ms, until_ms)
            read += batch.num_rows
            kept += chunk.num_rows
            latest.add(chunk)
    # Also a block that fails to parse or convert, anywhere in the file: still before writes.
    except (SourceError, pa.ArrowException, OSError) as exc:
        raise SourceError(f"{path}: {exc}") from None
    return LatestRows(latest.result(), spec.features, spec.entity_type, read, kept)


def _parquet_batches(spec: SourceSpec, path: Path, chunk_rows: int) -> Iterator[pa.RecordBatch]:
    try:
        file = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise SourceError(f"not a readable Parquet file: {exc}") from None
    with file:
        _check_schema(spec, file.schema_arrow)
        yield from file.iter_batches(batch_size=chunk_rows, columns=spec.columns)


def _csv_batches(spec: SourceSpec, path: Path) -> Iterator[pa.RecordBatch]:
    vectors = [f"{f.name} {list(f.shape)}" for f in spec.features if f.shape]
    if vectors:
        raise SourceError(
            f"view {spec.view!r}: a CSV source holds scalar features only, not "
            f"{', '.join(vectors)}; use a Parquet source"
        )
    # The view fixes the types, so "007" stays a string key and "1" is not guessed as int.
    types = {f.name: _TARGET[f.datatype] for f in spec.features}
    types[spec.entity_column] = pa.string() if spec.entity_type == "STRING" else pa.int64()
    for column in filter(None, (spec.event_column, spec.created_column)):
        types[column] = pa.string()  # parsed by _parse_iso: offsets or not, all UTC
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=_CSV_BLOCK_BYTES),
            convert_options=pacsv.ConvertOptions(column_types=types),
        )
    except pa.ArrowInvalid as exc:  # also a first block that fails to convert
        raise SourceError(f"not a readable CSV file: {exc}") from None
    with reader:
        _check_schema(spec, reader.schema)
        for batch in reader:
            yield batch.select(spec.columns)


def _check_schema(spec: SourceSpec, schema: pa.Schema) -> None:
    """Every problem with the file's columns at once, before a single row is read."""
    problems: list[str] = []
    missing = [c for c in spec.columns if c not in schema.names]
    if missing:
        problems.append(f"missing column(s) {', '.join(map(repr, missing))}")
    problems += [f"column {c!r} appears twice" for c in spec.columns if schema.names.count(c) > 1]
    present = {c: schema.field(c).type for c in spec.columns if schema.names.count(c) == 1}
    key_type, key_ok = present.get(spec.entity_column), _KEY_ACCEPTED[spec.entity_type]
    if key_type is not None and _leaf(key_type) not in key_ok:
        problems.append(
            f"entity key column {spec.entity_column!r} has type {key_type}; "
            f"a {spec.entity_type} view needs {_names(key_ok)}"
        )
    for column in (spec.event_column, spec.created_column):
        if column in present and not _is_time(present[column]):
            problems.append(f"column {column!r} has type {present[column]}; expected a timestamp")
    for f in spec.features:
        if f.name in present and not _type_fits(present[f.name], f):
            problems.append(
                f"column {f.name!r} has type {present[f.name]}; feature {f.datatype} "
                f"{list(f.shape)} needs {_names(_ACCEPTED[f.datatype])}"
                + (f" in {len(f.shape)} nested list(s)" if f.shape else "")
            )
    if problems:
        raise SourceError(
            f"does not match view {spec.view!r}: {'; '.join(problems)} "
            f"(the file has {', '.join(schema.names[:30])})"
        )


def _is_time(t: pa.DataType) -> bool:
    return bool(pa.types.is_timestamp(t)) or _leaf(t) in _TEXT


def _leaf(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _names(types: tuple[pa.DataType, ...]) -> str:
    return "/".join(str(t) for t in types)


def _type_fits(t: pa.DataType, f: SourceFeature) -> bool:
    for dim in f.shape:
        if pa.types.is_fixed_size_list(t):
            if t.list_size != dim:
                return False
        elif not (pa.types.is_list(t) or pa.types.is_large_list(t)):
            return False
        t = t.value_type
    return _leaf(t) in _ACCEPTED[f.datatype]


def _feature_type(f: SourceFeature) -> pa.DataType:
    t = _TARGET[f.datatype]
    for dim in reversed(f.shape):
        t = pa.list_(t, dim)  # fixed-size: one canonical type whatever the file used
    return t


def _prepare(
    spec: SourceSpec,
    schema: pa.Schema,
    batch: pa.RecordBatch,
    first: int,
    from_ms: int,
    until_ms: int,
) -> pa.Table:
    """One chunk checked and converted to ``schema``, keeping only rows in the window.

    ``first`` is the file row (0-based) of the chunk's first row; errors name rows 1-based.
    """
    key = _keys(spec, batch.column(spec.entity_column), first)
    event = _millis(batch.column(spec.event_column), spec.event_column, first)
    created = (
        _millis(batch.column(spec.created_column), spec.created_column, first)
        if spec.created_column
        else np.zeros(batch.num_rows, np.int64)
    )
    row = np.arange(first, first + batch.num_rows, dtype=np.int64)
    features = [_feature(batch.column(f.name), f, first) for f in spec.features]
    table = pa.Table.from_arrays([key, event, created, row, *features], schema=schema)
    return table.filter(pa.array((event >= from_ms) & (event < until_ms)))


def _no_nulls(arr: pa.Array, column: str, first: int, per_row: int = 1) -> None:
    if arr.null_count:
        at = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise SourceError(f"column {column!r}: row {first + at // per_row + 1} has an empty value")


def _keys(spec: SourceSpec, arr: pa.Array, first: int) -> pa.Array:
    column = spec.entity_column
    _no_nulls(arr, column, first)
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if spec.entity_type == "INT64":
        return arr.cast(pa.int64())  # safe cast: a uint64 beyond int64 raises, naming it
    arr = arr.cast(pa.string())
    lengths = pc.binary_length(arr).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero((lengths < 1) | (lengths > MAX_KEY_BYTES))
    if bad.size:
        raise SourceError(
            f"entity key column {column!r}: row {first + int(bad[0]) + 1} has a key of "
            f"{lengths[bad[0]]} bytes; keys are 1 to {MAX_KEY_BYTES} bytes"
        )
    return arr


def _millis(arr: pa.Array, column: str, first: int) -> np.ndarray:
    """Times as unix ms (int64), each in [0, MAX_EVENT_MS]."""
    _no_nulls(arr, column, first)
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if not pa.types.is_timestamp(arr.type):
        arr = _parse_iso(arr, column, first)
    per_ms = {"s": 1e-3, "ms": 1, "us": 1e3, "ns": 1e6}[arr.type.unit]
    raw = arr.cast(pa.int64()).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero((raw < 0) | (raw > MAX_EVENT_MS * per_ms))
    if bad.size:
        raise SourceError(
            f"column {column!r}: row {first + int(bad[0]) + 1} is before 1970 or after the "
            "year 287396 (the feature store's event time range)"
        )
    if per_ms < 1:
        return raw * 1000
    return raw // int(per_ms)  # floor: a row at 12:00:00.9 belongs to 12:00:00.900


def _parse_iso(arr: pa.Array, column: str, first: int) -> pa.Array:
    """ISO 8601 text as timestamps: with a zone offset, or without one (then UTC)."""
    text = arr.cast(pa.string())
    try:
        return text.cast(pa.timestamp("us", tz="UTC"))
    except pa.ArrowInvalid:
        pass
    try:
        return text.cast(pa.timestamp("us"))
    except pa.ArrowInvalid as exc:
        raise SourceError(
            f"column {column!r} (rows from {first + 1}): not ISO 8601 times, all with a zone "
            f"offset or all without: {exc}"
        ) from None


def _feature(arr: pa.Array, f: SourceFeature, first: int) -> pa.Array:
    """The column as ``_feature_type(f)``: every row holds exactly ``f.shape`` values."""
    _no_nulls(arr, f.name, first)
    rows = len(arr)
    leaves = arr
    for depth, dim in enumerate(f.shape):
        per_row = math.prod(f.shape[:depth])  # leaves per file row at this depth
        lengths = pc.list_value_length(leaves).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(lengths != dim)
        if bad.size:
            raise SourceError(
                f"column {f.name!r}: row {first + int(bad[0]) // per_row + 1} holds "
                f"{lengths[bad[0]]} values at depth {depth + 1}; feature shape is {list(f.shape)}"
            )
        leaves = leaves.flatten()
        _no_nulls(leaves, f.name, first, per_row * dim)
    if pa.types.is_dictionary(leaves.type):
        leaves = leaves.dictionary_decode()
    out = leaves.cast(_TARGET[f.datatype])
    for dim in reversed(f.shape):
        out = pa.FixedSizeListArray.from_arrays(out, dim)
    assert len(out) == rows
    return out


def _to_numpy(column: pa.ChunkedArray, f: SourceFeature, rows: int) -> np.ndarray:
    arr = column.combine_chunks()
    for _ in f.shape:
        arr = arr.flatten()
    values = arr.to_numpy(zero_copy_only=False)  # BYTES: an object array of bytes
    return values.reshape(rows, *f.shape)


class _Latest:
    """The newest row per entity key so far, over chunks of rows."""

    def __init__(self, schema: pa.Schema) -> None:
        self._best = schema.empty_table()
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def add(self, chunk: pa.Table) -> None:
        if not chunk.num_rows:
            return
        self._pending.append(chunk)
        self._pending_rows += chunk.num_rows
        if self._pending_rows > max(self._best.num_rows, _MERGE_MIN_ROWS):
            self._merge()

    def result(self) -> pa.Table:
        self._merge()
        return self._best

    def _merge(self) -> None:
        if self._pending:
            merged = pa.concat_tables([self._best, *self._pending])
            self._best = _newest_per_key(merged)
            self._pending, self._pending_rows = [], 0


def _newest_per_key(table: pa.Table) -> pa.Table:
    """Sort by (key, event, created, file row) and keep the last row of each key."""
    if table.num_rows <= 1:
        return table.combine_chunks()
    order = pc.sort_indices(
        table, sort_keys=[(c, "ascending") for c in (_KEY, _EVENT, _CREATED, _ROW)]
    )
    keys = table.column(_KEY).take(order).combine_chunks()
    n = len(keys)
    changes = pc.not_equal(keys.slice(1), keys.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    last = np.flatnonzero(np.append(changes, True))
    return table.take(order.take(pa.array(last))).combine_chunks()
