"""The router's composite executor against a fake forwarder: chain steps get an equal share of
the remaining deadline, nested composites run, and the answer is the composite's."""

from __future__ import annotations

import asyncio

import numpy as np

from modelserve.calls import Call
from modelserve.catalog.composite_replica import CompositeCatalog
from modelserve.catalog.replica import Catalog
from modelserve.deadlines import Deadline
from modelserve.discovery.static import StaticDiscovery
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.modelserve.v1 import common_pb2, composite_pb2, registry_pb2
from modelserve.tensors import decode_inputs, decode_outputs, encode_inputs, encode_outputs
from router.composite_executor import CompositeExecutor


class AddOne:
    """A fake forwarder: every model adds 1 to its input ``x``; records each call's budget."""

    def __init__(self) -> None:
        self.budgets: list[float] = []
        self.models: list[str] = []

    async def __call__(
        self,
        request: pb.ModelInferRequest,
        version: registry_pb2.ModelVersion,
        call: Call,
    ) -> pb.ModelInferResponse:
        self.budgets.append(call.deadline.remaining() or 0.0)
        assert request.model_version == str(version.version), "member calls name their version"
        self.models.append(f"{version.model}:{version.version}")
        response = pb.ModelInferResponse(model_name=version.model)
        encode_outputs(response, {"x": decode_inputs(request)["x"] + 1})
        return response


def catalogs() -> CompositeCatalog:
    spec = common_pb2.TensorSpec(name="x", datatype="FP32", shape=[-1, 1])
    model = registry_pb2.Model(
        name="inc",
        versions=[
            registry_pb2.ModelVersion(
                model="inc",
                version=1,
                inputs=[spec],
                outputs=[spec],
                config=registry_pb2.ServingConfig(max_batch_size=4),
            )
        ],
    )
    catalog = Catalog(StaticDiscovery({}))
    catalog.apply(registry_pb2.WatchEvent(snapshot=True, models=[model], revision=1))
    composites = CompositeCatalog(StaticDiscovery({}), catalog)
    step = composite_pb2.ChainStep(model=composite_pb2.ModelRef(model="inc"))
    inner = composite_pb2.Composite(
        name="twice", chain=composite_pb2.Chain(steps=[step, step]), revision=1
    )
    inner.chain.steps[1].name = "again"
    outer = composite_pb2.Composite(
        name="mean_of",
        ensemble=composite_pb2.Ensemble(
            members=[composite_pb2.ModelRef(model="twice"), composite_pb2.ModelRef(model="inc")],
            combine=composite_pb2.Ensemble.MEAN,
        ),
        revision=2,
    )
    composites.apply(composite_pb2.CompositeEvent(snapshot=True, composites=[inner, outer]))
    return composites


def infer(name: str, remaining: float, fake: AddOne) -> dict[str, np.ndarray]:
    composites = catalogs()
    executor = CompositeExecutor(composites=composites, infer=fake, default_timeout=5.0)
    request = pb.ModelInferRequest(model_name=name)
    encode_inputs(request, {"x": np.array([[1.0], [2.0]], np.float32)})
    call = Call(Deadline.after(remaining))
    response = asyncio.run(executor.infer(request, composites.get(name), call))
    assert response.model_name == name
    return decode_outputs(response)


def test_a_chain_splits_the_deadline_across_its_steps() -> None:
    fake = AddOne()
    out = infer("twice", 4.0, fake)
    assert out["x"].tolist() == [[3.0], [4.0]]
    assert fake.models == ["inc:1", "inc:1"]
    first, second = fake.budgets
    assert 1.9 < first <= 2.0  # half of 4 s for the first of two steps
    # The last step gets all that remains: a fast first step leaves its unused share to it.
    assert 3.9 < second <= 4.0


def test_an_ensemble_of_a_chain_and_a_model_means_their_answers() -> None:
    fake = AddOne()
    out = infer("mean_of", 4.0, fake)
    assert out["x"].tolist() == [[2.5], [3.5]]  # mean of x + 2 and x + 1
    assert len(fake.budgets) == 3
