"""Fuzzing the tensor codec and request validation with hypothesis (RELIABILITY-CASES T40):
whatever bytes, shapes, datatypes and typed contents a caller sends, validation and decoding
either accept the request or raise InvalidArgumentError — never another exception, never a
hang — and what validation accepts, decoding decodes to the declared shape.

A short run is in the default suite (``FUZZ_EXAMPLES``, 300 per property); a long run:
    FUZZ_EXAMPLES=20000 ./dev test tests/modelserve/test_tensors_fuzz.py
"""

from __future__ import annotations

import math
import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelserve.errors import InvalidArgumentError
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.tensors import (
    DTYPES,
    TensorSpec,
    decode_inputs,
    deserialize_bytes_tensor,
    validate_infer_request,
)

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DATATYPES = sorted(DTYPES)
TYPED_FIELDS = [
    "fp32_contents",
    "int_contents",
    "int64_contents",
    "bytes_contents",
    "bool_contents",
]
SPECS = (TensorSpec("x", "FP32", (-1, 4)), TensorSpec("s", "BYTES", (-1, 1)))
OUTPUTS = (TensorSpec("y", "FP32", (-1, 1)),)

shapes = st.lists(
    st.one_of(st.integers(-3, 6), st.sampled_from([2**31, 2**62, -(2**40)])), max_size=5
)


@st.composite
def tensors(draw: st.DrawFn) -> tuple[pb.ModelInferRequest.InferInputTensor, bytes | None]:
    tensor = pb.ModelInferRequest.InferInputTensor(
        name=draw(st.sampled_from(["x", "s", "other", "", "x\n"])),
        datatype=draw(st.one_of(st.sampled_from(DATATYPES), st.text(max_size=6))),
        shape=draw(shapes),
    )
    kind = draw(st.sampled_from(["raw", "typed", "none"]))
    raw = None
    if kind == "raw":
        raw = draw(st.binary(max_size=96))
    elif kind == "typed":
        field = draw(
            st.sampled_from(
                [
                    "fp32_contents",
                    "int_contents",
                    "int64_contents",
                    "bytes_contents",
                    "bool_contents",
                ]
            )
        )
        if field == "fp32_contents":
            values: list[object] = draw(st.lists(st.floats(width=32), max_size=12))
        elif field == "bytes_contents":
            values = draw(st.lists(st.binary(max_size=8), max_size=12))
        elif field == "bool_contents":
            values = draw(st.lists(st.booleans(), max_size=12))
        elif field == "int64_contents":
            values = draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=12))
        else:
            values = draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=12))
        getattr(tensor.contents, field).extend(values)
    return tensor, raw


@st.composite
def requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    drawn = draw(st.lists(tensors(), max_size=3))
    raws = [raw for _, raw in drawn]
    for tensor, _ in drawn:
        request.inputs.append(tensor)
    if draw(st.booleans()) and any(raw is not None for raw in raws):
        request.raw_input_contents.extend(raw if raw is not None else b"" for raw in raws)
    for name in draw(st.lists(st.sampled_from(["y", "z", ""]), max_size=2)):
        request.outputs.add(name=name)
    return request


@FUZZ
@given(requests(), st.integers(0, 8))
def test_validation_and_decoding_accept_or_refuse_cleanly(
    request: pb.ModelInferRequest, max_batch: int
) -> None:
    try:
        validate_infer_request(request, SPECS, OUTPUTS, max_batch)
    except InvalidArgumentError as exc:
        assert exc.message and len(exc.message) < 2000
        return
    arrays = decode_inputs(request)  # accepted: must decode, to the declared shapes
    for tensor in request.inputs:
        assert arrays[tensor.name].shape == tuple(tensor.shape)


@FUZZ
@given(requests())
def test_decoding_alone_never_fails_otherwise(request: pb.ModelInferRequest) -> None:
    """A hop called directly decodes without the gateway's validation: same guarantee."""
    try:
        arrays = decode_inputs(request)
    except InvalidArgumentError:
        return
    for tensor in request.inputs:
        assert math.prod(arrays[tensor.name].shape) == math.prod(tensor.shape)


@FUZZ
@given(st.binary(max_size=200), st.integers(-2, 40))
def test_bytes_tensors_parse_or_refuse(buffer: bytes, count: int) -> None:
    try:
        values = deserialize_bytes_tensor(buffer, count, "s")
    except InvalidArgumentError:
        return
    assert isinstance(values, np.ndarray) and values.size == max(count, 0)
