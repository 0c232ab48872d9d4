"""The Registry's routing-policy RPCs: decode, run the store on its thread, encode.

A mixin of ``RegistryServicer`` so policy changes go through the same single store thread as
every other write (one order of commits, one order of Watch events).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from grpc import aio

from modelserve.proto.modelserve.v1 import registry_pb2
from registry import convert
from registry.records import PolicyRevision

if TYPE_CHECKING:
    from registry.ownership import TrafficOwners
    from registry.policies.gate import PolicyGate, Written
    from registry.store import RegistryStore

log = logging.getLogger(__name__)

T = TypeVar("T")


class PolicyRpcs:
    if TYPE_CHECKING:  # provided by RegistryServicer
        _store: RegistryStore
        _gate: PolicyGate
        _owners: TrafficOwners

        async def _in_store(self, fn: Callable[..., T], *args: Any) -> T: ...

    async def SetPolicy(
        self, request: registry_pb2.SetPolicyRequest, context: aio.ServicerContext[Any, Any]
    ) -> registry_pb2.PolicyRevision:
        policy = convert.policy_from_proto(request.policy)
        written = await self._gate.write(
            request.model,
            policy,
            request.note,
            force=request.force,
            allow_signature_change=request.allow_signature_change,
        )
        return _answer(written)

    async def ClearPolicy(
        self, request: registry_pb2.ClearPolicyRequest, context: aio.ServicerContext[Any, Any]
    ) -> registry_pb2.PolicyRevision:
        # Back to the default resolution: versions that served before, so no readiness wait.
        await self._in_store(self._store.get_model, request.model)
        await self._owners.claim(request.model, "clearing the policy", force=request.force)
        record = await self._in_store(self._store.clear_policy, request.model, request.note)
        return _logged(record)

    async def RollbackPolicy(
        self, request: registry_pb2.RollbackPolicyRequest, context: aio.ServicerContext[Any, Any]
    ) -> registry_pb2.PolicyRevision:
        policy, note = await self._in_store(
            self._store.policy_to_restore, request.model, request.to_revision
        )
        written = await self._gate.write(
            request.model,
            policy,
            note,
            by="a policy rollback",
            force=request.force,
            allow_signature_change=request.allow_signature_change,
        )
        return _answer(written)

    async def ListPolicyHistory(
        self,
        request: registry_pb2.ListPolicyHistoryRequest,
        context: aio.ServicerContext[Any, Any],
    ) -> registry_pb2.ListPolicyHistoryResponse:
        records = await self._in_store(self._store.policy_history, request.model, request.limit)
        return registry_pb2.ListPolicyHistoryResponse(
            revisions=[convert.revision_to_proto(r) for r in records]
        )


def _answer(written: Written) -> registry_pb2.PolicyRevision:
    if written.pending is None:
        return _logged(written.revision)
    answer = convert.revision_to_proto(written.revision)
    answer.pending = True
    answer.pending_reason = (
        "waiting until a serving worker holds every version it routes to READY (the policy "
        "in force keeps serving meanwhile; `modelserve policy show` tells when it applies)"
    )
    log.info("policy of %s pending: %s", written.pending.model, written.pending.policy)
    return answer


def _logged(record: PolicyRevision) -> registry_pb2.PolicyRevision:
    # Policy changes move production traffic: each one is worth a line in the log.
    log.info(
        "policy of %s at revision %d: %s (%s)",
        record.model,
        record.revision,
        record.policy,
        record.note or "no note",
    )
    return convert.revision_to_proto(record)
