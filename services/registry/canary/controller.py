"""Runs canaries: every ``interval`` it reads the routers' per-version figures (and the
gateways' rejections, which never reach a router) and the business outcomes posted to the
canary store, judges the
step in force (``registry.canary.gates.evaluate``), records the decision with its numbers,
and moves the model's split through the policy store, so each step is a policy revision that
Watch pushes to gateways and routers like any other.

Every registry replica runs the controller, but a round acts only while its replica holds the
``canary-controller`` lease (``registry.leases``), so on a shared database exactly one replica
judges canaries; each decision records the replica that made it. Its windows (the routers'
counters when a step began) live in memory, so after a restart or a hand-over the step in
force starts counting again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from modelserve.errors import FailedPreconditionError
from registry.canary.gates import (
    ABORTED,
    PROMOTED,
    ROLLED_BACK,
    Arm,
    CanarySpec,
    CanaryState,
    Decision,
    check_spec,
    evaluate,
    p99,
)
from registry.canary.reader import Reading
from registry.canary.store import CanaryStore
from registry.leases import ControllerLease
from registry.policies.gate import PolicyGate
from registry.records import FAILED, RoutingPolicy, SplitShare
from registry.store import RegistryStore

log = logging.getLogger(__name__)

T = TypeVar("T")
Reader = Callable[[CanarySpec], Awaitable[Reading]]


@dataclass
class _Window:
    """Where the routers' and gateways' cumulative counters stood when a step began."""

    step_index: int
    started_ms: int
    started_s: float  # monotonic
    ready: bool
    base: dict[str, tuple[int, int]] = field(default_factory=dict)
    cand: dict[str, tuple[int, int]] = field(default_factory=dict)


class CanaryController:
    def __init__(
        self,
        *,
        store: RegistryStore,
        canaries: CanaryStore,
        store_executor: Executor,
        read: Reader,
        interval_s: float = 2.0,
        gate: PolicyGate | None = None,
        lease: ControllerLease | None = None,
    ) -> None:
        self._store = store
        self._lease = lease
        self.replica = lease.holder if lease is not None else ""
        self._canaries = canaries
        self._executor = store_executor  # the registry's single store thread
        self._read = read
        self._interval_s = interval_s
        self._windows: dict[int, _Window] = {}
        self._gate = gate

    async def start(
        self, spec: CanarySpec, *, force: bool = False, allow_signature_change: bool = False
    ) -> CanaryState:
        check_spec(spec)
        if self._gate is not None:
            what = f"a canary v{spec.baseline}->v{spec.candidate}"
            await self._in_store(self._store.resolve, spec.model, spec.baseline)
            await self._in_store(self._store.resolve, spec.model, spec.candidate)
            await self._gate.claim(spec.model, what, force=force, allow="canary")
            if not allow_signature_change:
                await self._gate.require_versions_compatible(
                    spec.model, {spec.candidate}, what, base_version=spec.baseline
                )
        await self._in_store(self._start, spec)
        if self._gate is not None:
            self._gate.kick()  # the first split waits, pending, for the candidate to be READY
        return await self.status(spec.model)

    async def running_canary(self, model: str) -> str:
        """The running canary steering ``model`` ("" if none): an owner of its traffic."""
        for _, state in await self._in_store(self._canaries.running):
            if state.spec.model == model:
                return f"canary v{state.spec.baseline}->v{state.spec.candidate}"
        return ""

    async def abort_for(self, model: str, reason: str) -> None:
        await self.abort(model, reason)

    async def status(self, model: str, limit: int = 0) -> CanaryState:
        return (await self._in_store(self._canaries.latest, model, limit))[1]

    async def abort(self, model: str, reason: str = "aborted by request") -> CanaryState:
        canary_id, state = await self._in_store(self._canaries.latest, model, 1)
        if state.state != "running":
            raise FailedPreconditionError(
                f"the latest canary of {model!r} is not running (it is {state.state})"
            )
        spec = state.spec
        decision = Decision("abort", 0.0, reason, Arm(spec.baseline), Arm(spec.candidate))
        await self._finish(canary_id, spec, decision, ABORTED, 0.0)
        return await self.status(model)

    async def record_outcome(
        self, model: str, version: int, routing_key: str, metric: str, value: float
    ) -> tuple[int, int]:
        """One business outcome of the model's running canary: (its version, that version's
        outcomes so far). Judged at the next round, with the other gates."""
        return await self._in_store(
            self._canaries.record_outcome, model, version, routing_key, metric, value
        )

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                if self._lease is not None and not await self._lease.held():
                    self._windows.clear()  # should it hold the lease again, count anew
                    continue
                await self.tick()
            except Exception:  # a bad round must not end canaries for good
                log.exception("canary round failed")

    async def tick(self) -> None:
        """One round: judge every running canary once."""
        running = await self._in_store(self._canaries.running)
        for gone in set(self._windows) - {canary_id for canary_id, _ in running}:
            del self._windows[gone]
        for canary_id, state in running:
            await self._judge(canary_id, state)

    async def _judge(self, canary_id: int, state: CanaryState) -> None:
        spec = state.spec
        reading = await self._read(spec)
        window = self._windows.get(canary_id)
        if window is None or window.step_index != state.step_index:
            # A worker must hold the candidate before its step counts (else its loading
            # shows as errors); later steps only move weights of versions already warm.
            window = self._windows[canary_id] = _new_window(
                state.step_index, reading, ready=state.step_index > 0
            )
        if not window.ready:
            if reading.candidate_ready:
                self._windows[canary_id] = _new_window(state.step_index, reading, ready=True)
                return
            waited = time.time() - state.started_unix_ms / 1000
            failed = await self._in_store(self._failed_pending, spec.model)
            if failed or waited > spec.ready_timeout_s:
                reason = failed or f"no worker held version {spec.candidate} after {waited:.0f} s"
                decision = Decision(
                    "rollback",
                    spec.steps[state.step_index],
                    reason,
                    Arm(spec.baseline),
                    Arm(spec.candidate),
                    waited,
                )
                await self._finish(canary_id, spec, decision, ROLLED_BACK, 0.0)
            return
        base, cand = _arms(spec, window, reading)
        seconds = time.monotonic() - window.started_s
        metric = await self._in_store(self._canaries.metric, canary_id, spec)
        verdict = evaluate(spec, state.step_index, seconds, base, cand, metric)
        percent = spec.steps[state.step_index]
        if verdict.action == "advance":
            percent = spec.steps[state.step_index + 1]
        elif verdict.action == "promote":
            percent = 100.0
        decision = Decision(verdict.action, percent, verdict.reason, base, cand, seconds, 0, metric)
        if verdict.action == "rollback":
            await self._finish(canary_id, spec, decision, ROLLED_BACK, 0.0)
        elif verdict.action == "promote":
            await self._finish(canary_id, spec, decision, PROMOTED, 100.0)
        elif verdict.action == "advance":
            step = state.step_index + 1
            await self._in_store(self._move, canary_id, spec, decision, "", step)
            # The next step counts from this reading (the split moves with this write).
            self._windows[canary_id] = _new_window(step, reading, ready=True)
        else:
            await self._in_store(self._canaries.record, canary_id, self._stamped(decision))

    async def _finish(
        self, canary_id: int, spec: CanarySpec, decision: Decision, state: str, percent: float
    ) -> None:
        log.info("canary of %s: %s (%s)", spec.model, decision.action, decision.reason)
        await self._in_store(self._move, canary_id, spec, decision, state, -1, percent)
        self._windows.pop(canary_id, None)

    # --- on the store thread -------------------------------------------------------------

    def _start(self, spec: CanarySpec) -> None:
        self._store.resolve(spec.model, spec.baseline)  # NOT_FOUND names what is missing
        self._store.resolve(spec.model, spec.candidate)
        first = Decision(
            "start",
            spec.steps[0],
            f"steps {', '.join(f'{s:g}' for s in spec.steps)}",
            Arm(spec.baseline),
            Arm(spec.candidate),
        )
        canary_id = self._canaries.start(spec, self._stamped(first))
        try:
            # Pending until a worker holds the candidate READY (registry.policies.gate):
            # before that, the candidate's share would only be errors for callers.
            self._write_split(spec, spec.steps[0], "canary start", pending=self._gate is not None)
        except Exception:
            failed = Decision(
                "abort",
                0.0,
                "could not set the first split",
                Arm(spec.baseline),
                Arm(spec.candidate),
            )
            self._canaries.record(canary_id, self._stamped(failed), state=ABORTED)
            raise

    def _move(
        self,
        canary_id: int,
        spec: CanarySpec,
        decision: Decision,
        state: str,
        step_index: int,
        percent: float | None = None,
    ) -> None:
        target = decision.percent if percent is None else percent
        self._write_split(spec, target, f"canary {decision.action}: {decision.reason}")
        self._canaries.record(
            canary_id, self._stamped(decision), state=state, step_index=step_index
        )

    def _failed_pending(self, model: str) -> str:
        """Why the model's pending policy failed ("" unless it did): the candidate's load
        error, so a canary whose candidate cannot load ends now, not at its ready timeout."""
        pending = self._store.get_model(model).pending
        if pending is None or pending.state != FAILED:
            return ""
        return f"the first step never applied: {pending.reason}"

    def _write_split(
        self, spec: CanarySpec, percent: float, note: str, *, pending: bool = False
    ) -> None:
        points = round(percent * 100)
        shares = tuple(
            SplitShare(version=version, basis_points=weight)
            for version, weight in ((spec.baseline, 10_000 - points), (spec.candidate, points))
            if weight > 0
        )
        current = self._store.get_model(spec.model).policy
        shadow = current.policy.shadow if current is not None else None  # a shadow stays
        policy = RoutingPolicy(split=shares, shadow=shadow)
        if pending:
            deadline = int((time.time() + spec.ready_timeout_s) * 1000)
            self._store.stage_policy(spec.model, policy, note[:200], deadline)
        else:
            self._store.set_policy(spec.model, policy, note[:200])

    def _stamped(self, decision: Decision) -> Decision:
        return dataclasses.replace(decision, unix_ms=int(time.time() * 1000), replica=self.replica)

    async def _in_store(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


def _new_window(step_index: int, reading: Reading, *, ready: bool) -> _Window:
    return _Window(
        step_index=step_index,
        started_ms=int(time.time() * 1000),
        started_s=time.monotonic(),
        ready=ready,
        base={r: c.counts(reading.baseline) for r, c in reading.sources().items()},
        cand={r: c.counts(reading.candidate) for r, c in reading.sources().items()},
    )


def _arms(spec: CanarySpec, window: _Window, reading: Reading) -> tuple[Arm, Arm]:
    """Each version's figures since the step began: the routers' counts plus the gateways'
    rejections (a rejected request never reached a router, so none is counted twice)."""
    sources = reading.sources()

    def arm(version: int, start: Mapping[str, tuple[int, int]]) -> Arm:
        requests = errors = 0
        latencies: list[float] = []
        for source, figures in sources.items():
            now_requests, now_errors = figures.counts(version)
            was_requests, was_errors = start.get(source, (0, 0))
            if now_requests < was_requests:  # the process restarted: all it has is new
                was_requests = was_errors = 0
            requests += now_requests - was_requests
            errors += now_errors - was_errors
            latencies += figures.latencies_since(version, window.started_ms)
        return Arm(version, requests, errors, p99(latencies))

    return arm(spec.baseline, window.base), arm(spec.candidate, window.cand)
