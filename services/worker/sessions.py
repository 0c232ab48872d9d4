"""ONNX Runtime sessions for one model version: an instance pool, runs, warmup.

Provider choice and session creation are in ``worker.providers``, reading the file in
``worker.model_file``, value conversions in ``worker.ort_values``.

A ``ModelSession`` owns ``instance_count`` ORT sessions and a thread pool of the same size.
A run first takes an instance from a free list on the event loop, so a request waiting for a
free instance never occupies a thread and can be cancelled cheaply, and no session ever runs
two requests at once (its intra-op threads are sized for one).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from modelserve.errors import FailedPreconditionError, InvalidArgumentError, UnavailableError
from modelserve.tensors import TensorSpec
from worker.metrics import STOPPED_RUNS
from worker.model_file import file_signature, read_model
from worker.ort_values import bytes_from_ort, dummy_inputs, text_for_ort
from worker.providers import (
    ORT_ERRORS,
    check_range,
    create,
    create_first,
    cuda_options,
    ort_message,
    session_options,
)

log = logging.getLogger(__name__)

MAX_WARMUP_ITERATIONS = 1000
MAX_WARMUP_BATCH = 64  # RELIABILITY.md: max batch <= 64

_WARMUP_ERRORS: tuple[type[Exception], ...] = (InvalidArgumentError, *ORT_ERRORS)


@dataclass
class _Instance:
    session: ort.InferenceSession
    # Per instance so close(terminate=True) can stop exactly the runs in flight.
    run_options: ort.RunOptions
    # Completed ONNX Runtime runs by rows (the first input's leading dimension): what
    # warmup did before READY, observable without wrapping ORT (tests/worker/test_worker_warmup).
    runs: Counter[int] = field(default_factory=Counter)


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
        self._run_counts = [i.runs for i in instances]  # kept past close(), for reading
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
        self.metric_labels = ("", "")
        self.stopped_runs = 0  # runs ONNX Runtime abandoned because their callers had gone

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
        options = session_options(
            label, execution_provider, instance_count, intra_op_threads, inter_op_threads
        )
        options.cuda_options.update(cuda_options(gpu_mem_limit, instance_count, gpu_device_id))
        options = dataclasses.replace(options, allow_spinning=allow_spinning)
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        # Reading, checking and optimising the graph take seconds for large models.
        data = await loop.run_in_executor(None, read_model, path, label)
        first, providers, why = await loop.run_in_executor(None, create_first, data, options)
        more = [
            loop.run_in_executor(None, create, data, options, providers)
            for _ in range(instance_count - 1)
        ]
        sessions = [first, *await asyncio.gather(*more)]
        # The sha256 already ties the file to the signature the registry read from it.
        in_specs = inputs or file_signature(first.get_inputs(), "input", label)
        out_specs = outputs or file_signature(first.get_outputs(), "output", label)
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
        session.metric_labels = (model, str(version))
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

    def runs_by_instance(self) -> list[dict[int, int]]:
        """Completed model runs per instance, by rows (warmup's included)."""
        with self._stats_lock:
            return [dict(runs) for runs in self._run_counts]

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
        except asyncio.CancelledError:
            # Every caller of this run has gone (deadline or cancel): stop ONNX Runtime rather
            # than finish a result nobody reads; the instance is released (and the flag reset)
            # once the thread returns.
            if not future.done():
                instance.run_options.terminate = True
            raise
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
        """Time the model at ``batch_size`` (the fastest of 7, in the executor; one run when
        it is over 20x the bar) and run it inline from now on when that is at most
        ``threshold_us``; returns that time in us.

        The fastest run, not the median: it is the model's own cost, while the median of a
        start on a busy box measures the neighbours too (tabular at 64 rows: median 56-81 us
        with the load at 5, fastest 50-66 us, ~30 us quiet), and one unlucky start would send
        a tiny model through the executor hand-off for the worker's whole life."""
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
                # A model this far over the bar never runs inline: spare it six more runs
                # (a slow model's seconds each, on every load).
                if samples[-1] * 1e6 > 20 * threshold_us:
                    break
            return min(samples) * 1e6

        try:
            fastest_us = await asyncio.get_running_loop().run_in_executor(self._executor, timed)
        finally:
            self._release(instance)
        self.inline = fastest_us <= threshold_us
        return fastest_us

    async def warmup(self, iterations: int, batch_sizes: Sequence[int] = (1,)) -> float:
        """Run dummy inputs ``iterations`` times per batch size on every instance.

        Inputs are zeros (b"" for BYTES) shaped from the signature: a -1 first dimension takes
        the batch size, any other -1 becomes 1. Returns ``cold_start_ms`` (session creation
        plus all warmup so far). A failing warmup is a failed load: FailedPreconditionError.
        """
        check_range("warmup iterations", iterations, 0, MAX_WARMUP_ITERATIONS)
        for size in batch_sizes:
            check_range("warmup batch size", size, 1, MAX_WARMUP_BATCH)
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
            instance.run_options.terminate = False
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
        feeds = {name: text_for_ort(value, name, self.label) for name, value in feeds.items()}
        with self._stats_lock:
            self._busy += 1
            self._peak_busy = max(self._peak_busy, self._busy)
        values: list[Any] | None = None
        try:
            if self.io_binding:
                values = self._run_bound(instance, feeds, names)
            else:
                values = instance.session.run(names, feeds, instance.run_options)
        except ORT_ERRORS:
            if instance.run_options.terminate and not self._closed:
                with self._stats_lock:
                    self.stopped_runs += 1
                STOPPED_RUNS.labels(*self.metric_labels).inc()
            raise
        finally:
            with self._stats_lock:  # the lock taken anyway: counting costs no extra one
                self._busy -= 1
                if values is not None:
                    instance.runs[_rows(feeds)] += 1
        return [bytes_from_ort(value) for value in values]

    def _run_error(self, exc: Exception) -> Exception:
        if self._closed:
            return UnavailableError(f"{self.label} was unloaded while the request ran")
        if isinstance(exc, ort_state.InvalidArgument):
            return InvalidArgumentError(f"{self.label}: {ort_message(exc)}")
        return exc


def _rows(feeds: Mapping[str, np.ndarray]) -> int:
    for value in feeds.values():
        return int(value.shape[0]) if value.ndim else 1
    return 0


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Any, *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop is closed (process exit): nothing left to hand back to
        pass
