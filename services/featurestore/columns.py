"""Feature columns <-> per-entity value bytes, validated against the feature's declaration.

A column is one feature's values for a batch of entities: a numpy array of shape
[number of keys, *feature shape]. Writes split a column into one value per entity; reads
assemble the stored values (or the default) back into a column.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from featurestore.values import decode_bytes_value, encode_bytes_value, numpy_dtype
from featurestore.views import Feature
from modelserve.errors import InvalidArgumentError
from modelserve.tensors import v2_datatype_of


def split_column(feature: Feature, column: np.ndarray, count: int) -> list[bytes]:
    """One value's bytes per entity; INVALID_ARGUMENT naming the feature on a bad column."""
    what = f"feature {feature.name!r}"
    expected_shape = (count, *feature.shape)
    if column.shape != expected_shape:
        raise InvalidArgumentError(
            f"{what}: expected shape {list(expected_shape)} (first dimension = number of "
            f"entity keys), got {list(column.shape)}"
        )
    if feature.is_bytes:
        if column.dtype.kind not in "OSU":
            raise InvalidArgumentError(f"{what}: expected BYTES values, got {column.dtype}")
        flat = column.reshape(count, feature.elements)
        try:
            return [encode_bytes_value(row) for row in flat]
        except TypeError as exc:  # an element that is neither bytes nor str
            raise InvalidArgumentError(f"{what}: {exc}") from None
    expected = numpy_dtype(feature.datatype)
    if column.dtype.newbyteorder("=") != expected.newbyteorder("="):
        raise InvalidArgumentError(
            f"{what}: expected {feature.datatype} values, got {_v2_name(column.dtype)}"
        )
    if feature.datatype == "BOOL":
        # Store canonical 0/1 bytes even if a raw tensor carried other non-zero bytes.
        column = np.not_equal(column.view(np.uint8), 0)
    buf = np.ascontiguousarray(column, dtype=expected).tobytes()
    step = feature.value_nbytes
    return [buf[i * step : (i + 1) * step] for i in range(count)]


def _v2_name(dtype: np.dtype) -> str:
    try:
        return v2_datatype_of(np.empty(0, dtype))
    except InvalidArgumentError:
        return str(dtype)


def assemble_column(
    feature: Feature, values: Sequence[bytes | None]
) -> tuple[np.ndarray, list[int]]:
    """A column of shape [len(values), *shape]: stored bytes where given, else the default.

    Also returns the indices whose stored bytes were not a well-formed value (left at the
    default): damaged data degrades to MISSING for those entities instead of failing a lookup.
    """
    count = len(values)
    column = np.empty((count, *feature.shape), dtype=numpy_dtype(feature.datatype))
    column[...] = feature.default_value
    bad: list[int] = []
    if feature.is_bytes:
        flat = column.reshape(count, feature.elements)  # a view: column is contiguous
        for i, value in enumerate(values):
            if value is None:
                continue
            try:
                flat[i, :] = decode_bytes_value(value, feature.elements, feature.name)
            except InvalidArgumentError:
                bad.append(i)
        return column, bad
    step = feature.value_nbytes
    present: list[int] = []
    parts: list[bytes] = []
    for i, value in enumerate(values):
        if value is None:
            continue
        if len(value) == step:
            present.append(i)
            parts.append(value)
        else:
            bad.append(i)
    if present:
        # One join and one frombuffer for the whole column, not one array per entity.
        stored = np.frombuffer(b"".join(parts), dtype=column.dtype)
        column[present] = stored.reshape(len(present), *feature.shape)
    return column, bad
