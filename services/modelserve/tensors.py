"""The tensor codec: every conversion between V2 protobuf tensors and numpy lives here.

The datatype table is the one map between V2 names, numpy, ONNX type strings, Triton config
enums and the typed ``InferTensorContents`` fields.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DType:
    """One V2 datatype and its names elsewhere."""

    v2: str
    numpy: np.dtype | None  # None: no numpy equivalent (BF16)
    onnx: str  # ONNX Runtime's type string, e.g. "tensor(float)"
    config: str  # Triton model_config DataType enum name
    contents_field: str | None  # InferTensorContents field for typed tensors; None = raw only
    itemsize: int  # bytes per element in raw form; 0 for BYTES (length-prefixed)


DTYPES: dict[str, DType] = {
    d.v2: d
    for d in (
        DType("BOOL", np.dtype(np.bool_), "tensor(bool)", "TYPE_BOOL", "bool_contents", 1),
        DType("UINT8", np.dtype(np.uint8), "tensor(uint8)", "TYPE_UINT8", "uint_contents", 1),
        DType("UINT16", np.dtype(np.uint16), "tensor(uint16)", "TYPE_UINT16", "uint_contents", 2),
        DType("UINT32", np.dtype(np.uint32), "tensor(uint32)", "TYPE_UINT32", "uint_contents", 4),
        DType(
            "UINT64", np.dtype(np.uint64), "tensor(uint64)", "TYPE_UINT64", "uint64_contents", 8
        ),
        DType("INT8", np.dtype(np.int8), "tensor(int8)", "TYPE_INT8", "int_contents", 1),
        DType("INT16", np.dtype(np.int16), "tensor(int16)", "TYPE_INT16", "int_contents", 2),
        DType("INT32", np.dtype(np.int32), "tensor(int32)", "TYPE_INT32", "int_contents", 4),
        DType("INT64", np.dtype(np.int64), "tensor(int64)", "TYPE_INT64", "int64_contents", 8),
        # Triton has no typed field for FP16: it travels as raw bytes only.
        DType("FP16", np.dtype(np.float16), "tensor(float16)", "TYPE_FP16", None, 2),
        DType("FP32", np.dtype(np.float32), "tensor(float)", "TYPE_FP32", "fp32_contents", 4),
        DType("FP64", np.dtype(np.float64), "tensor(double)", "TYPE_FP64", "fp64_contents", 8),
        DType("BF16", None, "tensor(bfloat16)", "TYPE_BF16", None, 2),
        DType("BYTES", np.dtype(np.object_), "tensor(string)", "TYPE_STRING", "bytes_contents", 0),
    )
}
DTYPE_BY_ONNX: dict[str, DType] = {d.onnx: d for d in DTYPES.values()}


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a model signature; -1 marks a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]
