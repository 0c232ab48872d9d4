"""registry.onnx_inspect: safety checks and signatures, on real ONNX files and ONNX Runtime."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelserve.cli import demo_models
from modelserve.errors import FailedPreconditionError
from modelserve.tensors import TensorSpec
from registry.onnx_inspect import PLATFORM, inspect_model, sha256_file


def write(tmp_path: Path, model: onnx.ModelProto, name: str = "model.onnx") -> Path:
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


def external_constant(name: str) -> TensorProto:
    """A tensor whose data is said to live in a file beside the model."""
    tensor = numpy_helper.from_array(np.ones(4, dtype=np.float32), name)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    return tensor


def finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def test_fraud_signature(tmp_path: Path) -> None:
    signature = inspect_model(write(tmp_path, demo_models.fraud(1)))
    assert signature.inputs == (TensorSpec("transaction", "FP32", (-1, 8)),)
    assert signature.outputs == (TensorSpec("fraud_probability", "FP32", (-1, 1)),)
    assert signature.platform == PLATFORM


def test_every_supported_datatype_maps_to_its_v2_name(tmp_path: Path) -> None:
    signature = inspect_model(write(tmp_path, demo_models.dtypes()))
    got = {spec.name: (spec.datatype, spec.shape) for spec in signature.inputs + signature.outputs}
    for v2, _ in demo_models.DTYPE_IO:
        assert got[f"IN_{v2}"] == (v2, (-1, 4))
        assert got[f"OUT_{v2}"] == (v2, (-1, 4))


def test_initializers_saved_as_external_data_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "ext.onnx"
    onnx.save_model(
        demo_models.fraud(1),
        path,
        save_as_external_data=True,
        location="weights.bin",
        size_threshold=0,
    )
    assert (tmp_path / "weights.bin").exists()  # the model really loads from a side file
    with pytest.raises(FailedPreconditionError, match="external data"):
        inspect_model(path)


def test_external_tensor_in_a_constant_inside_a_subgraph_is_refused(tmp_path: Path) -> None:
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=external_constant("hidden"))],
        "branch",
        [],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [4])],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)],
        "if",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    with pytest.raises(FailedPreconditionError, match="'hidden' in external data"):
        inspect_model(write(tmp_path, finish(graph)))


def test_a_file_that_is_not_onnx_is_refused_without_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "secret-dir" / "model.onnx"
    path.parent.mkdir()
    path.write_bytes(b"\x00\xffthis is not a protobuf at all" * 10)
    with pytest.raises(FailedPreconditionError) as info:
        inspect_model(path)
    assert "secret-dir" not in info.value.message
    assert str(tmp_path) not in info.value.message


def test_a_custom_op_domain_is_refused(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Evil", ["x"], ["y"], domain="com.attacker")],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = finish(graph)
    model.opset_import.append(helper.make_opsetid("com.attacker", 1))
    with pytest.raises(FailedPreconditionError, match="ONNX Runtime cannot load the model"):
        inspect_model(write(tmp_path, model))


def test_a_sequence_output_is_refused_naming_it(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("SequenceConstruct", ["x"], ["seq"])],
        "seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, [2])],
    )
    with pytest.raises(FailedPreconditionError, match="output 'seq' has type seq"):
        inspect_model(write(tmp_path, finish(graph)))


def test_fixed_and_symbolic_dims(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "dims",
        [helper.make_tensor_value_info("x", TensorProto.INT64, [3, "n", None])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [3, "n", None])],
    )
    signature = inspect_model(write(tmp_path, finish(graph)))
    assert signature.inputs == (TensorSpec("x", "INT64", (3, -1, -1)),)


def test_sha256_file(tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000  # spans several read blocks
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
