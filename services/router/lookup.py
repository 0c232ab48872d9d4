"""Answering models of kind lookup (precomputed predictions) from the feature store.

A lookup version (registry.proto LookupConfig) has no worker: the router reads every row of a
call (one client request, or a batch the gateway merged) with one GetOnlineFeatures for the
call's distinct keys, casts each mapped feature to its output's datatype and shape, and adds
``lookup_status`` per row: 1 present, 2 missing, 3 expired (a row's status is its least
fresh feature's; missing and expired rows carry the features' defaults, as the store answers
them). The feature cache is bypassed: it does not keep statuses, and a prediction table is
the answer itself, not an input to one.

The call gets the caller's remaining deadline (less the per-hop margin), not the enrichment
budget: here the store's answer is the whole answer.
"""

from __future__ import annotations

import grpc
import numpy as np

from modelserve.calls import Call, Hop
from modelserve.catalog.lookups import STATUS_OUTPUT, is_lookup
from modelserve.catalog.replica import Catalog
from modelserve.channels import EndpointSet
from modelserve.errors import (
    FailedPreconditionError,
    ModelServeError,
    from_rpc_error,
)
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.modelserve.v1 import (
    common_pb2,
    featurestore_pb2,
    featurestore_pb2_grpc,
    registry_pb2,
)
from modelserve.tensors import (
    DTYPES,
    TensorSpec,
    decode_inputs,
    encode_outputs,
    from_proto_tensor,
    validate_infer_request,
)
from router.entity_keys import entity_keys
from router.forwarding import ToVersion

DEFAULT_TIMEOUT_S = 5.0  # a caller without a deadline still gets an answer or an error


class LookupAnswerer:
    def __init__(self, *, endpoints: EndpointSet) -> None:
        self._endpoints = endpoints
        self._hop = Hop(
            "feature store",
            attempts=1,
            default_timeout=DEFAULT_TIMEOUT_S,
            eject_on=(grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED),
        )

    def ready(self) -> bool:
        """A lookup is ready while a feature store instance is known and not ejected."""
        return self._endpoints.pick() is not None

    def or_forward(self, forward: ToVersion) -> ToVersion:
        """An infer function that answers lookups here and sends the rest to ``forward``:
        composite members are routed calls that skip the servicer's own branch."""

        async def infer(
            request: pb.ModelInferRequest,
            version: registry_pb2.ModelVersion,
            call: Call,
        ) -> pb.ModelInferResponse:
            if is_lookup(version):
                return await self.infer(request, version, call)
            return await forward(request, version, call)

        return infer

    def ready_versions(self, catalog: Catalog) -> set[tuple[str, int]]:
        """Every lookup version, while a feature store can answer them (RepositoryIndex)."""
        if not self.ready():
            return set()
        return {
            (v.model, v.version)
            for m in catalog.models.values()
            for v in m.versions
            if is_lookup(v)
        }

    async def infer(
        self,
        request: pb.ModelInferRequest,
        version: registry_pb2.ModelVersion,
        call: Call,
    ) -> pb.ModelInferResponse:
        lookup = version.config.lookup
        outputs = [_spec(s) for s in version.outputs]
        # The gateway validated already, but the router may be called directly.
        validate_infer_request(
            request, [_spec(s) for s in version.inputs], outputs, version.config.max_batch_size
        )
        keys = entity_keys(lookup.entity_input, decode_inputs(request)[lookup.entity_input])
        distinct = list(dict.fromkeys(keys))
        features = list(dict.fromkeys(o.feature or o.name for o in lookup.outputs))
        results = await self._fetch(lookup.view, features, distinct, call) if distinct else {}
        rows = np.asarray(_positions(keys, distinct), dtype=np.int64)
        wanted = {o.name for o in request.outputs} or {s.name for s in outputs}
        arrays: dict[str, np.ndarray] = {}
        datatypes: dict[str, str] = {}
        for out in lookup.outputs:
            if out.name in wanted:
                feature = out.feature or out.name
                values = _column(results.get(feature), out, len(distinct), lookup.view)
                arrays[out.name] = values[rows]
                datatypes[out.name] = out.datatype
        if STATUS_OUTPUT in wanted:
            status = np.ones((len(distinct), 1), dtype=np.int32)
            for result in results.values():  # the least fresh feature's status per row
                status = np.maximum(status, np.asarray(result.status, np.int32).reshape(-1, 1))
            arrays[STATUS_OUTPUT] = status[rows]
            datatypes[STATUS_OUTPUT] = "INT32"
        response = pb.ModelInferResponse(
            model_name=version.model, model_version=str(version.version), id=request.id
        )
        encode_outputs(response, arrays, datatypes)
        return response

    async def _fetch(
        self,
        view: str,
        features: list[str],
        keys: list[str],
        call: Call,
    ) -> dict[str, featurestore_pb2.FeatureResult]:
        request = featurestore_pb2.GetOnlineFeaturesRequest(
            view=view, features=features, entity_keys=keys
        )
        reply = await self._hop.unary(
            self._endpoints.pick,
            lambda e: e.hot_stub(featurestore_pb2_grpc.FeatureStoreStub).GetOnlineFeatures,
            request,
            call,
            translate=lambda exc: _lookup_error(exc, view),
            none_left=f"no feature store instance is available for view {view!r}",
        )
        if len(reply.results) != len(features):
            raise FailedPreconditionError(
                f"feature store answered {len(reply.results)} features of view {view!r}, "
                f"expected {len(features)}"
            )
        for result in reply.results:
            if len(result.status) != len(keys):
                raise FailedPreconditionError(
                    f"feature store answered {len(result.status)} statuses for {len(keys)} keys"
                )
        return dict(zip(features, reply.results, strict=True))


def _spec(s: common_pb2.TensorSpec) -> TensorSpec:
    return TensorSpec(s.name, s.datatype, tuple(s.shape))


def _positions(keys: list[str], distinct: list[str]) -> list[int]:
    index = {k: i for i, k in enumerate(distinct)}
    return [index[k] for k in keys]


def _column(
    result: featurestore_pb2.FeatureResult | None,
    out: registry_pb2.LookupOutput,
    count: int,
    view: str,
) -> np.ndarray:
    """One output for the distinct keys: [count, *shape] in the output's datatype."""
    shape = (count, *out.shape)
    dtype = DTYPES[out.datatype].numpy
    if result is None:  # no rows at all
        return np.empty(shape, dtype=dtype)
    values = from_proto_tensor(result.values)
    feature = out.feature or out.name
    if values.size != int(np.prod(shape)):
        raise FailedPreconditionError(
            f"feature {feature!r} of view {view!r} has {values.size // max(count, 1)} elements "
            f"per row, but output {out.name!r} is {list(out.shape)}; push a lookup version "
            "whose output shape matches the view"
        )
    if (values.dtype == np.object_) != (dtype == np.object_):
        raise FailedPreconditionError(
            f"feature {feature!r} of view {view!r} cannot become {out.datatype} output "
            f"{out.name!r}: BYTES and numeric values do not convert"
        )
    return values.reshape(shape).astype(dtype, copy=False)


def _lookup_error(exc: grpc.RpcError, view: str) -> ModelServeError:
    if exc.code() == grpc.StatusCode.NOT_FOUND:
        # The version names a view or feature the store lacks: not the caller's fault.
        return FailedPreconditionError(
            f"lookup from view {view!r} failed: {exc.details()}; fix the feature view "
            "or push a new lookup version"
        )
    return from_rpc_error(exc, "feature store")
