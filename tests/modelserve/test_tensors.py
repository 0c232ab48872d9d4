"""The tensor codec: round trips for every datatype, and one test per validation error."""

from __future__ import annotations

import struct
import tracemalloc

import numpy as np
import pytest

from modelserve.errors import InvalidArgumentError
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.modelserve.v1 import common_pb2
from modelserve.tensors import (
    DTYPES,
    MAX_TENSOR_ELEMENTS,
    TensorSpec,
    datatype_from_onnx,
    decode_inputs,
    decode_outputs,
    deserialize_bytes_tensor,
    encode_inputs,
    encode_inputs_typed,
    encode_outputs,
    from_proto_tensor,
    serialize_bytes_tensor,
    shape_from_onnx,
    to_proto_tensor,
    v2_datatype_of,
    validate_infer_request,
)

NUMPY_TYPES = [d.v2 for d in DTYPES.values() if d.numpy is not None]
TYPED_TYPES = [d.v2 for d in DTYPES.values() if d.contents_field is not None]


def sample(datatype: str) -> np.ndarray:
    """A 2x3 array using the extremes of the datatype where it has them."""
    if datatype == "BYTES":
        return np.array(
            [[b"", b"abc", "héllo ✓".encode()], [b"\x00\xff", b"", b"z" * 300]], dtype=object
        )
    dtype = DTYPES[datatype].numpy
    assert dtype is not None
    if dtype.kind == "b":
        return np.array([[True, False, True], [False, False, True]])
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.array([[info.min, info.max, 0], [1, 2, info.max - 1]], dtype=dtype)
    return np.array([[-1.5, 0.0, np.finfo(dtype).max], [np.inf, -0.25, 3.0]], dtype=dtype)


def over_wire(request: pb.ModelInferRequest) -> pb.ModelInferRequest:
    return pb.ModelInferRequest.FromString(request.SerializeToString())


def raw_request(arrays: dict[str, np.ndarray]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    encode_inputs(request, arrays)
    return request


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    if want.dtype == object:
        assert got.dtype == object
        assert got.tolist() == want.tolist()
    else:
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


# ---- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", NUMPY_TYPES)
def test_raw_input_round_trip(datatype: str) -> None:
    arr = sample(datatype)
    request = over_wire(raw_request({"x": arr}))
    assert request.inputs[0].datatype == datatype
    assert list(request.inputs[0].shape) == [2, 3]
    spec = TensorSpec("x", datatype, (-1, 3))
    validate_infer_request(request, [spec], [], max_batch_size=8)
    assert_same(decode_inputs(request)["x"], arr)


@pytest.mark.parametrize("datatype", TYPED_TYPES)
def test_typed_input_round_trip(datatype: str) -> None:
    arr = sample(datatype)
    request = pb.ModelInferRequest()
    encode_inputs_typed(request, {"x": arr})
    request = over_wire(request)
    assert not request.raw_input_contents
    validate_infer_request(request, [TensorSpec("x", datatype, (2, 3))], [], max_batch_size=0)
    assert_same(decode_inputs(request)["x"], arr)


@pytest.mark.parametrize("datatype", NUMPY_TYPES)
def test_raw_output_round_trip(datatype: str) -> None:
    arr = sample(datatype)
    response = pb.ModelInferResponse()
    encode_outputs(response, {"y": arr})
    response = pb.ModelInferResponse.FromString(response.SerializeToString())
    assert response.outputs[0].datatype == datatype
    assert_same(decode_outputs(response)["y"], arr)


@pytest.mark.parametrize("datatype", [d for d in TYPED_TYPES if d != "BYTES"])
def test_typed_outputs_decode(datatype: str) -> None:
    arr = sample(datatype)
    response = pb.ModelInferResponse()
    out = response.outputs.add(name="y", datatype=datatype, shape=arr.shape)
    getattr(out.contents, DTYPES[datatype].contents_field or "").extend(arr.ravel().tolist())
    assert_same(decode_outputs(response)["y"], arr)


@pytest.mark.parametrize("datatype", NUMPY_TYPES)
def test_proto_tensor_round_trip(datatype: str) -> None:
    arr = sample(datatype)
    tensor = common_pb2.Tensor.FromString(to_proto_tensor("t", arr).SerializeToString())
    assert (tensor.name, tensor.datatype, list(tensor.shape)) == ("t", datatype, [2, 3])
    assert_same(from_proto_tensor(tensor), arr)


def test_from_proto_tensor_checks_byte_size() -> None:
    tensor = common_pb2.Tensor(name="t", datatype="FP32", shape=[2], raw=b"\x00" * 7)
    with pytest.raises(
        InvalidArgumentError, match=r"tensor 't': shape \[2\] FP32 needs 8 bytes, got 7"
    ):
        from_proto_tensor(tensor)


def test_str_arrays_travel_as_utf8_bytes() -> None:
    request = over_wire(raw_request({"s": np.array(["", "naïve", "日本"])}))
    assert request.inputs[0].datatype == "BYTES"
    got = decode_inputs(request)["s"]
    assert got.tolist() == [b"", "naïve".encode(), "日本".encode()]


def test_encode_outputs_makes_little_endian_c_order_bytes() -> None:
    arr = np.arange(6, dtype=">i4").reshape(2, 3).T  # big-endian and not C-contiguous
    response = pb.ModelInferResponse()
    encode_outputs(response, {"y": arr})
    assert response.raw_output_contents[0] == np.ascontiguousarray(arr, dtype="<i4").tobytes()
    assert_same(decode_outputs(response)["y"], arr.astype(np.int32))


def test_encode_outputs_bool_is_one_byte_each() -> None:
    response = pb.ModelInferResponse()
    encode_outputs(response, {"b": np.array([True, False, True])})
    assert response.raw_output_contents[0] == b"\x01\x00\x01"


def test_encode_outputs_uses_given_datatype() -> None:
    response = pb.ModelInferResponse()
    bits = np.array([0x3F80, 0x4000], dtype=np.uint16)  # BF16 1.0, 2.0 carried as raw bits
    encode_outputs(response, {"y": bits, "z": np.zeros(1, np.float32)}, {"y": "BF16"})
    assert [o.datatype for o in response.outputs] == ["BF16", "FP32"]
    assert response.raw_output_contents[0] == bits.astype("<u2").tobytes()


def test_encode_outputs_refuses_a_dtype_that_contradicts_the_datatype() -> None:
    with pytest.raises(ValueError, match=r"tensor 'y': expected an array for FP32, got float64"):
        encode_outputs(pb.ModelInferResponse(), {"y": np.zeros(2)}, {"y": "FP32"})


def test_decode_inputs_is_zero_copy_for_raw_fp32() -> None:
    request = raw_request({"x": np.arange(8, dtype=np.float32).reshape(2, 4)})
    arr = decode_inputs(request)["x"]
    assert not arr.flags.owndata and not arr.flags.writeable
    owner: object = arr
    while isinstance(owner, np.ndarray):
        owner = owner.base
    assert isinstance(owner, bytes)  # the received payload itself, viewed, not copied
    assert np.shares_memory(arr, np.frombuffer(owner, dtype=np.uint8))


def test_zero_sized_tensors() -> None:
    request = raw_request({"x": np.zeros((0, 4), np.float32), "s": np.array([], dtype=object)})
    validate_infer_request(
        request, [TensorSpec("x", "FP32", (-1, 4)), TensorSpec("s", "BYTES", (-1,))], [], 4
    )
    got = decode_inputs(request)
    assert got["x"].shape == (0, 4) and got["s"].shape == (0,)


# ---- BYTES format -----------------------------------------------------------------------------


def test_serialize_bytes_tensor_is_tritons_format() -> None:
    arr = np.array([[b"ab", ""], ["é", b"\x00"]], dtype=object)
    want = b"\x02\x00\x00\x00ab" + b"\x00\x00\x00\x00" + b"\x02\x00\x00\x00\xc3\xa9"
    assert serialize_bytes_tensor(arr) == want + b"\x01\x00\x00\x00\x00"


def test_serialize_bytes_tensor_refuses_other_objects() -> None:
    with pytest.raises(TypeError, match="bytes or str, got int"):
        serialize_bytes_tensor(np.array([1], dtype=object))


def test_deserialize_bytes_tensor_accepts_memoryview() -> None:
    buf = memoryview(serialize_bytes_tensor(np.array([b"x", b""], dtype=object)))
    assert deserialize_bytes_tensor(buf, 2, "s").tolist() == [b"x", b""]


GOOD = struct.pack("<I", 3) + b"abc" + struct.pack("<I", 0)  # two elements: b"abc", b""


@pytest.mark.parametrize(
    ("buf", "count", "message"),
    [
        (
            GOOD[:2],
            1,
            r"input 's': BYTES element 0 has a truncated length prefix: "
            r"needs 4 bytes at offset 0, got 2",
        ),
        (
            GOOD[:9],
            2,
            r"input 's': BYTES element 1 has a truncated length prefix: "
            r"needs 4 bytes at offset 7, got 2",
        ),
        (GOOD[:5], 2, r"input 's': BYTES element 0 is truncated: needs 3 bytes at offset 4, got 1"),
        (
            GOOD + b"\xff\xff",
            2,
            r"input 's': expected 2 BYTES elements, got 2 trailing bytes after them",
        ),
        (GOOD, 3, r"input 's': expected 3 BYTES elements, got 2"),
        (GOOD, 1, r"input 's': expected 1 BYTES elements, got more than 1"),
        (b"", 1, r"input 's': expected 1 BYTES elements, got 0"),
    ],
    ids=["prefix-first", "prefix-later", "payload", "trailing", "too-few", "too-many", "empty"],
)
def test_deserialize_bytes_tensor_rejects_malformed(buf: bytes, count: int, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        deserialize_bytes_tensor(buf, count, "s")


def test_deserialize_bytes_tensor_huge_count_allocates_nothing() -> None:
    with pytest.raises(InvalidArgumentError, match="expected 2147483648 BYTES elements, got 2"):
        deserialize_bytes_tensor(GOOD, 2**31, "s")


# ---- validation: one test per error -----------------------------------------------------------

SPECS = [TensorSpec("x", "FP32", (-1, 4)), TensorSpec("ids", "INT64", (-1,))]
OUTS = [TensorSpec("y", "FP32", (-1, 2)), TensorSpec("z", "FP32", (-1,))]


def good_arrays() -> dict[str, np.ndarray]:
    return {"x": np.zeros((2, 4), np.float32), "ids": np.arange(2, dtype=np.int64)}


def invalid(request: pb.ModelInferRequest, message: str, max_batch_size: int = 8) -> None:
    with pytest.raises(InvalidArgumentError, match=message) as info:
        validate_infer_request(request, SPECS, OUTS, max_batch_size)
    assert info.value.code.name == "INVALID_ARGUMENT"


def test_valid_request_passes_with_variable_dims() -> None:
    for rows in (0, 1, 8):
        request = raw_request(
            {"x": np.zeros((rows, 4), np.float32), "ids": np.zeros(rows, np.int64)}
        )
        request.outputs.add(name="y")
        request.outputs.add(name="z")
        validate_infer_request(request, SPECS, OUTS, max_batch_size=8)


def test_unknown_input_lists_expected_names() -> None:
    request = raw_request({**good_arrays(), "bogus": np.zeros(1, np.float32)})
    invalid(request, r"unknown input 'bogus'; expected one of \['x', 'ids'\]")


def test_missing_input() -> None:
    request = raw_request({"x": np.zeros((2, 4), np.float32)})
    invalid(request, r"missing input 'ids'; expected inputs \['x', 'ids'\], got \['x'\]")


def test_duplicate_input() -> None:
    request = raw_request(good_arrays())
    encode_inputs(request, {"x": np.zeros((2, 4), np.float32)})
    invalid(request, r"input 'x' given more than once")


def test_datatype_mismatch() -> None:
    request = raw_request({"x": np.zeros((2, 4), np.int64), "ids": np.zeros(2, np.int64)})
    invalid(request, r"input 'x': expected FP32, got INT64")


def test_rank_mismatch() -> None:
    request = raw_request({"x": np.zeros((2, 4, 1), np.float32), "ids": np.zeros(2, np.int64)})
    invalid(request, r"input 'x': expected rank 2 shape \[-1,4\], got rank 3 shape \[2,4,1\]")


def test_dim_mismatch() -> None:
    request = raw_request({"x": np.zeros((2, 5), np.float32), "ids": np.zeros(2, np.int64)})
    invalid(request, r"input 'x': dim 1 expected 4, got 5 \(expected shape \[-1,4\], got \[2,5\]\)")


def test_negative_dim() -> None:
    request = raw_request(good_arrays())
    request.inputs[0].shape[0] = -2
    invalid(request, r"input 'x': shape \[-2,4\] has negative dim -2; expected dims >= 0")


def test_batch_above_max_batch_size() -> None:
    request = raw_request({"x": np.zeros((9, 4), np.float32), "ids": np.zeros(9, np.int64)})
    invalid(request, r"input 'x': expected batch size <= max_batch_size 8, got 9")
    validate_infer_request(request, SPECS, OUTS, max_batch_size=0)  # 0: no batching cap


def test_absurd_shape_refused_before_any_allocation() -> None:
    request = raw_request(good_arrays())
    request.inputs[0].shape[:] = [2**40, 4]
    invalid(
        request,
        rf"input 'x': shape \[1099511627776,4\] exceeds the limit of "
        rf"{MAX_TENSOR_ELEMENTS} elements",
        max_batch_size=0,
    )


def test_element_cap_also_guards_typed_and_bytes_inputs() -> None:
    request = pb.ModelInferRequest()
    request.inputs.add(name="s", datatype="BYTES", shape=[MAX_TENSOR_ELEMENTS + 1])
    with pytest.raises(InvalidArgumentError, match=r"input 's': shape \[2147483649\] exceeds"):
        decode_inputs(request)


def test_huge_dims_are_refused_even_beside_a_zero_dim() -> None:
    request = pb.ModelInferRequest()
    request.inputs.add(name="h", datatype="FP16", shape=[2**62, 2**62, 0])
    request.raw_input_contents.append(b"")
    with pytest.raises(InvalidArgumentError, match=r"input 'h': shape \[4611686018427387904,"):
        validate_infer_request(request, [TensorSpec("h", "FP16", (-1, -1, -1))], [], 0)
    with pytest.raises(InvalidArgumentError, match=r"exceeds the limit of 2147483648 elements"):
        decode_inputs(request)


def test_raw_contents_count_must_match_inputs() -> None:
    request = raw_request(good_arrays())
    del request.raw_input_contents[1]
    invalid(request, r"expected 2 raw_input_contents, got 1")


def test_raw_and_typed_for_the_same_input() -> None:
    request = raw_request(good_arrays())
    request.inputs[0].contents.fp32_contents.extend([0.0] * 8)
    invalid(request, r"input 'x': expected either raw_input_contents or typed contents, got both")


def test_raw_byte_size() -> None:
    request = raw_request({"x": np.zeros((1, 4), np.float32), "ids": np.zeros(1, np.int64)})
    request.raw_input_contents[0] = b"\x00" * 8
    invalid(request, r"input 'x': shape \[1,4\] FP32 needs 16 bytes, got 8")


def test_raw_bytes_element_count() -> None:
    specs = [TensorSpec("s", "BYTES", (-1,))]
    request = raw_request({"s": np.array([b"a", b"b"], dtype=object)})
    request.inputs[0].shape[0] = 3
    with pytest.raises(InvalidArgumentError, match=r"input 's': expected 3 BYTES elements, got 2"):
        validate_infer_request(request, specs, [], 0)


def test_raw_bytes_truncated_payload() -> None:
    specs = [TensorSpec("s", "BYTES", (-1,))]
    request = pb.ModelInferRequest()
    request.inputs.add(name="s", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(struct.pack("<I", 1000) + b"short")
    with pytest.raises(
        InvalidArgumentError,
        match=r"input 's': BYTES element 0 is truncated: needs 1000 bytes at offset 4, got 5",
    ):
        validate_infer_request(request, specs, [], 0)


def test_typed_contents_in_the_wrong_field() -> None:
    request = pb.ModelInferRequest()
    encode_inputs_typed(request, {"x": np.zeros((1, 4), np.float32), "ids": np.zeros(1, np.int64)})
    request.inputs[1].contents.ClearField("int64_contents")
    request.inputs[1].contents.int_contents.append(0)
    invalid(request, r"input 'ids': INT64 values belong in int64_contents, got int_contents")


def test_typed_contents_element_count() -> None:
    request = pb.ModelInferRequest()
    encode_inputs_typed(request, {"x": np.zeros((1, 4), np.float32), "ids": np.zeros(1, np.int64)})
    request.inputs[0].contents.fp32_contents.append(1.0)
    invalid(request, r"input 'x': shape \[1,4\] needs 4 values in fp32_contents, got 5")


def test_typed_contents_missing_entirely() -> None:
    request = pb.ModelInferRequest()
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.inputs.add(name="ids", datatype="INT64", shape=[1])
    invalid(request, r"input 'x': shape \[1,4\] needs 4 values in fp32_contents, got 0")


def test_fp16_must_be_raw() -> None:
    request = pb.ModelInferRequest()
    tensor = request.inputs.add(name="h", datatype="FP16", shape=[2])
    tensor.contents.fp32_contents.extend([1.0, 2.0])
    with pytest.raises(
        InvalidArgumentError, match=r"input 'h': FP16 must be sent in raw_input_contents"
    ):
        validate_infer_request(request, [TensorSpec("h", "FP16", (2,))], [], 0)
    with pytest.raises(
        InvalidArgumentError, match=r"input 'h': FP16 must be sent in raw_input_contents"
    ):
        encode_inputs_typed(pb.ModelInferRequest(), {"h": np.zeros(2, np.float16)})


def test_typed_narrow_ints_must_fit() -> None:
    request = pb.ModelInferRequest()
    tensor = request.inputs.add(name="b", datatype="INT8", shape=[2])
    tensor.contents.int_contents.extend([1, 200])
    with pytest.raises(
        InvalidArgumentError, match=r"input 'b': INT8 values must lie in \[-128, 127\], got 200"
    ):
        validate_infer_request(request, [TensorSpec("b", "INT8", (2,))], [], 0)


def test_unknown_requested_output() -> None:
    request = raw_request(good_arrays())
    request.outputs.add(name="nope")
    invalid(request, r"unknown output 'nope'; expected one of \['y', 'z'\]")


def test_duplicate_requested_output() -> None:
    request = raw_request(good_arrays())
    request.outputs.add(name="y")
    request.outputs.add(name="y")
    invalid(request, r"output 'y' requested more than once")


# ---- decode_inputs on its own (a worker called directly) --------------------------------------


def test_decode_inputs_rechecks_byte_size() -> None:
    request = raw_request({"x": np.zeros((1, 4), np.float32)})
    request.inputs[0].shape[:] = [1, 8]
    with pytest.raises(
        InvalidArgumentError, match=r"input 'x': shape \[1,8\] FP32 needs 32 bytes, got 16"
    ):
        decode_inputs(request)


def test_decode_inputs_rejects_unknown_datatype_and_duplicates() -> None:
    request = raw_request({"x": np.zeros(1, np.float32)})
    request.inputs[0].datatype = "FLOAT"
    with pytest.raises(
        InvalidArgumentError, match=r"input 'x': expected a datatype in BOOL, .*, got 'FLOAT'"
    ):
        decode_inputs(request)
    request = raw_request({"x": np.zeros(1, np.float32)})
    encode_inputs(request, {"x": np.zeros(1, np.float32)})
    with pytest.raises(InvalidArgumentError, match=r"input 'x' given more than once"):
        decode_inputs(request)


def test_decode_inputs_rejects_bad_bytes_and_raw_count() -> None:
    request = raw_request({"s": np.array([b"ab"], dtype=object)})
    request.raw_input_contents[0] = request.raw_input_contents[0] + b"\x01"
    with pytest.raises(
        InvalidArgumentError, match=r"input 's': expected 1 BYTES elements, got 1 trailing bytes"
    ):
        decode_inputs(request)
    request = raw_request({"a": np.zeros(1, np.float32), "b": np.zeros(1, np.float32)})
    request.raw_input_contents.append(b"")
    with pytest.raises(InvalidArgumentError, match=r"expected 2 raw_input_contents, got 3"):
        decode_inputs(request)


def test_decode_outputs_names_outputs() -> None:
    response = pb.ModelInferResponse()
    response.outputs.add(name="y", datatype="FP16", shape=[1])
    with pytest.raises(
        InvalidArgumentError, match=r"output 'y': FP16 must be sent in raw_output_contents"
    ):
        decode_outputs(response)


# ---- datatypes and ONNX signatures ------------------------------------------------------------


def test_v2_datatype_of() -> None:
    assert v2_datatype_of(np.zeros(1, ">f4")) == "FP32"
    assert v2_datatype_of(np.array(["a"])) == "BYTES"
    assert v2_datatype_of(np.array([b"a"])) == "BYTES"
    with pytest.raises(InvalidArgumentError, match=r"expected a numpy dtype in .*, got complex64"):
        v2_datatype_of(np.zeros(1, np.complex64))


def test_datatype_from_onnx() -> None:
    assert datatype_from_onnx("tensor(float)") == "FP32"
    assert datatype_from_onnx("tensor(string)") == "BYTES"
    assert datatype_from_onnx("tensor(bfloat16)") == "BF16"
    with pytest.raises(
        InvalidArgumentError,
        match=r"unsupported ONNX type 'tensor\(complex64\)'; expected one of tensor\(bool\)",
    ):
        datatype_from_onnx("tensor(complex64)")


def test_shape_from_onnx() -> None:
    assert shape_from_onnx(["batch", 3, None, 0, -1]) == (-1, 3, -1, 0, -1)
    assert shape_from_onnx([]) == ()


def test_rank_above_numpy_limit() -> None:
    request = pb.ModelInferRequest()
    request.inputs.add(name="x", datatype="FP32", shape=[1] * 65)
    request.raw_input_contents.append(b"\x00" * 4)
    with pytest.raises(InvalidArgumentError, match=r"input 'x': expected rank <= 64, got 65"):
        decode_inputs(request)


def test_bf16_is_checked_but_cannot_be_decoded_to_numpy() -> None:
    request = pb.ModelInferRequest()
    request.inputs.add(name="b", datatype="BF16", shape=[2])
    request.raw_input_contents.append(b"\x80\x3f\x00\x40")
    validate_infer_request(request, [TensorSpec("b", "BF16", (2,))], [], 0)
    with pytest.raises(InvalidArgumentError, match=r"input 'b': BF16 has no numpy equivalent"):
        decode_inputs(request)


def test_empty_fp16_needs_no_payload() -> None:
    request = pb.ModelInferRequest()
    request.inputs.add(name="h", datatype="FP16", shape=[0, 3])
    got = decode_inputs(request)["h"]
    assert got.shape == (0, 3) and got.dtype == np.float16


@pytest.mark.parametrize(
    ("datatype", "shape"),
    [
        ("FP32", [2**40, 4]),  # 2^42 elements declared with a tiny payload
        ("FP32", [2**62, 2**62]),  # a product past int64
        ("FP16", [2**62, 2**62, 0]),
        ("FP32", [-1, 4]),
        ("BYTES", [2**40]),
        ("INT64", [2**31, 2**31, 2**31, 2**31]),
    ],
)
def test_hostile_dims_are_refused_in_constant_memory(datatype: str, shape: list[int]) -> None:
    """T04's memory half: refusing a hostile shape allocates (almost) nothing, whatever it
    declares (the case's "RSS unchanged" as traced Python allocations; the < 10 ms half is a
    speed and is not asserted here)."""
    request = pb.ModelInferRequest()
    request.inputs.add(name="h", datatype=datatype, shape=shape)
    request.raw_input_contents.append(b"\x00" * 16)
    spec = [TensorSpec("h", datatype, tuple(-1 for _ in shape))]
    tracemalloc.start()
    try:
        for check in (
            lambda: validate_infer_request(request, spec, [], 0),
            lambda: decode_inputs(request),
        ):
            with pytest.raises(InvalidArgumentError):
                check()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, f"refusing {shape} allocated {peak} bytes"


def test_a_remembered_layout_still_has_its_payload_sizes_checked() -> None:
    """validate_infer_request's memo (issue 14): a layout that passed is checked by its sizes
    alone, so a wrong size is still refused with the full check's message, a new requested
    output is checked in full, and BYTES layouts are never remembered."""
    from modelserve.tensors import raw_layout

    specs = [TensorSpec("x", "FP32", (-1, 4))]
    outs = [TensorSpec("y", "FP32", (-1, 1))]
    passed: dict = {}  # type: ignore[type-arg]
    good = pb.ModelInferRequest(model_name="m")
    good.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    good.raw_input_contents.append(bytes(32))
    validate_infer_request(good, specs, outs, 8, layout=raw_layout(good), passed=passed)
    assert len(passed) == 1
    short = pb.ModelInferRequest()
    short.CopyFrom(good)
    short.raw_input_contents[0] = bytes(31)
    with pytest.raises(InvalidArgumentError, match="needs 32 bytes, got 31"):
        validate_infer_request(short, specs, outs, 8, layout=raw_layout(short), passed=passed)
    unknown = pb.ModelInferRequest()
    unknown.CopyFrom(good)
    unknown.outputs.add(name="nope")
    with pytest.raises(InvalidArgumentError, match="unknown output"):
        validate_infer_request(unknown, specs, outs, 8, layout=raw_layout(unknown), passed=passed)
    words = pb.ModelInferRequest()
    words.inputs.add(name="s", datatype="BYTES", shape=[1, 1])
    words.raw_input_contents.append(serialize_bytes_tensor(np.array([[b"ab"]], dtype=object)))
    text_specs = [TensorSpec("s", "BYTES", (-1, 1))]
    validate_infer_request(words, text_specs, [], 8, layout=raw_layout(words), passed=passed)
    assert len(passed) == 1  # the BYTES layout was checked, not remembered
