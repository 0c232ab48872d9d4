"""Readiness-gated policy writes: a policy sends callers to a version only once a serving
worker holds it READY.

A write whose versions are all READY (or made where no router is known, so no caller's
traffic flows) goes in force at once. Otherwise it is kept as the model's *pending* policy:
workers load the versions it names (``modelserve.catalog.routing.referenced_versions``), and
this gate's loop applies it as the next revision once each is READY, or marks it failed with
the reason: the workers' load error, or ``ready_timeout_s`` gone by. Meanwhile the policy in
force keeps serving, so a version that can never load costs callers nothing.

The same gate checks ownership (``registry.ownership``) and the caller-visible signature
(``registry.policies.compat``) before anything is written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from modelserve.errors import FailedPreconditionError
from registry import convert
from registry.leases import ControllerLease
from registry.ownership import TrafficOwners
from registry.policies import compat
from registry.policies.readiness import Fleet, FleetReader
from registry.records import FAILED, PendingPolicy, PolicyRevision, RoutingPolicy
from registry.store import RegistryStore

log = logging.getLogger(__name__)
T = TypeVar("T")
InStore = Callable[..., Any]


@dataclass(frozen=True)
class Written:
    """A write's outcome: the revision in force, and the pending policy when it waits."""

    revision: PolicyRevision
    pending: PendingPolicy | None = None


class PolicyGate:
    def __init__(
        self,
        *,
        store: RegistryStore,
        fleet: FleetReader | None,
        owners: TrafficOwners,
        in_store: Callable[..., Any],
        ready_timeout_s: float = 300.0,
        interval_s: float = 0.5,
    ) -> None:
        self._store = store
        self._fleet = fleet
        self._owners = owners
        self._in_store = in_store  # async: runs a store method on the store thread
        self._ready_timeout_s = ready_timeout_s
        self._interval_s = interval_s
        self._wake = asyncio.Event()
        # Set by the composition root: with replicas on one database, only the holder of the
        # ``policy-gate`` lease applies pending policies (registry.leases).
        self.lease: ControllerLease | None = None

    async def write(
        self,
        model: str,
        policy: RoutingPolicy,
        note: str,
        *,
        by: str = "a manual policy edit",
        force: bool = False,
        allow_signature_change: bool = False,
    ) -> Written:
        """A manual write (SetPolicy, RollbackPolicy): owner, signature, then readiness."""
        # Shape and references first: a bad policy is INVALID_ARGUMENT/NOT_FOUND whoever owns it.
        await self._in_store(self._store.validate_policy, model, policy, note)
        await self._owners.claim(model, by, force=force)
        if not allow_signature_change:
            await self.require_compatible(model, policy, f"the policy ({by})")
        versions = await self._in_store(self._store.routed_versions, model, policy)
        missing = _not_ready(await self._read_fleet(), model, versions)
        if not missing:
            revision = await self._in_store(self._store.set_policy, model, policy, note)
            return Written(revision)
        deadline = int((time.time() + self._ready_timeout_s) * 1000)
        pending = await self._in_store(self._store.stage_policy, model, policy, note, deadline)
        current = await self._in_store(self._store.get_model, model)
        log.info("policy of %s pending until READY: %s", model, missing)
        self._wake.set()
        in_force = current.policy or PolicyRevision(model=model, revision=0, policy=RoutingPolicy())
        return Written(in_force, pending)

    async def claim(self, model: str, by: str, *, force: bool, allow: str = "") -> None:
        await self._owners.claim(model, by, force=force, allow=allow)

    def kick(self) -> None:
        """Look at pending policies now (one was just staged)."""
        self._wake.set()

    async def require_compatible(self, model: str, policy: RoutingPolicy, what: str) -> None:
        """Every version ``policy`` routes to keeps the signature of the version served now."""
        versions = await self._in_store(self._store.routed_versions, model, policy)
        await self.require_versions_compatible(model, versions, what)

    async def require_versions_compatible(
        self, model: str, versions: set[int], what: str, base_version: int = 0
    ) -> None:
        base = await self._in_store(self._store.resolve, model, base_version)
        others = [await self._in_store(self._store.resolve, model, v) for v in sorted(versions)]
        compat.require_compatible(
            model,
            convert.version_to_proto(base),
            [convert.version_to_proto(o) for o in others],
            what,
        )

    async def make_ready(
        self, model: str, policy: RoutingPolicy, note: str, what: str, timeout_s: float
    ) -> None:
        """Return once every version ``policy`` routes to is READY, the policy then in force
        (staged as pending meanwhile, so workers load its versions); FAILED_PRECONDITION with
        the reason when they fail to load or ``timeout_s`` passes (the pending policy is then
        dropped, the one in force stays). For writes whose owner must know its versions
        serve from the first request, such as an experiment's arms."""
        versions = await self._in_store(self._store.routed_versions, model, policy)
        missing = _not_ready(await self._read_fleet(), model, versions)
        if not missing:
            return
        timeout_s = max(0.0, min(timeout_s, self._ready_timeout_s))
        deadline = int((time.time() + timeout_s) * 1000)
        staged = await self._in_store(self._store.stage_policy, model, policy, note, deadline)
        self.kick()
        while True:
            await asyncio.sleep(0.2)
            found = (await self._in_store(self._store.get_model, model)).pending
            if found is None or found.created_unix_ms != staged.created_unix_ms:
                return  # applied (or replaced by a later write, which then owns the outcome)
            if found.state == FAILED:
                raise FailedPreconditionError(
                    f"{what} of model {model!r} cannot start: {found.reason}"
                )
            if time.time() * 1000 > deadline + 2000:  # the gate's loop missed it: give up
                raise FailedPreconditionError(f"{what} of model {model!r}: {missing}")

    async def run(self) -> None:
        """Apply (or fail) waiting policies as their versions become READY."""
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self._interval_s)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                if self.lease is not None and not await self.lease.held():
                    continue
                await self.tick()
            except Exception:  # a bad round must not stop the gate for good
                log.exception("pending policy round failed")

    async def tick(self) -> None:
        waiting: list[PendingPolicy] = await self._in_store(self._store.waiting_policies)
        if not waiting:
            return
        fleet = await self._read_fleet()
        now_ms = int(time.time() * 1000)
        for pending in waiting:
            versions = await self._in_store(
                self._store.routed_versions, pending.model, pending.policy
            )
            missing = _not_ready(fleet, pending.model, versions)
            if not missing:
                applied = await self._in_store(
                    self._store.apply_pending, pending.model, pending.created_unix_ms
                )
                if applied is not None:
                    log.info(
                        "pending policy of %s applied as revision %d: %s",
                        pending.model,
                        applied.revision,
                        applied.policy,
                    )
                continue
            reason = ""
            assert fleet is not None  # _not_ready finds nothing missing without routers
            failed = [v for v in sorted(versions) if fleet.failed(pending.model, v)]
            if failed:
                reason = f"version(s) {failed} failed to load: {missing}"
            elif now_ms > pending.deadline_unix_ms:
                reason = f"not READY within {self._ready_timeout_s:g} s: {missing}"
            if reason:
                log.warning("pending policy of %s failed: %s", pending.model, reason)
                await self._in_store(
                    self._store.fail_pending, pending.model, pending.created_unix_ms, reason
                )

    async def _read_fleet(self) -> Fleet | None:
        return None if self._fleet is None else await self._fleet.read()

    async def close(self) -> None:
        if self._fleet is not None:
            await self._fleet.close()


def _not_ready(fleet: Fleet | None, model: str, versions: set[int]) -> str:
    """ "" when every version is READY on a serving worker (or no router is known)."""
    if fleet is None:
        return ""
    missing = fleet.not_ready(model, versions)
    return ", ".join(f"version {v} {s.describe()}" for v, s in missing.items())
