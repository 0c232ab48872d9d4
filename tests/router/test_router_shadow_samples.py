"""The store of shadow disagreements (router/shadow_samples.py): bounded per model and in
models, a uniform sample of a flood (not its first or last entries), entries cut short and
saying so, entries built only when kept; and, through the router's ModelInfer against the
fake worker of test_router_shadow, entries with the caller's request id, the versions, both
answers and the difference, and failures kept apart."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest
from test_router_shadow import FakeWorker, make_router, worker_address  # noqa: F401
from testsupport import eventually

from modelserve.calls import Call
from modelserve.deadlines import Deadline
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.modelserve.v1 import registry_pb2, router_pb2
from modelserve.tensors import encode_inputs, encode_outputs
from router.shadow_samples import (
    MAX_OUTPUTS,
    MAX_TEXT,
    MAX_VALUES,
    ShadowSamples,
    entry,
    input_hash,
)
from router.shadow_stats import compare_outputs


def numbered(n: int) -> router_pb2.ShadowDisagreement:
    return router_pb2.ShadowDisagreement(request_ids=[str(n)], unix_ms=n)


def test_each_model_keeps_at_most_its_bound_and_counts_what_it_saw() -> None:
    store = ShadowSamples(max_disagreements=10, max_failures=3, rng=random.Random(1))
    for n in range(1000):
        store.disagreement("m", lambda n=n: numbered(n))  # type: ignore[misc]
        store.failure("m", lambda n=n: numbered(n))  # type: ignore[misc]
    report = store.report("m")
    assert len(report.entries) == 13
    assert (report.disagreements_seen, report.failures_seen) == (1000, 1000)
    assert (report.disagreements_capacity, report.failures_capacity) == (10, 3)
    times = [e.unix_ms for e in report.entries]
    assert times == sorted(times, reverse=True)  # newest first
    assert len(store.report("m", limit=4).entries) == 4
    assert store.report("m", limit=4).entries[0].unix_ms == times[0]
    assert not store.report("other").entries  # a model never offered: empty


def test_a_flood_is_sampled_uniformly_not_only_its_first_or_last() -> None:
    store = ShadowSamples(max_disagreements=100, rng=random.Random(7))
    for n in range(20_000):
        store.disagreement("m", lambda n=n: numbered(n))  # type: ignore[misc]
    kept = sorted(int(e.request_ids[0]) for e in store.report("m").entries)
    assert len(kept) == 100
    # Uniform over 0..19999: some from each quarter, median near 10000 (sd ~1000).
    assert all(any(q * 5000 <= k < (q + 1) * 5000 for k in kept) for q in range(4))
    assert 6000 < float(np.median(kept)) < 14_000


def test_entries_are_built_only_when_kept() -> None:
    store = ShadowSamples(max_disagreements=5, rng=random.Random(3))
    built = 0

    def build() -> router_pb2.ShadowDisagreement:
        nonlocal built
        built += 1
        return numbered(built)

    kept = sum(store.disagreement("m", build) for _ in range(10_000))
    assert built == kept
    # Expected 5 + 5 * (H(10000) - H(5)) ~ 40: far fewer builds than offers.
    assert 5 < built < 120


def test_the_number_of_models_is_bounded_least_recently_written_first() -> None:
    store = ShadowSamples(max_models=2)
    store.disagreement("a", lambda: numbered(1))
    store.disagreement("b", lambda: numbered(2))
    store.disagreement("a", lambda: numbered(3))  # a is now the most recent
    store.disagreement("c", lambda: numbered(4))  # b goes
    assert store.report("b").disagreements_seen == 0 and not store.report("b").entries
    assert store.report("a").disagreements_seen == 2
    assert store.report("c").disagreements_seen == 1


def answer(**outputs: np.ndarray) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name="m")
    encode_outputs(response, outputs)
    return response


def test_an_entry_cuts_outputs_short_and_says_so() -> None:
    caller = pb.ModelInferRequest(model_name="m")
    encode_inputs(caller, {"x": np.arange(6, dtype=np.float32).reshape(2, 3)})
    primary = answer(p=np.zeros((10, 10), np.float32), small=np.array([1.0, 2.0], np.float32))
    shadow = answer(p=np.full((10, 10), 0.5, np.float32), small=np.array([1.0, 2.5], np.float32))
    comparison = compare_outputs(primary, shadow, 1e-6)
    found = entry(
        caller=caller,
        request_ids=["req-1"],
        primary_version=1,
        shadow_version=2,
        primary=primary,
        shadow=shadow,
        primary_s=0.001,
        shadow_s=0.002,
        comparison=comparison,
    )
    assert list(found.request_ids) == ["req-1"] and not found.request_id_generated
    assert (found.primary_version, found.shadow_version) == (1, 2)
    assert found.max_abs_diff == pytest.approx(0.5) and found.max_diff_output == "p"
    assert found.reason == "" and found.error == "" and found.unix_ms > 0
    p_primary, small_primary = found.primary_outputs
    p_shadow, _ = found.shadow_outputs
    assert p_primary.name == "p" and list(p_primary.shape) == [10, 10]
    assert p_primary.total_values == 100 and p_primary.truncated
    assert len(p_primary.values) == MAX_VALUES and list(p_shadow.values) == [0.5] * MAX_VALUES
    assert not small_primary.truncated and list(small_primary.values) == [1.0, 2.0]
    assert not found.outputs_truncated
    # The hash is sha256 over the raw input contents, short.
    raw = np.arange(6, dtype=np.float32).tobytes()
    assert found.input_sha256 == hashlib.sha256(raw).hexdigest()[:16]
    assert len(found.SerializeToString()) < 2000


def test_many_outputs_long_text_and_no_request_id() -> None:
    many = answer(**{f"o{i}": np.zeros(1, np.float32) for i in range(MAX_OUTPUTS + 3)})
    words = answer(w=np.array([b"x" * 500, "é".encode()], object))
    found = entry(
        caller=pb.ModelInferRequest(model_name="m"),
        request_ids=[],
        primary_version=1,
        shadow_version=2,
        primary=many,
        shadow=words,
        primary_s=0.0,
        shadow_s=0.0,
        comparison=compare_outputs(many, words, 0.0),
    )
    assert len(found.primary_outputs) == MAX_OUTPUTS and found.outputs_truncated
    (w,) = found.shadow_outputs
    assert len(w.text_values[0]) == MAX_TEXT and w.text_values[0].endswith("…")
    assert w.text_values[1] == "é"
    assert found.reason.startswith("output names differ")
    assert found.request_id_generated and len(found.request_ids) == 1 and found.request_ids[0]


def test_the_input_hash_covers_typed_contents_without_raw_ones() -> None:
    a = pb.ModelInferRequest(model_name="m")
    a.inputs.add(name="x", datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0)
    b = pb.ModelInferRequest(model_name="m")
    b.inputs.add(name="x", datatype="FP32", shape=[1]).contents.fp32_contents.append(2.0)
    assert input_hash(a) != input_hash(b) and len(input_hash(a)) == 16


def test_comparison_names_the_output_and_why() -> None:
    a = answer(p=np.zeros((2, 1), np.float32), q=np.zeros((2, 1), np.float32))
    b = answer(p=np.zeros((2, 1), np.float32), q=np.ones((2, 1), np.float32))
    found = compare_outputs(a, b, 0.1)
    assert (found.agree, found.max_abs_diff, found.output) == (False, 1.0, "q")
    other = answer(p=np.zeros((1, 2), np.float32), q=np.zeros((2, 1), np.float32))
    shaped = compare_outputs(a, other, 1.0)
    assert shaped.output == "p" and shaped.reason == "shapes differ: [2, 1] vs [1, 2]"


# ---- through the router's ModelInfer ------------------------------------------------------


async def test_the_router_keeps_disagreements_with_the_callers_request_id(
    worker_address: tuple[FakeWorker, str],  # noqa: F811
) -> None:
    worker, address = worker_address
    worker.offset = 0.25
    router = await make_router(worker, address, registry_pb2.Shadow(target="2", fraction=1.0))
    for x in range(3):
        request = pb.ModelInferRequest(model_name="scorer")
        encode_inputs(request, {"x": np.array([[float(x)]], np.float32)})
        call = Call(Deadline.after(2.0), (("x-request-id", f"req-{x}"),))
        await router.plane.infer(request, call)

    async def kept() -> router_pb2.ShadowDisagreementsResponse:
        report = router.mirror.samples.report("scorer")
        assert len(report.entries) == 3
        return report

    report = await eventually(kept, timeout=5)
    assert report.disagreements_seen == 3 and report.failures_seen == 0
    by_id = {e.request_ids[0]: e for e in report.entries}
    assert set(by_id) == {"req-0", "req-1", "req-2"}
    one = by_id["req-1"]
    assert (one.primary_version, one.shadow_version) == (1, 2)
    assert one.max_diff_output == "score" and one.max_abs_diff == pytest.approx(0.25)
    assert list(one.primary_outputs[0].values) == [2.0]
    assert list(one.shadow_outputs[0].values) == [2.25]
    assert one.primary_latency_s > 0 and one.shadow_latency_s > 0
    assert one.input_sha256 == hashlib.sha256(np.float32(1.0).tobytes()).hexdigest()[:16]


@pytest.mark.parametrize("mode", ["fail", "hang"])
async def test_the_router_keeps_failures_apart_with_the_error(
    worker_address: tuple[FakeWorker, str],  # noqa: F811
    mode: str,
) -> None:
    worker, address = worker_address
    worker.mode = mode
    extra = {"min_timeout_s": 5.0} if mode == "fail" else {}  # as in test_router_shadow
    router = await make_router(
        worker, address, registry_pb2.Shadow(target="2", fraction=1.0), **extra
    )
    await router.infer(1.0)  # no x-request-id: the entry gets a generated one

    async def kept() -> router_pb2.ShadowDisagreement:
        (found,) = router.mirror.samples.report("scorer").entries
        return found

    found = await eventually(kept, timeout=5)
    if mode == "fail":
        assert found.error.startswith("INTERNAL: ") and not found.timeout  # details stripped
    else:
        assert found.timeout and found.error
    assert found.request_id_generated and not found.shadow_outputs
    assert list(found.primary_outputs[0].values) == [2.0]
    report = router.mirror.samples.report("scorer")
    assert (report.disagreements_seen, report.failures_seen) == (0, 1)


def test_the_cli_merges_routers_newest_first_and_prints_both_answers() -> None:
    from modelserve.cli.shadow import RouterAnswer, merged, render, routers_of

    primary = answer(p=np.zeros(20, np.float32))
    shadow = answer(p=np.ones(20, np.float32))

    def one(request_id: str, unix_ms: int, **extra: object) -> router_pb2.ShadowDisagreement:
        found = entry(
            caller=pb.ModelInferRequest(),
            request_ids=[request_id],
            primary_version=1,
            shadow_version=2,
            primary=primary,
            shadow=None if extra else shadow,
            primary_s=0.001,
            shadow_s=0.002,
            comparison=None if extra else compare_outputs(primary, shadow, 0.0),
            **extra,  # type: ignore[arg-type]
        )
        found.unix_ms = unix_ms
        return found

    a = router_pb2.ShadowDisagreementsResponse(
        entries=[one("old", 1000)], disagreements_seen=5, disagreements_capacity=256
    )
    b = router_pb2.ShadowDisagreementsResponse(
        entries=[one("new", 3000), one("failed", 2000, error="INTERNAL: broke")],
        disagreements_seen=1,
        failures_seen=1,
    )
    answers = [RouterAnswer("r1:1", a), RouterAnswer("r2:1", b)]
    assert [e.request_ids[0] for _, e in merged(answers, 0)] == ["new", "failed", "old"]
    assert [e.request_ids[0] for _, e in merged(answers, 2)] == ["new", "failed"]
    lines = render("m", answers, 0)
    assert lines[0].startswith("m: 6 disagreements and 1 shadow failures seen on 2 router(s)")
    assert "REQUEST ID" in lines[1] and "DIFF" in lines[1]
    assert "new" in lines[2] and "r2:1" in lines[2] and "v1 -> v2" in lines[2]
    assert lines[2].endswith("1 in p")
    assert lines[3].strip().startswith("primary p FP32[20]: [0, 0,") and "(16 of 20)" in lines[3]
    assert lines[4].strip().startswith("shadow  p FP32[20]: [1, 1,")
    assert any("error: INTERNAL: broke" in line for line in lines)
    assert routers_of([]) == ["127.0.0.1:8101"]
    assert routers_of(["a:1,b:1", "c:1", "a:1"]) == ["a:1", "b:1", "c:1"]


async def test_the_rpc_says_not_found_for_an_unknown_model_and_checks_the_limit() -> None:
    from modelserve.catalog.replica import Catalog
    from modelserve.discovery.static import StaticDiscovery
    from modelserve.errors import InvalidArgumentError, NotFoundError
    from modelserve.workers import WorkerPool
    from router.control_servicer import RouterControlServicer

    catalog = Catalog(StaticDiscovery({}))
    known = registry_pb2.Model(name="m", versions=[registry_pb2.ModelVersion(model="m", version=1)])
    catalog.apply(registry_pb2.WatchEvent(snapshot=True, models=[known], revision=1))
    samples = ShadowSamples()
    for n in range(3):
        samples.disagreement("m", lambda n=n: numbered(n))  # type: ignore[misc]
    servicer = RouterControlServicer(
        catalog=catalog, pool=WorkerPool(StaticDiscovery({})), samples=samples
    )
    ask = router_pb2.ShadowDisagreementsRequest
    answer = await servicer.ShadowDisagreements(ask(model="m", limit=2), None)
    assert [e.unix_ms for e in answer.entries] == [2, 1] and answer.disagreements_seen == 3
    with pytest.raises(NotFoundError):
        await servicer.ShadowDisagreements(ask(model="nope"), None)
    with pytest.raises(InvalidArgumentError):
        await servicer.ShadowDisagreements(ask(model="m", limit=-1), None)
