"""T15's timing, measured rather than asserted: how long the worker's batcher takes to refuse
a request once its queue is full (RELIABILITY-CASES: "rejected immediately (< 10 ms)").

A DynamicBatcher with C = 1 instance and a queue of Q is filled by C + Q calls to a session
that never finishes until released, then k more calls are refused UNAVAILABLE "queue full";
each refusal is timed. The batcher is the real one; the session is a stand-in (a run that
waits on an event) so only the refusal path is measured.

    .venv/bin/python bench/queue_full.py [--queue 8] [--refusals 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from modelserve.errors import UnavailableError
from worker.batcher import DynamicBatcher
from worker.metrics import QUEUE_REFUSED
from worker.stats import VersionStats


class HeldSession:
    """Enough of ModelSession for the batcher: one instance whose run waits for ``release``."""

    instance_count = 1

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def run(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        await self.release.wait()
        return {"y": next(iter(inputs.values()))}


async def main(queue: int, refusals: int) -> None:
    session = HeldSession()
    batcher = DynamicBatcher(
        session,  # type: ignore[arg-type]  # the stand-in above
        model="bench",
        version=1,
        stats=VersionStats("bench", 1),
        max_batch_size=1,
        max_queue_delay_us=0,
        preferred_batch_sizes=(),
        max_queue_size=queue,
    )
    x = np.ones((1, 8), np.float32)
    held = [asyncio.ensure_future(batcher.submit({"x": x})) for _ in range(1 + queue)]
    await asyncio.sleep(0.1)  # one running, the rest waiting
    assert batcher.queued == queue, batcher.queued
    times: list[float] = []
    for _ in range(refusals):
        started = time.perf_counter()
        try:
            await batcher.submit({"x": x})
        except UnavailableError:
            times.append(time.perf_counter() - started)
    session.release.set()
    await asyncio.gather(*held)
    counted = QUEUE_REFUSED.labels("bench", "1", "queue_full")._value.get()
    times.sort()
    print(f"C=1 Q={queue}: {len(times)} of {refusals} refused, counted queue_full={counted:.0f}")
    print(
        f"refusal time: p50 {statistics.median(times) * 1e6:.1f} us, "
        f"p99 {times[int(len(times) * 0.99) - 1] * 1e6:.1f} us, max {times[-1] * 1e6:.1f} us "
        "(the case's bound: 10 ms)"
    )


def cli(argv: Sequence[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queue", type=int, default=8)
    parser.add_argument("--refusals", type=int, default=10_000)
    args = parser.parse_args(argv)
    asyncio.run(main(args.queue, args.refusals))


if __name__ == "__main__":
    cli()
