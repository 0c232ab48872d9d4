"""Enrichment against a fake feature store on a real gRPC server: one lookup per view per call
(distinct keys only, misses only), rows assembled in declared order and cast to the model
input's datatype, entity inputs dropped unless the model takes them, the feature cache and its
counters, the budget, and the errors a caller or an operator would see."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY
from router_testkit import (
    FakeClock,
    FakeFeatureStore,
    FakeStoreServer,
    FakeView,
    call_within,
    spec,
    version,
)

from modelserve.calls import Call
from modelserve.channels import EndpointSet
from modelserve.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    UnavailableError,
)
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.modelserve.v1 import registry_pb2
from modelserve.tensors import (
    MERGED_REQUESTS_PARAMETER,
    decode_inputs,
    encode_inputs,
    encode_inputs_typed,
)
from modelserve.v2 import metadata as v2_metadata
from router.enrichment import Enricher
from router.feature_cache import FeatureCache
from router.features import FeatureClient

USERS = FakeView(
    defaults={"spend": np.float32(-1.0), "history": np.array([0.0, 0.0], np.float64)},
    rows={
        "a": {"spend": np.float32(1.5), "history": np.array([10.0, 11.0])},
        "b": {"spend": np.float32(2.5), "history": np.array([20.0, 21.0])},
        "7": {"spend": np.float32(7.0), "history": np.array([70.0, 71.0])},
    },
)
MERCHANTS = FakeView(defaults={"risk": np.float32(0.5)}, rows={"m1": {"risk": np.float32(0.9)}})
ACCOUNTS = FakeView(defaults={"balance": np.float32(0.0)}, int_keys=True)


def users_input(**changes: Any) -> registry_pb2.FeatureInput:
    fields: dict[str, Any] = {
        "model_input": "user_features",
        "view": "users",
        "features": ["spend", "history"],
        "entity_input": "user_id",
        "entity_datatype": "BYTES",
    }
    return registry_pb2.FeatureInput(**{**fields, **changes})


SCORER = version(
    inputs=[spec("amount", "FP32", [-1, 1]), spec("user_features", "FP32", [-1, 3])],
    feature_inputs=[users_input()],
)


class Kit:
    def __init__(self, server: FakeStoreServer, endpoints: EndpointSet) -> None:
        self.store = server.store
        self.clock = FakeClock()
        self.cache = FeatureCache(ttl_s=1.0, max_entries=100, clock=self.clock)
        self.enricher = Enricher(
            features=FeatureClient(endpoints=endpoints, cache=self.cache, budget_cap_s=0.05)
        )


@pytest.fixture
async def kit() -> AsyncIterator[Kit]:
    server = FakeStoreServer(
        FakeFeatureStore({"users": USERS, "merchants": MERCHANTS, "accounts": ACCOUNTS})
    )
    await server.server.start()
    endpoints = EndpointSet()
    await endpoints.update([server.address])
    try:
        yield Kit(server, endpoints)
    finally:
        await endpoints.close()
        await server.server.stop(grace=None)


def request(users: list[str], amounts: list[float] | None = None, **extra: Any) -> Any:
    out = pb.ModelInferRequest(model_name="scorer", model_version="1", id="req-1")
    out.outputs.add(name="score")
    arrays = {
        "amount": np.array(amounts or [1.0] * len(users), np.float32).reshape(-1, 1),
        "user_id": np.array([u.encode() for u in users], np.object_).reshape(-1, 1),
        **extra,
    }
    encode_inputs(out, arrays)
    return out


def counter(name: str, view: str) -> float:
    return REGISTRY.get_sample_value(name, {"view": view}) or 0.0


async def test_a_merged_batch_is_one_lookup_and_its_rows_are_assembled_in_order(kit: Kit) -> None:
    sent = request(["a", "b", "a", "ghost"], [1.0, 2.0, 3.0, 4.0])
    sent.parameters[MERGED_REQUESTS_PARAMETER].int64_param = 4
    enriched = await kit.enricher.enrich(sent, SCORER, Call())

    (call,) = kit.store.calls
    assert (call.view, list(call.features)) == ("users", ["spend", "history"])
    assert list(call.entity_keys) == ["a", "b", "ghost"]  # distinct keys, first-seen order
    assert [t.name for t in enriched.inputs] == ["amount", "user_features"]  # user_id dropped
    assert enriched.raw_input_contents[0] == sent.raw_input_contents[0]  # forwarded untouched
    got = decode_inputs(enriched)["user_features"]
    assert got.dtype == np.float32  # FP32 and FP64 features cast into the FP32 input
    np.testing.assert_array_equal(
        got,
        [[1.5, 10.0, 11.0], [2.5, 20.0, 21.0], [1.5, 10.0, 11.0], [-1.0, 0.0, 0.0]],
    )
    assert enriched.parameters[MERGED_REQUESTS_PARAMETER].int64_param == 4
    assert (enriched.id, [o.name for o in enriched.outputs]) == ("req-1", ["score"])


async def test_the_feature_cache_answers_within_its_ttl_and_counts(kit: Kit) -> None:
    hits, misses = (
        counter("modelserve_feature_cache_hits_total", "users"),
        counter("modelserve_feature_cache_misses_total", "users"),
    )
    first = await kit.enricher.enrich(request(["a", "b", "a"]), SCORER, Call())
    assert counter("modelserve_feature_cache_misses_total", "users") == misses + 2
    again = await kit.enricher.enrich(request(["b", "a"]), SCORER, Call())
    assert len(kit.store.calls) == 1  # both rows came from the cache
    assert counter("modelserve_feature_cache_hits_total", "users") == hits + 2
    assert decode_inputs(again)["user_features"].tolist() == [
        decode_inputs(first)["user_features"][i].tolist() for i in (1, 0)
    ]

    await kit.enricher.enrich(request(["a", "new"]), SCORER, Call())
    assert list(kit.store.calls[-1].entity_keys) == ["new"]  # only the miss goes out

    kit.clock.now += 1.01  # past the TTL: asked again
    await kit.enricher.enrich(request(["a"]), SCORER, Call())
    assert list(kit.store.calls[-1].entity_keys) == ["a"]
    assert len(kit.store.calls) == 3


async def test_one_lookup_per_view_and_entity_inputs_the_model_takes_are_kept(kit: Kit) -> None:
    two_views = version(
        inputs=[
            spec("uid", "INT64", [-1, 1]),
            spec("user_features", "FP32", [-1, 3]),
            spec("spend_only", "FP64", [-1, 1]),
            spec("merchant_features", "FP32", [-1, 1]),
        ],
        feature_inputs=[
            users_input(entity_input="uid", entity_input_is_model_input=True),
            users_input(model_input="spend_only", features=["spend"], entity_input="uid",
                        entity_input_is_model_input=True),
            users_input(model_input="merchant_features", view="merchants", features=["risk"],
                        entity_input="merchant"),
        ],
    )  # fmt: skip
    assert [(s.name, s.datatype) for s in v2_metadata.caller_inputs(two_views)] == [
        ("uid", "INT64"),
        ("merchant", "BYTES"),
    ]
    sent = pb.ModelInferRequest(model_name="scorer")
    encode_inputs(
        sent,
        {
            "uid": np.array([[7], [-3]], np.int64),
            "merchant": np.array([[b"m1"], [b"m2"]], np.object_),
        },
    )
    enriched = await kit.enricher.enrich(sent, two_views, Call())
    calls = {c.view: c for c in kit.store.calls}
    assert len(kit.store.calls) == 2  # users once for both of its model inputs
    assert list(calls["users"].entity_keys) == ["7", "-3"]  # integers as base-10 text
    assert list(calls["users"].features) == ["spend", "history"]
    got = decode_inputs(enriched)
    assert set(got) == {"uid", "user_features", "spend_only", "merchant_features"}
    assert got["spend_only"].dtype == np.float64
    np.testing.assert_array_equal(got["spend_only"], [[7.0], [-1.0]])
    np.testing.assert_allclose(got["merchant_features"], [[0.9], [0.5]], rtol=1e-6)
    np.testing.assert_array_equal(got["uid"], [[7], [-3]])


async def test_typed_contents_are_forwarded_as_raw(kit: Kit) -> None:
    sent = pb.ModelInferRequest(model_name="scorer")
    encode_inputs_typed(
        sent,
        {
            "amount": np.array([[4.0]], np.float32),
            "user_id": np.array([[b"b"]], np.object_),
        },
    )
    enriched = await kit.enricher.enrich(sent, SCORER, Call())
    assert len(enriched.raw_input_contents) == len(enriched.inputs) == 2
    got = decode_inputs(enriched)
    np.testing.assert_array_equal(got["amount"], [[4.0]])
    np.testing.assert_array_equal(got["user_features"], [[2.5, 20.0, 21.0]])


async def test_callers_mistakes_are_invalid_argument(kit: Kit) -> None:
    missing = pb.ModelInferRequest(model_name="scorer")
    encode_inputs(missing, {"amount": np.ones((1, 1), np.float32)})
    with pytest.raises(InvalidArgumentError, match="missing input 'user_id'"):
        await kit.enricher.enrich(missing, SCORER, Call())
    with pytest.raises(InvalidArgumentError, match="unknown input 'user_features'"):
        await kit.enricher.enrich(
            request(["a"], user_features=np.ones((1, 3), np.float32)), SCORER, None
        )
    with pytest.raises(InvalidArgumentError, match="UTF-8"):
        bad = pb.ModelInferRequest(model_name="scorer")
        encode_inputs(
            bad,
            {
                "amount": np.ones((1, 1), np.float32),
                "user_id": np.array([[b"\xff\xfe"]], np.object_),
            },
        )
        await kit.enricher.enrich(bad, SCORER, Call())
    assert not kit.store.calls


async def test_store_side_faults_name_what_to_fix(kit: Kit) -> None:
    narrow = version(
        inputs=[spec("amount", "FP32", [-1, 1]), spec("user_features", "FP32", [-1, 4])],
        feature_inputs=[users_input()],
        number=2,
    )
    with pytest.raises(
        FailedPreconditionError, match=r"4 wide .* sum to 3 \(spend: 1, history: 2\)"
    ):
        await kit.enricher.enrich(request(["a"]), narrow, Call())
    unknown = version(
        inputs=[spec("amount", "FP32", [-1, 1]), spec("user_features", "FP32", [-1, 3])],
        feature_inputs=[users_input(view="visitors")],
        number=3,
    )
    with pytest.raises(FailedPreconditionError, match="view 'visitors'"):
        await kit.enricher.enrich(request(["a"]), unknown, Call())


async def test_a_slow_store_fails_fast_within_the_budget(kit: Kit) -> None:
    kit.store.delay_s = 0.5
    with pytest.raises(UnavailableError, match="within the 20 ms feature budget"):
        # 100 ms left: the lookup may take 20 % of it.
        await kit.enricher.enrich(request(["a"]), SCORER, call_within(0.1))
    with pytest.raises(DeadlineExceededError):
        await kit.enricher.enrich(request(["b"]), SCORER, call_within(0.001))


async def test_no_store_is_unavailable() -> None:
    enricher = Enricher(
        features=FeatureClient(
            endpoints=EndpointSet(), cache=FeatureCache(ttl_s=1, max_entries=10), budget_cap_s=0.05
        )
    )
    with pytest.raises(UnavailableError, match="no feature store"):
        await enricher.enrich(request(["a"]), SCORER, Call())


def test_the_budget_is_min_of_50_ms_and_a_fifth_of_what_remains() -> None:
    assert Call().deadline.side_call() == 0.05
    assert call_within(None).deadline.side_call() == 0.05
    assert call_within(2.0).deadline.side_call() == 0.05
    assert call_within(0.1).deadline.side_call() == pytest.approx(0.02, abs=1e-3)


def test_the_feature_cache_is_bounded_least_recently_used_first() -> None:
    clock = FakeClock()
    cache = FeatureCache(ttl_s=10, max_entries=2, clock=clock)
    row = (np.zeros(1),)
    cache.put_many([(("v", "a"), row), (("v", "b"), row)])
    assert cache.get(("v", "a")) is row  # a is now the most recently used
    cache.put_many([(("v", "c"), row)])
    assert cache.get(("v", "b")) is None and cache.get(("v", "a")) is row and len(cache) == 2
    off = FeatureCache(ttl_s=0, max_entries=10, clock=clock)
    off.put_many([(("v", "a"), row)])
    assert off.get(("v", "a")) is None


def test_metadata_shows_the_callers_signature_only_when_asked() -> None:
    model = registry_pb2.Model(name="scorer", versions=[SCORER])
    caller = v2_metadata.model_metadata(model, SCORER, caller_view=True)
    assert [(t.name, t.datatype, list(t.shape)) for t in caller.inputs] == [
        ("amount", "FP32", [-1, 1]),
        ("user_id", "BYTES", [-1, 1]),
    ]
    own = v2_metadata.model_metadata(model, SCORER)  # a worker's answer: the model itself
    assert [t.name for t in own.inputs] == ["amount", "user_features"]
    config = v2_metadata.model_config(SCORER, caller_view=True).config
    assert [(i.name, list(i.dims)) for i in config.input] == [("amount", [1]), ("user_id", [1])]


async def test_keys_the_store_refuses_are_the_callers_mistake(kit: Kit) -> None:
    accounts = version(
        inputs=[spec("amount", "FP32", [-1, 1]), spec("user_features", "FP32", [-1, 1])],
        feature_inputs=[users_input(view="accounts", features=["balance"])],
        number=4,
    )
    with pytest.raises(InvalidArgumentError, match=r"view 'accounts'.*'abc'"):
        await kit.enricher.enrich(request(["12", "abc"]), accounts, Call())


async def test_an_empty_batch_needs_no_lookup(kit: Kit) -> None:
    enriched = await kit.enricher.enrich(request([]), SCORER, Call())
    assert not kit.store.calls
    assert decode_inputs(enriched)["user_features"].shape == (0, 3)
