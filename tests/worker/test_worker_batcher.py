"""DynamicBatcher on real ONNX Runtime sessions: fewer runs than requests, each answer equal to
its own unbatched run, shapes never mixed, and the queue's limits give the promised statuses.

A ``GatedSession`` (a ModelSession that records each batch it runs and can be held closed)
makes the queue fill deterministically: while the first batch is held, later items queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from prometheus_client import REGISTRY

from modelserve.deadlines import Deadline
from modelserve.errors import DeadlineExceededError, InvalidArgumentError, UnavailableError
from worker.batcher import DynamicBatcher, Result, run_unbatched
from worker.sessions import ModelSession
from worker.stats import VersionStats

RNG = np.random.default_rng(11)


class GatedSession(ModelSession):
    """A real ModelSession that records every run's inputs and waits for ``gate`` first."""

    gate: asyncio.Event
    seen: list[dict[str, np.ndarray]]

    async def run(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        self.seen.append(dict(inputs))
        await self.gate.wait()
        return await super().run(inputs, output_names)


async def gated(path: Path, **kwargs: Any) -> GatedSession:
    session = await GatedSession.load(path, model=path.stem, version=1, **kwargs)
    assert isinstance(session, GatedSession)
    session.gate, session.seen = asyncio.Event(), []
    session.gate.set()
    return session


def identity_model(directory: Path) -> Path:
    """Identity on FP32 [batch, width]: a dynamic non-batch dimension."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["X"], ["Y"])],
        "identity",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", "width"])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", "width"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path = directory / "identity.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture(scope="module")
def identity_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return identity_model(tmp_path_factory.mktemp("identity"))


def refused(reason: str) -> float:
    """modelserve_queue_refused_total for make_batcher's model m v1 and ``reason``."""
    labels = {"model": "m", "version": "1", "reason": reason}
    return REGISTRY.get_sample_value("modelserve_queue_refused_total", labels) or 0.0


def make_batcher(session: ModelSession, **overrides: Any) -> tuple[DynamicBatcher, VersionStats]:
    stats = VersionStats("m", 1)
    options: dict[str, Any] = {
        "max_batch_size": 64,
        "max_queue_delay_us": 0,
        "preferred_batch_sizes": (),
        "max_queue_size": 64,
    }
    options.update(overrides)
    return DynamicBatcher(session, model="m", version=1, stats=stats, **options), stats


@pytest.fixture
async def fraud(model_paths: dict[str, Path]) -> AsyncIterator[GatedSession]:
    session = await gated(model_paths["fraud"])
    session.seen.clear()  # warmup is not part of any test
    yield session
    session.close()


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name, {"model": "m", "version": "1"}) or 0.0


async def started(*coros: Any) -> list[asyncio.Task[Result]]:
    """Start submits in order and let each reach the queue before returning."""
    tasks = []
    for coro in coros:
        tasks.append(asyncio.create_task(coro))
        await asyncio.sleep(0)  # one loop step: the submit enqueues (no timing involved)
    return tasks


async def test_concurrent_items_share_runs_and_get_their_own_rows(
    fraud: GatedSession, model_paths: dict[str, Path]
) -> None:
    batcher, stats = make_batcher(fraud)
    runs_before = sample("modelserve_batch_size_count")
    waits_before = sample("modelserve_queue_seconds_count")
    rows = [1, 2, 3, 1, 5, 1, 1, 2, 4, 1, 1, 3, 1, 1, 2, 1, 1, 6, 1, 1, 2, 1]
    feeds = [RNG.standard_normal((n, 8)).astype(np.float32) for n in rows]
    fraud.gate.clear()
    tasks = await started(*(batcher.submit({"transaction": x}) for x in feeds))
    assert batcher.queued == len(feeds) - 1  # the first one runs (held), the rest wait
    fraud.gate.set()
    results = await asyncio.gather(*tasks)

    # The first item ran alone; everything that queued behind it ran as one batch.
    assert [len(batch["transaction"]) for batch in fraud.seen] == [rows[0], sum(rows[1:])]
    assert stats.execution_count == 2 < len(feeds)
    assert {size: d[1].count for size, d in stats.batches.items()} == {1: 1, sum(rows[1:]): 1}
    reference = await ModelSession.load(model_paths["fraud"], model="fraud", version=1)
    try:
        for x, result in zip(feeds, results, strict=True):
            alone = await reference.run({"transaction": x})
            assert result.rows == len(x)
            assert result.outputs["fraud_probability"].shape == (len(x), 1)
            # Gemm kernels may pick another blocking for another row count: equal to float
            # rounding, not bit for bit.
            np.testing.assert_allclose(
                result.outputs["fraud_probability"], alone["fraud_probability"], rtol=1e-6
            )
    finally:
        reference.close()
    assert results[1].batch_rows == sum(rows[1:]) and results[1].queue_ns > 0
    # Prometheus: one batch-size observation per run, one queue-time observation per item.
    assert sample("modelserve_batch_size_count") - runs_before == 2
    assert sample("modelserve_queue_seconds_count") - waits_before == len(feeds)


async def test_bytes_and_other_dtypes_concatenate_and_split_back(
    model_paths: dict[str, Path],
) -> None:
    session = await gated(model_paths["dtypes"])
    session.seen.clear()
    batcher, stats = make_batcher(session)
    words = [b"", b"a", b"nul\x00inside", "\u00e9\u20ac".encode()]
    feeds: list[dict[str, np.ndarray]] = []
    for n in (1, 2, 3, 1):
        feeds.append(
            {
                "IN_FP32": RNG.standard_normal((n, 4)).astype(np.float32),
                "IN_FP16": RNG.standard_normal((n, 4)).astype(np.float16),
                "IN_INT32": RNG.integers(-(2**31), 2**31 - 1, (n, 4), dtype=np.int32),
                "IN_INT64": RNG.integers(-(2**62), 2**62, (n, 4), dtype=np.int64),
                "IN_BOOL": RNG.integers(0, 2, (n, 4)).astype(np.bool_),
                "IN_BYTES": np.array(words * n, dtype=object).reshape(n, 4),
            }
        )
    try:
        session.gate.clear()
        tasks = await started(*(batcher.submit(f) for f in feeds))
        session.gate.set()
        results = await asyncio.gather(*tasks)
    finally:
        session.close()
    assert [len(b["IN_BYTES"]) for b in session.seen] == [1, 6]
    for feed, result in zip(feeds, results, strict=True):
        for name, value in feed.items():
            got = result.outputs["OUT_" + name.removeprefix("IN_")]
            assert got.dtype == value.dtype
            np.testing.assert_array_equal(got, value)
    assert stats.execution_count == 2


async def test_different_non_batch_shapes_never_share_a_batch(identity_path: Path) -> None:
    session = await gated(identity_path)
    session.seen.clear()
    batcher, stats = make_batcher(session)
    widths = [3, 5, 3, 5, 5, 3, 7]
    feeds = [RNG.standard_normal((2, w)).astype(np.float32) for w in widths]
    try:
        session.gate.clear()
        tasks = await started(*(batcher.submit({"X": x}) for x in feeds))
        session.gate.set()
        results = await asyncio.gather(*tasks)
    finally:
        session.close()

    # Oldest waiting key first, then arrival order within a key.
    assert [b["X"].shape for b in session.seen] == [(2, 3), (6, 5), (4, 3), (2, 7)]
    for x, result in zip(feeds, results, strict=True):
        np.testing.assert_array_equal(result.outputs["Y"], x)
    assert stats.execution_count == 4


async def test_item_larger_than_max_batch_size_is_refused(fraud: GatedSession) -> None:
    batcher, _ = make_batcher(fraud, max_batch_size=4)
    with pytest.raises(InvalidArgumentError, match="max_batch_size 4, got 5"):
        await batcher.submit({"transaction": np.zeros((5, 8), np.float32)})
    assert fraud.seen == []


async def test_a_batch_never_exceeds_max_batch_size_nor_splits_an_item(
    fraud: GatedSession,
) -> None:
    batcher, stats = make_batcher(fraud, max_batch_size=4)
    rows = [1, 3, 2, 2, 1, 4, 1]
    fraud.gate.clear()
    tasks = await started(
        *(batcher.submit({"transaction": np.ones((n, 8), np.float32)}) for n in rows)
    )
    fraud.gate.set()
    results = await asyncio.gather(*tasks)
    assert [len(b["transaction"]) for b in fraud.seen] == [1, 3, 4, 1, 4, 1]
    assert [r.rows for r in results] == rows
    assert stats.execution_count == 6


async def test_full_queue_answers_unavailable_at_once_and_then_serves(
    fraud: GatedSession,
) -> None:
    """T15: C + Q + k at once: exactly k refused UNAVAILABLE "queue full" and counted as
    reason="queue_full" (how fast is measured by bench/queue_full.py, not asserted here)."""
    batcher, stats = make_batcher(fraud, max_queue_size=3)
    x = np.ones((1, 8), np.float32)
    before = refused("queue_full")
    fraud.gate.clear()
    tasks = await started(*(batcher.submit({"transaction": x}) for _ in range(4)))
    assert batcher.queued == 3  # one running, three waiting
    for _ in range(2):  # k = 2
        with pytest.raises(UnavailableError, match=r"queue full \(3 waiting"):
            await batcher.submit({"transaction": x})
    assert refused("queue_full") == before + 2
    fraud.gate.set()
    assert len(await asyncio.gather(*tasks)) == 4
    result = await batcher.submit({"transaction": x})
    assert result.outputs["fraud_probability"].shape == (1, 1)
    assert stats.execution_count == 3


async def test_expired_item_gets_deadline_exceeded_and_never_runs(fraud: GatedSession) -> None:
    batcher, stats = make_batcher(fraud)
    marker = np.full((1, 8), 42.0, np.float32)
    with pytest.raises(DeadlineExceededError):  # already past: refused before queueing
        await batcher.submit({"transaction": marker}, deadline=Deadline.after(-1))

    fraud.gate.clear()
    (first,) = await started(batcher.submit({"transaction": np.ones((1, 8), np.float32)}))
    with pytest.raises(DeadlineExceededError, match="while the request waited"):
        await batcher.submit({"transaction": marker}, deadline=Deadline.after(0.05))
    assert batcher.queued == 0
    fraud.gate.set()
    await first

    assert all(not np.any(b["transaction"] == 42.0) for b in fraud.seen)
    assert stats.execution_count == 1
    result = await batcher.submit({"transaction": marker}, deadline=Deadline.after(30))
    assert result.outputs["fraud_probability"].shape == (1, 1)
    assert len(fraud.seen) == 2


async def test_queue_wait_policy_answers_unavailable_with_deadline_to_spare(
    fraud: GatedSession,
) -> None:
    """RELIABILITY.md: waiting longer than min(deadline, max wait) is UNAVAILABLE (the router
    retries elsewhere) when the caller's own deadline has not run out."""
    batcher, stats = make_batcher(fraud, max_queue_wait_s=0.05)
    marker = np.full((1, 8), 9.0, np.float32)
    waited, expired = refused("queue_wait"), refused("deadline")
    fraud.gate.clear()
    (first,) = await started(batcher.submit({"transaction": np.ones((1, 8), np.float32)}))
    with pytest.raises(UnavailableError, match="queue wait exceeded"):
        await batcher.submit({"transaction": marker}, deadline=Deadline.after(30))
    with pytest.raises(DeadlineExceededError):  # a deadline inside the wait stays a deadline
        await batcher.submit({"transaction": marker}, deadline=Deadline.after(0.01))
    assert (refused("queue_wait"), refused("deadline")) == (waited + 1, expired + 1)
    fraud.gate.set()
    await first
    assert all(not np.any(b["transaction"] == 9.0) for b in fraud.seen)
    assert stats.execution_count == 1


async def test_cancelled_caller_is_dropped_before_it_runs(fraud: GatedSession) -> None:
    batcher, stats = make_batcher(fraud)
    marker = np.full((1, 8), 7.0, np.float32)
    before = refused("cancelled")
    fraud.gate.clear()
    first, doomed, kept = await started(
        batcher.submit({"transaction": np.ones((1, 8), np.float32)}),
        batcher.submit({"transaction": marker}),
        batcher.submit({"transaction": np.ones((2, 8), np.float32)}),
    )
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert batcher.queued == 1
    assert refused("cancelled") == before + 1  # T12 (a): the queued cancel is counted
    fraud.gate.set()
    await asyncio.gather(first, kept)
    assert refused("cancelled") == before + 1  # the ones that ran are not
    assert [len(b["transaction"]) for b in fraud.seen] == [1, 2]
    assert stats.execution_count == 2


async def test_model_error_fails_every_item_of_the_batch_only(fraud: GatedSession) -> None:
    batcher, _ = make_batcher(fraud)
    fraud.gate.clear()
    first, bad1, bad2, good = await started(
        batcher.submit({"transaction": np.ones((1, 8), np.float32)}),
        batcher.submit({"transaction": np.ones((1, 8), np.float32)}, ["nope"]),
        batcher.submit({"transaction": np.ones((2, 8), np.float32)}, ["nope"]),
        batcher.submit({"transaction": np.ones((1, 8), np.float32)}),
    )
    fraud.gate.set()
    await first
    for bad in (bad1, bad2):
        with pytest.raises(InvalidArgumentError, match="no output 'nope'"):
            await bad
    assert (await good).outputs["fraud_probability"].shape == (1, 1)


async def test_close_answers_queued_items_unavailable(fraud: GatedSession) -> None:
    batcher, _ = make_batcher(fraud)
    x = np.ones((1, 8), np.float32)
    fraud.gate.clear()
    first, queued = await started(
        batcher.submit({"transaction": x}), batcher.submit({"transaction": x})
    )
    before = refused("unloaded")
    batcher.close()
    with pytest.raises(UnavailableError, match="unloaded while queued"):
        await queued
    assert refused("unloaded") == before + 1
    with pytest.raises(UnavailableError, match="not loaded"):
        await batcher.submit({"transaction": x})
    fraud.gate.set()
    assert (await first).outputs["fraud_probability"].shape == (1, 1)  # running ones finish


async def test_full_batch_or_largest_preferred_size_goes_without_waiting(
    fraud: GatedSession,
) -> None:
    # A delay far longer than the test's timeout: only a full or preferred batch can go.
    batcher, stats = make_batcher(
        fraud, max_batch_size=8, max_queue_delay_us=1_000_000_000, preferred_batch_sizes=(2, 4)
    )
    x = np.ones((1, 8), np.float32)
    results = await asyncio.gather(*(batcher.submit({"transaction": x}) for _ in range(4)))
    assert {r.batch_rows for r in results} == {4}
    results = await asyncio.gather(
        *(batcher.submit({"transaction": np.ones((n, 8), np.float32)}) for n in (3, 5))
    )
    assert {r.batch_rows for r in results} == {8}
    assert sorted(stats.batches) == [4, 8] and stats.execution_count == 2


async def test_after_the_delay_the_largest_reachable_preferred_size_goes_first(
    fraud: GatedSession,
) -> None:
    batcher, stats = make_batcher(
        fraud, max_batch_size=8, max_queue_delay_us=20_000, preferred_batch_sizes=(2, 4)
    )
    x = np.ones((1, 8), np.float32)
    results = await asyncio.gather(*(batcher.submit({"transaction": x}) for _ in range(3)))
    # Three rows queued together: after the delay two go (preferred), then the third alone.
    assert [r.batch_rows for r in results] == [2, 2, 1]
    assert [len(b["transaction"]) for b in fraud.seen] == [2, 1]
    assert stats.execution_count == 2


async def test_unbatched_runs_count_one_execution_per_request(
    model_paths: dict[str, Path],
) -> None:
    session = await ModelSession.load(model_paths["tabular"], model="tabular", version=1)
    stats = VersionStats("tabular", 1)
    x = RNG.standard_normal((1, 32)).astype(np.float32)
    try:
        result = await run_unbatched(session, stats, {"INPUT0": x}, None)
        want = await session.run({"INPUT0": x})
    finally:
        session.close()
    np.testing.assert_array_equal(result.outputs["OUTPUT0"], want["OUTPUT0"])
    assert (result.rows, result.batch_rows, result.queue_ns) == (1, 1, 0)
    assert stats.execution_count == 1 and list(stats.batches) == [1]


def test_identity_model_is_valid(identity_path: Path) -> None:
    onnx.checker.check_model(onnx.load(str(identity_path)))


async def test_a_running_batch_whose_callers_all_left_is_stopped(
    model_paths: dict[str, Path],
) -> None:
    """No work for callers who left: while any caller of a running batch still waits, the run
    goes on and answers it; once the last one is gone the ONNX Runtime run is stopped."""
    session = await gated(model_paths["wide"], instance_count=1, intra_op_threads=1)
    batcher, _ = make_batcher(session, max_batch_size=2048, max_queue_size=8)
    rows = np.ones((1024, 512), np.float32)
    small = {"INPUT0": np.ones((1, 512), np.float32)}

    async def batch_of_two() -> tuple[asyncio.Task[Result], asyncio.Task[Result]]:
        """Two big requests queued behind a held one, so they run as one batch."""
        session.gate.clear()
        (blocker,) = await started(batcher.submit(small))
        one, two = await started(batcher.submit({"INPUT0": rows}), batcher.submit({"INPUT0": rows}))
        session.gate.set()
        await blocker
        while session.busy_instances == 0:  # noqa: ASYNC110 - the counter lives in ORT's thread
            await asyncio.sleep(0.001)
        return one, two

    first, second = await batch_of_two()
    first.cancel()
    answer = await second
    assert answer.batch_rows == 2048  # they did share the run
    assert session.stopped_runs == 0  # one caller was still there

    third, fourth = await batch_of_two()
    third.cancel()
    fourth.cancel()
    for _ in range(2000):
        if session.stopped_runs == 1:
            break
        await asyncio.sleep(0.005)
    assert session.stopped_runs == 1
    ok = await batcher.submit({"INPUT0": np.ones((2, 512), np.float32)})
    assert ok.outputs["OUTPUT0"].shape == (2, 10)
    session.close()
