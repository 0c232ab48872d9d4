"""Input columns -> model inputs, model outputs -> output columns; checked before scoring.

Mapping rules (docs/batch.md): an input ``X`` of shape [-1] takes one scalar column; an input
of shape [-1, F] takes either one list column (fixed-size lists of F, or lists that all hold
F values) or F scalar columns. By default ``X`` takes the column named ``X``, else the columns
``X_0`` .. ``X_{F-1}``, else, for the last unmapped input, every remaining numeric non-key
column in file order when there are exactly F of them. ``--input-map X=c1,c2`` or
``X=array_col`` overrides. Types convert only where no value can change meaning: floats take
any numeric column, integers take integer columns (checked for overflow), BOOL takes bool,
BYTES takes string/binary.

NaN policy: a null anywhere in a mapped column fails the run (a model cannot be fed "no
value"); a NaN fails it too unless ``--nan-policy pass``, which hands NaN to the model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from modelserve.tensors import DTYPES, TensorSpec

META_COLUMNS = ("model_name", "model_version", "model_sha256", "run_id", "scored_at")
NAN_POLICIES = ("error", "pass")
_TEXT_DICT = pa.dictionary(pa.int32(), pa.string())
_FLOATS = ("FP16", "FP32", "FP64")
_INTS = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
_ARROW = {
    "FP16": pa.float16(),
    "FP32": pa.float32(),
    "FP64": pa.float64(),
    "INT8": pa.int8(),
    "INT16": pa.int16(),
    "INT32": pa.int32(),
    "INT64": pa.int64(),
    "UINT8": pa.uint8(),
    "UINT16": pa.uint16(),
    "UINT32": pa.uint32(),
    "UINT64": pa.uint64(),
    "BOOL": pa.bool_(),
    "BYTES": pa.binary(),
}


class BatchInputError(ValueError):
    """The input, the options or the model do not fit together; nothing is written."""


@dataclass(frozen=True)
class InputBinding:
    input: str
    datatype: str
    width: int  # F; 0 for a [-1] input
    columns: tuple[str, ...]  # F scalar columns, or one list column
    as_list: bool


@dataclass(frozen=True)
class OutputColumn:
    name: str
    datatype: str
    dims: tuple[int, ...]  # per-row dims from the signature; -1 = known only at run time

    @property
    def width(self) -> int:
        """Elements per row; 0 when the signature leaves a dim open."""
        return 0 if any(d < 0 for d in self.dims) else math.prod(self.dims)

    @property
    def arrow_type(self) -> pa.DataType:
        value = _ARROW[self.datatype]
        if not self.dims or self.dims == (1,):
            return value
        if self.width:
            return pa.list_(value, self.width)
        return pa.list_(value)


@dataclass(frozen=True)
class ColumnPlan:
    keys: tuple[str, ...]
    inputs: tuple[InputBinding, ...]
    outputs: tuple[OutputColumn, ...]
    nan_policy: str = "error"

    @property
    def read_columns(self) -> list[str]:
        seen = dict.fromkeys([*self.keys, *(c for b in self.inputs for c in b.columns)])
        return list(seen)

    def feeds(self, batch: pa.RecordBatch, where: str) -> dict[str, np.ndarray]:
        """The model's inputs for one record batch; BatchInputError names a bad value."""
        checked = self.batch_feeds(batch, where)
        return checked.rows(0, checked.num_rows)

    def batch_feeds(self, batch: pa.RecordBatch, where: str) -> BatchFeeds:
        """One record batch's inputs, checked (nulls, NaN, types), handed out a run at a time
        by ``BatchFeeds.rows``; BatchInputError names a bad value."""
        return BatchFeeds(
            batch.num_rows, {b.input: _feed(b, batch, self.nan_policy, where) for b in self.inputs}
        )

    def output_arrays(self, results: Mapping[str, np.ndarray], rows: int) -> list[pa.Array]:
        return [_output_array(o, results[o.name], rows) for o in self.outputs]

    def output_schema(self, source: pa.Schema, metadata: Mapping[str, str]) -> pa.Schema:
        fields = [source.field(k) for k in self.keys]
        fields += [pa.field(o.name, o.arrow_type) for o in self.outputs]
        fields += [
            # Dictionary-encoded: one value per part, written (and read) once, not per row.
            pa.field("model_name", _TEXT_DICT),
            pa.field("model_version", pa.int64()),
            pa.field("model_sha256", _TEXT_DICT),
            pa.field("run_id", _TEXT_DICT),
            pa.field("scored_at", pa.timestamp("ms", tz="UTC")),
        ]
        return pa.schema(fields, metadata={k.encode(): v.encode() for k, v in metadata.items()})


def plan_columns(
    schema: pa.Schema,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    *,
    keys: Sequence[str] = (),
    input_map: Mapping[str, Sequence[str]] | None = None,
    nan_policy: str = "error",
    label: str = "the model",
) -> ColumnPlan:
    """Check everything that can be checked from the schema and the signature."""
    if nan_policy not in NAN_POLICIES:
        raise BatchInputError(f"--nan-policy must be one of {', '.join(NAN_POLICIES)}")
    names = set(schema.names)
    for key in keys:
        if key not in names:
            raise BatchInputError(
                f"key column {key!r} is not in the input; columns: {_list(schema)}"
            )
    input_map = dict(input_map or {})
    specs = {s.name: s for s in inputs}
    for name in input_map:
        if name not in specs:
            raise BatchInputError(
                f"--input-map names {name!r}, which {label} has no input of; inputs: "
                f"{', '.join(specs)}"
            )
    _check_output_names(outputs, keys, label)
    bindings: list[InputBinding] = []
    used: set[str] = set(keys)
    for i, spec in enumerate(inputs):
        width = _width(spec, label)
        last = i == len(inputs) - 1
        columns = input_map.get(spec.name) or _default_columns(spec, width, schema, used, last)
        if columns is None:
            raise BatchInputError(
                f"no column for input {spec.name!r} of {label} ({spec.datatype} "
                f"{list(spec.shape)}): expected a column {spec.name!r}"
                + (f", columns {spec.name}_0..{spec.name}_{width - 1}" if width else "")
                + f" or --input-map {spec.name}=COL[,COL...]; columns: {_list(schema)}"
            )
        bindings.append(_bind(spec, width, tuple(columns), schema, label))
        used.update(columns)
    return ColumnPlan(
        keys=tuple(keys),
        inputs=tuple(bindings),
        outputs=tuple(OutputColumn(o.name, o.datatype, tuple(o.shape[1:])) for o in outputs),
        nan_policy=nan_policy,
    )


def parse_input_map(items: Sequence[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        name, sep, cols = item.partition("=")
        columns = [c.strip() for c in cols.split(",") if c.strip()]
        if not sep or not name.strip() or not columns:
            raise BatchInputError(
                f"--input-map takes INPUT=col1,col2 or INPUT=array_col; got {item!r}"
            )
        if name.strip() in out:
            raise BatchInputError(f"--input-map maps input {name.strip()!r} twice")
        out[name.strip()] = columns
    return out


def _list(schema: pa.Schema) -> str:
    shown = ", ".join(f"{f.name}:{f.type}" for f in list(schema)[:24])
    return shown + (", ..." if len(schema) > 24 else "")


def _check_output_names(outputs: Sequence[TensorSpec], keys: Sequence[str], label: str) -> None:
    for out in outputs:
        if out.name in keys or out.name in META_COLUMNS:
            raise BatchInputError(
                f"output {out.name!r} of {label} would collide with a key or metadata column"
            )
        if out.datatype not in _ARROW:
            raise BatchInputError(f"output {out.name!r} of {label} is {out.datatype}, unsupported")
        if not out.shape or out.shape[0] != -1:
            raise BatchInputError(
                f"output {out.name!r} of {label} has shape {list(out.shape)}; batch scoring "
                "needs a batch dimension first ([-1, ...])"
            )


def _width(spec: TensorSpec, label: str) -> int:
    shape = spec.shape
    if spec.datatype not in _ARROW:
        raise BatchInputError(f"input {spec.name!r} of {label} is {spec.datatype}, unsupported")
    if len(shape) == 1 and shape[0] == -1:
        return 0
    if len(shape) == 2 and shape[0] == -1 and shape[1] >= 1:
        return shape[1]
    raise BatchInputError(
        f"input {spec.name!r} of {label} has shape {list(shape)}; batch scoring takes [-1] or "
        "[-1, F] inputs"
    )


def _default_columns(
    spec: TensorSpec, width: int, schema: pa.Schema, used: set[str], last: bool
) -> list[str] | None:
    names = schema.names
    if spec.name in names:
        return [spec.name]
    numbered = [f"{spec.name}_{j}" for j in range(width)]
    if width and all(n in names for n in numbered):
        return numbered
    if last:
        rest = [f.name for f in schema if f.name not in used and _is_numeric(f.type)]
        if len(rest) == max(width, 1):
            return rest
    return None


def _is_numeric(t: pa.DataType) -> bool:
    return bool(pa.types.is_integer(t) or pa.types.is_floating(t))


def _accepts(datatype: str, t: pa.DataType) -> bool:
    if datatype in _FLOATS:
        return _is_numeric(t)
    if datatype in _INTS:
        return bool(pa.types.is_integer(t))
    if datatype == "BOOL":
        return bool(pa.types.is_boolean(t))
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t))


def _bind(
    spec: TensorSpec, width: int, columns: tuple[str, ...], schema: pa.Schema, label: str
) -> InputBinding:
    what = f"input {spec.name!r} of {label} ({spec.datatype} {list(spec.shape)})"
    for col in columns:
        if col not in schema.names:
            raise BatchInputError(
                f"{what}: column {col!r} is not in the input; columns: {_list(schema)}"
            )
    if len(columns) == 1 and _is_list(schema.field(columns[0]).type):
        t = schema.field(columns[0]).type
        if not width:
            raise BatchInputError(f"{what}: takes one value per row, but {columns[0]!r} is {t}")
        if pa.types.is_fixed_size_list(t) and t.list_size != width:
            raise BatchInputError(
                f"{what}: column {columns[0]!r} holds {t.list_size} values per row, "
                f"expected {width}"
            )
        if not _accepts(spec.datatype, t.value_type):
            raise BatchInputError(f"{what}: column {columns[0]!r} is {t}, which cannot feed it")
        return InputBinding(spec.name, spec.datatype, width, columns, as_list=True)
    if len(columns) != max(width, 1):
        raise BatchInputError(
            f"{what}: needs {max(width, 1)} columns (or one list column), got {len(columns)}: "
            f"{', '.join(columns)}"
        )
    for col in columns:
        t = schema.field(col).type
        if not _accepts(spec.datatype, t):
            raise BatchInputError(f"{what}: column {col!r} is {t}, which cannot feed it")
    return InputBinding(spec.name, spec.datatype, width, columns, as_list=False)


def _is_list(t: pa.DataType) -> bool:
    return bool(pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))


def _values(
    arr: pa.Array, datatype: str, name: str, policy: str, where: str, check_nan: bool = True
) -> np.ndarray:
    if arr.null_count:
        raise BatchInputError(f"column {name!r} has {arr.null_count} null value(s) in {where}")
    if datatype == "BYTES":
        return np.asarray(arr.cast(pa.binary()).to_pylist(), dtype=object)
    target = _ARROW[datatype]
    try:
        values = np.asarray(
            arr.cast(target, safe=datatype not in _FLOATS).to_numpy(zero_copy_only=False)
        )
    except pa.ArrowInvalid as exc:
        raise BatchInputError(
            f"column {name!r} does not fit {datatype} in {where}: {exc}"
        ) from None
    if check_nan and _checks_nan(arr, policy) and len(values) and np.isnan(values.max()):
        _raise_nan(arr, name, where)
    return values


def _checks_nan(arr: pa.Array, policy: str) -> bool:
    return policy == "error" and pa.types.is_floating(arr.type)


def _raise_nan(arr: pa.Array, name: str, where: str) -> None:
    """Count the NaNs of a column (only once a cheap check found one) and fail the run.
    The cheap check is a max: NaN propagates through it (a float cast keeps NaN as NaN and
    makes none), and one vectorised pass costs a third of is_nan + sum."""
    nans = pc.sum(pc.is_nan(arr)).as_py() or 0
    if nans:
        raise BatchInputError(
            f"column {name!r} has {nans} NaN value(s) in {where} (--nan-policy error)"
        )


class ColumnStack:
    """F scalar columns of one record batch that feed a [-1, F] input, assembled into
    [rows, F] one run at a time, into a buffer reused from run to run.

    Filling the whole record batch's [n, F] matrix column by column wrote 4 bytes every F * 4
    (a cache miss per value once the matrix outgrows the cache) into 16 MiB of fresh memory
    per batch: the largest cost of a 1M-row `tabular` run (bench/batch_bench.py). A run's
    block of rows stays in cache, and its buffer is faulted in once. NaNs (``--nan-policy
    error``) are looked for there too, in the run's block while it is in cache: before the
    run is scored, so a NaN still fails the run before its part is written."""

    def __init__(
        self,
        columns: list[np.ndarray],
        dtype: np.dtype[Any],
        sources: list[tuple[str, pa.Array]],
        where: str,
    ) -> None:
        self.columns = columns
        self.dtype = dtype
        self._sources = sources  # (name, arrow column) that may hold NaN
        self._where = where
        self._buffer: np.ndarray | None = None

    def rows(self, start: int, stop: int) -> np.ndarray:
        n = stop - start
        if self._buffer is None or len(self._buffer) < n:
            self._buffer = np.empty((n, len(self.columns)), self.dtype)
        out = self._buffer[:n]
        np.stack([c[start:stop] for c in self.columns], axis=1, out=out)
        if self._sources and n and np.isnan(out.max()):
            for name, arr in self._sources:
                _raise_nan(arr, name, self._where)
        return out


class BatchFeeds:
    """The checked inputs of one record batch; ``rows(start, stop)`` gives one run's feeds.
    A run's [-1, F] feed from scalar columns is a view of a reused buffer: valid until the
    next call (the run has copied it by then)."""

    def __init__(self, num_rows: int, values: dict[str, np.ndarray | ColumnStack]) -> None:
        self.num_rows = num_rows
        self._values = values

    def rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        return {
            k: v.rows(start, stop) if isinstance(v, ColumnStack) else v[start:stop]
            for k, v in self._values.items()
        }

    def reuse(self, previous: BatchFeeds | None) -> BatchFeeds:
        """Take over the run buffers of the previous record batch's feeds (same plan)."""
        if previous is not None:
            for k, v in self._values.items():
                old = previous._values.get(k)
                if isinstance(v, ColumnStack) and isinstance(old, ColumnStack):
                    v._buffer = old._buffer
        return self


def _feed(
    b: InputBinding, batch: pa.RecordBatch, policy: str, where: str
) -> np.ndarray | ColumnStack:
    n = batch.num_rows
    dtype = DTYPES[b.datatype].numpy
    if b.as_list:
        col = batch.column(b.columns[0])
        if col.null_count:
            raise BatchInputError(
                f"column {b.columns[0]!r} has {col.null_count} null row(s) in {where}"
            )
        if not pa.types.is_fixed_size_list(col.type):
            lengths = pc.list_value_length(col)
            bad = pc.sum(pc.not_equal(lengths, b.width)).as_py() if n else 0
            if bad:
                raise BatchInputError(
                    f"column {b.columns[0]!r}: {bad} row(s) in {where} do not hold {b.width} values"
                )
        flat = _values(col.flatten(), b.datatype, b.columns[0], policy, where)
        return flat.reshape(n, b.width)
    if not b.width:
        return _values(batch.column(b.columns[0]), b.datatype, b.columns[0], policy, where)
    arrays = [(col, batch.column(col)) for col in b.columns]
    return ColumnStack(
        [_values(a, b.datatype, col, policy, where, check_nan=False) for col, a in arrays],
        np.dtype(dtype),
        [(col, a) for col, a in arrays if _checks_nan(a, policy)],
        where,
    )


def _output_array(o: OutputColumn, values: np.ndarray, rows: int) -> pa.Array:
    if values.shape[:1] != (rows,):
        raise BatchInputError(
            f"output {o.name!r} came back with shape {list(values.shape)} for {rows} rows"
        )
    t = o.arrow_type
    if o.datatype == "BYTES":
        flat = pa.array([bytes(v) for v in values.reshape(-1)], pa.binary())
    else:
        flat = pa.array(np.ascontiguousarray(values).reshape(-1), type=_ARROW[o.datatype])
    if pa.types.is_fixed_size_list(t):
        return pa.FixedSizeListArray.from_arrays(flat, t.list_size)
    if pa.types.is_list(t):
        per_row = values.size // max(rows, 1)
        offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * per_row)
        return pa.ListArray.from_arrays(offsets, flat)
    return flat
