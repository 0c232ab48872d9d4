"""The shared composite rules (modelserve.catalog.composites) and combine functions
(router.composite_combine), against a small in-memory set of members."""

from __future__ import annotations

import numpy as np
import pytest

from modelserve.catalog import composites
from modelserve.errors import InvalidArgumentError, NotFoundError
from modelserve.proto.modelserve.v1 import common_pb2, composite_pb2, registry_pb2
from modelserve.tensors import TensorSpec
from modelserve.v2 import composite_metadata
from router import composite_combine as combine

C = composite_pb2.Ensemble


def version(
    model: str, inputs: dict[str, tuple[str, list[int]]], outputs: dict[str, tuple[str, list[int]]]
) -> registry_pb2.ModelVersion:
    def specs(items: dict[str, tuple[str, list[int]]]) -> list[common_pb2.TensorSpec]:
        return [common_pb2.TensorSpec(name=n, datatype=d, shape=s) for n, (d, s) in items.items()]

    return registry_pb2.ModelVersion(
        model=model,
        version=1,
        inputs=specs(inputs),
        outputs=specs(outputs),
        config=registry_pb2.ServingConfig(max_batch_size=8),
    )


class Members:
    def __init__(self) -> None:
        x = {"x": ("FP32", [-1, 8])}
        self.models = {
            "a": version("a", x, {"p": ("FP32", [-1, 1])}),
            "b": version("b", x, {"p": ("FP32", [-1, 1])}),
            "logits": version("logits", x, {"scores": ("FP32", [-1, 3])}),
            "ints": version("ints", x, {"p": ("INT64", [-1, 1])}),
            "other_in": version("other_in", {"x": ("FP64", [-1, 8])}, {"p": ("FP32", [-1, 1])}),
            "scale": version("scale", {"score": ("FP32", [-1, 1])}, {"risk": ("FP32", [-1, 1])}),
            "stacker": version("stacker", {"s": ("FP32", [-1, 2])}, {"y": ("FP32", [-1, 1])}),
        }
        self.items: dict[str, composite_pb2.Composite] = {}

    def composite(self, name: str) -> composite_pb2.Composite | None:
        return self.items.get(name)

    def version(self, ref: composite_pb2.ModelRef) -> registry_pb2.ModelVersion:
        if ref.model not in self.models:
            raise NotFoundError(f"unknown model '{ref.model}'")
        return self.models[ref.model]

    def add(self, composite: composite_pb2.Composite) -> composites.Signature:
        self.items[composite.name] = composite
        return composites.check(composite, self)


def ref(model: str) -> composite_pb2.ModelRef:
    return composite_pb2.ModelRef(model=model)


def ensemble(name: str, members: list[str], how: int, **kw: object) -> composite_pb2.Composite:
    return composite_pb2.Composite(
        name=name,
        ensemble=composite_pb2.Ensemble(members=[ref(m) for m in members], combine=how, **kw),  # type: ignore[arg-type]
    )


def chain(name: str, *steps: composite_pb2.ChainStep) -> composite_pb2.Composite:
    return composite_pb2.Composite(name=name, chain=composite_pb2.Chain(steps=steps))


def test_a_mean_ensemble_takes_the_members_inputs_and_gives_their_outputs() -> None:
    sig = Members().add(ensemble("e", ["a", "b"], C.MEAN))
    assert sig.inputs == (TensorSpec("x", "FP32", (-1, 8)),)
    assert sig.outputs == (TensorSpec("p", "FP32", (-1, 1)),)
    assert sig.max_batch_size == 8


@pytest.mark.parametrize(
    ("members", "how", "kw", "message"),
    [
        (["a", "b"], C.WEIGHTED_MEAN, {"weights": [1.0]}, "1 weights for 2 members"),
        (["a", "b"], C.WEIGHTED_MEAN, {"weights": [1.0, -1.0]}, "finite and > 0"),
        (["a", "b"], C.MEAN, {"weights": [1.0, 1.0]}, "only for WEIGHTED_MEAN"),
        (["a", "ints"], C.MEAN, {}, "FP32 \\[-1, 1\\] for a but INT64"),
        (["ints"], C.MEAN, {}, "a mean needs FP16"),
        (["a", "other_in"], C.MEAN, {}, "input 'x' is FP32 \\[-1, 8\\] for a but FP64"),
        (["a", "b"], C.COMBINE_UNSPECIFIED, {}, "combine is unset"),
        (["a", "b"], C.STACKING, {}, "needs a stacker"),
        ([], C.MEAN, {}, "has no members"),
    ],
)
def test_bad_ensembles_are_refused_naming_the_problem(
    members: list[str], how: int, kw: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        Members().add(ensemble("e", members, how, **kw))


def test_an_unknown_member_is_not_found() -> None:
    with pytest.raises(NotFoundError, match="nope"):
        Members().add(ensemble("e", ["a", "nope"], C.MEAN))


def test_vote_and_stacking_signatures() -> None:
    m = Members()
    assert m.add(ensemble("v", ["logits", "logits"], C.MAJORITY_VOTE)).outputs == (
        composites.VOTE_OUTPUT,
    )
    stacked = m.add(ensemble("s", ["a", "b"], C.STACKING, stacker=ref("stacker")))
    assert stacked.outputs == (TensorSpec("y", "FP32", (-1, 1)),)
    with pytest.raises(InvalidArgumentError, match="concatenate to 3 columns"):
        m.add(ensemble("s3", ["a", "b", "a"], C.STACKING, stacker=ref("stacker")))


def test_a_chain_maps_outputs_to_inputs_and_checks_their_tensors() -> None:
    m = Members()
    mapped = composite_pb2.ChainStep(
        model=ref("scale"), inputs={"score": composite_pb2.TensorSource(step="a", tensor="p")}
    )
    sig = m.add(chain("c", composite_pb2.ChainStep(model=ref("a")), mapped))
    assert sig.inputs == (TensorSpec("x", "FP32", (-1, 8)),)
    assert sig.outputs == (TensorSpec("risk", "FP32", (-1, 1)),)

    bad = composite_pb2.ChainStep(
        model=ref("scale"), inputs={"score": composite_pb2.TensorSource(step="ints", tensor="p")}
    )
    with pytest.raises(InvalidArgumentError, match=r"'ints\.p' is INT64 \[-1, 1\] but step"):
        m.add(chain("c2", composite_pb2.ChainStep(model=ref("ints")), bad))
    unmapped = composite_pb2.ChainStep(model=ref("scale"))
    with pytest.raises(InvalidArgumentError, match=r"wants 'a\.score'"):
        m.add(chain("c3", composite_pb2.ChainStep(model=ref("a")), unmapped))
    later = composite_pb2.ChainStep(
        model=ref("scale"), inputs={"score": composite_pb2.TensorSource(step="zz", tensor="p")}
    )
    with pytest.raises(InvalidArgumentError, match="not an earlier step"):
        m.add(chain("c4", later))


def test_loops_are_refused_directly_and_through_others() -> None:
    m = Members()
    with pytest.raises(InvalidArgumentError, match="composite loop: self → self"):
        m.add(ensemble("self", ["a", "self"], C.MEAN))
    m.items.clear()
    m.add(ensemble("x", ["a", "b"], C.MEAN))
    m.add(ensemble("y", ["x", "a"], C.MEAN))
    with pytest.raises(InvalidArgumentError, match="composite loop: x → y → x"):
        m.add(ensemble("x", ["y", "a"], C.MEAN))


def test_nested_composites_have_the_inner_signature() -> None:
    m = Members()
    m.add(ensemble("inner", ["a", "b"], C.MEAN))
    assert m.add(ensemble("outer", ["inner", "a"], C.MEAN)).outputs[0].name == "p"


def test_config_lists_ensemble_steps_like_triton() -> None:
    m = Members()
    comp = ensemble("s", ["a", "b"], C.STACKING, stacker=ref("stacker"))
    comp.revision = 3
    config = composite_metadata.model_config(comp, m.add(comp), m).config
    assert config.platform == "ensemble" and config.max_batch_size == 8
    steps = config.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["a", "b", "stacker"]
    assert dict(steps[0].output_map) == {"p": "member0.p"}
    assert list(config.input[0].dims) == [8]


def test_mean_and_weighted_mean() -> None:
    a = {"p": np.array([[0.2], [0.4]], np.float32)}
    b = {"p": np.array([[0.6], [0.0]], np.float32)}
    np.testing.assert_allclose(combine.mean([a, b])["p"], [[0.4], [0.2]], rtol=1e-6)
    weighted = combine.mean([a, b], [3.0, 1.0])["p"]
    assert weighted.dtype == np.float32
    np.testing.assert_allclose(weighted, [[0.3], [0.3]], rtol=1e-6)
    with pytest.raises(InvalidArgumentError, match="differ in shape"):
        combine.mean([a, {"p": np.zeros((3, 1), np.float32)}])


def test_majority_vote_breaks_ties_to_the_lowest_class() -> None:
    s1 = np.array([[0.9, 0.1, 0.0], [0.0, 0.1, 0.9], [0.1, 0.8, 0.1]])
    s2 = np.array([[0.1, 0.9, 0.0], [0.0, 0.2, 0.8], [0.1, 0.1, 0.8]])
    s3 = np.array([[0.9, 0.0, 0.1], [0.9, 0.0, 0.1], [0.9, 0.0, 0.1]])
    votes = combine.majority_vote([s1, s2, s3])
    # row 0: 0,1,0 -> 0; row 1: 2,2,0 -> 2; row 2: 1,2,0 -> tie of three -> 0
    assert votes.dtype == np.int64 and votes.tolist() == [[0], [2], [0]]


def test_stack_concatenates_members_in_order() -> None:
    a = {"p": np.array([[1.0], [2.0]]), "q": np.array([[3.0], [4.0]])}
    b = {"p": np.array([[5.0], [6.0]])}
    out = combine.stack([a, b], [["q", "p"], ["p"]])
    assert out.tolist() == [[3.0, 1.0, 5.0], [4.0, 2.0, 6.0]]
