"""The gateway tells the router where a policy-routed request may fall back (issue 10): the
policy's fallback version travels as x-modelserve-fallback; a caller's own header is dropped,
a request that named its version gets none, and merged calls keep their lane's fallback."""

from __future__ import annotations

from gateway.dataplane import _with_fallback
from gateway.merging import lane_key, merged_call
from modelserve.calls import FALLBACK_METADATA, Call
from modelserve.catalog.replica import Catalog
from modelserve.deadlines import Deadline
from modelserve.discovery.static import StaticDiscovery
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.modelserve.v1 import registry_pb2


def catalog(fallback: int) -> Catalog:
    found = Catalog(StaticDiscovery({}))
    versions = [registry_pb2.ModelVersion(model="m", version=n) for n in (1, 2)]
    model = registry_pb2.Model(name="m", versions=versions)
    split = [registry_pb2.SplitTarget(version=v, percent=50) for v in (1, 2)]
    model.policy.policy.CopyFrom(registry_pb2.RoutingPolicy(split=split, fallback_version=fallback))
    found.apply(registry_pb2.WatchEvent(snapshot=True, models=[model], revision=1))
    return found


def test_a_policy_routed_request_carries_the_fallback_and_a_named_one_does_not() -> None:
    v2 = registry_pb2.ModelVersion(model="m", version=2)
    spoofed = Call(Deadline(), ((FALLBACK_METADATA, "7"), ("x-request-id", "r1")))
    routed = _with_fallback(spoofed, catalog(1), v2, by_policy=True)
    assert routed.fallback() == 1 and routed.request_ids() == ["r1"]
    named = _with_fallback(spoofed, catalog(1), v2, by_policy=False)
    assert named.fallback() == 0 and named.request_ids() == ["r1"]  # the caller's is gone
    v1 = registry_pb2.ModelVersion(model="m", version=1)
    assert _with_fallback(Call(), catalog(1), v1, by_policy=True).fallback() == 0  # itself


def test_merged_calls_keep_their_lanes_fallback() -> None:
    request = pb.ModelInferRequest(model_name="m", model_version="2")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 1])
    request.raw_input_contents.append(b"\0\0\0\0")
    assert lane_key(request, 2, 1) != lane_key(request, 2, 0)

    class Item:
        def __init__(self, call: Call) -> None:
            self.call = call

    with_fallback = Call(Deadline(), ((FALLBACK_METADATA, "1"),))
    merged = merged_call([Item(with_fallback), Item(with_fallback)])  # type: ignore[list-item]
    assert merged.fallback() == 1
