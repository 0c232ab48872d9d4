"""The REST bodies <-> V2 protobuf messages (modelserve/v2/rest_codec.py), without a server."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modelserve.errors import InvalidArgumentError
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.tensors import decode_inputs, encode_outputs, serialize_bytes_tensor
from modelserve.v2 import rest_codec as codec

BINARY = codec.BINARY_SIZE


def _request(doc: dict, binary: bytes = b"", version: str = "") -> codec.ParsedInfer:
    header = json.dumps(doc).encode()
    headers = {codec.HEADER_LENGTH: str(len(header))} if binary else {}
    return codec.infer_request("m", version, header + binary, headers)


def _one(datatype: str, shape: list[int], data: object) -> dict:
    return {"inputs": [{"name": "x", "datatype": datatype, "shape": shape, "data": data}]}


@pytest.mark.parametrize("data", [[[1, 2], [3, 4]], [1, 2, 3, 4]])
def test_json_data_nested_or_flat_becomes_raw_little_endian(data: object) -> None:
    parsed = _request(_one("FP32", [2, 2], data))
    assert parsed.request.model_name == "m"
    arrays = decode_inputs(parsed.request)
    np.testing.assert_array_equal(arrays["x"], np.array([[1, 2], [3, 4]], np.float32))
    assert parsed.request.raw_input_contents[0] == np.arange(1, 5, dtype="<f4").tobytes()


def test_every_json_datatype() -> None:
    doc = {
        "inputs": [
            {"name": "b", "datatype": "BOOL", "shape": [2], "data": [True, False]},
            {"name": "i8", "datatype": "INT8", "shape": [2], "data": [-128, 127]},
            {"name": "u64", "datatype": "UINT64", "shape": [1], "data": [2**63]},
            {"name": "f64", "datatype": "FP64", "shape": [2], "data": [1, 0.5]},
            {"name": "s", "datatype": "BYTES", "shape": [1, 2], "data": [["a", "é"]]},
        ]
    }
    arrays = decode_inputs(_request(doc).request)
    assert arrays["b"].tolist() == [True, False]
    assert arrays["i8"].dtype == np.int8 and arrays["i8"].tolist() == [-128, 127]
    assert arrays["u64"].tolist() == [2**63]
    assert arrays["f64"].tolist() == [1.0, 0.5]
    assert arrays["s"].tolist() == [[b"a", "é".encode()]]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (_one("FP32", [1, 3], [1, 2]), "input 'x': shape [1, 3] needs 3 values in 'data', got 2"),
        (_one("INT32", [2], [1.5, 2]), "input 'x': INT32 data must be integers, got 1.5"),
        (_one("INT8", [1], [300]), "input 'x': INT8 values must lie in [-128, 127], got 300"),
        (_one("BOOL", [1], [1]), "input 'x': BOOL data must be true/false, got 1"),
        (_one("BYTES", [1], [3]), "input 'x': BYTES data must be JSON strings"),
        (
            _one("FP16", [1], [1.0]),
            "receiving FP16 data via JSON is not supported. Please use the binary data format "
            "for input x",
        ),
        (_one("BF16", [1], [1.0]), "receiving BF16 data via JSON is not supported"),
        (_one("FP32", "2", [1]), "input 'x': 'shape' must be a list of integers"),
        ({"inputs": []}, "needs a non-empty 'inputs' list"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}, "has no 'data'"),
    ],
)
def test_bad_json_tensors_are_invalid_argument(doc: dict, message: str) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        _request(doc)
    assert message in err.value.message


def test_ragged_nesting_is_read_flat_as_triton_does() -> None:
    arrays = decode_inputs(_request(_one("INT64", [3], [[1], [2, 3]])).request)
    assert arrays["x"].tolist() == [1, 2, 3]


def test_binary_inputs_are_cut_in_input_order() -> None:
    a = np.arange(4, dtype="<f2").tobytes()
    s = serialize_bytes_tensor(np.array([b"xy", b""], dtype=object))
    doc = {
        "inputs": [
            {"name": "a", "datatype": "FP16", "shape": [4], "parameters": {BINARY: 8}},
            {"name": "j", "datatype": "INT32", "shape": [1], "data": [7]},
            {"name": "s", "datatype": "BYTES", "shape": [2], "parameters": {BINARY: len(s)}},
        ]
    }
    parsed = _request(doc, a + s)
    assert list(parsed.request.raw_input_contents) == [a, np.int32(7).tobytes(), s]
    assert not parsed.request.inputs[0].parameters  # binary_data_size is the face's, not V2's


@pytest.mark.parametrize(
    ("size", "extra", "message"),
    [
        (9, b"", "past the end of the binary data"),
        (4, b"", "4 bytes of binary data after the inputs"),
    ],
)
def test_binary_sizes_must_match_the_body(size: int, extra: bytes, message: str) -> None:
    tensor = {"name": "a", "datatype": "FP32", "shape": [2], "parameters": {BINARY: size}}
    doc = {"inputs": [tensor]}
    with pytest.raises(InvalidArgumentError, match=message):
        _request(doc, np.zeros(2, "<f4").tobytes() + extra)


def test_header_length_must_fit_the_body() -> None:
    with pytest.raises(InvalidArgumentError, match="Inference-Header-Content-Length"):
        codec.infer_request("m", "", b"{}", {codec.HEADER_LENGTH: "99"})


def test_parameters_timeout_and_outputs() -> None:
    doc = {
        **_one("FP32", [1], [1]),
        "id": "r1",
        "parameters": {"binary_data_output": True, "timeout": 250_000, "routing_key": "u7"},
        "outputs": [{"name": "y", "parameters": {"binary_data": False, "classification": 2}}],
    }
    parsed = _request(doc, version="2")
    request = parsed.request
    assert (request.id, request.model_version) == ("r1", "2")
    assert parsed.binary_default and parsed.timeout_s == 0.25
    assert set(request.parameters) == {"routing_key"}
    assert request.parameters["routing_key"].string_param == "u7"
    assert parsed.binary_outputs == {"y": False}
    assert request.outputs[0].parameters["classification"].int64_param == 2


def _response() -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name="m", model_version="1", id="r1")
    encode_outputs(
        response,
        {
            "f": np.array([[1.5, 2.5]], np.float32),
            "h": np.array([1, 2], np.float16),
            "s": np.array([b"ok", b"\xc3\xa9"], dtype=object),
        },
        {"s": "BYTES"},
    )
    return response


def test_json_answer_is_flat_and_fp16_always_binary() -> None:
    parsed = codec.ParsedInfer()
    body, header_length = codec.infer_response(_response(), parsed)
    assert header_length is not None  # FP16 has no JSON form
    doc = json.loads(body[:header_length])
    outputs = {o["name"]: o for o in doc["outputs"]}
    assert doc["model_name"] == "m" and doc["model_version"] == "1" and doc["id"] == "r1"
    assert outputs["f"] == {"name": "f", "datatype": "FP32", "shape": [1, 2], "data": [1.5, 2.5]}
    assert outputs["s"]["data"] == ["ok", "é"]
    assert outputs["h"]["parameters"] == {"binary_data_size": 4}
    assert body[header_length:] == np.array([1, 2], "<f2").tobytes()


def test_binary_answers_follow_the_header_in_output_order() -> None:
    parsed = codec.ParsedInfer()
    parsed.binary_default = True
    parsed.binary_outputs = {"s": False}
    response = _response()
    body, header_length = codec.infer_response(response, parsed)
    assert header_length is not None
    doc = json.loads(body[:header_length])
    sizes = [o.get("parameters", {}).get("binary_data_size") for o in doc["outputs"]]
    assert sizes == [8, 4, None]
    assert body[header_length:] == response.raw_output_contents[0] + response.raw_output_contents[1]


def test_message_json_uses_field_names_and_numbers() -> None:
    meta = pb.ModelMetadataResponse(name="m", versions=["1"])
    meta.inputs.add(name="x", datatype="FP32", shape=[-1, 8])
    assert codec.message_json(meta) == {
        "name": "m",
        "versions": ["1"],
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}],
    }
    stats = pb.ModelStatisticsResponse()
    stats.model_stats.add(name="m", version="1", inference_count=3)
    out = codec.message_json(stats, defaults=True)["model_stats"][0]
    assert out["inference_count"] == 3 and out["inference_stats"]["fail"] == {"count": 0, "ns": 0}


def test_compressed_bodies_inflate_up_to_the_limit_only() -> None:
    import gzip
    import zlib

    from modelserve.v2 import http

    body = b"x" * 5000
    assert http._inflate(gzip.compress(body), "gzip", 5000) == body
    assert http._inflate(zlib.compress(body), "deflate", 5000) == body
    assert http._inflate(zlib.compress(body), "deflate", 4999) is None  # stops at the limit
    with pytest.raises(InvalidArgumentError, match="does not decompress"):
        http._inflate(b"not gzip", "gzip", 5000)
    with pytest.raises(InvalidArgumentError, match="unsupported Content-Encoding 'br'"):
        http._inflate(body, "br", 5000)
    assert http._accepted_encoding("br, gzip;q=0.8") == "gzip"
    assert http._accepted_encoding("gzip;q=0, deflate") == "deflate"
    assert http._accepted_encoding("identity") == ""
