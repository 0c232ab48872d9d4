"""Ensembles and chains through real processes: the gateway answers with the numbers the
members compute by hand (each member run here with onnxruntime, then combined here), V2
metadata describes them like Triton ensembles, and unsound composites are refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from testsupport import eventually

from modelserve.cli import demo_models
from modelserve.cli.registry_client import push_version
from modelserve.cli.suite import Suite
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import composite_pb2, composite_pb2_grpc, registry_pb2_grpc
from modelserve.tensors import decode_outputs, encode_inputs

E = composite_pb2.Ensemble
CLASSIFIER, SCALER, STACKER = "cmp_classifier", "cmp_scaler", "cmp_stacker"


def _model(
    nodes: list[onnx.NodeProto],
    inp: tuple[str, int],
    out: tuple[str, int],
    inits: list[onnx.TensorProto],
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "cmp",
        [helper.make_tensor_value_info(inp[0], TensorProto.FLOAT, ["batch", inp[1]])],
        [helper.make_tensor_value_info(out[0], TensorProto.FLOAT, ["batch", out[1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def classifier(seed: int) -> onnx.ModelProto:
    """transaction [-1, 8] -> logits [-1, 3]: a linear 3-class scorer."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((8, 3)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "B")
    node = helper.make_node("Gemm", ["transaction", "W", "B"], ["logits"])
    return _model([node], ("transaction", 8), ("logits", 3), [w, b])


def scaler() -> onnx.ModelProto:
    """score [-1, 1] -> risk = 100 * score + 1."""
    a = numpy_helper.from_array(np.array([100.0], np.float32), "A")
    c = numpy_helper.from_array(np.array([1.0], np.float32), "C")
    nodes = [
        helper.make_node("Mul", ["score", "A"], ["m"]),
        helper.make_node("Add", ["m", "C"], ["risk"]),
    ]
    return _model(nodes, ("score", 1), ("risk", 1), [a, c])


def stacker() -> onnx.ModelProto:
    """stacked [-1, 2] -> y = sigmoid(stacked @ [[2], [-1]] + 0.5)."""
    w = numpy_helper.from_array(np.array([[2.0], [-1.0]], np.float32), "W")
    b = numpy_helper.from_array(np.array([0.5], np.float32), "B")
    nodes = [
        helper.make_node("Gemm", ["stacked", "W", "B"], ["g"]),
        helper.make_node("Sigmoid", ["g"], ["y"]),
    ]
    return _model(nodes, ("stacked", 2), ("y", 1), [w, b])


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, feeds)
    return np.asarray(out)


def fraud(version: int, x: np.ndarray) -> np.ndarray:
    return run(demo_models.fraud(version), {"transaction": x})


def ref(model: str, version: int = 0) -> composite_pb2.ModelRef:
    return composite_pb2.ModelRef(model=model, version=version)


def ensemble(
    name: str, members: list[composite_pb2.ModelRef], how: int, **kw: object
) -> composite_pb2.Composite:
    return composite_pb2.Composite(
        name=name,
        ensemble=composite_pb2.Ensemble(members=members, combine=how, **kw),  # type: ignore[arg-type]
    )


def chain_to_scaler(name: str) -> composite_pb2.Composite:
    source = composite_pb2.TensorSource(step="fraud", tensor="fraud_probability")
    return composite_pb2.Composite(
        name=name,
        chain=composite_pb2.Chain(
            steps=[
                composite_pb2.ChainStep(model=ref("fraud", 1)),
                composite_pb2.ChainStep(model=ref(SCALER), inputs={"score": source}),
            ]
        ),
    )


def logits_into_scaler() -> composite_pb2.Composite:
    """A chain whose second step wants [-1, 1] but gets the classifier's [-1, 3] logits."""
    source = composite_pb2.TensorSource(step=CLASSIFIER, tensor="logits")
    steps = [
        composite_pb2.ChainStep(model=ref(CLASSIFIER, 1)),
        composite_pb2.ChainStep(model=ref(SCALER), inputs={"score": source}),
    ]
    return composite_pb2.Composite(name="cmp_bad_chain", chain=composite_pb2.Chain(steps=steps))


@pytest.fixture(scope="module")
async def composites_stub(
    suite: Suite, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[composite_pb2_grpc.CompositeRegistryStub]:
    folder: Path = tmp_path_factory.mktemp("composites")
    async with grpc.aio.insecure_channel(suite.address("registry")) as channel:
        registry = registry_pb2_grpc.RegistryStub(channel)
        models = [(CLASSIFIER, classifier(s)) for s in (1, 2, 3)]
        models += [(SCALER, scaler()), (STACKER, stacker())]
        for i, (name, model) in enumerate(models):
            path = folder / f"{i}.onnx"
            onnx.save(model, path)
            await push_version(registry, name, path)
        stub = composite_pb2_grpc.CompositeRegistryStub(channel)
        for composite in (
            ensemble("cmp_mean", [ref("fraud", 1), ref("fraud", 2)], E.MEAN),
            ensemble(
                "cmp_weighted",
                [ref("fraud", 1), ref("fraud", 2)],
                E.WEIGHTED_MEAN,
                weights=[3.0, 1.0],
            ),
            ensemble("cmp_vote", [ref(CLASSIFIER, v) for v in (1, 2, 3)], E.MAJORITY_VOTE),
            ensemble(
                "cmp_stack", [ref("fraud", 1), ref("fraud", 2)], E.STACKING, stacker=ref(STACKER)
            ),
            chain_to_scaler("cmp_chain"),
        ):
            await stub.SetComposite(
                composite_pb2.SetCompositeRequest(composite=composite), timeout=10
            )
        yield stub


async def infer(
    gateway: pb_grpc.GRPCInferenceServiceStub, name: str, x: np.ndarray
) -> dict[str, np.ndarray]:
    request = pb.ModelInferRequest(model_name=name)
    encode_inputs(request, {"transaction": x})

    async def answer() -> dict[str, np.ndarray]:  # replicas and workers catch up first
        return decode_outputs(await gateway.ModelInfer(request, timeout=10))

    return await eventually(answer, timeout=60)


X = np.random.default_rng(5).standard_normal((6, 8)).astype(np.float32)


async def test_ensembles_and_chains_return_the_numbers_the_members_compute_by_hand(
    composites_stub: composite_pb2_grpc.CompositeRegistryStub,
    gateway: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    v1, v2 = fraud(1, X), fraud(2, X)
    got = await infer(gateway, "cmp_mean", X)
    np.testing.assert_allclose(got["fraud_probability"], (v1 + v2) / 2, rtol=1e-5)

    got = await infer(gateway, "cmp_weighted", X)
    np.testing.assert_allclose(got["fraud_probability"], 0.75 * v1 + 0.25 * v2, rtol=1e-5)

    votes = np.stack([run(classifier(s), {"transaction": X}).argmax(-1) for s in (1, 2, 3)], -1)
    expected = [
        [min(np.flatnonzero(np.bincount(r, minlength=3) == np.bincount(r, minlength=3).max()))]
        for r in votes
    ]
    got = await infer(gateway, "cmp_vote", X)
    assert got["class"].dtype == np.int64 and got["class"].tolist() == expected

    got = await infer(gateway, "cmp_chain", X)
    np.testing.assert_allclose(got["risk"], run(scaler(), {"score": v1}), rtol=1e-5)

    got = await infer(gateway, "cmp_stack", X)
    stacked = np.concatenate([v1, v2], axis=-1)
    np.testing.assert_allclose(got["y"], run(stacker(), {"stacked": stacked}), rtol=1e-5)


async def test_composites_look_like_models_to_v2_clients(
    composites_stub: composite_pb2_grpc.CompositeRegistryStub,
    gateway: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    await infer(gateway, "cmp_chain", X)  # the gateway's replica has it
    meta = await gateway.ModelMetadata(pb.ModelMetadataRequest(name="cmp_chain"), timeout=5)
    assert meta.platform == "ensemble" and meta.versions == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("transaction", "FP32", [-1, 8])
    ]
    assert [(t.name, list(t.shape)) for t in meta.outputs] == [("risk", [-1, 1])]

    config = (await gateway.ModelConfig(pb.ModelConfigRequest(name="cmp_chain"), timeout=5)).config
    steps = config.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["fraud", SCALER]
    assert dict(steps[0].input_map) == {"transaction": "transaction"}
    assert dict(steps[1].input_map) == {"score": "fraud.fraud_probability"}
    assert dict(steps[1].output_map) == {"risk": "risk"}
    assert (await gateway.ModelReady(pb.ModelReadyRequest(name="cmp_stack"), timeout=5)).ready
    index = await gateway.RepositoryIndex(pb.RepositoryIndexRequest(ready=True), timeout=5)
    assert ("cmp_chain", "1", "READY") in {(m.name, m.version, m.state) for m in index.models}

    bad = pb.ModelInferRequest(model_name="cmp_mean")
    encode_inputs(bad, {"transaction": X[:, :4]})
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await gateway.ModelInfer(bad, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("composite", "code", "message"),
    [
        (
            ensemble("cmp_self", [ref("fraud", 1), ref("cmp_self")], E.MEAN),
            "INVALID_ARGUMENT",
            "composite loop: cmp_self → cmp_self",
        ),
        (
            ensemble("cmp_mean", [ref("cmp_chain"), ref("fraud")], E.MEAN),
            "INVALID_ARGUMENT",
            "risk",
        ),
        (
            ensemble("fraud", [ref("fraud", 1)], E.MEAN),
            "FAILED_PRECONDITION",
            "'fraud' is a registered model",
        ),
        (
            ensemble("cmp_unknown", [ref("no_such_model")], E.MEAN),
            "FAILED_PRECONDITION",
            "no_such_model",
        ),
        (
            ensemble("cmp_w", [ref("fraud", 1), ref("fraud", 2)], E.WEIGHTED_MEAN, weights=[1.0]),
            "INVALID_ARGUMENT",
            "1 weights for 2 members",
        ),
        (logits_into_scaler(), "INVALID_ARGUMENT", "FP32 [-1, 3] but step"),
    ],
)
async def test_unsound_composites_are_refused(
    composites_stub: composite_pb2_grpc.CompositeRegistryStub,
    composite: composite_pb2.Composite,
    code: str,
    message: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await composites_stub.SetComposite(
            composite_pb2.SetCompositeRequest(composite=composite), timeout=10
        )
    assert info.value.code().name == code
    assert message in (info.value.details() or "")


async def test_a_loop_through_other_composites_is_refused(
    composites_stub: composite_pb2_grpc.CompositeRegistryStub,
) -> None:
    async def set_(c: composite_pb2.Composite) -> composite_pb2.Composite:
        request = composite_pb2.SetCompositeRequest(composite=c)
        reply: composite_pb2.Composite = await composites_stub.SetComposite(request, timeout=10)
        return reply

    await set_(ensemble("cmp_la", [ref("fraud", 1), ref("fraud", 2)], E.MEAN))
    await set_(ensemble("cmp_lb", [ref("cmp_la"), ref("fraud", 1)], E.MEAN))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await set_(ensemble("cmp_la", [ref("cmp_lb"), ref("fraud", 1)], E.MEAN))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "composite loop: cmp_la → cmp_lb → cmp_la" in (info.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await composites_stub.DeleteComposite(
            composite_pb2.DeleteCompositeRequest(name="cmp_la"), timeout=10
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_model_may_not_take_a_composites_name(
    composites_stub: composite_pb2_grpc.CompositeRegistryStub, suite: Suite, demo_dir: Path
) -> None:
    async with grpc.aio.insecure_channel(suite.address("registry")) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await push_version(
                registry_pb2_grpc.RegistryStub(channel), "cmp_mean", demo_dir / "fraud_v1.onnx"
            )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "'cmp_mean' is a composite model" in (info.value.details() or "")
