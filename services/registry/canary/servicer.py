"""The Canary service (canary.proto): decode, call the controller, encode."""

from __future__ import annotations

from typing import Any

from grpc import aio

from modelserve.proto.modelserve.v1 import canary_pb2, canary_pb2_grpc
from registry.canary import gates
from registry.canary.controller import CanaryController


class CanaryServicer(canary_pb2_grpc.CanaryServicer):
    def __init__(self, *, controller: CanaryController) -> None:
        self._controller = controller

    async def StartCanary(
        self, request: canary_pb2.StartCanaryRequest, context: aio.ServicerContext[Any, Any]
    ) -> canary_pb2.CanaryStatus:
        return _status(await self._controller.start(spec_from_proto(request.spec)))

    async def GetCanary(
        self, request: canary_pb2.GetCanaryRequest, context: aio.ServicerContext[Any, Any]
    ) -> canary_pb2.CanaryStatus:
        return _status(await self._controller.status(request.model, max(0, request.limit)))

    async def AbortCanary(
        self, request: canary_pb2.AbortCanaryRequest, context: aio.ServicerContext[Any, Any]
    ) -> canary_pb2.CanaryStatus:
        return _status(await self._controller.abort(request.model))


def spec_from_proto(spec: canary_pb2.CanarySpec) -> gates.CanarySpec:
    # Zero means "the default" for every gate (proto3 cannot tell unset from zero).
    min_seconds = spec.min_seconds or gates.DEFAULT_MIN_SECONDS
    return gates.CanarySpec(
        model=spec.model,
        baseline=spec.baseline,
        candidate=spec.candidate,
        steps=tuple(spec.steps),
        min_requests=spec.min_requests or gates.DEFAULT_MIN_REQUESTS,
        min_seconds=min_seconds,
        max_error_rate_delta=spec.max_error_rate_delta or gates.DEFAULT_MAX_ERROR_RATE_DELTA,
        max_p99_ratio=spec.max_p99_ratio or gates.DEFAULT_MAX_P99_RATIO,
        ready_timeout_s=spec.ready_timeout_seconds or gates.DEFAULT_READY_TIMEOUT_S,
        routers=tuple(spec.routers),
        gateways=tuple(spec.gateways),
        max_step_s=spec.max_step_seconds or gates.default_max_step_s(min_seconds),
    )


def _arm(arm: gates.Arm) -> canary_pb2.CanaryArm:
    return canary_pb2.CanaryArm(
        version=arm.version,
        requests=arm.requests,
        errors=arm.errors,
        error_rate=arm.error_rate,
        p99_s=arm.p99_s,
    )


def _status(state: gates.CanaryState) -> canary_pb2.CanaryStatus:
    spec = state.spec
    return canary_pb2.CanaryStatus(
        spec=canary_pb2.CanarySpec(
            model=spec.model,
            baseline=spec.baseline,
            candidate=spec.candidate,
            steps=spec.steps,
            min_requests=spec.min_requests,
            min_seconds=spec.min_seconds,
            max_error_rate_delta=spec.max_error_rate_delta,
            max_p99_ratio=spec.max_p99_ratio,
            ready_timeout_seconds=spec.ready_timeout_s,
            routers=spec.routers,
            gateways=spec.gateways,
            max_step_seconds=spec.max_step_s,
        ),
        state=state.state,
        step_index=state.step_index,
        started_unix_ms=state.started_unix_ms,
        decisions=[
            canary_pb2.CanaryDecision(
                unix_ms=d.unix_ms,
                action=d.action,
                percent=d.percent,
                reason=d.reason,
                baseline=_arm(d.baseline),
                candidate=_arm(d.candidate),
                step_seconds=d.step_seconds,
            )
            for d in state.decisions
        ],
    )
