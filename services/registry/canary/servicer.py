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
        state = await self._controller.start(
            spec_from_proto(request.spec),
            force=request.force,
            allow_signature_change=request.allow_signature_change,
        )
        return _status(state)

    async def GetCanary(
        self, request: canary_pb2.GetCanaryRequest, context: aio.ServicerContext[Any, Any]
    ) -> canary_pb2.CanaryStatus:
        return _status(await self._controller.status(request.model, max(0, request.limit)))

    async def AbortCanary(
        self, request: canary_pb2.AbortCanaryRequest, context: aio.ServicerContext[Any, Any]
    ) -> canary_pb2.CanaryStatus:
        return _status(await self._controller.abort(request.model))

    async def RecordCanaryOutcome(
        self,
        request: canary_pb2.RecordCanaryOutcomeRequest,
        context: aio.ServicerContext[Any, Any],
    ) -> canary_pb2.RecordCanaryOutcomeResponse:
        version, count = await self._controller.record_outcome(
            request.model, request.version, request.routing_key, request.metric, request.value
        )
        return canary_pb2.RecordCanaryOutcomeResponse(version=version, count=count)


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
        business_metric=spec.business_metric,
        lower_is_better=spec.lower_is_better,
        business_alpha=spec.business_alpha or gates.DEFAULT_BUSINESS_ALPHA,
    )


def _arm(arm: gates.Arm) -> canary_pb2.CanaryArm:
    return canary_pb2.CanaryArm(
        version=arm.version,
        requests=arm.requests,
        errors=arm.errors,
        error_rate=arm.error_rate,
        p99_s=arm.p99_s,
    )


def _metric(m: gates.MetricFigures) -> canary_pb2.CanaryMetric:
    return canary_pb2.CanaryMetric(
        name=m.name,
        baseline_count=m.baseline_count,
        baseline_mean=m.baseline_mean,
        candidate_count=m.candidate_count,
        candidate_mean=m.candidate_mean,
        difference=m.difference,
        difference_low=m.difference_low,
        difference_high=m.difference_high,
        p_value=m.p_value,
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
            business_metric=spec.business_metric,
            lower_is_better=spec.lower_is_better,
            business_alpha=spec.business_alpha,
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
                metric=_metric(d.metric) if d.metric is not None else None,
            )
            for d in state.decisions
        ],
    )
