"""``modelserve models optimize``: derive an INT8 version from a registered one and say what it
costs in accuracy and what it buys in size and latency.

The parent artifact is fetched from the registry (sha256 checked), its MatMul/Gemm weights are
quantised to INT8 with ONNX Runtime's dynamic quantisation, parent and child are compared on
seeded sample inputs built from the signature, and the child is pushed as a new version whose
``parent_version`` names the parent. Everything blocking (quantisation, ORT runs, file I/O)
runs in a thread so the caller's event loop stays free.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic

from modelserve.cli.registry_client import push_version
from modelserve.errors import FailedPreconditionError, InvalidArgumentError
from modelserve.proto.modelserve.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from modelserve.tensors import DTYPES

# Gemm is not in ORT's default dynamic op list but its dynamic quantiser handles it (as
# MatMulInteger + scale + bias), and Gemm is what most exported MLPs are made of.
OP_TYPES = ("MatMul", "Gemm")
LATENCY_BATCHES = (1, 64)
_FLOAT_WEIGHTS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


@dataclass(frozen=True)
class Latency:
    """Median in-process ORT latency of one batch size, parent and INT8 timed alternately."""

    batch: int
    parent_p50_ms: float
    int8_p50_ms: float
    runs: int


@dataclass(frozen=True)
class OutputDiff:
    """|int8 - parent| over every sample row, at every compared batch size."""

    name: str
    max_abs: float
    mean_abs: float


@dataclass(frozen=True)
class Measurement:
    latency: tuple[Latency, ...]
    outputs: tuple[OutputDiff, ...]
    # Dynamic quantisation scales activations per batch (min/max of the whole input tensor),
    # so a row's output depends on what it is batched with: the largest diff at each size.
    max_abs_by_batch: dict[int, float]
    not_compared: tuple[str, ...]  # string outputs: no numeric difference to report


@dataclass(frozen=True)
class OptimizeReport:
    model: str
    parent_version: int
    version: int  # the new version the registry assigned
    sha256: str
    labels: tuple[str, ...]
    description: str
    parent_bytes: int
    int8_bytes: int
    quantized_weights: int
    per_channel: bool
    sample_rows: int
    seed: int
    measurement: Measurement

    # Derived, not stored, so the headline figures cannot disagree with the measurement.
    @property
    def max_abs_diff(self) -> float:
        return max((d.max_abs for d in self.measurement.outputs), default=0.0)

    @property
    def mean_abs_diff(self) -> float:
        """The mean of the per-output means: every output weighs the same."""
        diffs = self.measurement.outputs
        return float(np.mean([d.mean_abs for d in diffs])) if diffs else 0.0

    @property
    def notes(self) -> tuple[str, ...]:
        notes = []
        if self.quantized_weights == 0:
            notes.append(f"no {'/'.join(OP_TYPES)} weights to quantise: behaves as the parent")
        if self.measurement.not_compared:
            notes.append(f"string outputs not compared: {', '.join(self.measurement.not_compared)}")
        return tuple(notes)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        by_batch = data["measurement"]["max_abs_by_batch"]
        data["measurement"]["max_abs_by_batch"] = {str(k): v for k, v in by_batch.items()}
        data.update(
            max_abs_diff=self.max_abs_diff, mean_abs_diff=self.mean_abs_diff, notes=self.notes
        )
        return data

    def table(self) -> str:
        lines = [
            f"{self.model} v{self.parent_version} -> v{self.version}: {self.description} "
            f"(sha256={self.sha256[:12]}, labels={list(self.labels)})",
            f"{'':24}{'parent':>12}{'int8':>12}{'change':>10}",
            _row("size (KiB)", self.parent_bytes / 1024, self.int8_bytes / 1024, 1),
        ]
        for lat in self.measurement.latency:
            lines.append(
                _row(f"p50 batch {lat.batch} (ms)", lat.parent_p50_ms, lat.int8_p50_ms, 3)
                + f"   ({lat.runs} runs, 1 thread)"
            )
        sizes = ", ".join(str(b) for b in self.measurement.max_abs_by_batch)
        lines.append(
            f"|int8 - parent| on {self.sample_rows} seeded sample rows (seed {self.seed}), "
            f"batches of {sizes}:"
        )
        for out in self.measurement.outputs:
            lines.append(f"  {out.name:22}max {out.max_abs:.6g}   mean {out.mean_abs:.6g}")
        lines.append(f"largest difference: {self.max_abs_diff:.6g}")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def _row(label: str, parent: float, child: float, digits: int) -> str:
    change = f"{(child / parent - 1) * 100:+.0f}%" if parent > 0 else "-"
    return f"{label:24}{parent:>12.{digits}f}{child:>12.{digits}f}{change:>10}"


async def optimize_int8(
    stub: registry_pb2_grpc.RegistryStub,
    model: str,
    version: int,
    *,
    labels: Sequence[str] = (),
    per_channel: bool = False,
    sample_rows: int = 256,
    seed: int = 0,
    latency_runs: int = 200,
    timeout: float = 120.0,
    force: bool = False,
) -> OptimizeReport:
    """Quantise ``model`` v``version`` to INT8, measure it against its parent, push it; a
    child bigger or slower than its parent is not pushed unless ``force`` (FAILED_PRECONDITION
    with the numbers: quantising a model without big MatMul/Conv weights often makes it so)."""
    if version < 1:
        # 0 would make GetVersion pick the production label or the newest version: say which.
        raise InvalidArgumentError(f"version must be a version number >= 1; got {version}")
    if sample_rows < 1 or latency_runs < 1:
        raise InvalidArgumentError("sample_rows and latency_runs must be >= 1")
    parent = await stub.GetVersion(
        registry_pb2.GetVersionRequest(model=model, version=version), timeout=timeout
    )
    workdir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="modelserve-optimize-"))
    try:
        src, dst = workdir / "parent.onnx", workdir / "int8.onnx"
        await fetch_artifact(stub, parent, src, timeout=timeout)
        quantized = await asyncio.to_thread(quantize_int8, src, dst, per_channel=per_channel)
        measured = await asyncio.to_thread(
            measure,
            src,
            dst,
            parent.inputs,
            max_batch_size=parent.config.max_batch_size,
            rows=sample_rows,
            seed=seed,
            latency_runs=latency_runs,
        )
        worse = regressions(src.stat().st_size, dst.stat().st_size, measured)
        if worse and not force:
            raise FailedPreconditionError(
                f"the INT8 version of {model} v{parent.version} is "
                + " and ".join(worse)
                + " than its parent; not pushed (--force pushes it anyway)"
            )
        description = f"int8 dynamic quantisation of v{parent.version}"
        # The parent's resolved config travels whole; the one loss is that proto3 cannot say
        # "0 explicitly", so a 0 the registry treats as unset (e.g. warmup 0) becomes default.
        pushed = await push_version(
            stub,
            model,
            dst,
            labels=labels,
            config=parent.config,
            description=description,
            parent_version=parent.version,
            timeout=timeout,
        )
        parent_bytes, int8_bytes = src.stat().st_size, dst.stat().st_size
    finally:
        await asyncio.to_thread(shutil.rmtree, workdir, True)
    return OptimizeReport(
        model=pushed.model,
        parent_version=parent.version,
        version=pushed.version,
        sha256=pushed.sha256,
        labels=tuple(pushed.labels),
        description=pushed.description,
        parent_bytes=parent_bytes,
        int8_bytes=int8_bytes,
        quantized_weights=quantized,
        per_channel=per_channel,
        sample_rows=sample_rows,
        seed=seed,
        measurement=measured,
    )


def regressions(parent_bytes: int, int8_bytes: int, measured: Measurement) -> list[str]:
    """How the INT8 child is worse than its parent ([] if it is not): larger on disk, or
    slower by more than 5% (noise of alternating medians) at its largest batch size."""
    out = []
    if int8_bytes > parent_bytes:
        out.append(f"{100 * (int8_bytes / parent_bytes - 1):.0f}% larger")
    if measured.latency:
        top = max(measured.latency, key=lambda lat: lat.batch)
        if top.parent_p50_ms > 0 and top.int8_p50_ms > top.parent_p50_ms * 1.05:
            out.append(
                f"{100 * (top.int8_p50_ms / top.parent_p50_ms - 1):.0f}% slower at batch "
                f"{top.batch} ({top.int8_p50_ms:.3f} vs {top.parent_p50_ms:.3f} ms)"
            )
    return out


async def fetch_artifact(
    stub: registry_pb2_grpc.RegistryStub,
    version: registry_pb2.ModelVersion,
    dest: Path,
    *,
    timeout: float = 120.0,
) -> None:
    """Stream ``version``'s artifact into ``dest``; refuse it unless size and sha256 match."""
    digest = hashlib.sha256()
    size = 0
    stream = stub.FetchArtifact(
        registry_pb2.FetchArtifactRequest(model=version.model, version=version.version),
        timeout=timeout,
    )
    with await asyncio.to_thread(dest.open, "wb") as f:
        async for chunk in stream:
            await asyncio.to_thread(f.write, chunk.data)
            digest.update(chunk.data)
            size += len(chunk.data)
    where = f"artifact of {version.model} v{version.version}"
    if size != version.size_bytes:
        raise FailedPreconditionError(
            f"{where} is {size} bytes; the registry recorded {version.size_bytes}"
        )
    if digest.hexdigest() != version.sha256:
        raise FailedPreconditionError(
            f"{where} has sha256 {digest.hexdigest()}; the registry recorded {version.sha256}"
        )


def quantize_int8(src: Path, dst: Path, *, per_channel: bool = False) -> int:
    """Dynamic INT8 quantisation of ``src``'s MatMul/Gemm weights into ``dst`` (blocking).

    Returns how many weights were quantised (0: the child behaves as the parent).
    No quant_pre_process: on MatMul/Gemm graphs it changed nothing measurable, and its
    symbolic shape inference needs sympy, which we do not ship. reduce_range stays off: it
    only helps pre-VNNI CPUs and nearly doubled the output difference on the demo models.
    """
    logging.getLogger().addFilter(_not_preprocess_advice)  # ORT logs it on the root logger
    try:
        quantize_dynamic(
            src,
            dst,
            op_types_to_quantize=list(OP_TYPES),
            per_channel=per_channel,
            weight_type=QuantType.QInt8,
        )
    finally:
        logging.getLogger().removeFilter(_not_preprocess_advice)
    # A quantised weight is replaced by "<name>_quantized" + scale + zero point, so the float
    # initializers that are gone are the weights quantised; none gone, nothing changed.
    child = {t.name for t in onnx.load(dst).graph.initializer}
    return sum(
        1
        for t in onnx.load(src).graph.initializer
        if t.data_type in _FLOAT_WEIGHTS and t.name not in child
    )


def _not_preprocess_advice(record: logging.LogRecord) -> bool:
    """ORT advises quant_pre_process on every call; we decided against it (see above)."""
    return "pre-processing before quantization" not in record.getMessage()


def sample_inputs(
    specs: Sequence[common_pb2.TensorSpec], rows: int, seed: int
) -> dict[str, np.ndarray]:
    """``rows`` seeded samples per input, stacked on a leading axis of length ``rows``.

    For a batchable model that axis is the batch dimension; otherwise each ``[i]`` is one
    whole input of the fixed shape. Other variable dimensions are taken as 1. Floats are
    standard normal, integers uniform in [0, 10) (safe as indices into small tables).
    """
    rng = np.random.default_rng(seed)
    batch = batchable(specs)
    samples: dict[str, np.ndarray] = {}
    for spec in specs:
        dims = spec.shape[1:] if batch else spec.shape
        shape = (rows, *[1 if d < 0 else d for d in dims])
        samples[spec.name] = _draw(rng, spec.datatype, shape)
    return samples


def batchable(specs: Sequence[common_pb2.TensorSpec]) -> bool:
    """The registry's rule: every input has a variable first dimension."""
    return bool(specs) and all(len(s.shape) > 0 and s.shape[0] == -1 for s in specs)


def _draw(rng: np.random.Generator, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    known = DTYPES.get(datatype)
    dtype = known.numpy if known else None
    if dtype is None:
        raise FailedPreconditionError(
            f"cannot build sample inputs of datatype {datatype}: numpy has no such type"
        )
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if datatype == "BOOL":
        return rng.random(shape) < 0.5
    if datatype == "BYTES":
        return rng.integers(0, 10, shape).astype(str).astype(object)
    return rng.integers(0, 10, shape).astype(dtype)


def _session(path: Path) -> ort.InferenceSession:
    # One thread each: parent and child then compete for nothing, and the comparison is of
    # the kernels rather than of how two thread pools share the machine.
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure(
    parent: Path,
    child: Path,
    inputs: Sequence[common_pb2.TensorSpec],
    *,
    max_batch_size: int,
    rows: int = 256,
    seed: int = 0,
    latency_runs: int = 200,
    budget_s: float = 5.0,
) -> Measurement:
    """Compare ``child`` with ``parent`` on seeded samples and time both (blocking)."""
    a, b = _session(parent), _session(child)
    samples = sample_inputs(inputs, rows, seed)
    can_batch = batchable(inputs)
    # Served batches range from 1 to the config's max_batch_size: compare at both ends.
    compare_at = sorted({1, max_batch_size}) if can_batch and max_batch_size > 0 else [1]
    names = [o.name for o in a.get_outputs()]
    diffs: dict[str, list[np.ndarray]] = {n: [] for n in names}
    skipped: set[str] = set()
    by_batch: dict[int, float] = {}
    for size in compare_at:
        worst = 0.0
        for feed in _chunks(samples, rows, size, can_batch):
            for name, x, y in zip(names, a.run(None, feed), b.run(None, feed), strict=True):
                x, y = np.asarray(x), np.asarray(y)
                if x.dtype == object:
                    skipped.add(name)
                    continue
                d = np.abs(y.astype(np.float64) - x.astype(np.float64)).ravel()
                diffs[name].append(d)
                worst = max(worst, float(d.max(initial=0.0)))
        by_batch[size] = worst
    outputs = tuple(
        OutputDiff(n, float(np.concatenate(d).max(initial=0)), float(np.concatenate(d).mean()))
        for n, d in diffs.items()
        if d and n not in skipped
    )
    latency = tuple(
        _time_pair(
            a, b, next(_chunks(samples, rows, size, can_batch)), size, latency_runs, budget_s
        )
        for size in (LATENCY_BATCHES if can_batch else (1,))
        if size <= rows
    )
    return Measurement(latency, outputs, by_batch, tuple(sorted(skipped)))


def _chunks(
    samples: Mapping[str, np.ndarray], rows: int, size: int, can_batch: bool
) -> Iterator[dict[str, np.ndarray]]:
    for start in range(0, rows, size):
        if can_batch:
            yield {k: v[start : start + size] for k, v in samples.items()}
        else:
            yield {k: v[start] for k, v in samples.items()}


def _time_pair(
    a: ort.InferenceSession,
    b: ort.InferenceSession,
    feed: dict[str, np.ndarray],
    batch: int,
    runs: int,
    budget_s: float,
) -> Latency:
    for _ in range(5):  # first runs allocate arenas and pick kernels
        a.run(None, feed)
        b.run(None, feed)
    # Alternate the two so a noisy neighbour slows both alike; the time budget keeps a slow
    # model from running for minutes, but never below 10 pairs.
    times_a: list[float] = []
    times_b: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times_a) < runs and (len(times_a) < 10 or time.perf_counter() < deadline):
        for session, times in ((a, times_a), (b, times_b)):
            start = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - start)
    return Latency(
        batch=batch,
        parent_p50_ms=float(np.median(times_a)) * 1e3,
        int8_p50_ms=float(np.median(times_b)) * 1e3,
        runs=len(times_a),
    )
