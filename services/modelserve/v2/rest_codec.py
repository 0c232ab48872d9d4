"""The V2 REST binding's bodies <-> the V2 protobuf messages, as Triton's HTTP server has them.

Inference requests: JSON (``inputs[].data`` flat or nested, in row-major order) and Triton's
binary tensor extension: the body is a JSON header of ``Inference-Header-Content-Length`` bytes
followed by the raw tensors of the inputs whose parameter ``binary_data_size`` says how many
bytes are theirs, in input order. Every input becomes ``raw_input_contents`` (little-endian,
BYTES length-prefixed), so the gRPC path's validation, merging and routing see one shape of
request whichever face it came in by.

Inference responses: each output in JSON ``data`` (flat, as Triton writes it) or binary (its
raw bytes after the JSON header, ``parameters.binary_data_size``) when the requested output
says ``binary_data: true``, or when no output names it and the request's
``binary_data_output`` is true. FP16 and BF16 have no JSON form: as Triton, receiving them in
JSON is refused and they are always answered binary.

Other answers (metadata, config, statistics, repository index) are the protobuf messages as
JSON with the protobuf field names and integers as numbers (Triton's JSON), not
``json_format``'s camelCase and quoted int64.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
from google.protobuf.message import Message

from modelserve.errors import InvalidArgumentError
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.tensors import DTYPES, decode_outputs, serialize_bytes_tensor

HEADER_LENGTH = "inference-header-content-length"
BINARY_SIZE = "binary_data_size"
BINARY_OUTPUT = "binary_data_output"
BINARY = "binary_data"
TIMEOUT = "timeout"  # tritonclient.http's per-request timeout, in microseconds
NO_JSON = frozenset({"FP16", "BF16"})


# ---- generic: protobuf message -> Triton-style JSON value ------------------------------------


def message_json(message: Message, *, defaults: bool = False) -> dict[str, Any]:
    """``message`` as a dict keyed by protobuf field names, integers as numbers, enums by
    name. ``defaults``: include unset scalar and message fields (statistics, as Triton
    writes zero counts)."""
    out: dict[str, Any] = {}
    fd: Any
    for fd in message.DESCRIPTOR.fields:
        value = getattr(message, fd.name)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            if value or defaults:
                vfd = fd.message_type.fields_by_name["value"]
                out[fd.name] = {str(k): _field_value(vfd, v, defaults) for k, v in value.items()}
            continue
        if fd.is_repeated:
            if value or defaults:
                out[fd.name] = [_field_value(fd, v, defaults) for v in value]
            continue
        if fd.message_type is not None or fd.containing_oneof is not None:
            if message.HasField(fd.name) or (
                defaults and fd.message_type is not None and fd.containing_oneof is None
            ):
                out[fd.name] = _field_value(fd, value, defaults)
            continue
        if defaults or value != fd.default_value:
            out[fd.name] = _field_value(fd, value, defaults)
    return out


def _field_value(fd: Any, value: Any, defaults: bool) -> Any:
    if fd.message_type is not None:
        return message_json(value, defaults=defaults)
    if fd.enum_type is not None:
        named = fd.enum_type.values_by_number.get(value)
        return named.name if named is not None else value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def dumps(value: Any) -> bytes:
    """Compact JSON; orjson (NaN and infinities as null, as JSON has no word for them)."""
    return orjson.dumps(value)


# ---- parameters -------------------------------------------------------------------------------


def set_parameter(target: Any, key: str, value: Any) -> None:
    """One JSON parameter into a ``map<string, InferParameter>``."""
    p = target[key]
    if isinstance(value, bool):
        p.bool_param = value
    elif isinstance(value, int):
        p.int64_param = value
    elif isinstance(value, float):
        p.double_param = value
    elif isinstance(value, str):
        p.string_param = value
    else:
        raise InvalidArgumentError(
            f"parameter {key[:64]!r} must be a bool, number or string, got {type(value).__name__}"
        )


def parameter_value(p: pb.InferParameter) -> Any:
    choice = p.WhichOneof("parameter_choice")
    return getattr(p, choice) if choice else None


def _parameters(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgumentError(f"{where} 'parameters' must be a JSON object")
    return value


# ---- inference request ------------------------------------------------------------------------


def split_body(body: bytes, headers: Mapping[str, str]) -> tuple[bytes, memoryview]:
    """(the JSON header, the binary tensors after it)."""
    length = headers.get(HEADER_LENGTH)
    if length is None:
        return body, memoryview(b"")
    try:
        n = int(length)
    except ValueError:
        n = -1
    if n < 0 or n > len(body):
        raise InvalidArgumentError(
            f"Inference-Header-Content-Length {length[:32]!r} must be an integer in "
            f"[0, {len(body)}] (the body's length)"
        )
    view = memoryview(body)
    return body[:n], view[n:]


def parse_json(data: bytes | memoryview, what: str = "request") -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgumentError(f"failed to parse the {what} JSON: {exc}") from None


def _json_tensor(name: str, datatype: str, shape: list[int], data: Any) -> bytes:
    """The raw little-endian bytes of an input sent as JSON ``data``."""
    if datatype in NO_JSON:
        raise InvalidArgumentError(
            f"receiving {datatype} data via JSON is not supported. Please use the binary "
            f"data format for input {name}"
        )
    dt = DTYPES.get(datatype)
    if dt is None:
        raise InvalidArgumentError(f"invalid datatype {datatype[:32]!r} for input {name}")
    if not isinstance(data, list):
        data = [data]
    count = 1
    for d in shape:
        count *= d
    if datatype == "BYTES":
        flat = _flatten(data)
        if not all(isinstance(v, str) for v in flat):
            raise InvalidArgumentError(
                f"input {name!r}: BYTES data must be JSON strings (use binary data for "
                "arbitrary bytes)"
            )
        if len(flat) != count:
            raise _count_error(name, shape, count, len(flat))
        arr = np.empty(len(flat), dtype=np.object_)
        arr[:] = [v.encode("utf-8") for v in flat]
        return serialize_bytes_tensor(arr)
    assert dt.numpy is not None
    try:
        parsed = np.asarray(data)
    except ValueError:
        parsed = np.asarray(_flatten(data))  # ragged nesting: Triton reads it flat
    if parsed.dtype == object:
        parsed = np.asarray(_flatten(data))
    kind = dt.numpy.kind
    if parsed.size and not _kind_fits(parsed.dtype.kind, kind):
        raise InvalidArgumentError(
            f"input {name!r}: {datatype} data must be "
            + ("true/false" if kind == "b" else "integers" if kind in "iu" else "numbers")
            + f", got {_sample(parsed)}"
        )
    if parsed.size != count:
        raise _count_error(name, shape, count, parsed.size)
    if kind in "iu" and parsed.size:
        info = np.iinfo(dt.numpy)
        lo, hi = parsed.min(), parsed.max()
        if lo < info.min or hi > info.max:
            raise InvalidArgumentError(
                f"input {name!r}: {datatype} values must lie in [{info.min}, {info.max}], "
                f"got {lo if lo < info.min else hi}"
            )
    return np.ascontiguousarray(parsed, dtype=dt.numpy.newbyteorder("<")).tobytes()


def _kind_fits(got: str, want: str) -> bool:
    if want == "b":
        return got == "b"
    if want in "iu":
        return got in "iu"
    return got in "iuf"  # floats take integers too


def _sample(arr: np.ndarray) -> str:
    return orjson.dumps(arr.ravel()[:1].tolist()[0]).decode() if arr.size else "nothing"


def _count_error(name: str, shape: list[int], count: int, got: int) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"input {name!r}: shape {shape} needs {count} values in 'data', got {got}"
    )


def _flatten(data: Any) -> list[Any]:
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _shape(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in value
    ):
        raise InvalidArgumentError(f"input {name!r}: 'shape' must be a list of integers")
    return value


class ParsedInfer:
    """A REST inference request: the protobuf request plus what only the REST face uses."""

    __slots__ = ("binary_default", "binary_outputs", "request", "timeout_s")

    def __init__(self) -> None:
        self.request = pb.ModelInferRequest()
        self.binary_default = False  # binary_data_output
        self.binary_outputs: dict[str, bool] = {}  # requested outputs' binary_data
        self.timeout_s: float | None = None


def infer_request(model: str, version: str, body: bytes, headers: Mapping[str, str]) -> ParsedInfer:
    header, binary = split_body(body, headers)
    doc = parse_json(header)
    if not isinstance(doc, dict):
        raise InvalidArgumentError("the inference request must be a JSON object")
    parsed = ParsedInfer()
    request = parsed.request
    request.model_name = model
    request.model_version = version
    if "id" in doc:
        if not isinstance(doc["id"], str):
            raise InvalidArgumentError("'id' must be a string")
        request.id = doc["id"]
    for key, value in _parameters(doc.get("parameters"), "request").items():
        if key == BINARY_OUTPUT:
            parsed.binary_default = bool(value)
        elif key == TIMEOUT:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidArgumentError("parameter 'timeout' must be microseconds (int >= 0)")
            parsed.timeout_s = value / 1e6 if value else None
        else:
            set_parameter(request.parameters, key, value)
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidArgumentError("the inference request needs a non-empty 'inputs' list")
    offset = 0
    for item in inputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidArgumentError("each input must be an object with a 'name'")
        name = item["name"]
        datatype = item.get("datatype")
        if not isinstance(datatype, str):
            raise InvalidArgumentError(f"input {name!r}: 'datatype' must be a string")
        shape = _shape(item.get("shape"), name)
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        size: int | None = None
        for key, value in _parameters(item.get("parameters"), f"input {name!r}").items():
            if key == BINARY_SIZE:
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise InvalidArgumentError(
                        f"input {name!r}: 'binary_data_size' must be an integer >= 0"
                    )
                size = value
            elif key.startswith("shared_memory_"):
                raise InvalidArgumentError(
                    f"input {name!r}: shared memory is not supported; send the tensor in the body"
                )
            else:
                set_parameter(tensor.parameters, key, value)
        if size is not None:
            if "data" in item:
                raise InvalidArgumentError(
                    f"input {name!r} has both 'data' and binary data ('binary_data_size')"
                )
            if offset + size > len(binary):
                raise InvalidArgumentError(
                    f"input {name!r}: 'binary_data_size' {size} is past the end of the binary "
                    f"data ({len(binary) - offset} bytes left)"
                )
            request.raw_input_contents.append(bytes(binary[offset : offset + size]))
            offset += size
        elif "data" in item:
            request.raw_input_contents.append(_json_tensor(name, datatype, shape, item["data"]))
        else:
            raise InvalidArgumentError(
                f"input {name!r} has no 'data' and no 'binary_data_size' parameter"
            )
    if offset != len(binary):
        raise InvalidArgumentError(
            f"{len(binary) - offset} bytes of binary data after the inputs' binary_data_size"
        )
    for item in doc.get("outputs") or ():
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidArgumentError("each requested output must be an object with a 'name'")
        name = item["name"]
        out = request.outputs.add(name=name)
        for key, value in _parameters(item.get("parameters"), f"output {name!r}").items():
            if key == BINARY:
                parsed.binary_outputs[name] = bool(value)
            elif key.startswith("shared_memory_"):
                raise InvalidArgumentError(f"output {name!r}: shared memory is not supported")
            else:
                set_parameter(out.parameters, key, value)
    return parsed


# ---- inference response -----------------------------------------------------------------------


def infer_response(
    response: pb.ModelInferResponse, parsed: ParsedInfer
) -> tuple[bytes, int | None]:
    """(the body, the JSON header's length when binary tensors follow it, else None)."""
    doc: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
    }
    if response.id:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = {k: parameter_value(v) for k, v in response.parameters.items()}
    raws = response.raw_output_contents
    arrays: Mapping[str, np.ndarray] | None = None
    blobs: list[bytes] = []
    outputs = []
    any_binary = False
    for i, tensor in enumerate(response.outputs):
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if tensor.parameters:
            entry["parameters"] = {k: parameter_value(v) for k, v in tensor.parameters.items()}
        binary = parsed.binary_outputs.get(tensor.name, parsed.binary_default)
        if (binary or tensor.datatype in NO_JSON) and raws:
            any_binary = True
            entry.setdefault("parameters", {})[BINARY_SIZE] = len(raws[i])
            if raws[i]:
                blobs.append(raws[i])
        else:
            arr = _numeric_view(tensor, raws[i]) if raws else None
            if arr is None:
                if arrays is None:
                    arrays = decode_outputs(response)  # checks sizes; typed contents too
                arr = arrays[tensor.name]
            if binary or tensor.datatype in NO_JSON:
                any_binary = True
                raw = _raw_of(tensor.datatype, arr)
                entry.setdefault("parameters", {})[BINARY_SIZE] = len(raw)
                if raw:
                    blobs.append(raw)
            elif tensor.datatype == "BYTES":
                entry["data"] = [bytes(v).decode("utf-8", "replace") for v in arr.ravel()]
            else:
                entry["data"] = arr.ravel().tolist()
        outputs.append(entry)
    doc["outputs"] = outputs
    header = dumps(doc)
    if not any_binary:
        return header, None
    return b"".join([header, *blobs]), len(header)


def _numeric_view(tensor: Any, raw: bytes) -> np.ndarray | None:
    """A raw numeric output read in place (the common case), None to take the checked path."""
    dt = DTYPES.get(tensor.datatype)
    if dt is None or dt.numpy is None or dt.v2 == "BYTES":
        return None
    count = math.prod(tensor.shape)
    if count < 0 or count * dt.itemsize != len(raw):
        return None  # decode_outputs says what is wrong with it
    return np.frombuffer(raw, dtype=dt.numpy.newbyteorder("<"))


def _raw_of(datatype: str, arr: np.ndarray) -> bytes:
    if datatype == "BYTES":
        return serialize_bytes_tensor(arr)
    dt = DTYPES[datatype].numpy
    if dt is None:  # BF16 decoded as its uint16 bits
        return np.ascontiguousarray(arr, dtype="<u2").tobytes()
    return np.ascontiguousarray(arr, dtype=dt.newbyteorder("<")).tobytes()
