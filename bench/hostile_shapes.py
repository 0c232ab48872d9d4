"""T04's time half, measured rather than asserted: how long validation takes to refuse a
hostile shape (negative dim, a product past int64, 2^40 elements with a tiny payload). The
case bounds it at 10 ms; the memory half is a test (tests/modelserve/test_tensors.py::
test_hostile_dims_are_refused_in_constant_memory).

    .venv/bin/python bench/hostile_shapes.py [--rounds 10000]
"""

from __future__ import annotations

import argparse
import time

from modelserve.errors import InvalidArgumentError
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.tensors import TensorSpec, decode_inputs, validate_infer_request

SHAPES = {
    "negative dim": ("FP32", [-1, 4]),
    "2^40 elements": ("FP32", [2**40, 4]),
    "past int64": ("FP32", [2**62, 2**62]),
    "huge beside 0": ("FP16", [2**62, 2**62, 0]),
    "2^40 strings": ("BYTES", [2**40]),
}


def main(rounds: int) -> None:
    for what, (datatype, shape) in SHAPES.items():
        request = pb.ModelInferRequest()
        request.inputs.add(name="h", datatype=datatype, shape=shape)
        request.raw_input_contents.append(b"\x00" * 16)
        spec = [TensorSpec("h", datatype, tuple(-1 for _ in shape))]
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            try:
                validate_infer_request(request, spec, [], 0)
            except InvalidArgumentError:
                pass
            try:
                decode_inputs(request)
            except InvalidArgumentError:
                pass
            times.append(time.perf_counter() - started)
        times.sort()
        print(
            f"{what:>14}: p50 {times[len(times) // 2] * 1e6:.1f} us, "
            f"max {times[-1] * 1e6:.1f} us (validate + decode; the case's bound: 10 ms)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10_000)
    main(parser.parse_args().rounds)
