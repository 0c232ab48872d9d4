"""The gateway's request merger: concurrent requests for one version leave as one call and
come back cut per request; nothing is mixed, nothing is lost. The upstream here is a real
async function doing real tensor work (no mocks): it doubles FP32 inputs and echoes BYTES."""

from __future__ import annotations

import asyncio
import contextvars

import numpy as np
import pytest

from gateway.merging import RequestMerger, lane_key
from modelserve.calls import Call
from modelserve.deadlines import Deadline
from modelserve.errors import DeadlineExceededError, InvalidArgumentError
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.tensors import decode_inputs, decode_outputs, encode_inputs, encode_outputs


class Upstream:
    """Computes y = 2x (and echoes BYTES); holds calls until released when gated."""

    def __init__(self, gated: bool = False) -> None:
        self.calls: list[pb.ModelInferRequest] = []
        self.call_contexts: list[tuple[Call, str]] = []
        self.cancelled = 0
        self.gate = asyncio.Event()
        self._arrived = asyncio.Condition()
        if not gated:
            self.gate.set()

    async def until(self, calls: int) -> None:
        """Wait until ``calls`` calls have reached the upstream."""
        async with self._arrived:
            await self._arrived.wait_for(lambda: len(self.calls) >= calls)

    async def __call__(self, request: pb.ModelInferRequest, call: Call) -> pb.ModelInferResponse:
        self.calls.append(request)
        self.call_contexts.append((call, CALLER.get()))
        async with self._arrived:
            self._arrived.notify_all()
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        inputs = decode_inputs(request)
        if "x" in inputs and np.any(inputs["x"] < 0):
            raise InvalidArgumentError("negative input")  # one bad row fails the whole call
        response = pb.ModelInferResponse(
            model_name=request.model_name, id=request.id, model_version=request.model_version
        )
        outputs = {f"{k}_out": (v * 2 if v.dtype != object else v) for k, v in inputs.items()}
        encode_outputs(response, outputs)
        return response


CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="none")


def within(seconds: float, request_id: str = "") -> Call:
    return Call(Deadline.after(seconds), (("x-request-id", request_id),) if request_id else ())


def make(x: np.ndarray, rid: str, name: str = "x") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m", model_version="3", id=rid)
    encode_inputs(request, {name: x})
    return request


async def test_single_request_travels_alone_and_unchanged() -> None:
    upstream = Upstream()
    merger = RequestMerger(forward=upstream, max_in_flight=2)
    request = make(np.ones((1, 4), np.float32), "a")
    response = await merger.infer(request, 3, 64, within(5.0))
    assert upstream.calls == [request]
    np.testing.assert_array_equal(decode_outputs(response)["x_out"], np.full((1, 4), 2.0))


async def test_concurrent_requests_merge_and_split_back_per_request() -> None:
    upstream = Upstream(gated=True)
    merger = RequestMerger(forward=upstream, max_in_flight=2)
    rows = [np.full((1 + i % 3, 4), float(i), np.float32) for i in range(10)]
    tasks = [
        asyncio.create_task(merger.infer(make(r, f"r{i}"), 3, 64, within(5.0)))
        for i, r in enumerate(rows)
    ]
    await upstream.until(2)
    upstream.gate.set()
    responses = await asyncio.gather(*tasks)
    assert len(upstream.calls) < len(rows), "queued requests should leave together"
    assert merger.merged_calls >= 1
    for i, (response, x) in enumerate(zip(responses, rows, strict=True)):
        assert response.id == f"r{i}" and response.model_version == "3"
        np.testing.assert_array_equal(decode_outputs(response)["x_out"], x * 2)


async def test_different_layouts_and_versions_never_share_a_call() -> None:
    upstream = Upstream(gated=True)
    merger = RequestMerger(forward=upstream, max_in_flight=1)
    blocker = asyncio.create_task(
        merger.infer(make(np.ones((1, 4), np.float32), "b"), 3, 64, within(5))
    )
    await upstream.until(1)
    jobs = [
        merger.infer(make(np.ones((1, 4), np.float32), "a1"), 3, 64, within(5)),
        merger.infer(make(np.ones((1, 5), np.float32), "wide"), 3, 64, within(5)),  # other dims
        merger.infer(make(np.ones((1, 4), np.float32), "v4"), 4, 64, within(5)),  # other version
        merger.infer(make(np.ones((1, 4), np.float32), "a2"), 3, 64, within(5)),
    ]
    tasks = [asyncio.create_task(j) for j in jobs]
    for _ in range(10):
        await asyncio.sleep(0)
    upstream.gate.set()
    await asyncio.gather(blocker, *tasks)
    for call in upstream.calls:
        layout = {tuple(t.shape[1:]) for t in call.inputs}
        assert len(layout) == 1
    merged = [c for c in upstream.calls if c.inputs[0].shape[0] > 1]
    assert merged and all(c.inputs[0].shape[1] == 4 for c in merged)


async def test_bad_request_in_a_merge_fails_alone() -> None:
    upstream = Upstream(gated=True)
    merger = RequestMerger(forward=upstream, max_in_flight=1)
    first = asyncio.create_task(
        merger.infer(make(np.ones((1, 2), np.float32), "0"), 3, 64, within(5))
    )
    await upstream.until(1)
    good = [
        asyncio.create_task(
            merger.infer(make(np.ones((1, 2), np.float32), f"g{i}"), 3, 64, within(5))
        )
        for i in range(3)
    ]
    bad = asyncio.create_task(
        merger.infer(make(-np.ones((1, 2), np.float32), "bad"), 3, 64, within(5))
    )
    for _ in range(10):
        await asyncio.sleep(0)
    upstream.gate.set()
    await first
    for task in good:
        np.testing.assert_array_equal(decode_outputs(await task)["x_out"], np.full((1, 2), 2.0))
    with pytest.raises(InvalidArgumentError):
        await bad


async def test_request_whose_deadline_passes_while_queued_is_never_sent() -> None:
    upstream = Upstream(gated=True)
    merger = RequestMerger(forward=upstream, max_in_flight=1)
    first = asyncio.create_task(
        merger.infer(make(np.ones((1, 2), np.float32), "0"), 3, 64, within(5))
    )
    await upstream.until(1)
    late = asyncio.create_task(
        merger.infer(make(np.ones((1, 2), np.float32), "late"), 3, 64, within(0.01))
    )
    await asyncio.sleep(0.05)
    upstream.gate.set()
    await first
    with pytest.raises(DeadlineExceededError):
        await late
    assert [c.id for c in upstream.calls] == ["0"]


async def test_bytes_outputs_are_cut_by_elements() -> None:
    upstream = Upstream(gated=True)
    merger = RequestMerger(forward=upstream, max_in_flight=1)
    texts = [
        np.array([[b"a", b"bb"]], dtype=object),
        np.array([[b"", b"ccc"], [b"d", b"ee"]], dtype=object),
    ]
    first = asyncio.create_task(merger.infer(make(texts[0], "t0", "s"), 3, 64, within(5)))
    await upstream.until(1)
    rest = [
        asyncio.create_task(merger.infer(make(t, f"t{i}", "s"), 3, 64, within(5)))
        for i, t in enumerate(texts)
    ]
    for _ in range(10):
        await asyncio.sleep(0)
    upstream.gate.set()
    await first
    for task, text in zip(rest, texts, strict=True):
        np.testing.assert_array_equal(decode_outputs(await task)["s_out"], text)
    assert merger.merged_calls == 1


def test_typed_or_parameterised_requests_are_not_mergeable() -> None:
    typed = pb.ModelInferRequest(model_name="m")
    typed.inputs.add(name="x", datatype="FP32", shape=[1, 1]).contents.fp32_contents.append(1.0)
    assert lane_key(typed, 1) is None
    with_params = make(np.ones((1, 1), np.float32), "p")
    with_params.parameters["priority"].int64_param = 1
    assert lane_key(with_params, 1) is None
    assert lane_key(make(np.ones((1, 1), np.float32), "ok"), 1) is not None
    perf_analyzer_style = make(np.ones((1, 1), np.float32), "pa")
    perf_analyzer_style.parameters["triton_enable_empty_final_response"].bool_param = True
    assert lane_key(perf_analyzer_style, 1) is not None


async def test_merged_call_runs_in_the_oldest_callers_context_with_every_request_id() -> None:
    """The trace parent of a merged call is the oldest request's (not whichever call happened
    to finish last), and each client's x-request-id travels on."""
    upstream = Upstream(gated=True)
    merger = RequestMerger(forward=upstream, max_in_flight=1)

    async def caller(name: str) -> pb.ModelInferResponse:
        CALLER.set(name)  # stands for the caller's span in contextvars
        request = make(np.ones((1, 2), np.float32), name)
        return await merger.infer(request, 3, 64, within(5, request_id=f"id-{name}"))

    first = asyncio.create_task(caller("first"))
    await upstream.until(1)
    queued = [asyncio.create_task(caller(f"q{i}")) for i in range(3)]
    await asyncio.sleep(0)  # let them queue behind the call in flight
    await asyncio.sleep(0)
    upstream.gate.set()
    await asyncio.gather(first, *queued)
    assert len(upstream.calls) == 2
    merged_call, context_name = upstream.call_contexts[1]
    assert context_name == "q0", "a merged call must run in its oldest request's context"
    assert merged_call.request_ids() == ["id-q0", "id-q1", "id-q2"]
    assert upstream.call_contexts[0][1] == "first"


async def test_merged_calls_stay_within_the_byte_cap() -> None:
    """Six requests of 1 MiB each, accepted alone, never leave as one call over the cap (the
    next hop would refuse it RESOURCE_EXHAUSTED); every caller gets its own answer."""
    upstream = Upstream(gated=True)
    merger = RequestMerger(forward=upstream, max_in_flight=1, max_bytes=(5 << 20) // 2)
    rows = [np.full((1, 1 << 18), float(i), np.float32) for i in range(7)]  # 1 MiB each
    first = asyncio.create_task(merger.infer(make(rows[0], "r0"), 3, 64, within(5.0)))
    await upstream.until(1)
    rest = [
        asyncio.create_task(merger.infer(make(r, f"r{i}"), 3, 64, within(5.0)))
        for i, r in enumerate(rows[1:], start=1)
    ]
    await asyncio.sleep(0)
    upstream.gate.set()
    answers = await asyncio.gather(first, *rest)
    sizes = [sum(len(raw) for raw in call.raw_input_contents) for call in upstream.calls]
    assert max(sizes) <= (5 << 20) // 2, sizes
    assert len(upstream.calls) == 4  # one alone, then 2 + 2 + 2 queued ones
    for i, answer in enumerate(answers):
        assert decode_outputs(answer)["x_out"][0, 0] == 2.0 * i


async def test_a_merged_call_whose_callers_all_left_is_cancelled() -> None:
    """No work for callers who left: the merged call goes on while one caller waits, and is
    cancelled (the cancel travels on to router and worker) once the last one is gone."""
    upstream = Upstream(gated=True)
    merger = RequestMerger(forward=upstream, max_in_flight=1)
    alone = asyncio.create_task(
        merger.infer(make(np.ones((1, 2), np.float32), "0"), 3, 64, within(5))
    )
    await upstream.until(1)
    merged = [
        asyncio.create_task(
            merger.infer(make(np.ones((1, 2), np.float32), f"m{i}"), 3, 64, within(5))
        )
        for i in range(3)
    ]
    await asyncio.sleep(0)
    alone.cancel()  # the call in flight alone: its caller's cancel reaches it directly
    await upstream.until(2)  # the three queued ones left as one merged call
    assert upstream.cancelled == 1
    merged[0].cancel()
    merged[1].cancel()
    await asyncio.sleep(0.01)
    assert upstream.cancelled == 1, "one caller is still waiting: the merged call goes on"
    merged[2].cancel()
    await asyncio.sleep(0.01)
    assert upstream.cancelled == 2
    for task in (alone, *merged):
        assert task.cancelled()


@pytest.mark.parametrize("gather_turns", [0, 8])
async def test_a_returned_call_waits_turns_for_arrivals_only_when_told(
    gather_turns: int,
) -> None:
    """A busy gateway takes requests in over several loop turns; with ``gather_turns`` the
    call after a returned one waits those turns and carries what arrived in them."""
    upstream = Upstream(gated=True)
    merger = RequestMerger(forward=upstream, max_in_flight=1, gather_turns=gather_turns)

    def submit(i: int) -> asyncio.Task[pb.ModelInferResponse]:
        x = np.full((1, 4), float(i), np.float32)
        return asyncio.create_task(merger.infer(make(x, f"r{i}"), 3, 64, within(5.0)))

    tasks = [submit(0)]
    await upstream.until(1)  # r0 is out alone; r1, r2 queue behind it
    tasks += [submit(1), submit(2)]
    await asyncio.sleep(0)

    async def trickle() -> None:  # one arrival a loop turn, as a saturated loop reads them
        for i in range(3, 7):
            tasks.append(submit(i))
            await asyncio.sleep(0)

    upstream.gate.clear()
    trickling = asyncio.create_task(trickle())
    upstream.gate.set()
    await trickling
    await upstream.until(2)
    await asyncio.sleep(0.05)  # the lone trickled ones (without gathering) have left too
    upstream.gate.set()
    responses = await asyncio.gather(*tasks)
    for i, response in enumerate(responses):
        np.testing.assert_array_equal(decode_outputs(response)["x_out"], np.full((1, 4), 2 * i))
    second = upstream.calls[1].inputs[0].shape[0]
    if gather_turns:
        assert second == 6, "the trickled requests should join the call after the first"
    else:
        assert second == 2, "without gathering the next call leaves at once"
    # Idle: a returned call with nothing queued sends nothing and waits for nothing.
    assert await merger.infer(make(np.ones((1, 4), np.float32), "z"), 3, 64, within(5.0))
