"""T35 admin plane separation, the parts the auth tests do not cover: the registry's admin
RPCs are not served on the public inference port at all (UNIMPLEMENTED, whatever the
credential), and RepositoryModelLoad/Unload — served on the gateway for tritonclient's
load_model/unload_model — are refused UNIMPLEMENTED by the router and the worker, naming the
gateway, so nothing behind the edge can be told to change what is deployed."""

from __future__ import annotations

import grpc
import pytest
from grpc import aio

from modelserve.cli.suite import Suite
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import registry_pb2, registry_pb2_grpc


async def test_registry_writes_are_not_served_on_the_inference_port(suite: Suite) -> None:
    async with aio.insecure_channel(suite.address("gateway")) as channel:
        registry = registry_pb2_grpc.RegistryStub(channel)
        for call in (
            registry.SetLabel(registry_pb2.SetLabelRequest(model="tabular", label="x", version=1)),
            registry.ListModels(registry_pb2.ListModelsRequest()),
        ):
            with pytest.raises(aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED, refused.value
    # The same RPC on the registry's own listener is served.
    async with aio.insecure_channel(suite.address("registry")) as channel:
        listed = await registry_pb2_grpc.RegistryStub(channel).ListModels(
            registry_pb2.ListModelsRequest(), timeout=5
        )
        assert listed is not None


@pytest.mark.parametrize("service", ["router", "worker"])
async def test_repository_load_and_unload_are_refused_behind_the_edge(
    suite: Suite, service: str
) -> None:
    async with aio.insecure_channel(suite.address(service)) as channel:
        v2 = pb_grpc.GRPCInferenceServiceStub(channel)
        for call in (
            v2.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="tabular")),
            v2.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="tabular")),
        ):
            with pytest.raises(aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED, refused.value
            assert "served by the gateway" in (refused.value.details() or "")
