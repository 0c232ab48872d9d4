"""A model whose run raises inside ONNX Runtime on demand: y = reshape(x, [-1, 4 + max(x)]).

Zeros (warm-up inputs, ordinary calls) reshape to [-1, 4] and come back unchanged; a call whose
largest value is 1 asks for [-1, 5] of 4 values a row, and ORT fails the run with its own
text (a C++ source path, node and shapes: what error hygiene must keep from the caller)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from modelserve.cli.demo_models import IR_VERSION, OPSET

WIDTH = 4


def fault_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMax", ["x"], ["top"], keepdims=1),
            helper.make_node("Reshape", ["top", "one"], ["top1"]),
            helper.make_node("Add", ["top1", "width"], ["cols_f"]),
            helper.make_node("Cast", ["cols_f"], ["cols"], to=TensorProto.INT64),
            helper.make_node("Concat", ["minus_one", "cols"], ["shape"], axis=0),
            helper.make_node("Reshape", ["x", "shape"], ["y"]),
        ],
        "fault_on_demand",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])],
        [
            numpy_helper.from_array(np.array([1], np.int64), "one"),
            numpy_helper.from_array(np.array([WIDTH], np.float32), "width"),
            numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model
