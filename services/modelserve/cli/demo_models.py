"""The bundled demo models, built reproducibly (fixed seeds, fixed opset) with onnx.helper.

The same call always yields byte-identical files, so their sha256 is stable:
- ``fraud`` v1/v2: a tabular fraud scorer, ``transaction`` FP32 [-1, 8] -> ``fraud_probability``
  FP32 [-1, 1]; the two versions differ in their weights, so they answer differently.
- ``tabular``: INPUT0 FP32 [-1, 32] -> Gemm 64 -> Relu -> Gemm 64 -> Relu -> Gemm 1 -> Sigmoid
  -> OUTPUT0 (overhead-bound benchmark model).
- ``wide``: INPUT0 FP32 [-1, 512] -> Gemm 2048 -> Relu -> Gemm 2048 -> Relu -> Gemm 10 -> OUTPUT0
  (compute-bound benchmark model).
- ``dtypes``: one Identity per V2 datatype (FP32, FP16, INT32, INT64, BOOL, BYTES), for codec
  tests end to end; ``typed_echo`` is the same without FP16 (which V2 cannot send typed).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 9


def _mlp(
    name: str, input_name: str, output_name: str, sizes: Sequence[int], seed: int, sigmoid: bool
) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    current = input_name
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        b = (rng.standard_normal(n_out) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        last = i == len(sizes) - 2
        out = output_name if last and not sigmoid else f"h{i}"
        nodes.append(helper.make_node("Gemm", [current, f"W{i}", f"B{i}"], [out]))
        current = out
        if not last:
            nodes.append(helper.make_node("Relu", [current], [f"r{i}"]))
            current = f"r{i}"
    if sigmoid:
        nodes.append(helper.make_node("Sigmoid", [current], [output_name]))
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", sizes[-1]])],
        inits,
    )
    return _finish(graph)


def _finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="modelserve-demo"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def fraud(version: int) -> onnx.ModelProto:
    return _mlp(f"fraud_v{version}", "transaction", "fraud_probability", [8, 16, 1], version, True)


def tabular() -> onnx.ModelProto:
    return _mlp("tabular", "INPUT0", "OUTPUT0", [32, 64, 64, 1], 32, True)


def wide() -> onnx.ModelProto:
    return _mlp("wide", "INPUT0", "OUTPUT0", [512, 2048, 2048, 10], 512, False)


DTYPE_IO = [
    ("FP32", TensorProto.FLOAT),
    ("FP16", TensorProto.FLOAT16),
    ("INT32", TensorProto.INT32),
    ("INT64", TensorProto.INT64),
    ("BOOL", TensorProto.BOOL),
    ("BYTES", TensorProto.STRING),
]


def dtypes(include_fp16: bool = True) -> onnx.ModelProto:
    nodes, inputs, outputs = [], [], []
    for v2, onnx_type in DTYPE_IO:
        if v2 == "FP16" and not include_fp16:
            continue
        inputs.append(helper.make_tensor_value_info(f"IN_{v2}", onnx_type, ["batch", 4]))
        outputs.append(helper.make_tensor_value_info(f"OUT_{v2}", onnx_type, ["batch", 4]))
        nodes.append(helper.make_node("Identity", [f"IN_{v2}"], [f"OUT_{v2}"]))
    return _finish(helper.make_graph(nodes, "dtypes", inputs, outputs))


@dataclass(frozen=True)
class DemoModel:
    name: str
    version_hint: int  # the order versions are pushed in
    build_fn_name: str
    labels: tuple[str, ...]
    description: str


DEMO_MODELS: tuple[DemoModel, ...] = (
    DemoModel("fraud", 1, "fraud_v1", ("production",), "fraud scorer v1"),
    DemoModel("fraud", 2, "fraud_v2", ("staging",), "fraud scorer v2 (retrained)"),
    DemoModel("tabular", 1, "tabular", ("production",), "benchmark: overhead-bound MLP"),
    DemoModel("wide", 1, "wide", ("production",), "benchmark: compute-bound MLP"),
    DemoModel("dtypes", 1, "dtypes", ("production",), "one Identity per V2 datatype"),
    # V2 has no typed field for FP16; this one takes every datatype that can travel typed.
    DemoModel("typed_echo", 1, "typed_echo", ("production",), "dtypes without FP16"),
)

_BUILDERS = {
    "fraud_v1": lambda: fraud(1),
    "fraud_v2": lambda: fraud(2),
    "tabular": tabular,
    "wide": wide,
    "dtypes": dtypes,
    "typed_echo": lambda: dtypes(include_fp16=False),
}


def build(build_fn_name: str) -> onnx.ModelProto:
    return _BUILDERS[build_fn_name]()


def write_demo_models(directory: Path) -> list[tuple[DemoModel, Path]]:
    """Write every demo model to ``directory`` (idempotent) and return (model, path) pairs."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for demo in DEMO_MODELS:
        path = directory / f"{demo.build_fn_name}.onnx"
        data = build(demo.build_fn_name).SerializeToString()
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)
        written.append((demo, path))
    return written
