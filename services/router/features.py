"""Online features for the router: cache first, then one GetOnlineFeatures for every miss.

The call gets RELIABILITY.md's feature budget, min(50 ms, 20 % of the caller's remaining
deadline), so a slow store fails one request fast instead of eating its whole deadline; it
carries the trace context, so the feature store's span is a child of the router's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import grpc
import numpy as np

from modelserve.calls import Call, Hop
from modelserve.channels import EndpointSet
from modelserve.discovery import Discovery
from modelserve.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    ModelServeError,
    UnavailableError,
    from_rpc_error,
)
from modelserve.proto.modelserve.v1 import featurestore_pb2, featurestore_pb2_grpc
from modelserve.tensors import from_proto_tensor
from router.feature_cache import FeatureCache, FeatureRow
from router.metrics import FEATURE_CACHE_HITS, FEATURE_CACHE_MISSES, FEATURE_LOOKUP_SECONDS

log = logging.getLogger(__name__)

# A lookup started with less than this left cannot answer in time: fail before sending it.
MIN_BUDGET_S = 0.001


async def follow_feature_stores(discovery: Discovery, endpoints: EndpointSet) -> None:
    """Keep ``endpoints`` equal to the feature store instances, connecting to new ones at
    once so that no request's 50 ms budget pays for a TCP and HTTP/2 handshake."""
    async for instances in discovery.watch("featurestore"):
        added, _removed = await endpoints.update(i.address for i in instances)
        for endpoint in added:
            endpoint.channel.get_state(try_to_connect=True)


class FeatureClient:
    def __init__(self, *, endpoints: EndpointSet, cache: FeatureCache, budget_cap_s: float) -> None:
        self._endpoints = endpoints
        self._cache = cache
        self._budget_cap_s = budget_cap_s
        # No retry: the budget is too short for a second try; a slow store is ejected.
        self._hop = Hop(
            "feature store",
            attempts=1,
            eject_on=(grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED),
        )

    async def lookup(
        self,
        view: str,
        features: tuple[str, ...],
        keys: Sequence[str],
        call: Call,
    ) -> dict[str, FeatureRow]:
        """Each distinct key's row (one flat array per feature, in ``features`` order)."""
        rows: dict[str, FeatureRow] = {}
        missing: list[str] = []
        for key in dict.fromkeys(keys):
            row = self._cache.get((view, features, key))
            if row is None:
                missing.append(key)
            else:
                rows[key] = row
        FEATURE_CACHE_HITS.labels(view).inc(len(rows))
        FEATURE_CACHE_MISSES.labels(view).inc(len(missing))
        if missing:
            fetched = await self._fetch(view, features, missing, call)
            self._cache.put_many(((view, features, k), row) for k, row in fetched.items())
            rows.update(fetched)
        return rows

    async def _fetch(
        self,
        view: str,
        features: tuple[str, ...],
        keys: list[str],
        call: Call,
    ) -> dict[str, FeatureRow]:
        budget = call.deadline.side_call(self._budget_cap_s)
        if budget < MIN_BUDGET_S:
            raise DeadlineExceededError("deadline exceeded before features could be looked up")
        request = featurestore_pb2.GetOnlineFeaturesRequest(
            view=view, features=features, entity_keys=keys
        )
        start = time.perf_counter()
        try:
            response = await self._hop.unary(
                self._endpoints.pick,
                lambda e: e.hot_stub(featurestore_pb2_grpc.FeatureStoreStub).GetOnlineFeatures,
                request,
                call,
                timeout=budget,
                translate=lambda exc: _lookup_error(exc, view, budget),
                none_left="no feature store instance is available for enrichment",
            )
        finally:
            FEATURE_LOOKUP_SECONDS.labels(view).observe(time.perf_counter() - start)
        return _rows(response, view, features, keys)


def _rows(
    response: featurestore_pb2.GetOnlineFeaturesResponse,
    view: str,
    features: tuple[str, ...],
    keys: list[str],
) -> dict[str, FeatureRow]:
    if len(response.results) != len(features):
        raise FailedPreconditionError(
            f"feature store answered {len(response.results)} features of view {view!r}, "
            f"expected {len(features)}"
        )
    columns: list[np.ndarray] = []
    for name, result in zip(features, response.results, strict=True):
        values = from_proto_tensor(result.values)
        if not values.shape or values.shape[0] != len(keys):
            raise FailedPreconditionError(
                f"feature store answered feature {name!r} of view {view!r} with shape "
                f"{list(values.shape)}, expected {len(keys)} rows"
            )
        columns.append(values.reshape(len(keys), -1))
    # Copies: a cached row must not keep the whole response's buffer alive.
    return {key: tuple(column[i].copy() for column in columns) for i, key in enumerate(keys)}


def _lookup_error(exc: grpc.RpcError, view: str, budget: float) -> ModelServeError:
    code = exc.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        # Our own budget ran out, not the caller's deadline: retryable.
        return UnavailableError(
            f"feature store did not answer view {view!r} within the {budget * 1000:.0f} ms "
            "feature budget; retry"
        )
    if code == grpc.StatusCode.NOT_FOUND:
        # The version's config names a view or feature the store lacks: not the caller's fault.
        return FailedPreconditionError(
            f"enrichment from view {view!r} failed: {exc.details()}; fix the feature view or "
            "the version's feature_inputs"
        )
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgumentError(f"entity keys for view {view!r}: {exc.details()}")
    return from_rpc_error(exc, "feature store")
