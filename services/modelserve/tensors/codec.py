"""Decoding and encoding V2 tensors (raw or typed contents) and modelserve.v1 tensors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from modelserve.errors import InvalidArgumentError
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.modelserve.v1 import common_pb2
from modelserve.tensors.bytes_format import (
    _as_bytes,
    deserialize_bytes_tensor,
    serialize_bytes_tensor,
)
from modelserve.tensors.datatypes import (
    _DTYPE_BY_NUMPY,
    _FIELD_DTYPE,
    DTYPES,
    DType,
    _Where,
    _WireTensor,
)
from modelserve.tensors.validation import _check_payload, _lookup_dtype, _typed, _uses_raw


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
