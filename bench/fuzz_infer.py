"""Coverage-guided fuzzing (atheris, libFuzzer) of what a caller's bytes reach first
(RELIABILITY-CASES T40 (a)): the ModelInferRequest parser, ``validate_infer_request`` against
three models' signatures, ``decode_inputs`` of what validation accepted, and the admin
request parsers of RepositoryModelLoad/Unload (``v2/repository.check_load/check_unload``).

The first byte picks the target, the rest is the serialized request, or (target 3) the bytes
a ModelInferRequest is built from field by field (names, datatypes, dims and payloads drawn
from them): raw protobuf mutation seldom makes a negative or huge int64 dim (a ten-byte
varint), this does, without libprotobuf-mutator (atheris-libprotobuf-mutator has no wheel
for this Python). A request protobuf refuses is skipped; what it parses must be accepted or
refused with a ModelServeError (the INVALID_ARGUMENT / UNIMPLEMENTED a caller sees), never
another exception; decoding what validation accepted must give the declared shapes.

    python bench/fuzz_infer.py bench/fuzz_corpus/infer -runs=2000          # CI-sized
    python bench/fuzz_infer.py bench/fuzz_corpus/infer -runs=1000000 -print_final_stats=1
    python bench/fuzz_infer.py --make-corpus bench/fuzz_corpus/infer         # the seeds

A crash leaves ``crash-<sha1>`` in the working directory: check it into the corpus folder as
a regression once fixed (tests/modelserve/test_fuzz_corpus.py replays every corpus file).
Needs ``atheris`` (the dev extra installs it on Linux); the replay needs only the project.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "services"))

from google.protobuf.message import DecodeError  # noqa: E402

FUZZING = __name__ == "__main__" and "--make-corpus" not in sys.argv
if FUZZING:
    import atheris

    # Coverage of modelserve's modules only: instrumenting everything loaded (numpy,
    # protobuf's Python layer) costs half a minute at every start for edges we do not own.
    instrumented = atheris.instrument_imports(include=["modelserve"])
else:
    instrumented = contextlib.nullcontext()
with instrumented:
    from modelserve.errors import ModelServeError
    from modelserve.proto.inference import grpc_service_pb2 as pb
    from modelserve.tensors import (
        TensorSpec,
        decode_inputs,
        encode_inputs,
        validate_infer_request,
    )
    from modelserve.v2 import repository

# (inputs, outputs, max_batch_size): fraud, a BYTES model, a fixed-shape multi-input model.
MODELS = [
    ((TensorSpec("transaction", "FP32", (-1, 8)),), (TensorSpec("p", "FP32", (-1, 1)),), 64),
    ((TensorSpec("text", "BYTES", (-1, 1)),), (TensorSpec("label", "INT64", (-1, 1)),), 16),
    (
        (TensorSpec("a", "INT32", (2, 3)), TensorSpec("b", "FP16", (-1,))),
        (TensorSpec("y", "FP64", (2, 3)),),
        0,
    ),
]
INFER, LOAD, UNLOAD, BUILT = 0, 1, 2, 3
TARGETS = 4
NAMES = ["transaction", "text", "a", "b", "p", "label", "y", "", "x" * 300]
DATATYPES = ["FP32", "BYTES", "INT32", "FP16", "INT64", "FP64", "BOOL", "UINT8", "", "fp32"]
DIMS = [0, 1, 2, 3, 8, -1, -(2**40), 2**31, 2**40, 2**62, 2**63 - 1]


def infer(data: bytes) -> None:
    request = pb.ModelInferRequest()
    try:
        request.ParseFromString(data)
    except DecodeError:
        return
    for inputs, outputs, max_batch in MODELS:
        try:
            validate_infer_request(request, inputs, outputs, max_batch)
        except ModelServeError:
            continue
        arrays = decode_inputs(request)  # accepted: must decode, to the declared shapes
        for tensor in request.inputs:
            assert arrays[tensor.name].shape == tuple(tensor.shape), tensor.name
    try:  # decoding alone (a worker called directly validates against its session)
        decode_inputs(request)
    except ModelServeError:
        pass


class Draw:
    """Values drawn from fuzz bytes, front to back; zeros once they run out."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def byte(self) -> int:
        value = self._data[self._at] if self._at < len(self._data) else 0
        self._at += 1
        return value

    def pick(self, options: list[Any]) -> Any:
        return options[self.byte() % len(options)]

    def blob(self) -> bytes:
        size = self.byte()
        out = self._data[self._at : self._at + size]
        self._at += size
        return out


def built(data: bytes) -> bytes:
    """A ModelInferRequest drawn field by field from ``data``, serialized."""
    draw = Draw(data)
    request = pb.ModelInferRequest(model_name=draw.pick(["fraud", "text", "m", ""]))
    for _ in range(draw.byte() % 4):
        tensor = request.inputs.add(name=draw.pick(NAMES), datatype=draw.pick(DATATYPES))
        tensor.shape.extend(draw.pick(DIMS) for _ in range(draw.byte() % 5))
        typed = draw.byte() % 4
        if typed == 1:
            tensor.contents.fp32_contents.extend(float(draw.byte()) for _ in range(draw.byte()))
        elif typed == 2:
            tensor.contents.int_contents.extend(draw.byte() for _ in range(draw.byte()))
        elif typed == 3:
            tensor.contents.bytes_contents.append(draw.blob())
    for _ in range(draw.byte() % 4):
        request.raw_input_contents.append(draw.blob())
    for _ in range(draw.byte() % 3):
        request.outputs.add(name=draw.pick(NAMES))
    return request.SerializeToString()


def admin(kind: int, data: bytes) -> None:
    message: pb.RepositoryModelLoadRequest | pb.RepositoryModelUnloadRequest
    check: Callable[..., None]
    if kind == LOAD:
        message, check = pb.RepositoryModelLoadRequest(), repository.check_load
    else:
        message, check = pb.RepositoryModelUnloadRequest(), repository.check_unload
    try:
        message.ParseFromString(data)
    except DecodeError:
        return
    try:
        check(message)
    except ModelServeError:
        pass


def one_input(data: bytes) -> None:
    if not data:
        return
    kind, body = data[0] % TARGETS, data[1:]
    if kind == INFER:
        infer(body)
    elif kind == BUILT:
        infer(built(body))
    else:
        admin(kind, body)


def seeds() -> dict[str, bytes]:
    """Small valid and near-valid requests for each target, the fuzzer's starting points."""
    out: dict[str, bytes] = {}
    fraud = pb.ModelInferRequest(model_name="fraud")
    encode_inputs(fraud, {"transaction": np.ones((2, 8), np.float32)})
    out["infer-fraud-raw"] = bytes([INFER]) + fraud.SerializeToString()
    typed = pb.ModelInferRequest(model_name="fraud")
    typed.inputs.add(name="transaction", datatype="FP32", shape=[1, 8])
    typed.inputs[0].contents.fp32_contents.extend([0.5] * 8)
    typed.outputs.add(name="p")
    out["infer-fraud-typed"] = bytes([INFER]) + typed.SerializeToString()
    text = pb.ModelInferRequest(model_name="text")
    encode_inputs(text, {"text": np.array([[b"hello"], [b"\x00\xff"]], dtype=object)})
    out["infer-bytes"] = bytes([INFER]) + text.SerializeToString()
    multi = pb.ModelInferRequest(model_name="m")
    encode_inputs(
        multi,
        {"a": np.zeros((2, 3), np.int32), "b": np.zeros((4,), np.float16)},
    )
    out["infer-multi"] = bytes([INFER]) + multi.SerializeToString()
    hostile = pb.ModelInferRequest(model_name="fraud")
    hostile.inputs.add(name="transaction", datatype="FP32", shape=[1 << 40, 8])
    hostile.raw_input_contents.append(b"\0" * 32)
    out["infer-hostile-shape"] = bytes([INFER]) + hostile.SerializeToString()
    negative = pb.ModelInferRequest(model_name="fraud")
    negative.inputs.add(name="transaction", datatype="FP32", shape=[-1, 8])
    negative.raw_input_contents.append(b"")
    out["infer-negative-dim"] = bytes([INFER]) + negative.SerializeToString()
    load = pb.RepositoryModelLoadRequest(model_name="fraud")
    load.parameters["config"].string_param = "{}"
    out["load-config"] = bytes([LOAD]) + load.SerializeToString()
    unload = pb.RepositoryModelUnloadRequest(model_name="../x")
    unload.parameters["unload_dependents"].bool_param = False
    out["unload-dependents"] = bytes([UNLOAD]) + unload.SerializeToString()
    # fraud, transaction FP32 [1, 8] (dims 3 and 4 of DIMS), 32 raw bytes.
    out["built-fraud"] = bytes([BUILT, 0, 1, 0, 0, 2, 1, 4, 0, 1, 32]) + b"\0" * 32 + b"\0"
    return out


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--make-corpus":
        folder = Path(sys.argv[2])
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in seeds().items():
            (folder / name).write_bytes(data)
        return
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
