"""Composite requests at the edge: checked against the composite's signature like any model's,
then sent to a router alone (not merged: a router runs the composite, and its members' calls
are the ones worth batching, which the workers do)."""

from __future__ import annotations

from grpc import aio

from gateway.upstream import RouterClient
from modelserve.catalog.composite_replica import CompositeCatalog
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.tensors import validate_infer_request


async def infer(
    composites: CompositeCatalog,
    routers: RouterClient,
    request: pb.ModelInferRequest,
    context: aio.ServicerContext,
) -> pb.ModelInferResponse:
    composites.get(request.model_name, request.model_version)  # NOT_FOUND at the edge
    signature = composites.signature(request.model_name)
    validate_infer_request(request, signature.inputs, signature.outputs, signature.max_batch_size)
    # Routing parameters stay: the router routes every member call with them.
    return await routers.call(lambda s: s.ModelInfer, request, context)
