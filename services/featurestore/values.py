"""One entity's value as bytes, the way V2 raw tensors carry it.

Fixed-width datatypes are little-endian row-major element bytes; BYTES elements are each a
4-byte little-endian length then the bytes (the V2 convention, common.proto ``Tensor``),
(de)serialised by the shared codec in ``modelserve.tensors``.
"""

from __future__ import annotations

import numpy as np

from modelserve.tensors import DTYPES, deserialize_bytes_tensor, serialize_bytes_tensor

FEATURE_DTYPES = ("FP32", "FP64", "INT32", "INT64", "BOOL", "BYTES")


def numpy_dtype(datatype: str) -> np.dtype:
    """The little-endian numpy dtype of a feature datatype (object for BYTES)."""
    dtype = DTYPES[datatype].numpy
    assert dtype is not None, datatype  # every FEATURE_DTYPES entry has a numpy twin
    return dtype if datatype == "BYTES" else dtype.newbyteorder("<")


def encode_bytes_value(items: np.ndarray) -> bytes:
    """One entity's BYTES value (any shape) as length-prefixed elements; str is UTF-8."""
    return serialize_bytes_tensor(items)


def decode_bytes_value(
    buf: bytes | memoryview, count: int, feature: str, *, kind: str = "feature"
) -> np.ndarray:
    """Exactly ``count`` BYTES elements as a flat object array; INVALID_ARGUMENT otherwise
    (messages read ``<kind> '<feature>': ...``)."""
    if count == 1 and len(buf) >= 4 and int.from_bytes(buf[:4], "little") == len(buf) - 4:
        # The common scalar case, on the lookup's hot path: skip the general parser.
        out = np.empty(1, dtype=object)
        out[0] = bytes(buf[4:])
        return out
    return deserialize_bytes_tensor(buf, count, feature, kind=kind)
