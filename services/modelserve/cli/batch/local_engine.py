"""The embedded engine: ``workers`` executors in this process, one model session each.

For numeric models the executors are threads: reading Parquet, ONNX Runtime and writing
Parquet all run in C++ with the GIL released, and what is left in Python is a few calls per
batch of thousands of rows, so threads use every core without a process to spawn (spawning
and importing ONNX Runtime and pyarrow cost one to two seconds per process, longer than a
million rows of a small model take to score) and without a second copy of the interpreter
in memory. A model with BYTES inputs or outputs converts every value in Python, under the
GIL; it gets processes instead: the driver itself (in a thread, starting at once) and
``workers - 1`` spawned ones (not forked: the driver holds gRPC's threads), each loading the
verified artifact once. Either way parts are handed out one at a time from one queue, and
only part numbers and row counts cross processes. An executor thread hands each part it has
written to a committer thread (fsync, rename) and goes on with the next part.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from queue import Empty
from typing import Any

from modelserve.cli.batch.columns import BatchInputError
from modelserve.cli.batch.commit import StagedPart
from modelserve.cli.batch.parts import JobSpec, score_part, scorer_for, stage_scored_part
from modelserve.cli.batch.sources import Part
from modelserve.tensors import TensorSpec


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))


class _Parts:
    """The queue both the driver thread and the pool feeder take from, and the tally."""

    def __init__(self, parts: Sequence[Part], on_rows: Callable[[int], None]) -> None:
        self._queue = deque(parts)
        self._lock = threading.Lock()
        self._on_rows = on_rows
        self.rows = 0
        self.failed: BaseException | None = None

    def take(self) -> Part | None:
        with self._lock:
            if self.failed is not None or not self._queue:
                return None
            return self._queue.popleft()

    def done(self, part: Part, rows: int) -> None:
        with self._lock:
            self.rows += rows

    def progress(self, rows: int) -> None:
        with self._lock:
            self._on_rows(rows)

    def idle(self) -> bool:
        """Nothing left to hand out (or a failure stopped the handing out)."""
        with self._lock:
            return self.failed is not None or not self._queue

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            self.failed = self.failed or exc


def run_local(
    spec: JobSpec,
    artifact: Path,
    parts: Sequence[Part],
    *,
    workers: int,
    on_rows: Callable[[int], None],
) -> int:
    """Score ``parts`` on ``workers`` processes (the driver included); ``on_rows`` as batches
    are scored (progress). The first failure stops handing out parts and is raised."""
    if not parts:
        return 0
    queue = _Parts(parts, on_rows)
    size = max(1, min(workers, len(parts)))
    # Parts are committed (fsync, rename) beside the scoring of the next: an fsync only
    # waits on the disk (15-50 ms a part here), and the executor need not wait with it.
    with ThreadPoolExecutor(size, thread_name_prefix="batch-commit") as committer:
        if holds_the_gil((*spec.inputs, *spec.outputs)):
            driver = threading.Thread(
                target=_drive, args=(spec, artifact, queue, 0, committer), daemon=True
            )
            driver.start()
            if size > 1:
                _feed_pool(spec, artifact, queue, size - 1)
            threads = [driver]
        else:
            threads = [
                threading.Thread(
                    target=_drive, args=(spec, artifact, queue, slot, committer), daemon=True
                )
                for slot in range(size)
            ]
            for thread in threads:
                thread.start()
        for thread in threads:
            thread.join()
    if queue.failed is not None:
        raise queue.failed
    return queue.rows


def holds_the_gil(tensors: Iterable[TensorSpec]) -> bool:
    """BYTES values are converted one by one in Python: such a model scales by processes."""
    return any(t.datatype == "BYTES" for t in tensors)


def _drive(
    spec: JobSpec, artifact: Path, queue: _Parts, slot: int, committer: ThreadPoolExecutor
) -> None:
    try:
        scorer = scorer_for(spec, artifact, slot)
        while (part := queue.take()) is not None:
            staged = stage_scored_part(spec, scorer, part, queue.progress)
            committer.submit(_commit, queue, part, staged)
    except BaseException as exc:  # handed to the caller by run_local
        queue.fail(exc)


def _commit(queue: _Parts, part: Part, staged: StagedPart) -> None:
    try:
        queue.done(part, staged.commit())
    except BaseException as exc:
        queue.fail(exc)


def _feed_pool(spec: JobSpec, artifact: Path, queue: _Parts, size: int) -> None:
    """Start ``size`` spawned processes and give each a part whenever it says it is idle
    (ready after loading the model, or done with a part). Processes still starting when the
    queue runs dry are stopped rather than waited for."""
    context = multiprocessing.get_context("spawn")
    tasks: Any = context.SimpleQueue()
    results: Any = context.Queue()
    procs = [
        context.Process(target=_pool_main, args=(spec, str(artifact), tasks, results), daemon=True)
        for _ in range(size)
    ]
    for proc in procs:
        proc.start()
    in_flight: dict[int, Part] = {}
    try:
        while True:
            try:
                message = results.get(timeout=0.1)
            except Empty:
                if not in_flight and queue.failed is not None:
                    return
                _check_alive(procs, in_flight)
                if not in_flight and queue.idle():
                    return
                continue
            kind, index, payload = message
            if kind == "rows":
                queue.progress(payload)
                continue
            if kind == "done":
                queue.done(in_flight.pop(index), payload)
            elif kind == "error":
                in_flight.pop(index, None)
                raise _rebuilt(*payload)
            part = queue.take()
            if part is not None:
                in_flight[part.index] = part
                tasks.put(part)
            elif not in_flight:
                return
    except BaseException as exc:
        queue.fail(exc)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join(10)


def _check_alive(procs: list[Any], in_flight: dict[int, Part]) -> None:
    dead = [p for p in procs if not p.is_alive() and p.exitcode not in (0, None)]
    if dead and in_flight:
        raise RuntimeError(
            f"a local engine process died (exit code {dead[0].exitcode}) while scoring "
            f"{next(iter(in_flight.values())).describe()}"
        )
    if len(dead) == len(procs):
        raise RuntimeError(f"every local engine process died (exit code {dead[0].exitcode})")


def _rebuilt(kind: str, message: str) -> BaseException:
    if kind == "BatchInputError":
        return BatchInputError(message)
    return RuntimeError(f"{kind}: {message}")


def _pool_main(spec: JobSpec, artifact: str, tasks: Any, results: Any) -> None:
    """A pool process: load the model, say ready, score parts until told to stop."""
    try:
        scorer = scorer_for(spec, Path(artifact))
    except BaseException as exc:
        results.put(("error", -1, (type(exc).__name__, str(exc))))
        return
    results.put(("ready", -1, 0))
    while True:
        part = tasks.get()
        try:
            rows = score_part(spec, scorer, part, lambda n: results.put(("rows", -1, n)))
            results.put(("done", part.index, rows))
        except BaseException as exc:
            results.put(("error", part.index, (type(exc).__name__, str(exc))))
            return
