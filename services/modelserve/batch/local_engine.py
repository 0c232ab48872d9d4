"""The embedded engine: a process pool sized to the cores, one model session per process.

Each pool process loads the verified artifact once (its initializer) and scores whole parts;
the driver only hands out part numbers and counts rows, so no rows cross process boundaries.
Processes are spawned (not forked): the driver holds gRPC channels, which do not survive fork.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from pathlib import Path

from modelserve.batch.parts import JobSpec, score_part, scorer_for
from modelserve.batch.scoring import Scorer
from modelserve.batch.sources import Part

_JOB: tuple[JobSpec, Scorer] | None = None


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def _init(spec: JobSpec, artifact: str) -> None:
    global _JOB
    _JOB = (spec, scorer_for(spec, Path(artifact)))


def _score(part: Part) -> int:
    assert _JOB is not None, "pool process was not initialised"
    spec, scorer = _JOB
    return score_part(spec, scorer, part)


def run_local(
    spec: JobSpec,
    artifact: Path,
    parts: Sequence[Part],
    *,
    workers: int,
    on_part: Callable[[Part, int], None],
) -> int:
    """Score ``parts`` on ``workers`` processes; ``on_part`` after each committed part."""
    if not parts:
        return 0
    workers = max(1, min(workers, len(parts)))
    if workers == 1:  # no pool for one process: the driver scores (same code, same session)
        _init(spec, str(artifact))
        total = 0
        for part in parts:
            rows = _score(part)
            on_part(part, rows)
            total += rows
        return total
    context = multiprocessing.get_context("spawn")
    total = 0
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init, initargs=(spec, str(artifact))
    ) as pool:
        pending: dict[Future[int], Part] = {pool.submit(_score, p): p for p in parts}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    part = pending.pop(future)
                    rows = future.result()  # re-raises a part's failure here
                    on_part(part, rows)
                    total += rows
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return total
