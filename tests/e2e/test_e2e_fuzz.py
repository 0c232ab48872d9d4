"""T40 beyond the codec, against the real suite's processes:

(b) Hypothesis builds ModelInferRequests (``st.builds`` over the message and its tensors: names,
    datatypes, hostile shapes, typed and raw contents, parameters, requested outputs) and sends
    them to the gateway and straight to the worker: every answer is OK or one of the codes a
    caller can act on, never UNKNOWN or INTERNAL, and both still serve afterwards;
(c) raw bytes at the live gRPC port (no HTTP/2 preface, a preface then garbage frames, a
    truncated gRPC message) for a few seconds: the gateway stays SERVING, answers a good
    request, and its RSS stays bounded.

A longer run: ``FUZZ_EXAMPLES=5000 ./dev test tests/e2e/test_e2e_fuzz.py``.
The coverage-guided harness (atheris) is ``bench/fuzz_infer.py``.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelserve.cli.suite import Suite
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.tensors import DTYPES, encode_inputs

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
# What a caller may see (RELIABILITY-CASES T40; UNAVAILABLE only as overload pushback).
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNAVAILABLE,
}
SEND_LIMIT = [("grpc.max_send_message_length", 64 << 20)]

texts = st.one_of(
    st.sampled_from(["", "transaction", "fraud", "x", "../etc", "a" * 300, "é\x00"]),
    st.text(max_size=12),
)
parameters = st.dictionaries(
    st.text(max_size=8),
    st.one_of(
        st.builds(pb.InferParameter, bool_param=st.booleans()),
        st.builds(pb.InferParameter, int64_param=st.integers(-(2**63), 2**63 - 1)),
        st.builds(pb.InferParameter, string_param=st.text(max_size=16)),
    ),
    max_size=3,
)
shapes = st.lists(
    st.one_of(st.integers(-2, 9), st.sampled_from([8, 2**31, 2**40, 2**62, -(2**40), 2**63 - 1])),
    max_size=5,
)
contents = st.builds(
    pb.InferTensorContents,
    fp32_contents=st.lists(st.floats(width=32, allow_nan=True), max_size=24),
    int_contents=st.lists(st.integers(-(2**31), 2**31 - 1), max_size=8),
    int64_contents=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=8),
    bool_contents=st.lists(st.booleans(), max_size=8),
    bytes_contents=st.lists(st.binary(max_size=16), max_size=4),
)
tensors = st.builds(
    pb.ModelInferRequest.InferInputTensor,
    name=texts,
    datatype=st.one_of(st.sampled_from(sorted(DTYPES)), st.sampled_from(["", "FP8", "fp32"])),
    shape=shapes,
    parameters=parameters,
    contents=st.one_of(st.none(), contents),
)
# Near-valid fraud inputs too, so fuzzing reaches the model run and not only name checks.
fraud_inputs = st.builds(
    pb.ModelInferRequest.InferInputTensor,
    name=st.just("transaction"),
    datatype=st.sampled_from(["FP32", "FP32", "FP64", "BYTES"]),
    shape=st.one_of(st.just([1, 8]), st.lists(st.integers(-1, 9), min_size=1, max_size=3)),
)


@st.composite
def near_valid(draw: st.DrawFn) -> pb.ModelInferRequest:
    """fraud's one input with rows of 8 FP32, the payload right or a little off, raw or
    typed, sometimes an output asked for: most reach the batcher and the model."""
    rows = draw(st.integers(-1, 4))
    width = draw(st.sampled_from([8, 8, 8, 7, 0, -3, 2**40]))
    request = pb.ModelInferRequest(model_name="fraud", id=draw(st.text(max_size=8)))
    tensor = request.inputs.add(name="transaction", datatype="FP32", shape=[rows, width])
    size = max(rows, 0) * 8
    values = draw(
        st.lists(st.floats(width=32), min_size=size, max_size=size)
        if draw(st.booleans())
        else st.lists(st.floats(width=32), max_size=size + 2)
    )
    if draw(st.booleans()):
        request.raw_input_contents.append(np.asarray(values, np.float32).tobytes())
    else:
        tensor.contents.fp32_contents.extend(values)
    if draw(st.booleans()):
        request.outputs.add(name=draw(st.sampled_from(["fraud_probability", "nope"])))
    return request


built = st.builds(
    pb.ModelInferRequest,
    model_name=st.one_of(st.sampled_from(["fraud", "fraud", "tabular", "nope"]), texts),
    model_version=st.one_of(st.sampled_from(["", "1", "0", "-1", "999"]), st.text(max_size=4)),
    id=st.text(max_size=16),
    parameters=parameters,
    inputs=st.lists(st.one_of(fraud_inputs, tensors), max_size=3),
    outputs=st.lists(
        st.builds(pb.ModelInferRequest.InferRequestedOutputTensor, name=texts), max_size=2
    ),
    raw_input_contents=st.lists(st.one_of(st.binary(max_size=40), st.just(b"\0" * 32)), max_size=3),
)
requests = st.one_of(built, near_valid())


def good_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="fraud")
    encode_inputs(request, {"transaction": np.full((1, 8), 0.5, np.float32)})
    return request


@pytest.fixture(scope="module")
def channels(suite: Suite) -> Iterator[dict[str, grpc.Channel]]:
    opened = {
        name: grpc.insecure_channel(suite.address(name), options=SEND_LIMIT)
        for name in ("gateway", "worker")
    }
    yield opened
    for channel in opened.values():
        channel.close()


def assert_serving(channel: grpc.Channel, name: str) -> None:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
    answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(good_request(), timeout=10)
    assert answer.outputs, name


@pytest.mark.parametrize("target", ["gateway", "worker"])
def test_built_requests_get_only_actionable_codes(
    channels: dict[str, grpc.Channel], target: str
) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(channels[target])
    seen: Counter[str] = Counter()

    @FUZZ
    @given(request=requests)
    def check(request: pb.ModelInferRequest) -> None:
        try:
            stub.ModelInfer(request, timeout=10)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
            assert code in ALLOWED, (code, exc.details(), request)
            if code == grpc.StatusCode.UNAVAILABLE:  # overload only, never a crash behind
                trailers = dict(exc.trailing_metadata() or ())
                assert "grpc-retry-pushback-ms" in trailers, (exc.details(), request)
        seen[code.name] += 1

    check()
    assert sum(seen.values()) >= min(EXAMPLES, 50), seen
    assert seen["OK"] > 0 and seen["INVALID_ARGUMENT"] > 0, seen  # both sides were reached
    assert_serving(channels[target], target)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(
        ">I", stream & 0x7FFFFFFF
    ) + payload  # fmt: skip


def _garbage(rng: random.Random) -> bytes:
    """Random bytes, or a valid preface followed by frames with random types and payloads,
    or a HEADERS frame opening ModelInfer then a DATA frame whose gRPC length prefix lies."""
    pick = rng.randrange(3)
    noise = rng.randbytes(rng.randrange(1, 512))
    if pick == 0:
        return noise
    frames = b"".join(
        _frame(rng.randrange(0, 12), rng.randrange(256), rng.randrange(0, 9), rng.randbytes(24))
        for _ in range(rng.randrange(1, 6))
    )
    if pick == 1:
        return PREFACE + _frame(4, 0, 0, b"") + frames
    lying = b"\0" + struct.pack(">I", rng.choice([2**31 - 1, 5, 1 << 24])) + noise
    return PREFACE + _frame(4, 0, 0, b"") + _frame(1, 4, 1, noise[:64]) + _frame(0, 1, 1, lying)


def test_raw_bytes_at_the_live_port_leave_it_serving_with_bounded_memory(
    suite: Suite, channels: dict[str, grpc.Channel]
) -> None:
    gateway = suite.processes["gateway"]
    host, port = gateway.address.rsplit(":", 1)
    rng = random.Random(40)
    assert_serving(channels["gateway"], "gateway")
    before = _rss_mib(gateway.process.pid)
    sent = 0
    end = time.monotonic() + 4.0
    while time.monotonic() < end:
        with socket.create_connection((host, int(port)), timeout=2) as conn:
            try:
                conn.sendall(_garbage(rng))
                conn.settimeout(0.05)
                conn.recv(4096)  # whatever the server says (GOAWAY, nothing) before closing
            except OSError:
                pass  # reset or closed by the server: what it should do with garbage
        sent += 1
    after = _rss_mib(gateway.process.pid)
    assert sent > 50, sent
    assert gateway.process.poll() is None, "the gateway died"
    assert_serving(channels["gateway"], "gateway")
    assert after - before < 64, f"gateway RSS grew {after - before:.1f} MiB over {sent} sockets"
