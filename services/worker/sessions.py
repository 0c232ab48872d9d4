"""ONNX Runtime sessions for one model version: provider choice, an instance pool, warmup.

A ``ModelSession`` owns ``instance_count`` ORT sessions and a thread pool of the same size.
A run first takes an instance from a free list on the event loop, so a request waiting for a
free instance never occupies a thread and can be cancelled cheaply, and no session ever runs
two requests at once (its intra-op threads are sized for one).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from modelserve.errors import FailedPreconditionError, InvalidArgumentError, UnavailableError
from modelserve.tensors import DTYPE_BY_ONNX, DTYPES, TensorSpec

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
EXECUTION_PROVIDERS = ("auto", "cpu", "cuda")
MAX_INSTANCES = 32
MAX_WARMUP_ITERATIONS = 1000
MAX_WARMUP_BATCH = 64  # RELIABILITY.md: max batch <= 64

# Every exception class ONNX Runtime's bindings raise (Fail, InvalidArgument, ...).
ORT_ERRORS: tuple[type[Exception], ...] = tuple(
    v for v in vars(ort_state).values() if isinstance(v, type) and issubclass(v, Exception)
)
_WARMUP_ERRORS: tuple[type[Exception], ...] = (InvalidArgumentError, *ORT_ERRORS)
_LOAD_ERRORS: tuple[type[Exception], ...] = (*ORT_ERRORS, RuntimeError, ValueError, OSError)
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : [A-Z_]+ : ")
_PATH = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?[\\/][^\s'\"()\[\],]*")
_MESSAGE_LIMIT = 300


@dataclass
class _Instance:
    session: ort.InferenceSession
    # Per instance so close(terminate=True) can stop exactly the runs in flight.
    run_options: ort.RunOptions


@dataclass(frozen=True)
class _Options:
    label: str
    requested: str  # "auto", "cpu" or "cuda"
    intra_op_threads: int
    inter_op_threads: int
    cuda_options: dict[str, str]
    allow_spinning: bool = False


class ModelSession:
    """The ORT sessions of one model version, run from asyncio without blocking the loop."""

    def __init__(
        self,
        instances: list[_Instance],
        *,
        label: str,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        execution_provider: str,
        load_ms: float,
    ) -> None:
        """Use ``ModelSession.load``; this only assembles already-built parts."""
        self.label = label
        self.inputs: tuple[TensorSpec, ...] = tuple(inputs)
        self.outputs: tuple[TensorSpec, ...] = tuple(outputs)
        self.execution_provider = execution_provider
        self.instance_count = len(instances)
        self.load_ms = load_ms
        self.cold_start_ms = load_ms
        self._output_names = tuple(o.name for o in self.outputs)
        self._instances = instances
        self._free: asyncio.Queue[_Instance | None] = asyncio.Queue()
        for instance in instances:
            self._free.put_nowait(instance)
        self._executor = ThreadPoolExecutor(len(instances), thread_name_prefix=f"ort-{label}")
        self._closed = False
        self.io_binding = False
        self.inline = False
        self.max_waiting = 64  # requests waiting for a free instance (the version's queue size)
        self._waiting = 0
        self._device: tuple[str, int] = ("cpu", 0)
        self._stats_lock = threading.Lock()
        self._busy = 0
        self._peak_busy = 0

    @classmethod
    async def load(
        cls,
        path: Path,
        *,
        model: str,
        version: int,
        inputs: Sequence[TensorSpec] = (),
        outputs: Sequence[TensorSpec] = (),
        execution_provider: str = "auto",
        instance_count: int = 1,
        intra_op_threads: int = 0,
        inter_op_threads: int = 1,
        gpu_mem_limit: int = 0,
        gpu_device_id: int = 0,
        io_binding: str = "auto",
        allow_spinning: bool = False,
    ) -> ModelSession:
        """Create ``instance_count`` sessions for the ONNX file at ``path``.

        ``inputs``/``outputs`` are the registry's signature (empty: read from the file).
        ``gpu_mem_limit`` is this version's CUDA arena budget in bytes for all its instances
        together (0 = unlimited). Raises FailedPreconditionError when the file does not load
        or "cuda" cannot be had; InvalidArgumentError for out-of-range settings.
        """
        label = f"{model} v{version}"
        options = _options(
            label, execution_provider, instance_count, intra_op_threads, inter_op_threads
        )
        options.cuda_options.update(_cuda_options(gpu_mem_limit, instance_count, gpu_device_id))
        options = dataclasses.replace(options, allow_spinning=allow_spinning)
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        # Reading, checking and optimising the graph take seconds for large models.
        data = await loop.run_in_executor(None, _read_model, path, label)
        first, providers, why = await loop.run_in_executor(None, _create_first, data, options)
        more = [
            loop.run_in_executor(None, _create, data, options, providers)
            for _ in range(instance_count - 1)
        ]
        sessions = [first, *await asyncio.gather(*more)]
        # The sha256 already ties the file to the signature the registry read from it.
        in_specs = inputs or _signature(first.get_inputs(), "input", label)
        out_specs = outputs or _signature(first.get_outputs(), "output", label)
        load_ms = (time.perf_counter() - started) * 1e3
        provider = first.get_providers()[0]
        log.info(
            "%s runs on %s (%s); %d instance(s), intra_op_threads=%d, loaded in %.0f ms",
            label,
            provider,
            why,
            instance_count,
            options.intra_op_threads,
            load_ms,
        )
        instances = [_Instance(s, ort.RunOptions()) for s in sessions]
        session = cls(
            instances,
            label=label,
            inputs=in_specs,
            outputs=out_specs,
            execution_provider=provider,
            load_ms=load_ms,
        )
        session.configure_io_binding(io_binding, gpu_device_id)
        return session

    def configure_io_binding(self, mode: str, device_id: int = 0) -> None:
        """ "auto": bind on CUDA (one host->device copy per input, outputs allocated on the
        device and copied back once, instead of ORT staging every tensor); "on"/"off" force it.
        String tensors cannot live on a GPU, so a model with BYTES inputs never binds."""
        if mode not in ("auto", "on", "off"):
            raise InvalidArgumentError(f"io_binding must be auto, on or off; got {mode!r}")
        on_cuda = self.execution_provider == "CUDAExecutionProvider"
        wanted = mode == "on" or (mode == "auto" and on_cuda)
        has_text = any(s.datatype == "BYTES" for s in (*self.inputs, *self.outputs))
        self.io_binding = wanted and not has_text
        self._device = ("cuda", device_id) if on_cuda else ("cpu", 0)

    @property
    def busy_instances(self) -> int:
        """Instances running a request right now (counted inside the executor threads)."""
        return self._busy

    @property
    def peak_busy_instances(self) -> int:
        """The most instances ever running at the same time."""
        return self._peak_busy

    async def run(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run one (batched) request on a free instance; returns the requested outputs.

        Raises InvalidArgumentError for an unknown output name or for input problems ONNX
        Runtime reports (wrong dtype, rank, dims, missing inputs), UnavailableError when the
        version is closed. Anything else propagates.
        """
        names = self._resolve_outputs(output_names)
        if self.inline and not self._closed and not self._free.empty():
            return self._run_inline(dict(inputs), names)
        if self._free.empty() and self._waiting >= self.max_waiting:
            # Bounded like the batcher's queue (models without a batch dimension bypass it).
            raise UnavailableError(
                f"{self.label} queue full ({self._waiting} waiting, limit {self.max_waiting}); "
                "retry on another replica"
            )
        self._waiting += 1
        try:
            instance = await self._acquire()
        finally:
            self._waiting -= 1
        loop = asyncio.get_running_loop()
        try:
            future = self._executor.submit(self._run_sync, instance, dict(inputs), names)
        except RuntimeError:  # the executor was shut down by close() in between
            raise UnavailableError(f"{self.label} is not loaded on this worker") from None
        # Released when the thread is done, not when the awaiting task is: a cancelled caller
        # must not hand out a session that is still running.
        future.add_done_callback(lambda _: _call_soon(loop, self._release, instance))
        try:
            values = await asyncio.wrap_future(future)
        except ORT_ERRORS as exc:
            raise self._run_error(exc) from exc
        except ValueError as exc:  # ORT's Python layer: "Required inputs ... are missing"
            raise InvalidArgumentError(f"{self.label}: {ort_message(exc)}") from exc
        return dict(zip(names, values, strict=True))

    def _run_inline(self, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        """Run on the event loop thread. Only for versions whose largest warm batch measured
        under ``inline_max_us``: there the executor hand-off (two thread wake-ups, ~100+ us on
        a busy 2-core box) costs more than the model, and blocking the loop for a few
        microseconds is cheaper than the switch. Everything slower stays off the loop."""
        instance = self._free.get_nowait()
        if instance is None:  # closed in between: keep the sentinel for other waiters
            self._free.put_nowait(None)
            raise UnavailableError(f"{self.label} is not loaded on this worker")
        try:
            values = self._run_sync(instance, feeds, names)
        except ORT_ERRORS as exc:
            raise self._run_error(exc) from exc
        except ValueError as exc:
            raise InvalidArgumentError(f"{self.label}: {ort_message(exc)}") from exc
        finally:
            self._release(instance)
        return dict(zip(names, values, strict=True))

    async def measure_inline(self, batch_size: int, threshold_us: float) -> float:
        """Time the model at ``batch_size`` (median of 7, in the executor) and run it inline
        from now on when that is at most ``threshold_us``; returns the median in us."""
        if threshold_us <= 0 or self._closed:
            return 0.0
        feeds = dummy_inputs(self.inputs, batch_size, self.label)
        names = list(self._output_names)
        instance = await self._acquire()

        def timed() -> float:
            samples = []
            for _ in range(7):
                start = time.perf_counter()
                self._run_sync(instance, feeds, names)
                samples.append(time.perf_counter() - start)
            return sorted(samples)[3] * 1e6

        try:
            median_us = await asyncio.get_running_loop().run_in_executor(self._executor, timed)
        finally:
            self._release(instance)
        self.inline = median_us <= threshold_us
        return median_us

    async def warmup(self, iterations: int, batch_sizes: Sequence[int] = (1,)) -> float:
        """Run dummy inputs ``iterations`` times per batch size on every instance.

        Inputs are zeros (b"" for BYTES) shaped from the signature: a -1 first dimension takes
        the batch size, any other -1 becomes 1. Returns ``cold_start_ms`` (session creation
        plus all warmup so far). A failing warmup is a failed load: FailedPreconditionError.
        """
        _check_range("warmup iterations", iterations, 0, MAX_WARMUP_ITERATIONS)
        for size in batch_sizes:
            _check_range("warmup batch size", size, 1, MAX_WARMUP_BATCH)
        started = time.perf_counter()
        for size in batch_sizes:
            feeds = dummy_inputs(self.inputs, size, self.label)
            for _ in range(iterations):
                # One request per instance at once: each takes a different free instance.
                runs = [self.run(feeds) for _ in range(self.instance_count)]
                try:
                    await asyncio.gather(*runs)
                except _WARMUP_ERRORS as exc:
                    raise FailedPreconditionError(
                        f"warmup of {self.label} failed at batch size {size}: {ort_message(exc)}"
                    ) from exc
        self.cold_start_ms += (time.perf_counter() - started) * 1e3
        return self.cold_start_ms

    def close(self, terminate: bool = False) -> None:
        """Stop taking requests and release the sessions and threads.

        Runs in flight finish normally (each holds its own reference to its session) unless
        ``terminate`` is set, which aborts them; their callers then get UnavailableError.
        """
        if self._closed:
            return
        self._closed = True
        if terminate:
            for instance in self._instances:
                instance.run_options.terminate = True
        self._instances = []
        while not self._free.empty():  # drop the idle sessions now; busy ones go when done
            self._free.get_nowait()
        # Wakes the requests waiting for an instance: each one passes the marker on.
        self._free.put_nowait(None)
        # Not cancel_futures: a caller whose run was submitted must get its answer (or
        # UnavailableError after terminate), never a CancelledError it did not ask for.
        self._executor.shutdown(wait=False)

    def _resolve_outputs(self, output_names: Sequence[str] | None) -> list[str]:
        if not output_names:
            return list(self._output_names)
        names = list(output_names)
        unknown = [n for n in names if n not in self._output_names]
        if unknown:
            raise InvalidArgumentError(
                f"{self.label} has no output {unknown[0][:128]!r}; "
                f"its outputs are {', '.join(self._output_names)}"
            )
        if len(set(names)) != len(names):
            raise InvalidArgumentError(f"{self.label}: an output is requested more than once")
        return names

    async def _acquire(self) -> _Instance:
        instance = None if self._closed else await self._free.get()
        if instance is None or self._closed:
            self._free.put_nowait(None)
            raise UnavailableError(f"{self.label} is not loaded on this worker")
        return instance

    def _release(self, instance: _Instance) -> None:
        if not self._closed:
            self._free.put_nowait(instance)

    def _run_bound(
        self, instance: _Instance, feeds: dict[str, np.ndarray], names: list[str]
    ) -> list[np.ndarray]:
        binding = instance.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        device, device_id = self._device
        for name in names:
            binding.bind_output(name, device, device_id)
        instance.session.run_with_iobinding(binding, instance.run_options)
        values: list[np.ndarray] = binding.copy_outputs_to_cpu()
        return values

    def _run_sync(
        self, instance: _Instance, feeds: dict[str, np.ndarray], names: list[str]
    ) -> list[np.ndarray]:
        # BYTES conversions are per element, so they run here rather than on the loop.
        feeds = {name: _text_for_ort(value, name, self.label) for name, value in feeds.items()}
        with self._stats_lock:
            self._busy += 1
            self._peak_busy = max(self._peak_busy, self._busy)
        try:
            if self.io_binding:
                values = self._run_bound(instance, feeds, names)
            else:
                values = instance.session.run(names, feeds, instance.run_options)
        finally:
            with self._stats_lock:
                self._busy -= 1
        return [_bytes_from_ort(value) for value in values]

    def _run_error(self, exc: Exception) -> Exception:
        if self._closed:
            return UnavailableError(f"{self.label} was unloaded while the request ran")
        if isinstance(exc, ort_state.InvalidArgument):
            return InvalidArgumentError(f"{self.label}: {ort_message(exc)}")
        return exc


def dummy_inputs(specs: Sequence[TensorSpec], batch_size: int, label: str) -> dict[str, np.ndarray]:
    """Zero-valued inputs for ``specs``: a -1 first dim -> ``batch_size``, other -1 dims -> 1."""
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = tuple(
            (batch_size if i == 0 else 1) if d < 0 else d for i, d in enumerate(spec.shape)
        )
        dtype = DTYPES[spec.datatype].numpy
        if dtype is None:
            raise FailedPreconditionError(
                f"{label} input {spec.name!r} is {spec.datatype}, which this worker cannot feed"
            )
        if spec.datatype == "BYTES":
            feeds[spec.name] = np.full(shape, b"", dtype=object)
        else:
            feeds[spec.name] = np.zeros(shape, dtype=dtype)
    return feeds


def _text_for_ort(value: np.ndarray, name: str, label: str) -> np.ndarray:
    """BYTES elements as str: ORT's Python binding turns a bytes object into "b'...'" text."""
    if value.dtype.kind not in "OS":
        return value
    try:
        items = [v.decode() if isinstance(v, bytes) else v for v in value.flat]
    except UnicodeDecodeError:
        raise InvalidArgumentError(
            f"{label}: BYTES input {name!r} holds an element that is not UTF-8; "
            "ONNX Runtime string tensors carry UTF-8 text only"
        ) from None
    text = np.empty(value.shape, dtype=object)
    text.flat[:] = items
    return text


def _bytes_from_ort(value: np.ndarray) -> np.ndarray:
    """ORT answers string tensors as str; BYTES outputs are bytes, like the inputs."""
    if value.dtype != object:
        return value
    raw = np.empty(value.shape, dtype=object)
    raw.flat[:] = [v.encode() if isinstance(v, str) else v for v in value.flat]
    return raw


def ort_message(exc: BaseException) -> str:
    """ORT's message on one bounded line, without its error-code prefix or any file path."""
    text = _ORT_PREFIX.sub("", str(exc).strip())
    text = _PATH.sub("<path>", " ".join(text.split()))
    return text if len(text) <= _MESSAGE_LIMIT else text[:_MESSAGE_LIMIT] + "..."


def _options(label: str, requested: str, instances: int, intra: int, inter: int) -> _Options:
    _check_range("instance_count", instances, 1, MAX_INSTANCES)
    _check_range("intra_op_threads", intra, 0, 1024)
    _check_range("inter_op_threads", inter, 1, 1024)
    if requested not in EXECUTION_PROVIDERS:
        raise InvalidArgumentError(
            f"execution_provider for {label} must be one of {', '.join(EXECUTION_PROVIDERS)};"
            f" got {requested[:32]!r}"
        )
    # Cores this process may use (cgroup/taskset aware), shared so C x threads <= cores.
    intra = intra or max(1, len(os.sched_getaffinity(0)) // instances)
    return _Options(label, requested, intra, inter, {})


def _cuda_options(gpu_mem_limit: int, instances: int, device_id: int) -> dict[str, str]:
    _check_range("gpu_mem_limit", gpu_mem_limit, 0, 1 << 50)
    options = {"device_id": str(device_id)}
    if gpu_mem_limit:
        # The arena limit is per session, the budget for the version's instances together;
        # kSameAsRequested keeps an arena from doubling past its limit in one step.
        options["gpu_mem_limit"] = str(gpu_mem_limit // instances)
        options["arena_extend_strategy"] = "kSameAsRequested"
    return options


def _check_range(what: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise InvalidArgumentError(f"{what} must be between {low} and {high}; got {value}")


def _create_first(data: bytes, options: _Options) -> tuple[ort.InferenceSession, list[Any], str]:
    """Create the first session, deciding the provider; returns (session, providers, why)."""
    cpu_only: list[Any] = [CPU]
    if options.requested == "cpu":
        return _create(data, options, cpu_only), cpu_only, "execution_provider is cpu"
    if CUDA not in ort.get_available_providers():
        why = "CUDA is not in this ONNX Runtime build"
    else:
        cuda: list[Any] = [(CUDA, options.cuda_options), CPU]
        try:
            session = _create(data, options, cuda)
        except FailedPreconditionError as exc:
            why = f"CUDA failed to start: {exc.message}"
        else:
            # onnxruntime-gpu falls back to CPU silently when CUDA/cuDNN do not load.
            if session.get_providers()[0] == CUDA:
                return session, cuda, f"execution_provider is {options.requested}, CUDA loaded"
            why = "CUDA did not load (check the GPU driver and the CUDA/cuDNN libraries)"
    if options.requested == "cuda":
        raise FailedPreconditionError(
            f"{options.label} asks for execution_provider cuda but {why}; "
            "use auto or cpu, or run the worker's GPU image on a GPU host"
        )
    return _create(data, options, cpu_only), cpu_only, f"execution_provider is auto and {why}"


def _create(data: bytes, options: _Options, providers: list[Any]) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only: ORT's warnings are graph-optimiser chatter
    # Spinning intra-op threads burn the cores the other services of this box need (measured
    # for `wide` at batch 1 with idle gaps: spinning halves latency, 0.47 vs 0.90 ms, at three
    # times the CPU per run, 3.1 vs 1.1 ms), so it is off unless the worker owns its host.
    so.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if options.allow_spinning else "0"
    )
    try:
        # From bytes: with no model directory, no tensor location can resolve to a file.
        return ort.InferenceSession(data, sess_options=so, providers=providers)
    except _LOAD_ERRORS as exc:
        raise FailedPreconditionError(
            f"ONNX Runtime could not load {options.label}: {ort_message(exc)}"
        ) from exc


def _read_model(path: Path, label: str) -> bytes:
    """The file's bytes, refusing external data (RELIABILITY.md rule 7) before ORT sees it."""
    data = path.read_bytes()
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise FailedPreconditionError(f"{label} is not a readable ONNX model") from exc
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in _all_tensors(model)):
        raise FailedPreconditionError(
            f"{label} stores tensors as external data, which this worker refuses; "
            "push a self-contained model (onnx.save with save_as_external_data=False)"
        )
    return data


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Initializers and attribute tensors of every graph, subgraph and local function."""
    graphs = [model.graph]
    nodes = [n for f in model.functions for n in f.node]
    while graphs or nodes:
        if graphs:
            graph = graphs.pop()
            yield from graph.initializer
            for sparse in graph.sparse_initializer:
                yield from (sparse.values, sparse.indices)
            nodes.extend(graph.node)
            continue
        for attr in nodes.pop().attribute:
            yield from (attr.t, *attr.tensors)
            for sparse in (attr.sparse_tensor, *attr.sparse_tensors):
                yield from (sparse.values, sparse.indices)
            graphs.extend(attr.graphs)
            if attr.HasField("g"):
                graphs.append(attr.g)


def _signature(args: Sequence[Any], kind: str, label: str) -> list[TensorSpec]:
    """The file's own tensors as specs (-1 for every symbolic or unknown dimension)."""
    specs = []
    for arg in args:
        dtype = DTYPE_BY_ONNX.get(arg.type)
        if dtype is None:
            raise FailedPreconditionError(
                f"{label} {kind} {arg.name!r} has type {arg.type}, which this worker cannot serve"
            )
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
        specs.append(TensorSpec(arg.name, dtype.v2, shape))
    return specs


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Any, *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop is closed (process exit): nothing left to hand back to
        pass
