"""The tensor codec: every conversion between V2 protobuf tensors and numpy lives here.

The datatype table is the one map between V2 names, numpy, ONNX type strings, Triton config
enums and the typed ``InferTensorContents`` fields. ``validate_infer_request`` is the gateway's
cheap check against a signature; every decoder re-runs the same payload checks, so a hop called
directly by a V2 client is just as safe.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

import numpy as np

from modelserve.errors import InvalidArgumentError
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.modelserve.v1 import common_pb2

# Set by the gateway on a call that carries several client requests merged along the batch
# dimension, so the worker's statistics count client requests, not internal calls.
MERGED_REQUESTS_PARAMETER = "modelserve_merged_requests"


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
        DType("UINT64", np.dtype(np.uint64), "tensor(uint64)", "TYPE_UINT64", "uint64_contents", 8),
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


# Refuse absurd shapes before anything is allocated (RELIABILITY.md, design rule 9).
MAX_TENSOR_ELEMENTS = 2**31
# numpy 2 cannot hold more dimensions than this, so a deeper shape could never be decoded.
MAX_RANK = 64

_LEN = struct.Struct("<I")  # Triton's BYTES element prefix: little-endian uint32 length
_DTYPE_BY_NUMPY: dict[np.dtype, DType] = {
    d.numpy: d for d in DTYPES.values() if d.numpy is not None
}
# numpy dtype of the values each typed field carries; narrower datatypes are range-checked.
_FIELD_DTYPE: dict[str, np.dtype] = {
    "bool_contents": np.dtype(np.bool_),
    "int_contents": np.dtype(np.int32),
    "int64_contents": np.dtype(np.int64),
    "uint_contents": np.dtype(np.uint32),
    "uint64_contents": np.dtype(np.uint64),
    "fp32_contents": np.dtype(np.float32),
    "fp64_contents": np.dtype(np.float64),
}


class _WireTensor(Protocol):
    """What request inputs and response outputs have in common."""

    @property
    def name(self) -> str: ...
    @property
    def datatype(self) -> str: ...
    @property
    def shape(self) -> Iterable[int]: ...
    @property
    def contents(self) -> pb.InferTensorContents: ...
    def HasField(self, field_name: Literal["contents"]) -> bool: ...


class _Where(NamedTuple):
    """Which tensor a message is about: prints as ``input 'x'``."""

    kind: str  # "input", "output" or "tensor"
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name!r}"

    @property
    def raw_field(self) -> str:
        return "raw_output_contents" if self.kind == "output" else "raw_input_contents"


# ---- Triton's BYTES format ------------------------------------------------------------------


def _as_bytes(item: object) -> bytes:
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item)
    raise TypeError(f"BYTES elements must be bytes or str, got {type(item).__name__}")


def serialize_bytes_tensor(arr: np.ndarray) -> bytes:
    """Each element (C order) as a 4-byte little-endian length and its bytes; str as utf-8."""
    parts: list[bytes] = []
    for item in np.asarray(arr, dtype=np.object_).flat:
        data = _as_bytes(item)
        parts.append(_LEN.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def _bytes_spans(buf: bytes | memoryview, count: int, label: _Where) -> Iterator[tuple[int, int]]:
    """Yield (start, end) of exactly ``count`` elements, then insist the buffer is used up.

    A generator, so validation walks the prefixes in O(1) memory and stops at the first fault.
    """
    size, offset = len(buf), 0
    for i in range(count):
        if offset == size:
            raise InvalidArgumentError(f"{label}: expected {count} BYTES elements, got {i}")
        if size - offset < 4:
            raise InvalidArgumentError(
                f"{label}: BYTES element {i} has a truncated length prefix: "
                f"needs 4 bytes at offset {offset}, got {size - offset}"
            )
        (length,) = _LEN.unpack_from(buf, offset)
        start, end = offset + 4, offset + 4 + length
        if end > size:
            raise InvalidArgumentError(
                f"{label}: BYTES element {i} is truncated: "
                f"needs {length} bytes at offset {start}, got {size - start}"
            )
        yield start, end
        offset = end
    rest = size - offset
    if rest == 0:
        return
    # A complete element after the last one is a count mismatch; anything else is garbage.
    if rest >= 4 and _LEN.unpack_from(buf, offset)[0] <= rest - 4:
        raise InvalidArgumentError(
            f"{label}: expected {count} BYTES elements, got more than {count}"
        )
    raise InvalidArgumentError(
        f"{label}: expected {count} BYTES elements, got {rest} trailing bytes after them"
    )


def deserialize_bytes_tensor(
    buf: bytes | memoryview, count: int, name: str, *, kind: str = "input"
) -> np.ndarray:
    """Parse ``count`` length-prefixed elements into a flat object array of ``bytes``."""
    # A list grows only as far as the buffer really holds, so a lying count allocates nothing.
    items = [bytes(buf[s:e]) for s, e in _bytes_spans(buf, count, _Where(kind, name))]
    out = np.empty(len(items), dtype=np.object_)
    out[:] = items
    return out


# ---- checks shared by the gateway's validation and every decoder -----------------------------


def _fmt(shape: Sequence[int]) -> str:
    dims = [str(d) for d in shape[:8]] + (["..."] if len(shape) > 8 else [])
    return "[" + ",".join(dims) + "]"


def _lookup_dtype(label: _Where, datatype: str) -> DType:
    dt = DTYPES.get(datatype)
    if dt is None:
        raise InvalidArgumentError(
            f"{label}: expected a datatype in {', '.join(DTYPES)}, got {datatype!r}"
        )
    return dt


def _element_count(label: _Where, shape: Sequence[int]) -> int:
    if len(shape) > MAX_RANK:
        raise InvalidArgumentError(f"{label}: expected rank <= {MAX_RANK}, got {len(shape)}")
    # Zero dims are left out of the bound: numpy cannot even describe [2**62, 2**62, 0].
    nonzero = 1
    for d in shape:
        if d < 0:
            raise InvalidArgumentError(
                f"{label}: shape {_fmt(shape)} has negative dim {d}; expected dims >= 0"
            )
        nonzero *= d or 1
        if nonzero > MAX_TENSOR_ELEMENTS:  # stop at once: a hostile shape builds no huge int
            raise InvalidArgumentError(
                f"{label}: shape {_fmt(shape)} exceeds the limit of {MAX_TENSOR_ELEMENTS} elements"
            )
    return 0 if 0 in shape else nonzero


def _check_raw(label: _Where, dt: DType, shape: Sequence[int], count: int, raw: bytes) -> None:
    if dt.v2 == "BYTES":
        for _ in _bytes_spans(raw, count, label):
            pass
        return
    need = count * dt.itemsize
    if len(raw) != need:
        raise InvalidArgumentError(
            f"{label}: shape {_fmt(shape)} {dt.v2} needs {need} bytes, got {len(raw)}"
        )


def _check_typed(
    label: _Where, dt: DType, shape: Sequence[int], count: int, contents: pb.InferTensorContents
) -> None:
    fields = contents.ListFields()  # only the non-empty ones
    if dt.contents_field is None:
        if fields or count:
            raise InvalidArgumentError(f"{label}: {dt.v2} must be sent in {label.raw_field}")
        return
    for field, _ in fields:
        if field.name != dt.contents_field:
            raise InvalidArgumentError(
                f"{label}: {dt.v2} values belong in {dt.contents_field}, got {field.name}"
            )
    values = getattr(contents, dt.contents_field)
    if len(values) != count:
        raise InvalidArgumentError(
            f"{label}: shape {_fmt(shape)} needs {count} values in {dt.contents_field}, "
            f"got {len(values)}"
        )
    # int_contents/uint_contents are 32-bit: narrower datatypes must not silently wrap.
    if dt.numpy is not None and dt.numpy.kind in "iu" and dt.itemsize < 4 and count:
        info = np.iinfo(dt.numpy)
        lo, hi = min(values), max(values)
        if lo < info.min or hi > info.max:
            raise InvalidArgumentError(
                f"{label}: {dt.v2} values must lie in [{info.min}, {info.max}], "
                f"got {lo if lo < info.min else hi}"
            )


def _check_payload(
    label: _Where,
    dt: DType,
    shape: Sequence[int],
    raw: bytes | None,
    contents: pb.InferTensorContents | None,
) -> int:
    """Check one tensor's payload against its datatype and shape; return its element count.

    ``contents`` is None when the tensor has no typed contents (or cannot have them).
    """
    count = _element_count(label, shape)
    if raw is None:
        _check_typed(label, dt, shape, count, contents or pb.InferTensorContents())
    elif contents is not None and contents.ListFields():
        raise InvalidArgumentError(
            f"{label}: expected either {label.raw_field} or typed contents, got both"
        )
    else:
        _check_raw(label, dt, shape, count, raw)
    return count


def _typed(tensor: _WireTensor) -> pb.InferTensorContents | None:
    # HasField first: reading an unset submessage would build an empty one.
    return tensor.contents if tensor.HasField("contents") else None


def _uses_raw(raws: Sequence[bytes], tensors: int, kind: str) -> bool:
    if raws and len(raws) != tensors:
        raise InvalidArgumentError(f"expected {tensors} raw_{kind}_contents, got {len(raws)}")
    return bool(raws)


# ---- the gateway's validation ----------------------------------------------------------------


def _check_against_spec(
    label: _Where, datatype: str, shape: tuple[int, ...], spec: TensorSpec, max_batch_size: int
) -> None:
    if datatype != spec.datatype:
        raise InvalidArgumentError(f"{label}: expected {spec.datatype}, got {datatype}")
    _element_count(label, shape)  # negative dims and absurd sizes before any other detail
    if len(shape) != len(spec.shape):
        raise InvalidArgumentError(
            f"{label}: expected rank {len(spec.shape)} shape {_fmt(spec.shape)}, "
            f"got rank {len(shape)} shape {_fmt(shape)}"
        )
    for axis, (want, got) in enumerate(zip(spec.shape, shape, strict=True)):
        if want != -1 and want != got:
            raise InvalidArgumentError(
                f"{label}: dim {axis} expected {want}, got {got} "
                f"(expected shape {_fmt(spec.shape)}, got {_fmt(shape)})"
            )
    if max_batch_size > 0 and shape and shape[0] > max_batch_size:
        raise InvalidArgumentError(
            f"{label}: expected batch size <= max_batch_size {max_batch_size}, got {shape[0]}"
        )


def _check_requested_outputs(
    requested: Iterable[pb.ModelInferRequest.InferRequestedOutputTensor],
    outputs: Sequence[TensorSpec],
) -> None:
    known = [s.name for s in outputs]
    seen: set[str] = set()
    for out in requested:
        if out.name not in known:
            raise InvalidArgumentError(f"unknown output {out.name!r}; expected one of {known}")
        if out.name in seen:
            raise InvalidArgumentError(f"output {out.name!r} requested more than once")
        seen.add(out.name)


def validate_infer_request(
    request: pb.ModelInferRequest,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    max_batch_size: int,
) -> None:
    """Check a request against a model signature without decoding any tensor.

    Spec shapes include the batch dimension. Cheap checks run over every input first; only
    then are payload sizes checked (each raw payload is read once: upb copies it on access).
    """
    specs = {s.name: s for s in inputs}
    raws = request.raw_input_contents
    use_raw = _uses_raw(raws, len(request.inputs), "input")
    found: dict[str, tuple[pb.ModelInferRequest.InferInputTensor, tuple[int, ...]]] = {}
    for tensor in request.inputs:
        name = tensor.name
        spec = specs.get(name)
        if spec is None:
            raise InvalidArgumentError(f"unknown input {name!r}; expected one of {list(specs)}")
        if name in found:
            raise InvalidArgumentError(f"input {name!r} given more than once")
        shape = tuple(tensor.shape)
        _check_against_spec(_Where("input", name), tensor.datatype, shape, spec, max_batch_size)
        found[name] = tensor, shape
    for name in specs:
        if name not in found:
            raise InvalidArgumentError(
                f"missing input {name!r}; expected inputs {list(specs)}, got {list(found)}"
            )
    _check_requested_outputs(request.outputs, outputs)
    for i, (name, (tensor, shape)) in enumerate(found.items()):
        label = _Where("input", name)
        dt = _lookup_dtype(label, specs[name].datatype)
        _check_payload(label, dt, shape, raws[i] if use_raw else None, _typed(tensor))


# ---- decoding --------------------------------------------------------------------------------


def _from_raw(
    label: _Where, dt: DType, shape: tuple[int, ...], count: int, raw: bytes
) -> np.ndarray:
    if dt.numpy is None:
        raise InvalidArgumentError(f"{label}: {dt.v2} has no numpy equivalent and is unsupported")
    if dt.v2 == "BYTES":
        return deserialize_bytes_tensor(raw, count, label.name, kind=label.kind).reshape(shape)
    # A view on the received bytes: read-only, no copy.
    return np.frombuffer(raw, dtype=dt.numpy.newbyteorder("<")).reshape(shape)


def _from_typed(
    dt: DType, shape: tuple[int, ...], count: int, contents: pb.InferTensorContents
) -> np.ndarray:
    if dt.numpy is None or dt.contents_field is None:  # only count == 0 passes the checks
        return np.empty(shape, dtype=dt.numpy or np.uint16)
    values = getattr(contents, dt.contents_field)
    if dt.v2 == "BYTES":
        out = np.empty(count, dtype=np.object_)
        out[:] = list(values)
        return out.reshape(shape)
    wide = np.fromiter(values, dtype=_FIELD_DTYPE[dt.contents_field], count=count)
    return wide.astype(dt.numpy, copy=False).reshape(shape)


def _decode_tensors(
    tensors: Sequence[_WireTensor], raws: Sequence[bytes], kind: str
) -> dict[str, np.ndarray]:
    use_raw = _uses_raw(raws, len(tensors), kind)
    result: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(tensors):
        label = _Where(kind, tensor.name)
        if tensor.name in result:
            raise InvalidArgumentError(f"{label} given more than once")
        dt = _lookup_dtype(label, tensor.datatype)
        shape = tuple(tensor.shape)
        raw = raws[i] if use_raw else None
        count = _check_payload(label, dt, shape, raw, _typed(tensor))
        if raw is None:
            result[tensor.name] = _from_typed(dt, shape, count, tensor.contents)
        else:
            result[tensor.name] = _from_raw(label, dt, shape, count, raw)
    return result


def decode_inputs(request: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    """Request inputs as numpy; raw numeric inputs are read-only views, not copies.

    Safe without ``validate_infer_request`` (a worker may be called directly): sizes, counts
    and BYTES prefixes are checked again, by the same code.
    """
    return _decode_tensors(request.inputs, request.raw_input_contents, "input")


def decode_outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Response outputs as numpy, from raw or typed contents (client side)."""
    return _decode_tensors(response.outputs, response.raw_output_contents, "output")


# ---- encoding --------------------------------------------------------------------------------


def v2_datatype_of(arr: np.ndarray) -> str:
    """The V2 datatype for a numpy array; str, bytes and object arrays are BYTES."""
    if arr.dtype.kind in "OUS":
        return "BYTES"
    dt = _DTYPE_BY_NUMPY.get(arr.dtype.newbyteorder("="))
    if dt is None:
        supported = ", ".join(str(d) for d in _DTYPE_BY_NUMPY)
        raise InvalidArgumentError(f"expected a numpy dtype in {supported}, got {arr.dtype}")
    return dt.v2


def _to_wire(name: str, arr: np.ndarray, datatype: str) -> bytes:
    """Raw little-endian C-order bytes of ``arr`` as ``datatype``.

    A dtype that does not match an explicit ``datatype`` is a bug in the caller, not in the
    request, so it raises ValueError (INTERNAL), not InvalidArgumentError.
    """
    dt = _lookup_dtype(_Where("tensor", name), datatype)
    if dt.v2 == "BYTES":
        return serialize_bytes_tensor(arr)
    target = dt.numpy if dt.numpy is not None else np.dtype(np.uint16)  # BF16: its raw bits
    if arr.dtype.kind != target.kind or arr.dtype.itemsize != target.itemsize:
        raise ValueError(f"tensor {name!r}: expected an array for {dt.v2}, got {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=target.newbyteorder("<")).tobytes()


def encode_outputs(
    response: pb.ModelInferResponse,
    arrays: Mapping[str, np.ndarray],
    datatypes: Mapping[str, str] | None = None,
) -> None:
    """Append each array as an output tensor with its bytes in raw_output_contents."""
    for name, value in arrays.items():
        arr = np.asarray(value)
        datatype = (datatypes or {}).get(name) or v2_datatype_of(arr)
        response.outputs.add(name=name, datatype=datatype, shape=arr.shape)
        response.raw_output_contents.append(_to_wire(name, arr, datatype))


def encode_inputs(request: pb.ModelInferRequest, arrays: Mapping[str, np.ndarray]) -> None:
    """Append each array as an input tensor with its bytes in raw_input_contents."""
    for name, value in arrays.items():
        arr = np.asarray(value)
        datatype = v2_datatype_of(arr)
        request.inputs.add(name=name, datatype=datatype, shape=arr.shape)
        request.raw_input_contents.append(_to_wire(name, arr, datatype))


def encode_inputs_typed(request: pb.ModelInferRequest, arrays: Mapping[str, np.ndarray]) -> None:
    """Append each array as an input tensor in its typed contents field (tests, old clients)."""
    for name, value in arrays.items():
        arr = np.asarray(value)
        dt = DTYPES[v2_datatype_of(arr)]
        if dt.contents_field is None:
            raise InvalidArgumentError(
                f"input {name!r}: {dt.v2} must be sent in raw_input_contents"
            )
        tensor = request.inputs.add(name=name, datatype=dt.v2, shape=arr.shape)
        flat = arr.ravel()
        values = [_as_bytes(v) for v in flat] if dt.v2 == "BYTES" else flat.tolist()
        getattr(tensor.contents, dt.contents_field).extend(values)


# ---- modelserve.v1 tensors and ONNX signatures ------------------------------------------------


def to_proto_tensor(name: str, arr: np.ndarray) -> common_pb2.Tensor:
    arr = np.asarray(arr)
    datatype = v2_datatype_of(arr)
    return common_pb2.Tensor(
        name=name, datatype=datatype, shape=arr.shape, raw=_to_wire(name, arr, datatype)
    )


def from_proto_tensor(t: common_pb2.Tensor) -> np.ndarray:
    """Decode a modelserve.v1 Tensor, checked like a request input."""
    label, shape, raw = _Where("tensor", t.name), tuple(t.shape), t.raw
    dt = _lookup_dtype(label, t.datatype)
    return _from_raw(label, dt, shape, _check_payload(label, dt, shape, raw, None), raw)


def datatype_from_onnx(onnx_type: str) -> str:
    """V2 datatype for an ONNX Runtime type string such as ``tensor(float)``."""
    dt = DTYPE_BY_ONNX.get(onnx_type)
    if dt is None:
        raise InvalidArgumentError(
            f"unsupported ONNX type {onnx_type!r}; expected one of {', '.join(DTYPE_BY_ONNX)}"
        )
    return dt.v2


def shape_from_onnx(dims: Sequence[int | str | None]) -> tuple[int, ...]:
    """ONNX dims to a spec shape: symbolic, unknown or negative dims become -1."""
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in dims)
