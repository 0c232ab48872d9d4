"""T39 with real faults: a model whose run raises inside ONNX Runtime (tests/faultmodel.py),
called on every face that reaches it (gateway gRPC unary and stream, gateway REST, router and
worker directly). Each answer is INTERNAL (REST 500) with a generic text and the caller's
request id; ORT's text (a C++ source path, the node, the shapes), hostnames and ports stay in
the worker's log. The Redis faults are forced in
tests/featurestore/test_featurestore_redis_faults.py."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from faultmodel import WIDTH, fault_model
from testsupport import eventually

from modelserve.cli.registry_client import push_version
from modelserve.cli.suite import Suite
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import registry_pb2, registry_pb2_grpc

NAME = "fault-on-demand"
# What ORT's failure says, and what a leak of the process would look like.
LEAKS = ("onnxruntime", "reshape", "Reshape", ".h:", ".cc", ".py", "Traceback", "127.0.0.1",
         "localhost", "requested shape", "/")  # fmt: skip


@pytest.fixture(scope="module")
async def fault(suite: Suite, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("fault") / "fault.onnx"
    onnx.save(fault_model(), path)
    async with grpc.aio.insecure_channel(suite.address("registry")) as channel:
        await push_version(
            registry_pb2_grpc.RegistryStub(channel),
            NAME,
            path,
            labels=["production"],
            config=registry_pb2.ServingConfig(max_batch_size=8, warmup_iterations=1),
        )
    async with grpc.aio.insecure_channel(suite.address("gateway")) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def ready() -> None:
            assert (await stub.ModelReady(pb.ModelReadyRequest(name=NAME), timeout=5)).ready

        await eventually(ready, timeout=120)
    return NAME


def request(value: float) -> pb.ModelInferRequest:
    x = np.full((1, WIDTH), value, np.float32)
    return pb.ModelInferRequest(
        model_name=NAME,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=x.shape)],
        raw_input_contents=[x.tobytes()],
    )


def assert_hygienic(details: str, rid: str) -> None:
    assert f"request-id {rid}" in details, details
    for leak in LEAKS:
        assert leak not in details, (leak, details)


async def test_an_ort_failure_is_internal_with_the_request_id_on_every_face(
    suite: Suite, fault: str
) -> None:
    """Gateway, router and worker over gRPC: INTERNAL, "... (request-id R ...)", no ORT text;
    the same call with zeros is served (the fault is the run's, not the model's load)."""
    for hop in ("gateway", "router", "worker"):
        async with grpc.aio.insecure_channel(suite.address(hop)) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            ok = await stub.ModelInfer(request(0.0), timeout=10)
            assert ok.outputs[0].shape == [1, WIDTH]
            rid = f"t39-{hop}"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ModelInfer(request(1.0), timeout=10, metadata=(("x-request-id", rid),))
            assert err.value.code() == grpc.StatusCode.INTERNAL, (hop, err.value.details())
            assert_hygienic(err.value.details() or "", rid)
            if hop == "worker":  # the one that saw the exception names it a ref for the log
                assert re.fullmatch(
                    rf"internal error \(request-id {rid}, ref [0-9a-f]{{12}}\)",
                    err.value.details() or "",
                )
            for _key, value in err.value.trailing_metadata() or ():
                for leak in LEAKS[:-1]:
                    assert leak not in str(value), (hop, leak, value)
    # The detail is in the worker's log (under the request id), not lost.
    log = suite.processes["worker"].log_path.read_text(errors="replace")
    assert "request-id t39-worker" in log and "reshape" in log.lower()


async def test_an_ort_failure_in_a_stream_names_nothing_and_the_stream_goes_on(
    suite: Suite, fault: str
) -> None:
    async with grpc.aio.insecure_channel(suite.address("gateway")) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        call = stub.ModelStreamInfer(timeout=10, metadata=(("x-request-id", "t39-stream"),))
        bad = request(1.0)
        bad.id = "r1"
        await call.write(bad)
        first = await call.read()
        await call.write(request(0.0))
        second = await call.read()
        await call.done_writing()
    assert first.error_message.startswith("INTERNAL: "), first.error_message
    assert first.infer_response.id == "r1"
    for leak in LEAKS[:-1]:
        assert leak not in first.error_message, (leak, first.error_message)
    assert not second.error_message and second.infer_response.outputs[0].shape == [1, WIDTH]


async def test_an_ort_failure_over_rest_is_500_with_the_request_id(
    suite: Suite, fault: str
) -> None:
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, WIDTH], "data": [1.0] * 4}]}
    )
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-X", "POST", "-d", body,
        "-H", "x-request-id: t39-rest", f"http://{suite.http_address()}/v2/models/{NAME}/infer",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    text, _, status = out.decode().rpartition("\n")
    assert int(status) == 500, text
    assert_hygienic(json.loads(text)["error"], "t39-rest")


def test_the_fault_model_fails_only_on_demand(tmp_path: Path) -> None:
    """The fixture's premise, outside the suite: zeros pass, ones fail inside ORT."""
    import onnxruntime as ort

    session = ort.InferenceSession(
        fault_model().SerializeToString(), providers=["CPUExecutionProvider"]
    )
    zeros = np.zeros((3, WIDTH), np.float32)
    assert (session.run(None, {"x": zeros})[0] == zeros).all()
    with pytest.raises(Exception, match="reshape"):
        session.run(None, {"x": np.ones((3, WIDTH), np.float32)})
