"""The classification extension through the real suite with tritonclient: a requested output
with ``class_count`` comes back as Triton's top-k strings, labelled when the version's config
has labels (pushed with ``modelserve models push --class-labels``)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
from test_e2e_clients import CLIENTS, ort_run

from modelserve.cli.suite import Suite
from modelserve.cli.up import wait_models_ready
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc

CLI = Path(sys.executable).parent / "modelserve"
ROWS = np.random.default_rng(11).standard_normal((2, 512)).astype(np.float32)
LABELS = [f"class_{i}" for i in range(10)]


async def run(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, list(args), capture_output=True, text=True, timeout=120
    )


def expected(scores: np.ndarray, k: int, labels: list[str] | None) -> list[list[str]]:
    """Triton's format, computed independently: largest first, nine decimals."""
    out = []
    for row in scores:
        order = sorted(range(len(row)), key=lambda i: (-float(row[i]), i))[:k]
        out.append(
            [f"{float(row[i]):.9f}:{i}" + (f":{labels[i]}" if labels else "") for i in order]
        )
    return out


async def classify(suite: Suite, model: str, k: int) -> dict[str, object]:
    proc = await run(
        sys.executable,
        str(CLIENTS / "triton_classification.py"),
        suite.address("gateway"),
        model,
        "INPUT0",
        json.dumps(ROWS.tolist()),
        "OUTPUT0",
        str(k),
    )
    assert proc.returncode == 0, proc.stderr
    seen: dict[str, object] = json.loads(proc.stdout)
    return seen


async def test_tritonclient_class_count_without_labels(suite: Suite, demo_dir: Path) -> None:
    seen = await classify(suite, "wide", 3)
    scores = ort_run(demo_dir / "wide.onnx", {"INPUT0": ROWS})["OUTPUT0"]
    assert seen["datatype"] == "BYTES"
    assert seen["classes"] == expected(scores, 3, None)
    bad = seen["bad_count"]
    assert isinstance(bad, dict)
    assert bad["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "class count >= 1; got 0" in bad["message"]


async def test_tritonclient_class_count_with_labels(
    suite: Suite, demo_dir: Path, tmp_path: Path
) -> None:
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    pushed = await run(
        str(CLI), "models", "--registry", suite.address("registry"),
        "push", "wide_labeled", str(demo_dir / "wide.onnx"),
        "--class-labels", f"OUTPUT0={labels_file}",
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    await wait_models_ready(suite.address("gateway"), ["wide_labeled"], timeout=120)
    seen = await classify(suite, "wide_labeled", 12)  # more than the 10 classes: clamped
    scores = ort_run(demo_dir / "wide.onnx", {"INPUT0": ROWS})["OUTPUT0"]
    assert seen["classes"] == expected(scores, 10, LABELS)


async def test_classified_and_plain_requests_merge_and_each_gets_its_answer(
    suite: Suite, demo_dir: Path
) -> None:
    """Many concurrent callers, half classified: each answer is that caller's view."""
    scores = ort_run(demo_dir / "wide.onnx", {"INPUT0": ROWS})["OUTPUT0"]

    def request(k: int) -> pb.ModelInferRequest:
        req = pb.ModelInferRequest(model_name="wide")
        req.inputs.add(name="INPUT0", datatype="FP32", shape=list(ROWS.shape))
        req.raw_input_contents.append(ROWS.tobytes())
        out = req.outputs.add(name="OUTPUT0")
        if k:
            out.parameters["classification"].int64_param = k
        return req

    async with grpc.aio.insecure_channel(suite.address("gateway")) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answers = await asyncio.gather(
            *(stub.ModelInfer(request(i % 3), timeout=30) for i in range(24))
        )
    for i, answer in enumerate(answers):
        k = i % 3
        [tensor] = answer.outputs
        if k == 0:
            assert tensor.datatype == "FP32"
            got = np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(2, 10)
            np.testing.assert_allclose(got, scores, rtol=1e-5)
            continue
        assert (tensor.datatype, list(tensor.shape)) == ("BYTES", [2, k])
        raw = answer.raw_output_contents[0]
        strings, position = [], 0
        while position < len(raw):
            size = int.from_bytes(raw[position : position + 4], "little")
            strings.append(raw[position + 4 : position + 4 + size].decode())
            position += 4 + size
        assert [s.split(":")[1] for s in strings] == [
            e.split(":")[1] for row in expected(scores, k, None) for e in row
        ]
