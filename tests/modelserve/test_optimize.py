"""``models optimize --int8`` against a fake registry: what it pushes, what it reports, and that
the report is true (recomputed here from the pushed bytes)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from modelserve.cli.main import main
from modelserve.cli.optimize import measure, optimize_int8, quantize_int8, sample_inputs
from modelserve.errors import FailedPreconditionError, InvalidArgumentError
from modelserve.proto.modelserve.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from registry.onnx_inspect import inspect_model

CHUNK = 4096  # small, so the artifact arrives in several chunks
RUNS = 5  # latency runs: the figures are not under test here, only that they are there


@dataclass
class FakeRegistry(registry_pb2_grpc.RegistryServicer):
    """Versions held in memory; records every push header and artifact it receives."""

    versions: dict[tuple[str, int], tuple[registry_pb2.ModelVersion, bytes]] = field(
        default_factory=dict
    )
    pushed: list[tuple[registry_pb2.PushVersionRequest.Header, bytes]] = field(default_factory=list)
    corrupt: bool = False  # flip one byte of each artifact, keep the announced sha256

    def add(self, path: Path, model: str, config: registry_pb2.ServingConfig) -> int:
        data = path.read_bytes()
        version = 1 + max((v for m, v in self.versions if m == model), default=0)
        sig = inspect_model(path)
        self.versions[(model, version)] = (
            registry_pb2.ModelVersion(
                model=model,
                version=version,
                sha256=hashlib.sha256(data).hexdigest(),
                size_bytes=len(data),
                inputs=[_spec(s.name, s.datatype, s.shape) for s in sig.inputs],
                outputs=[_spec(s.name, s.datatype, s.shape) for s in sig.outputs],
                config=config,
            ),
            data,
        )
        return version

    def _find(self, model: str, version: int, context: grpc.ServicerContext) -> Any:
        found = self.versions.get((model, version))
        if found is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"model {model!r} has no version {version}")
        return found

    def GetVersion(
        self, request: registry_pb2.GetVersionRequest, context: grpc.ServicerContext
    ) -> registry_pb2.ModelVersion:
        return self._find(request.model, request.version, context)[0]

    def FetchArtifact(
        self, request: registry_pb2.FetchArtifactRequest, context: grpc.ServicerContext
    ) -> Iterator[registry_pb2.ArtifactChunk]:
        version, data = self._find(request.model, request.version, context)
        sent = bytes([data[0] ^ 0xFF]) + data[1:] if self.corrupt else data
        for offset in range(0, len(sent), CHUNK):
            chunk = registry_pb2.ArtifactChunk(data=sent[offset : offset + CHUNK])
            if offset == 0:
                chunk.sha256, chunk.size_bytes = version.sha256, version.size_bytes
            yield chunk

    def PushVersion(
        self,
        request_iterator: Iterator[registry_pb2.PushVersionRequest],
        context: grpc.ServicerContext,
    ) -> registry_pb2.ModelVersion:
        header = next(request_iterator).header
        data = b"".join(r.chunk for r in request_iterator)
        self.pushed.append((header, data))
        version = 1 + max((v for m, v in self.versions if m == header.model), default=0)
        stored = registry_pb2.ModelVersion(
            model=header.model,
            version=version,
            sha256=hashlib.sha256(data).hexdigest(),
            size_bytes=len(data),
            description=header.description,
            parent_version=header.parent_version,
            labels=list(header.labels),
            config=header.config,
        )
        self.versions[(header.model, version)] = (stored, data)
        return stored


def _spec(name: str, datatype: str, shape: tuple[int, ...]) -> common_pb2.TensorSpec:
    return common_pb2.TensorSpec(name=name, datatype=datatype, shape=list(shape))


# Every field away from its default, so a field the push dropped would show.
CONFIG = registry_pb2.ServingConfig(
    max_batch_size=64,
    max_queue_delay_us=500,
    preferred_batch_sizes=[8, 32],
    max_queue_size=32,
    instance_count=2,
    warmup_iterations=5,
    execution_provider="cpu",
    intra_op_threads=1,
)


@pytest.fixture
def fake(demo_dir: Path) -> Iterator[tuple[FakeRegistry, str]]:
    """A fake registry on port 0 holding tabular v1; a sync server, so sync tests can call
    the CLI (which runs its own event loop) and async tests can use grpc.aio against it."""
    # The RPCs optimize never calls stay the generated UNIMPLEMENTED ones, hence "abstract".
    registry = FakeRegistry()  # type: ignore[abstract]
    registry.add(demo_dir / "tabular.onnx", "tabular", CONFIG)
    server = grpc.server(ThreadPoolExecutor(4))
    registry_pb2_grpc.add_RegistryServicer_to_server(registry, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield registry, f"127.0.0.1:{port}"
    server.stop(grace=None)


async def _optimize(address: str, **kwargs: Any) -> Any:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        # force: the tiny demo model quantised is not smaller or faster (see the refusal test)
        kwargs.setdefault("force", True)
        return await optimize_int8(stub, "tabular", 1, latency_runs=RUNS, **kwargs)


async def test_int8_version_is_pushed_as_child_of_its_parent(
    fake: tuple[FakeRegistry, str],
) -> None:
    registry, address = fake
    report = await _optimize(address)

    [(header, data)] = registry.pushed
    assert header.model == "tabular" and header.parent_version == 1
    assert header.description == "int8 dynamic quantisation of v1"
    assert header.config == CONFIG, "the serving config travels unchanged"
    assert list(header.labels) == [], "no label unless asked: nothing starts serving it"
    assert report.version == 2 and report.parent_version == 1
    assert report.sha256 == hashlib.sha256(data).hexdigest()
    ops = {n.op_type for n in onnx.load_model_from_string(data).graph.node}
    assert "MatMulInteger" in ops and "Gemm" not in ops, ops
    assert report.quantized_weights == 3, "tabular has three Gemm weights"
    assert report.int8_bytes == len(data) < report.parent_bytes
    assert [lat.batch for lat in report.measurement.latency] == [1, 64]
    assert all(lat.parent_p50_ms > 0 and lat.int8_p50_ms > 0 for lat in report.measurement.latency)
    assert set(report.measurement.max_abs_by_batch) == {1, 64}, "both ends of served batches"
    assert 0 < report.mean_abs_diff <= report.max_abs_diff < 0.05


async def test_reported_difference_is_what_the_pushed_bytes_give(
    fake: tuple[FakeRegistry, str],
) -> None:
    """Recompute the largest difference independently from the bytes that were pushed."""
    registry, address = fake
    report = await _optimize(address, sample_rows=128, seed=7)
    parent, _ = registry.versions[("tabular", 1)]
    x = sample_inputs(parent.inputs, 128, 7)["INPUT0"]
    fp32 = ort.InferenceSession(registry.versions[("tabular", 1)][1])
    int8 = ort.InferenceSession(registry.pushed[0][1])
    worst = 0.0
    for size in (1, 64):
        for start in range(0, 128, size):
            feed = {"INPUT0": x[start : start + size]}
            d = np.abs(int8.run(None, feed)[0] - fp32.run(None, feed)[0])
            worst = max(worst, float(d.max()))
    assert report.max_abs_diff == pytest.approx(worst, rel=1e-5, abs=1e-7)


async def test_labels_are_applied_only_when_given(fake: tuple[FakeRegistry, str]) -> None:
    registry, address = fake
    report = await _optimize(address, labels=["canary"], per_channel=True)
    assert list(registry.pushed[0][0].labels) == ["canary"]
    assert report.labels == ("canary",) and report.per_channel


async def test_artifact_that_fails_its_sha256_is_refused_and_nothing_pushed(
    fake: tuple[FakeRegistry, str],
) -> None:
    registry, address = fake
    registry.corrupt = True
    with pytest.raises(FailedPreconditionError, match="sha256"):
        await _optimize(address)
    assert registry.pushed == []


async def test_version_zero_is_refused_rather_than_resolved(
    fake: tuple[FakeRegistry, str],
) -> None:
    _, address = fake
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(InvalidArgumentError, match="version number"):
            await optimize_int8(registry_pb2_grpc.RegistryStub(channel), "tabular", 0)


def test_cli_prints_json_report(
    fake: tuple[FakeRegistry, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, address = fake
    argv = ["models", "--registry", address, "optimize", "tabular", "--version", "1", "--int8"]
    argv.append("--force")
    assert main([*argv, "--json", "--latency-runs", str(RUNS), "--label", "staging"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["version"] == 2 and report["parent_version"] == 1
    assert report["labels"] == ["staging"]
    assert report["max_abs_diff"] == max(o["max_abs"] for o in report["measurement"]["outputs"])


def test_cli_prints_table(
    fake: tuple[FakeRegistry, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, address = fake
    argv = ["models", "--registry", address, "optimize", "tabular", "--version", "1", "--int8"]
    assert main([*argv, "--force", "--latency-runs", str(RUNS)]) == 0
    out = capsys.readouterr().out
    assert "tabular v1 -> v2" in out and "p50 batch 64" in out and "largest difference" in out


def test_a_bigger_or_slower_child_is_not_pushed_without_force(
    fake: tuple[FakeRegistry, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    registry, address = fake
    # One 2x2 MatMul weight (16 bytes): its INT8 form adds scales, zero points and
    # DynamicQuantizeLinear nodes, so the child is always larger than the parent.
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.eye(2, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [weight],
    )
    tiny = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    tiny.ir_version = 8
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny, path)
    registry.add(path, "tiny", CONFIG)
    argv = ["models", "--registry", address, "optimize", "tiny", "--version", "1", "--int8"]
    assert main([*argv, "--latency-runs", str(RUNS)]) == 1
    err = capsys.readouterr().err
    assert "FAILED_PRECONDITION" in err and "larger" in err and "--force" in err, err
    assert registry.pushed == []
    assert main([*argv, "--latency-runs", str(RUNS), "--force"]) == 0
    assert len(registry.pushed) == 1


def test_regressions_name_size_and_latency() -> None:
    from modelserve.cli.optimize import Latency, Measurement, regressions

    def measured(parent_ms: float, int8_ms: float) -> Measurement:
        return Measurement((Latency(64, parent_ms, int8_ms, 10),), (), {}, ())

    assert regressions(100, 50, measured(1.0, 0.5)) == []
    assert regressions(100, 50, measured(1.0, 1.04)) == []  # within noise
    worse = regressions(100, 197, measured(1.0, 1.53))
    assert worse[0] == "97% larger" and worse[1].startswith("53% slower at batch 64")


@pytest.mark.parametrize(("name", "version"), [("nosuch", 1), ("tabular", 9)])
def test_cli_unknown_model_or_version_fails_clearly(
    fake: tuple[FakeRegistry, str], capsys: pytest.CaptureFixture[str], name: str, version: int
) -> None:
    registry, address = fake
    argv = ["models", "--registry", address, "optimize", name, "--version", str(version)]
    assert main([*argv, "--int8"]) == 1
    err = capsys.readouterr().err
    assert "NOT_FOUND" in err and name in err and str(version) in err
    assert registry.pushed == []


def test_samples_are_seeded_and_shaped_from_the_signature() -> None:
    batch = [_spec("x", "FP32", (-1, 3, -1)), _spec("ids", "INT64", (-1, 2))]
    a, b = sample_inputs(batch, 16, 5), sample_inputs(batch, 16, 5)
    assert a["x"].shape == (16, 3, 1) and a["x"].dtype == np.float32
    assert a["ids"].shape == (16, 2) and a["ids"].dtype == np.int64
    assert all(np.array_equal(a[k], b[k]) for k in a), "same seed, same samples"
    assert not np.array_equal(a["x"], sample_inputs(batch, 16, 6)["x"])
    fixed = sample_inputs([_spec("img", "FP16", (3, 4))], 8, 0)
    assert fixed["img"].shape == (8, 3, 4), "no batch dim: each [i] is one whole input"


def test_model_without_matmul_quantises_nothing_and_strings_are_not_compared(
    demo_dir: Path, tmp_path: Path
) -> None:
    src, dst = demo_dir / "typed_echo.onnx", tmp_path / "int8.onnx"
    assert quantize_int8(src, dst) == 0
    specs = [_spec(s.name, s.datatype, s.shape) for s in inspect_model(src).inputs]
    measured = measure(src, dst, specs, max_batch_size=64, rows=64, latency_runs=RUNS)
    assert measured.not_compared == ("OUT_BYTES",)
    assert measured.outputs and all(o.max_abs == 0 for o in measured.outputs)
