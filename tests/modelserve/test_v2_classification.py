"""The classification extension's pure functions: Triton's top-k strings, the parameter taken
off a request, and a response rewritten per caller."""

from __future__ import annotations

import numpy as np
import pytest

from modelserve.errors import InvalidArgumentError
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.tensors import TensorSpec, decode_outputs, deserialize_bytes_tensor
from modelserve.v2 import classification

OUTPUTS = (
    TensorSpec("scores", "FP32", (-1, 4)),
    TensorSpec("names", "BYTES", (-1, 1)),
    TensorSpec("votes", "INT64", (-1, 4)),
)


def _strings(arr: np.ndarray) -> list[object]:
    return np.vectorize(lambda b: b.decode(), otypes=[object])(arr).tolist()


def test_top_k_is_tritons_format_largest_first_per_row() -> None:
    values = np.array([[0.1, 0.7, 0.2, 0.0], [0.5, 0.25, 0.125, 1.0]], np.float32)
    out = classification.top_k(values, 2, ("cat", "dog"), batched=True)
    assert out.shape == (2, 2)
    assert _strings(out) == [
        ["0.699999988:1:dog", "0.200000003:2"],
        ["1.000000000:3", "0.500000000:0:cat"],
    ]


def test_top_k_clamps_to_the_classes_and_keeps_index_order_on_ties() -> None:
    values = np.array([[3, 5, 5, -1]], np.int64)
    out = classification.top_k(values, 10, batched=True)
    assert _strings(out) == [["5:1", "5:2", "3:0", "-1:3"]]


def test_top_k_of_an_unbatched_model_ranks_every_element() -> None:
    values = np.array([[0.25, 0.75], [1.5, 0.0]], np.float64)
    out = classification.top_k(values, 3, batched=False)
    assert out.shape == (3,)
    assert _strings(out) == ["1.500000000:2", "0.750000000:1", "0.250000000:0"]


def test_unsigned_scores_rank_without_wrapping() -> None:
    values = np.array([[0, 255, 7]], np.uint8)
    assert _strings(classification.top_k(values, 2, batched=True)) == [["255:1", "7:2"]]


def _request(**outputs: pb.InferParameter | None) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    for name, parameter in outputs.items():
        out = request.outputs.add(name=name)
        if parameter is not None:
            out.parameters[classification.PARAMETER].CopyFrom(parameter)
    return request


def test_take_class_counts_strips_the_parameter() -> None:
    request = _request(scores=pb.InferParameter(int64_param=3), votes=None)
    assert classification.wants_classification(request)
    assert classification.take_class_counts(request, OUTPUTS) == {"scores": 3}
    assert not classification.wants_classification(request)
    assert all(not out.parameters for out in request.outputs)


@pytest.mark.parametrize(
    ("parameter", "message"),
    [
        (pb.InferParameter(int64_param=0), "class count >= 1; got 0"),
        (pb.InferParameter(int64_param=-2), "class count >= 1; got -2"),
        (pb.InferParameter(string_param="3"), "must be an integer class count"),
        (pb.InferParameter(double_param=2.0), "must be an integer class count"),
    ],
)
def test_bad_class_counts_are_refused(parameter: pb.InferParameter, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        classification.take_class_counts(_request(scores=parameter), OUTPUTS)


def test_a_non_numeric_output_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="'names' is BYTES: classification needs"):
        classification.take_class_counts(_request(names=pb.InferParameter(int64_param=1)), OUTPUTS)


def _response() -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name="m", model_version="1")
    response.outputs.add(name="scores", datatype="FP32", shape=[2, 4])
    response.raw_output_contents.append(
        np.array([[0.1, 0.7, 0.2, 0.0], [0.4, 0.3, 0.2, 0.1]], np.float32).tobytes()
    )
    response.outputs.add(name="votes", datatype="INT64", shape=[2, 4])
    response.raw_output_contents.append(np.arange(8, dtype=np.int64).tobytes())
    return response


def test_apply_rewrites_only_the_classified_output() -> None:
    response = _response()
    classification.apply(response, {"scores": 1}, {"scores": ("a", "b")}, batched=True)
    scores, votes = response.outputs
    assert (scores.datatype, list(scores.shape)) == ("BYTES", [2, 1])
    raw = response.raw_output_contents[0]
    assert _strings(deserialize_bytes_tensor(raw, 2, "scores")) == [
        "0.699999988:1:b",
        "0.400000006:0:a",
    ]
    assert (votes.datatype, list(votes.shape)) == ("INT64", [2, 4])
    assert decode_outputs(response)["votes"].tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_apply_on_typed_contents() -> None:
    response = pb.ModelInferResponse(model_name="m")
    tensor = response.outputs.add(name="votes", datatype="INT64", shape=[1, 3])
    tensor.contents.int64_contents.extend([2, 9, 4])
    classification.apply(response, {"votes": 2}, {}, batched=True)
    assert list(response.outputs[0].contents.bytes_contents) == [b"9:1", b"4:2"]
    assert not response.outputs[0].contents.int64_contents
    assert list(response.outputs[0].shape) == [1, 2]
