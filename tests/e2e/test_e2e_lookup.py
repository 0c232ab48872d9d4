"""Models of kind lookup through the real suite: predictions written to a feature view by a
"batch job" (WriteOnlineFeatures) are answered by a V2 ModelInfer through the gateway, like a
computed model's; unknown keys get the features' defaults and ``lookup_status`` 2, stale
ones 3; labels and policies move lookup traffic like ONNX traffic; bad definitions are
refused with INVALID_ARGUMENT."""

from __future__ import annotations

import asyncio
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import numpy as np
import pytest
from testsupport import eventually

from modelserve.cli.suite import Suite
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import (
    composite_pb2,
    composite_pb2_grpc,
    featurestore_pb2,
    featurestore_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from modelserve.tensors import decode_outputs, encode_inputs, to_proto_tensor

CLI = Path(sys.executable).parent / "modelserve"
MODEL = "lookup_churn"
VIEW_V1 = "lookup_churn_v1"
VIEW_V2 = "lookup_churn_v2"
SCORES = {"p1": 0.25, "p2": 0.75, "p3": 0.5, "stale": 0.9}
SEGMENTS = {"p1": 3, "p2": 7, "p3": 1, "stale": 4}
DEFAULT_SCORE = -1.0
DEFAULT_SEGMENT = 0


def prediction_view(name: str) -> featurestore_pb2.FeatureView:
    return featurestore_pb2.FeatureView(
        name=name,
        entity_key="user_id",
        entity_type="STRING",
        ttl_seconds=3600,
        features=[
            featurestore_pb2.Feature(
                name="score", datatype="FP32", default_raw=struct.pack("<f", DEFAULT_SCORE)
            ),
            featurestore_pb2.Feature(
                name="seg", datatype="INT64", default_raw=struct.pack("<q", DEFAULT_SEGMENT)
            ),
        ],
    )


async def write_predictions(address: str, view: str, offset: float) -> None:
    """What a batch job does: one row per entity; "stale" was written two hours ago."""
    now_ms = time.time_ns() // 1_000_000
    keys = list(SCORES)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = featurestore_pb2_grpc.FeatureStoreStub(channel)
        await stub.ApplyFeatureView(prediction_view(view), timeout=10)
        await stub.WriteOnlineFeatures(
            featurestore_pb2.WriteOnlineFeaturesRequest(
                view=view,
                entity_keys=keys,
                values=[
                    to_proto_tensor("score", np.array([SCORES[k] + offset for k in keys], "f4")),
                    to_proto_tensor("seg", np.array([SEGMENTS[k] for k in keys], np.int64)),
                ],
                event_unix_ms=[now_ms - 7_200_000 if k == "stale" else now_ms for k in keys],
            ),
            timeout=10,
        )


async def modelserve(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [str(CLI), *args], capture_output=True, text=True, timeout=60
    )


async def push_lookup(suite: Suite, view: str, *labels: str) -> str:
    extra = [a for label in labels for a in ("--label", label)]
    result = await modelserve(
        "models", "--registry", suite.address("registry"),
        "push-lookup", MODEL, "--view", view, "--entity-input", "user_id",
        "--output", "score=FP32[1]", "--output", "segment:seg=INT64[1]", *extra,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
async def lookup_model(suite: Suite) -> AsyncIterator[str]:
    """Version 1 (production) reads VIEW_V1; version 2 (staging) reads VIEW_V2 (+10)."""
    await write_predictions(suite.address("featurestore"), VIEW_V1, 0.0)
    await write_predictions(suite.address("featurestore"), VIEW_V2, 10.0)
    first = await push_lookup(suite, VIEW_V1, "production")
    assert first.startswith(f"pushed lookup {MODEL} version 1")
    await push_lookup(suite, VIEW_V2, "staging")
    async with grpc.aio.insecure_channel(suite.address("gateway")) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def ready() -> None:
            for version in ("1", "2"):
                reply = await stub.ModelReady(
                    pb.ModelReadyRequest(name=MODEL, version=version), timeout=5
                )
                assert reply.ready

        await eventually(ready, timeout=30)
    yield MODEL


def lookup_request(users: Sequence[str], **params: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=MODEL, id="lk")
    keys = np.array([u.encode() for u in users], dtype=object).reshape(-1, 1)
    encode_inputs(request, {"user_id": keys})
    for name, value in params.items():
        request.parameters[name].string_param = value
    return request


def expected(users: Sequence[str], offset: float = 0.0) -> dict[str, np.ndarray]:
    def fresh(user: str) -> bool:
        return user in SCORES and user != "stale"

    def status(user: str) -> int:
        return 1 if fresh(user) else 3 if user == "stale" else 2

    return {
        "score": np.array(
            [[SCORES[u] + offset if fresh(u) else DEFAULT_SCORE] for u in users], np.float32
        ),
        "segment": np.array(
            [[SEGMENTS[u] if fresh(u) else DEFAULT_SEGMENT] for u in users], np.int64
        ),
        "lookup_status": np.array([[status(u)] for u in users], np.int32),
    }


def assert_answer(reply: pb.ModelInferResponse, users: Sequence[str], offset: float) -> None:
    got = decode_outputs(reply)
    for name, want in expected(users, offset).items():
        np.testing.assert_allclose(got[name], want, rtol=1e-6, err_msg=name)
        assert got[name].dtype == want.dtype, name


async def test_a_lookup_answers_the_precomputed_predictions(
    lookup_model: str, gateway: pb_grpc.GRPCInferenceServiceStub
) -> None:
    users = ["p1", "p2", "nobody", "stale", "p1"]
    reply = await gateway.ModelInfer(lookup_request(users), timeout=10)
    assert (reply.model_name, reply.model_version, reply.id) == (MODEL, "1", "lk")
    assert_answer(reply, users, 0.0)


async def test_requested_outputs_are_the_only_ones_returned(
    lookup_model: str, gateway: pb_grpc.GRPCInferenceServiceStub
) -> None:
    request = lookup_request(["p3", "unknown"])
    request.outputs.add(name="lookup_status")
    reply = await gateway.ModelInfer(request, timeout=10)
    got = decode_outputs(reply)
    assert list(got) == ["lookup_status"]
    np.testing.assert_array_equal(got["lookup_status"], [[1], [2]])


async def test_concurrent_requests_merged_at_the_gateway_are_answered_row_by_row(
    lookup_model: str, gateway: pb_grpc.GRPCInferenceServiceStub
) -> None:
    batches = [[f"p{1 + i % 3}", "nobody"] if i % 2 else [f"p{1 + i % 3}"] for i in range(40)]
    replies = await asyncio.gather(
        *(gateway.ModelInfer(lookup_request(users), timeout=10) for users in batches)
    )
    for users, reply in zip(batches, replies, strict=True):
        assert_answer(reply, users, 0.0)


async def test_metadata_shows_the_derived_signature(
    lookup_model: str, gateway: pb_grpc.GRPCInferenceServiceStub
) -> None:
    meta = await gateway.ModelMetadata(pb.ModelMetadataRequest(name=MODEL), timeout=5)
    assert meta.platform == "lookup"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("user_id", "BYTES", [-1, 1])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("score", "FP32", [-1, 1]),
        ("segment", "INT64", [-1, 1]),
        ("lookup_status", "INT32", [-1, 1]),
    ]
    config = await gateway.ModelConfig(pb.ModelConfigRequest(name=MODEL), timeout=5)
    assert config.config.name == MODEL


async def test_an_input_of_the_wrong_datatype_is_refused_at_the_gateway(
    lookup_model: str, gateway: pb_grpc.GRPCInferenceServiceStub
) -> None:
    request = pb.ModelInferRequest(model_name=MODEL)
    encode_inputs(request, {"user_id": np.array([[1]], np.int64)})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.ModelInfer(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_labels_and_policies_move_lookup_traffic(
    lookup_model: str, gateway: pb_grpc.GRPCInferenceServiceStub, suite: Suite
) -> None:
    users = ["p2", "nobody"]
    staged = await gateway.ModelInfer(lookup_request(users, label="staging"), timeout=10)
    assert staged.model_version == "2"
    assert_answer(staged, users, 10.0)

    async with grpc.aio.insecure_channel(suite.address("registry")) as channel:
        registry = registry_pb2_grpc.RegistryStub(channel)
        await registry.SetPolicy(
            registry_pb2.SetPolicyRequest(
                model=MODEL, policy=registry_pb2.RoutingPolicy(target_label="staging")
            ),
            timeout=10,
        )
        try:

            async def follows_the_policy() -> None:
                reply = await gateway.ModelInfer(lookup_request(users), timeout=10)
                assert reply.model_version == "2"
                assert_answer(reply, users, 10.0)

            await eventually(follows_the_policy, timeout=15)
        finally:
            await registry.ClearPolicy(registry_pb2.ClearPolicyRequest(model=MODEL), timeout=10)

        async def back_to_production() -> None:
            reply = await gateway.ModelInfer(lookup_request(users), timeout=10)
            assert reply.model_version == "1"

        await eventually(back_to_production, timeout=15)


def lookup_header(
    model: str, view: str, datatype: str = "FP32"
) -> registry_pb2.PushVersionRequest.Header:
    header = registry_pb2.PushVersionRequest.Header(model=model)
    header.config.lookup.CopyFrom(
        registry_pb2.LookupConfig(
            view=view,
            entity_input="user_id",
            outputs=[registry_pb2.LookupOutput(name="score", datatype=datatype, shape=[1])],
        )
    )
    return header


async def push_header(
    suite: Suite, header: registry_pb2.PushVersionRequest.Header, chunk: bytes = b""
) -> registry_pb2.ModelVersion:
    async def messages() -> AsyncIterator[registry_pb2.PushVersionRequest]:
        yield registry_pb2.PushVersionRequest(header=header)
        if chunk:
            yield registry_pb2.PushVersionRequest(chunk=chunk)

    async with grpc.aio.insecure_channel(suite.address("registry")) as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        version: registry_pb2.ModelVersion = await stub.PushVersion(messages(), timeout=10)
        return version


@pytest.mark.parametrize(
    ("view", "datatype", "chunk", "words"),
    [
        ("bad/view", "FP32", b"", "lookup view name"),
        ("lookup_ok_view", "FP99", b"", "datatype must be one of"),
        ("lookup_ok_view", "FP32", b"onnx bytes", "no artifact chunks"),
    ],
)
async def test_bad_lookup_definitions_are_refused(
    suite: Suite, view: str, datatype: str, chunk: bytes, words: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await push_header(suite, lookup_header("lookup_refused", view, datatype), chunk)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in (caught.value.details() or "")


async def test_a_lookup_version_is_stored_with_its_definition(suite: Suite) -> None:
    version = await push_header(suite, lookup_header("lookup_stored", "lookup_stored_view"))
    assert version.platform == "lookup" and len(version.sha256) == 64
    assert version.config.lookup.view == "lookup_stored_view"
    assert version.config.lookup.entity_datatype == "BYTES"
    assert version.config.lookup.outputs[0].feature == "score"
    assert [o.name for o in version.outputs] == ["score", "lookup_status"]


async def test_the_repository_index_lists_lookup_versions_as_ready(
    lookup_model: str, gateway: pb_grpc.GRPCInferenceServiceStub
) -> None:
    index = await gateway.RepositoryIndex(pb.RepositoryIndexRequest(ready=True), timeout=5)
    assert {(m.name, m.version) for m in index.models if m.name == MODEL} == {
        (MODEL, "1"),
        (MODEL, "2"),
    }


async def test_the_router_answers_a_lookup_when_called_directly(
    lookup_model: str, suite: Suite
) -> None:
    async with grpc.aio.insecure_channel(suite.address("router")) as channel:
        router = pb_grpc.GRPCInferenceServiceStub(channel)
        reply = await router.ModelInfer(lookup_request(["p3", "p3", "stale"]), timeout=10)
    assert_answer(reply, ["p3", "p3", "stale"], 0.0)


async def test_a_lookup_can_be_a_composite_member(
    lookup_model: str, gateway: pb_grpc.GRPCInferenceServiceStub, suite: Suite
) -> None:
    chain = composite_pb2.Composite(
        name="lookup_chained",
        chain=composite_pb2.Chain(
            steps=[composite_pb2.ChainStep(model=composite_pb2.ModelRef(model=MODEL, version=2))]
        ),
    )
    async with grpc.aio.insecure_channel(suite.address("registry")) as channel:
        stub = composite_pb2_grpc.CompositeRegistryStub(channel)
        await stub.SetComposite(composite_pb2.SetCompositeRequest(composite=chain), timeout=10)

    async def ready() -> None:
        reply = await gateway.ModelReady(pb.ModelReadyRequest(name="lookup_chained"), timeout=5)
        assert reply.ready

    await eventually(ready, timeout=15)
    request = lookup_request(["p1", "nobody"])
    request.model_name = "lookup_chained"
    reply = await gateway.ModelInfer(request, timeout=10)
    got = decode_outputs(reply)
    np.testing.assert_allclose(got["score"], expected(["p1", "nobody"], 10.0)["score"])
    np.testing.assert_array_equal(got["lookup_status"], [[1], [2]])
