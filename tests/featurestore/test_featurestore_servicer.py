"""The FeatureStore gRPC service end to end: real server, real interceptor, both backends."""

from __future__ import annotations

import struct
from typing import Any

import grpc
import numpy as np
import pytest
from featurestore_testkit import now_ms, user_columns

from modelserve.proto.modelserve.v1 import featurestore_pb2 as fs
from modelserve.tensors import from_proto_tensor, to_proto_tensor

Stub = Any  # featurestore_pb2_grpc.FeatureStoreAsyncStub


def users_proto(**overrides: Any) -> fs.FeatureView:
    msg = fs.FeatureView(
        name="users",
        entity_key="user_id",
        entity_type="STRING",
        ttl_seconds=60,
        description="demo users",
        features=[
            fs.Feature(name="score", datatype="FP32", default_raw=struct.pack("<f", 1.5)),
            fs.Feature(name="counts", datatype="INT64", shape=[3]),
            fs.Feature(name="country", datatype="BYTES"),
        ],
    )
    for key, value in overrides.items():
        setattr(msg, key, value)
    return msg


def write_request(keys: list[str], base: float = 0.0, **kw: Any) -> fs.WriteOnlineFeaturesRequest:
    tensors = [to_proto_tensor(n, a) for n, a in user_columns(len(keys), base).items()]
    return fs.WriteOnlineFeaturesRequest(view="users", entity_keys=keys, values=tensors, **kw)


async def _code(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details() or ""


async def test_apply_get_and_list(stub: Stub) -> None:
    applied = await stub.ApplyFeatureView(users_proto())
    assert applied == users_proto()
    assert await stub.GetFeatureView(fs.GetFeatureViewRequest(name="users")) == users_proto()
    await stub.ApplyFeatureView(users_proto(name="alpha"))
    listed = await stub.ListFeatureViews(fs.ListFeatureViewsRequest())
    assert [v.name for v in listed.views] == ["alpha", "users"]


async def test_write_then_lookup_over_grpc(stub: Stub) -> None:
    await stub.ApplyFeatureView(users_proto())
    t = now_ms()
    written = await stub.WriteOnlineFeatures(
        write_request(["a", "b"], base=7, event_unix_ms=[t, t - 3_600_000])
    )
    assert written.written == 2

    reply = await stub.GetOnlineFeatures(
        fs.GetOnlineFeaturesRequest(view="users", entity_keys=["a", "b", "zz"])
    )
    score, counts, country = reply.results
    assert (score.values.name, score.values.datatype, list(score.values.shape)) == (
        "score",
        "FP32",
        [3],
    )
    np.testing.assert_array_equal(from_proto_tensor(score.values), [7.0, 1.5, 1.5])
    assert list(counts.values.shape) == [3, 3]
    np.testing.assert_array_equal(from_proto_tensor(counts.values)[0], [7, 8, 9])
    assert from_proto_tensor(country.values).tolist() == [b"c7-0", b"", b""]
    assert list(score.status) == [fs.PRESENT, fs.EXPIRED, fs.MISSING]


async def test_unknown_view_is_not_found_on_every_rpc(stub: Stub) -> None:
    calls = [
        stub.GetFeatureView(fs.GetFeatureViewRequest(name="ghost")),
        stub.GetOnlineFeatures(fs.GetOnlineFeaturesRequest(view="ghost", entity_keys=["a"])),
        stub.WriteOnlineFeatures(
            fs.WriteOnlineFeaturesRequest(view="ghost", entity_keys=["a"], values=[])
        ),
        stub.GetMaterializationState(fs.GetMaterializationStateRequest(view="ghost")),
        stub.CommitMaterialization(fs.CommitMaterializationRequest(view="ghost", up_to_unix_ms=1)),
        stub.DeleteFeatureView(fs.DeleteFeatureViewRequest(name="ghost")),
    ]
    for call in calls:
        code, details = await _code(call)
        assert code == grpc.StatusCode.NOT_FOUND
        assert "feature view 'ghost' not found" in details


async def test_delete_view_removes_it_and_its_rows_only(stub: Stub) -> None:
    await stub.ApplyFeatureView(users_proto())
    await stub.ApplyFeatureView(users_proto(name="alpha"))
    keys = [f"k{i}" for i in range(7000)]  # more than one Redis SCAN page
    await stub.WriteOnlineFeatures(write_request(keys, base=1))
    other = write_request(["a", "b"], base=2)
    other.view = "alpha"
    await stub.WriteOnlineFeatures(other)
    reply = await stub.DeleteFeatureView(fs.DeleteFeatureViewRequest(name="users"))
    assert reply.deleted_rows == len(keys)
    code, _ = await _code(stub.GetFeatureView(fs.GetFeatureViewRequest(name="users")))
    assert code == grpc.StatusCode.NOT_FOUND
    listed = await stub.ListFeatureViews(fs.ListFeatureViewsRequest())
    assert [v.name for v in listed.views] == ["alpha"]
    await stub.ApplyFeatureView(users_proto())  # the name again: a new, empty view
    again = await stub.GetOnlineFeatures(
        fs.GetOnlineFeaturesRequest(view="users", entity_keys=keys[:3])
    )
    assert list(again.results[0].status) == [fs.MISSING] * 3
    kept = await stub.GetOnlineFeatures(
        fs.GetOnlineFeaturesRequest(view="alpha", entity_keys=["a"])
    )
    assert list(kept.results[0].status) == [fs.PRESENT]


async def test_unknown_feature_is_not_found(stub: Stub) -> None:
    await stub.ApplyFeatureView(users_proto())
    code, details = await _code(
        stub.GetOnlineFeatures(
            fs.GetOnlineFeaturesRequest(view="users", features=["height"], entity_keys=["a"])
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert "has no feature 'height'" in details

    request = write_request(["a"])
    request.values.append(to_proto_tensor("height", np.zeros(1, np.float32)))
    code, details = await _code(stub.WriteOnlineFeatures(request))
    assert (code, "has no feature 'height'" in details) == (grpc.StatusCode.NOT_FOUND, True)


async def test_bad_requests_are_invalid_argument(stub: Stub) -> None:
    await stub.ApplyFeatureView(users_proto(name="accounts", entity_type="INT64"))
    code, details = await _code(
        stub.GetOnlineFeatures(fs.GetOnlineFeaturesRequest(view="accounts", entity_keys=["x1"]))
    )
    assert (code, "entity key 'x1'" in details) == (grpc.StatusCode.INVALID_ARGUMENT, True)
    request = write_request(["12", "x1"])
    request.view = "accounts"
    code, details = await _code(stub.WriteOnlineFeatures(request))
    assert (code, "entity key 'x1'" in details) == (grpc.StatusCode.INVALID_ARGUMENT, True)

    await stub.ApplyFeatureView(users_proto())
    request = write_request(["a"])
    request.values[0].raw = request.values[0].raw[:2]  # score: 2 bytes where 4 are needed
    code, details = await _code(stub.WriteOnlineFeatures(request))
    assert (code, "'score'" in details) == (grpc.StatusCode.INVALID_ARGUMENT, True)

    request = write_request(["a"])
    request.values[1].CopyFrom(to_proto_tensor("counts", np.zeros((1, 3), np.int32)))
    code, details = await _code(stub.WriteOnlineFeatures(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "feature 'counts': expected INT64 values, got INT32" in details

    code, details = await _code(stub.ApplyFeatureView(users_proto(name="../up")))
    assert (code, "invalid feature view name" in details) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        True,
    )


async def test_incompatible_view_change_is_failed_precondition(stub: Stub) -> None:
    await stub.ApplyFeatureView(users_proto())
    changed = users_proto()
    changed.features[1].shape[:] = [4]
    code, details = await _code(stub.ApplyFeatureView(changed))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "feature 'counts' cannot change from INT64 [3] to INT64 [4]" in details

    grown = users_proto()
    grown.features.add(name="age", datatype="INT32")
    assert len((await stub.ApplyFeatureView(grown)).features) == 4
