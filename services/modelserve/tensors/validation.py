"""Checks of V2 tensors: the payload checks every decoder runs, and ``validate_infer_request``,
the gateway's cheap check of a request against a signature (every decoder re-runs the payload
checks, so a hop called directly by a V2 client is just as safe)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from modelserve.errors import InvalidArgumentError
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.tensors.bytes_format import _bytes_spans
from modelserve.tensors.datatypes import (
    DTYPES,
    MAX_RANK,
    MAX_TENSOR_ELEMENTS,
    DType,
    TensorSpec,
    _Where,
    _WireTensor,
)


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


# (name, datatype, shape) of each input, in request order, of a request in the plain raw form.
Layout = tuple[tuple[str, str, tuple[int, ...]], ...]
# Remembered passes of one signature: (layout, requested output names) -> raw bytes per input.
PassedLayouts = dict[tuple[Layout, tuple[str, ...]], tuple[int, ...]]
MAX_PASSED_LAYOUTS = 1024


def raw_layout(request: pb.ModelInferRequest) -> Layout | None:
    """The request's layout when every input comes as raw bytes with no typed contents and no
    per-tensor parameters (what tritonclient and perf_analyzer send), else None."""
    inputs = request.inputs
    if len(request.raw_input_contents) != len(inputs):
        return None
    layout = []
    for tensor in inputs:
        if tensor.parameters or tensor.HasField("contents"):
            return None
        layout.append((tensor.name, tensor.datatype, tuple(tensor.shape)))
    return tuple(layout)


def validate_infer_request(
    request: pb.ModelInferRequest,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    max_batch_size: int,
    *,
    layout: Layout | None = None,
    passed: PassedLayouts | None = None,
) -> None:
    """Check a request against a model signature without decoding any tensor.

    Spec shapes include the batch dimension. Cheap checks run over every input first; only
    then are payload sizes checked (each raw payload is read once: upb copies it on access).

    With ``layout`` (``raw_layout(request)``) and ``passed`` (kept per signature by the
    caller), a layout seen to pass before is checked by its payload sizes alone: every other
    check depends only on the layout and the requested output names, which key the memo.
    Layouts with BYTES inputs are never remembered (their payloads must be walked)."""
    key = None
    if layout is not None and passed is not None:
        requested = request.outputs
        key = (layout, tuple(o.name for o in requested) if requested else ())
        sizes = passed.get(key)
        if sizes is not None:
            index = 0
            for raw in request.raw_input_contents:  # as many as the layout has inputs
                if len(raw) != sizes[index]:
                    break  # a wrong size: the full check below names it
                index += 1
            else:
                return
    _validate_fully(request, inputs, outputs, max_batch_size)
    if key is not None and layout is not None and passed is not None:
        sizes = _raw_sizes(layout)
        if sizes is not None:
            if len(passed) >= MAX_PASSED_LAYOUTS:  # bounded: shapes vary per caller
                passed.clear()
            passed[key] = sizes


def _raw_sizes(layout: Layout) -> tuple[int, ...] | None:
    sizes = []
    for _, datatype, shape in layout:
        dt = DTYPES[datatype]
        if dt.v2 == "BYTES":
            return None
        count = 1
        for d in shape:
            count *= d
        sizes.append(count * dt.itemsize)
    return tuple(sizes)


def _validate_fully(
    request: pb.ModelInferRequest,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    max_batch_size: int,
) -> None:
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
