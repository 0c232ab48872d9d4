"""Enrichment through the real suite: a version declares that its ``user_features`` input
comes from the feature view of a ``user_id`` the caller sends. Callers see (and are validated
against) the signature without it, and get exactly what the model answers on the full input
assembled by hand, row by row, merged batches included. The feature store's span is a child
of the router's in the trace, and the router's feature cache counts hits and misses."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from testsupport import eventually

from modelserve.cli.registry_client import push_version
from modelserve.cli.suite import Suite, wait_serving
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import (
    featurestore_pb2,
    featurestore_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from modelserve.tensors import (
    MERGED_REQUESTS_PARAMETER,
    decode_outputs,
    encode_inputs,
    encode_inputs_typed,
    to_proto_tensor,
)

MODEL = "enrich_scorer"
VIEW = "enrich_users"
FEATURES = ("spend", "visits", "tenure")
DEFAULTS = (1.5, 0.0, -1.0)  # what the view answers for an unknown user
WEIGHTS = np.array([[0.5], [1.0], [2.0], [3.0]], np.float32)
USERS = {f"u{i}": (float(i), 10.0 * i, 0.25 * i) for i in range(1, 9)}


def scorer() -> onnx.ModelProto:
    """score = concat(amount, user_features) @ WEIGHTS: every feature moves the answer."""
    graph = helper.make_graph(
        [
            helper.make_node("Concat", ["amount", "user_features"], ["joined"], axis=1),
            helper.make_node("MatMul", ["joined", "W"], ["score"]),
        ],
        MODEL,
        [
            helper.make_tensor_value_info("amount", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info("user_features", TensorProto.FLOAT, ["batch", 3]),
        ],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(WEIGHTS, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def enriched_config() -> registry_pb2.ServingConfig:
    return registry_pb2.ServingConfig(
        max_batch_size=16,
        feature_inputs=[
            registry_pb2.FeatureInput(
                model_input="user_features",
                view=VIEW,
                features=FEATURES,
                entity_input="user_id",
            )
        ],
    )


def users_view() -> featurestore_pb2.FeatureView:
    return featurestore_pb2.FeatureView(
        name=VIEW,
        entity_key="user_id",
        entity_type="STRING",
        features=[
            featurestore_pb2.Feature(name=n, datatype="FP32", default_raw=struct.pack("<f", d))
            for n, d in zip(FEATURES, DEFAULTS, strict=True)
        ],
    )


async def seed_features(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = featurestore_pb2_grpc.FeatureStoreStub(channel)
        await stub.ApplyFeatureView(users_view(), timeout=10)
        keys = list(USERS)
        await stub.WriteOnlineFeatures(
            featurestore_pb2.WriteOnlineFeaturesRequest(
                view=VIEW,
                entity_keys=keys,
                values=[
                    to_proto_tensor(name, np.array([USERS[k][i] for k in keys], np.float32))
                    for i, name in enumerate(FEATURES)
                ],
            ),
            timeout=10,
        )


@dataclass
class Scorer:
    reference: ort.InferenceSession

    def expected(self, amounts: list[float], users: list[str]) -> np.ndarray:
        """What the model answers on the full input, assembled by hand."""
        feats = np.array([USERS.get(u, DEFAULTS) for u in users], np.float32)
        amount = np.array(amounts, np.float32).reshape(-1, 1)
        (score,) = self.reference.run(["score"], {"amount": amount, "user_features": feats})
        return np.asarray(score)


def infer_request(amounts: list[float], users: list[str], *, typed: bool = False) -> Any:
    request = pb.ModelInferRequest(model_name=MODEL, id="enrich")
    arrays = {
        "amount": np.array(amounts, np.float32).reshape(-1, 1),
        "user_id": np.array([u.encode() for u in users], np.object_).reshape(-1, 1),
    }
    (encode_inputs_typed if typed else encode_inputs)(request, arrays)
    return request


async def infer(
    stub: pb_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest, timeout: float = 10
) -> pb.ModelInferResponse:
    """ModelInfer, retried on UNAVAILABLE as a client may (RELIABILITY.md): on a loaded
    machine a feature lookup may overrun its 50 ms budget, which is retryable, not wrong."""
    for attempt in range(3):
        try:
            reply: pb.ModelInferResponse = await stub.ModelInfer(request, timeout=timeout)
            return reply
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == 2:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
async def enriched(suite: Suite, tmp_path_factory: pytest.TempPathFactory) -> Scorer:
    path = tmp_path_factory.mktemp("enrich") / "scorer.onnx"
    path.write_bytes(scorer().SerializeToString())
    await seed_features(suite.address("featurestore"))
    async with grpc.aio.insecure_channel(suite.address("registry")) as channel:
        await push_version(
            registry_pb2_grpc.RegistryStub(channel),
            MODEL,
            path,
            labels=["production"],
            config=enriched_config(),
        )
    async with grpc.aio.insecure_channel(suite.address("gateway")) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def ready() -> None:
            assert (await stub.ModelReady(pb.ModelReadyRequest(name=MODEL), timeout=2)).ready

        await eventually(ready, timeout=60)
    return Scorer(ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"]))


async def test_callers_see_the_signature_without_the_enriched_input(
    enriched: Scorer, gateway: pb_grpc.GRPCInferenceServiceStub, suite: Suite
) -> None:
    meta = await gateway.ModelMetadata(pb.ModelMetadataRequest(name=MODEL), timeout=5)
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("amount", "FP32", [-1, 1]),
        ("user_id", "BYTES", [-1, 1]),
    ]
    config = (await gateway.ModelConfig(pb.ModelConfigRequest(name=MODEL), timeout=5)).config
    assert [(i.name, list(i.dims)) for i in config.input] == [("amount", [1]), ("user_id", [1])]
    async with grpc.aio.insecure_channel(suite.address("router")) as channel:
        router = pb_grpc.GRPCInferenceServiceStub(channel)
        direct = await router.ModelMetadata(pb.ModelMetadataRequest(name=MODEL), timeout=5)
    assert direct.inputs == meta.inputs

    # The gateway validates against the caller's signature: the model's own input is unknown.
    request = pb.ModelInferRequest(model_name=MODEL)
    encode_inputs(
        request,
        {
            "amount": np.ones((1, 1), np.float32),
            "user_features": np.ones((1, 3), np.float32),
        },
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await gateway.ModelInfer(request, timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "user_features" in (refused.value.details() or "")


async def test_an_enriched_request_answers_as_the_model_on_the_full_input(
    enriched: Scorer, gateway: pb_grpc.GRPCInferenceServiceStub
) -> None:
    amounts, users = [3.0, -1.0, 0.5], ["u2", "nobody", "u7"]  # "nobody": the view's defaults
    for typed in (False, True):
        reply = await infer(gateway, infer_request(amounts, users, typed=typed))
        assert reply.id == "enrich"
        np.testing.assert_allclose(
            decode_outputs(reply)["score"], enriched.expected(amounts, users), rtol=1e-6
        )


async def test_a_merged_batch_is_enriched_row_by_row(
    enriched: Scorer, gateway: pb_grpc.GRPCInferenceServiceStub, suite: Suite
) -> None:
    # What the gateway sends when it merges: one call whose rows are several requests.
    users = ["u1", "u3", "u1", "u8", "stranger"]
    amounts = [1.0, 2.0, 3.0, 4.0, 5.0]
    merged = infer_request(amounts, users)
    merged.parameters[MERGED_REQUESTS_PARAMETER].int64_param = len(users)
    async with grpc.aio.insecure_channel(suite.address("router")) as channel:
        router = pb_grpc.GRPCInferenceServiceStub(channel)
        reply = await infer(router, merged)
    np.testing.assert_allclose(
        decode_outputs(reply)["score"], enriched.expected(amounts, users), rtol=1e-6
    )

    # And concurrent callers through the gateway (merged there as load allows).
    rng = np.random.default_rng(5)
    calls = [([float(rng.standard_normal())], [f"u{rng.integers(1, 12)}"]) for _ in range(24)]
    replies = await asyncio.gather(
        *(infer(gateway, infer_request(a, u), timeout=20) for a, u in calls)
    )
    for (a, u), got in zip(calls, replies, strict=True):
        np.testing.assert_allclose(decode_outputs(got)["score"], enriched.expected(a, u), rtol=1e-6)


def metric(port: int | None, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_the_feature_cache_counts_hits_and_misses(
    enriched: Scorer, gateway: pb_grpc.GRPCInferenceServiceStub, suite: Suite
) -> None:
    port = suite.processes["router"].metrics_port
    user = f"cache-probe-{time.monotonic_ns()}"  # never looked up before: a miss
    hits = metric(port, "modelserve_feature_cache_hits_total", view=VIEW)
    misses = metric(port, "modelserve_feature_cache_misses_total", view=VIEW)
    await infer(gateway, infer_request([1.0], [user]))
    assert metric(port, "modelserve_feature_cache_misses_total", view=VIEW) >= misses + 1
    assert metric(port, "modelserve_feature_cache_hits_total", view=VIEW) == hits

    # Asked again within the cache's TTL (1 s), the row comes from the cache.
    async def hit() -> None:
        before = metric(port, "modelserve_feature_cache_hits_total", view=VIEW)
        reply = await infer(gateway, infer_request([2.0, 2.0], [user, user]))
        np.testing.assert_allclose(
            decode_outputs(reply)["score"], enriched.expected([2.0, 2.0], [user, user])
        )
        # Two rows, one distinct key: one hit.
        assert metric(port, "modelserve_feature_cache_hits_total", view=VIEW) == before + 1

    await eventually(hit, timeout=10)


# ---- tracing: our own router and feature store, printing spans -------------------------------


def launch(service: str, args: list[str], data: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """Start ``python -m service`` on a free port; returns the process and its port file."""
    port_file = data / f"{service}.port.json"
    command = [sys.executable, "-m", service, "--port", "0", "--port-file", str(port_file), *args]
    with (data / f"{service}.log").open("ab") as log:
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    return proc, port_file


def bound_port(proc: subprocess.Popen[bytes], port_file: Path) -> int:
    assert proc.poll() is None, f"{port_file.name}: exited with {proc.returncode}"
    port: int = json.loads(port_file.read_text())["port"]  # FileNotFoundError until it listens
    return port


async def serving(proc: subprocess.Popen[bytes], port_file: Path) -> str:
    async def listening() -> int:
        return bound_port(proc, port_file)

    address = f"127.0.0.1:{await eventually(listening, timeout=60)}"
    await wait_serving(address, timeout=60)
    return address


def stop(procs: list[subprocess.Popen[bytes]]) -> list[int]:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    return [proc.wait(timeout=30) for proc in procs]


@pytest.fixture(scope="module")
async def traced(
    suite: Suite, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[str, Path]]:
    """A feature store and a router that print their spans (console exporter); the router
    shares the suite's registry and worker. Yields the router's address and the data dir."""
    data = tmp_path_factory.mktemp("traced-enrich")
    tracing = ["--trace-exporter", "console", "--metrics-port", "-2"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        fs = launch("featurestore", [*tracing, "--data-dir", str(data / "fs")], data)
        procs.append(fs[0])
        fs_addr = await serving(*fs)
        await seed_features(fs_addr)
        router_args = ["--registry-addr", suite.address("registry")]
        router_args += ["--worker-addrs", suite.address("worker"), "--featurestore-addr", fs_addr]
        rt = launch("router", [*tracing, *router_args], data)
        procs.append(rt[0])
        yield await serving(*rt), data
    finally:
        assert stop(procs) == [0] * len(procs)


def spans(log: Path) -> list[dict[str, Any]]:
    """The spans the console exporter printed (indented JSON objects between log lines)."""
    text = log.read_text(errors="replace")
    decoder = json.JSONDecoder()
    return [
        decoder.raw_decode(text, m.start())[0] for m in re.finditer(r'^\{\n\s+"name"', text, re.M)
    ]


async def test_the_feature_lookup_is_a_child_span_of_the_routers(
    enriched: Scorer, traced: tuple[str, Path]
) -> None:
    address, data = traced
    async with grpc.aio.insecure_channel(address) as channel:
        router = pb_grpc.GRPCInferenceServiceStub(channel)

        async def answered() -> None:  # the new router learns the worker holds the version
            reply = await router.ModelInfer(infer_request([1.0], ["u4"]), timeout=5)
            np.testing.assert_allclose(
                decode_outputs(reply)["score"], enriched.expected([1.0], ["u4"]), rtol=1e-6
            )

        await eventually(answered, timeout=30)

    def pair() -> tuple[dict[str, Any], dict[str, Any]]:
        (lookup, *_) = [
            s for s in spans(data / "featurestore.log") if s["name"].endswith("/GetOnlineFeatures")
        ]
        routers = {s["context"]["span_id"]: s for s in spans(data / "router.log")}
        # The lookup's parent is the router's CLIENT span of the call, whose parent is the
        # router's ModelInfer SERVER span.
        client = routers[lookup["parent_id"]]
        assert client["kind"] == "SpanKind.CLIENT" and client["name"].endswith("/GetOnlineFeatures")
        routed = routers[client["parent_id"]]
        assert routed["name"].endswith("/ModelInfer") and routed["kind"] == "SpanKind.SERVER"
        return lookup, routed

    async def linked() -> tuple[dict[str, Any], dict[str, Any]]:
        return pair()

    lookup, parent = await eventually(linked, timeout=10)
    assert lookup["context"]["trace_id"] == parent["context"]["trace_id"]
    assert lookup["kind"] == "SpanKind.SERVER"
    for span in (lookup, parent):  # no tensors or feature values in span attributes
        assert all("raw" not in k and "contents" not in k for k in span.get("attributes", {}))
