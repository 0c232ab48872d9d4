"""Every bad input gets a specific status and message, and the suite keeps serving."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from modelserve.cli.suite import Suite
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.tensors import decode_outputs, encode_inputs

GOOD = np.ones((1, 8), dtype=np.float32)


def request_with(**overrides: object) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="fraud")
    encode_inputs(request, {"transaction": GOOD})
    for key, value in overrides.items():
        if key == "name":
            request.inputs[0].name = str(value)
        elif key == "datatype":
            request.inputs[0].datatype = str(value)
        elif key == "shape":
            del request.inputs[0].shape[:]
            request.inputs[0].shape.extend(value)  # type: ignore[arg-type]
        elif key == "raw":
            request.raw_input_contents[0] = value  # type: ignore[assignment]
        elif key == "model":
            request.model_name = str(value)
        elif key == "version":
            request.model_version = str(value)
    return request


CASES = [
    ("unknown model", {"model": "nope"}, grpc.StatusCode.NOT_FOUND, "unknown model 'nope'"),
    ("unknown version", {"version": "99"}, grpc.StatusCode.NOT_FOUND, "no version 99"),
    ("unknown label", {"version": "canary"}, grpc.StatusCode.NOT_FOUND, "no label 'canary'"),
    (
        "path-like model name",
        {"model": "../etc"},
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid model name",
    ),
    ("wrong input name", {"name": "amount"}, grpc.StatusCode.INVALID_ARGUMENT, "amount"),
    ("wrong dtype", {"datatype": "INT64"}, grpc.StatusCode.INVALID_ARGUMENT, "expected FP32"),
    ("wrong shape", {"shape": [1, 9]}, grpc.StatusCode.INVALID_ARGUMENT, "transaction"),
    ("byte size", {"raw": b"\x00" * 31}, grpc.StatusCode.INVALID_ARGUMENT, "32 bytes"),
]


async def assert_still_serving(gateway: pb_grpc.GRPCInferenceServiceStub) -> None:
    response = await gateway.ModelInfer(request_with(), timeout=10)
    assert decode_outputs(response)["fraud_probability"].shape == (1, 1)


@pytest.mark.parametrize(("what", "overrides", "code", "text"), CASES, ids=[c[0] for c in CASES])
async def test_bad_input_gets_specific_status(
    gateway: pb_grpc.GRPCInferenceServiceStub,
    what: str,
    overrides: dict[str, object],
    code: grpc.StatusCode,
    text: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await gateway.ModelInfer(request_with(**overrides), timeout=10)
    assert info.value.code() == code, info.value.details()
    assert text in (info.value.details() or ""), info.value.details()
    await assert_still_serving(gateway)


async def test_every_metadata_rpc_says_not_found_for_unknown_model(
    gateway: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    calls = [
        gateway.ModelMetadata(pb.ModelMetadataRequest(name="nope"), timeout=5),
        gateway.ModelConfig(pb.ModelConfigRequest(name="nope"), timeout=5),
        gateway.ModelReady(pb.ModelReadyRequest(name="nope"), timeout=5),
        gateway.ModelStatistics(pb.ModelStatisticsRequest(name="nope"), timeout=5),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_oversized_message_is_resource_exhausted(
    gateway: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    rows = np.zeros((64, 8), dtype=np.float32)
    request = pb.ModelInferRequest(model_name="fraud")
    encode_inputs(request, {"transaction": rows})
    request.parameters["padding"].string_param = "x" * (17 << 20)  # past the 16 MiB limit
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await gateway.ModelInfer(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await assert_still_serving(gateway)


async def test_expired_deadline_is_deadline_exceeded(
    gateway: pb_grpc.GRPCInferenceServiceStub, suite: Suite
) -> None:
    # At the edge a 0.5 ms deadline is clamped up to the gateway's 10 ms floor while the
    # client keeps its own 0.5 ms: the direct lane can answer inside that on a quiet box, and
    # grpc-core may read such an answer before its deadline timer fires. So the server's own
    # refusal is checked where no floor applies: a worker asked with less than its minimum
    # budget (5 ms) left answers DEADLINE_EXCEEDED without running anything.
    async with grpc.aio.insecure_channel(suite.address("worker")) as channel:
        worker = pb_grpc.GRPCInferenceServiceStub(channel)
        await worker.ModelReady(pb.ModelReadyRequest(name="fraud"), timeout=5)  # connected
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await worker.ModelInfer(request_with(), timeout=0.0005)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await assert_still_serving(gateway)


async def test_stream_infer_reports_errors_in_band_and_continues(
    gateway: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    requests = [request_with(), request_with(model="nope"), request_with()]
    replies = [r async for r in gateway.ModelStreamInfer(iter(requests), timeout=10)]
    assert [bool(r.error_message) for r in replies] == [False, True, False]
    assert "NOT_FOUND" in replies[1].error_message


async def test_nan_and_inf_reach_the_model_as_data(
    gateway: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    """T06: NaN and +-Inf are data, not errors: the worker runs them through ONNX Runtime and
    answers OK (whatever the model makes of them), never UNKNOWN or INTERNAL."""
    rows = np.array(
        [[np.nan] * 8, [np.inf] * 8, [-np.inf] * 8, [np.nan, np.inf, -np.inf, 0, 1, -1, 2, 3]],
        dtype=np.float32,
    )
    request = pb.ModelInferRequest(model_name="fraud")
    encode_inputs(request, {"transaction": rows})
    response = await gateway.ModelInfer(request, timeout=10)
    assert decode_outputs(response)["fraud_probability"].shape == (4, 1)
    await assert_still_serving(gateway)


@pytest.mark.parametrize(
    ("what", "request_", "codes"),
    [
        ("zero rows", {"shape": [0, 8], "raw": b""}, (grpc.StatusCode.OK,)),
        ("zero columns", {"shape": [1, 0], "raw": b""}, (grpc.StatusCode.INVALID_ARGUMENT,)),
        ("empty model name", {"model": ""}, (grpc.StatusCode.INVALID_ARGUMENT,)),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
async def test_edge_values_get_a_defined_answer_through_the_suite(
    gateway: pb_grpc.GRPCInferenceServiceStub,
    what: str,
    request_: dict[str, object],
    codes: tuple[grpc.StatusCode, ...],
) -> None:
    """T06 end to end: a zero-size tensor and an empty model name get OK or INVALID_ARGUMENT
    (the documented one for each), never UNKNOWN/INTERNAL, and the suite serves on."""
    try:
        await gateway.ModelInfer(request_with(**request_), timeout=10)
        code = grpc.StatusCode.OK
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
    assert code in codes, f"{what}: {code}"
    await assert_still_serving(gateway)
