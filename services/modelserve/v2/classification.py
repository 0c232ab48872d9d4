"""The V2 classification extension, as Triton implements it: pure functions, no I/O.

A requested output with parameter ``classification`` = k is answered, instead of its raw
tensor, as a BYTES tensor of the k largest values of each batch row (all of them when the row
has fewer), largest first, each as ``"<score>:<index>"`` or ``"<score>:<index>:<label>"``
when the version's config labels that class index. Shape ``[batch, k]`` for a batched model,
``[k]`` otherwise (the whole tensor is one row). Scores print like Triton's
``std::fixed << setprecision(9)``: floats with nine decimals, integers as integers. Equal
scores keep index order (Triton's ``std::sort`` leaves their order unspecified).

The gateway strips the parameter before a request travels on (``take_class_counts``), so
classified requests merge with plain ones and no inner hop needs to know the extension, then
transforms its caller's answer (``apply``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from modelserve.errors import InvalidArgumentError
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.tensors import DTYPES, TensorSpec, decode_outputs, serialize_bytes_tensor

PARAMETER = "classification"
# Triton's AddClassResults covers the integer and floating datatypes; BOOL, BYTES and BF16
# have no order worth reporting (or no numpy type).
CLASSIFIABLE = frozenset(
    {"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"}
    | {"FP16", "FP32", "FP64"}
)


def wants_classification(request: pb.ModelInferRequest) -> bool:
    return any(PARAMETER in out.parameters for out in request.outputs)


def take_class_counts(
    request: pb.ModelInferRequest, outputs: Sequence[TensorSpec]
) -> dict[str, int]:
    """Remove ``classification`` from ``request``'s requested outputs and return the class
    count asked for each output (INVALID_ARGUMENT for a count that is not a positive integer
    or an output whose datatype cannot be ranked). Unknown outputs are left to the request's
    validation, which names them."""
    specs = {s.name: s for s in outputs}
    counts: dict[str, int] = {}
    for out in request.outputs:
        if PARAMETER not in out.parameters:
            continue
        parameter = out.parameters[PARAMETER]
        choice = parameter.WhichOneof("parameter_choice")
        if choice == "int64_param":
            k = parameter.int64_param
        elif choice == "uint64_param":
            k = parameter.uint64_param
        else:
            raise InvalidArgumentError(
                f"output {out.name!r}: parameter {PARAMETER!r} must be an integer class count "
                f"(int64_param); got {choice or 'no value'}"
            )
        if k <= 0:
            raise InvalidArgumentError(
                f"output {out.name!r}: parameter {PARAMETER!r} must be a class count >= 1; got {k}"
            )
        spec = specs.get(out.name)
        if spec is not None and spec.datatype not in CLASSIFIABLE:
            raise InvalidArgumentError(
                f"output {out.name!r} is {spec.datatype}: classification needs a numeric "
                f"output (one of {', '.join(sorted(CLASSIFIABLE))})"
            )
        del out.parameters[PARAMETER]
        counts[out.name] = int(k)
    return counts


def top_k(values: np.ndarray, k: int, labels: Sequence[str] = (), *, batched: bool) -> np.ndarray:
    """The classification strings of ``values``: object array of ``bytes``, shape
    ``[batch, min(k, classes)]`` when ``batched`` (rows are the first dimension), else
    ``[min(k, classes)]`` over every element."""
    floating = values.dtype.kind == "f"
    rows = values.reshape(values.shape[0], -1) if batched and values.ndim else values.reshape(1, -1)
    classes = rows.shape[1]
    keep = min(k, classes)
    out = np.empty((rows.shape[0], keep), dtype=np.object_)
    for r, row in enumerate(rows):
        # Largest first, equal scores in index order: a stable ascending sort of the
        # reversed row, read backwards, then mapped back to the row's indexes.
        order = classes - 1 - np.argsort(row[::-1], kind="stable")[::-1]
        for j, index in enumerate(order[:keep].tolist()):
            score = f"{float(row[index]):.9f}" if floating else str(int(row[index]))
            text = f"{score}:{index}"
            if index < len(labels):
                text += f":{labels[index]}"
            out[r, j] = text.encode()
    return out if batched else out.reshape(keep)


def apply(
    response: pb.ModelInferResponse,
    counts: Mapping[str, int],
    labels: Mapping[str, Sequence[str]],
    *,
    batched: bool,
) -> None:
    """Replace each output of ``response`` named in ``counts`` with its top-k strings."""
    raws = response.raw_output_contents
    use_raw = len(raws) == len(response.outputs) and len(raws) > 0
    typed = None if use_raw else decode_outputs(response)
    for index, tensor in enumerate(response.outputs):
        k = counts.get(tensor.name)
        if k is None:
            continue
        if tensor.datatype not in CLASSIFIABLE:
            raise InvalidArgumentError(
                f"output {tensor.name!r} is {tensor.datatype}: classification needs a numeric "
                "output"
            )
        if typed is not None:
            values = typed[tensor.name]
        else:
            dtype = DTYPES[tensor.datatype].numpy
            assert dtype is not None
            values = np.frombuffer(raws[index], dtype=dtype.newbyteorder("<")).reshape(
                tuple(tensor.shape)
            )
        classified = top_k(values, k, labels.get(tensor.name, ()), batched=batched)
        tensor.datatype = "BYTES"
        del tensor.shape[:]
        tensor.shape.extend(classified.shape)
        if typed is not None:
            tensor.ClearField("contents")
            tensor.contents.bytes_contents.extend(classified.reshape(-1).tolist())
        else:
            raws[index] = serialize_bytes_tensor(classified)
