"""The Experiments RPCs: decode, run the store off the event loop, encode."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from grpc import aio

from modelserve.proto.modelserve.v1 import experiments_pb2 as xpb
from modelserve.proto.modelserve.v1 import experiments_pb2_grpc
from registry.experiments import rules
from registry.experiments.store import ExperimentStore
from registry.policies.gate import PolicyGate

log = logging.getLogger(__name__)
T = TypeVar("T")


class ExperimentServicer(experiments_pb2_grpc.ExperimentsServicer):
    def __init__(self, *, store: ExperimentStore, gate: PolicyGate | None = None) -> None:
        self._store = store
        self._gate = gate

    async def running_on(self, model: str) -> str:
        """The running experiment steering ``model`` ("" if none): an owner of its traffic."""
        for experiment in await self._run(self._store.listed):
            if experiment.model == model and experiment.state == xpb.Experiment.RUNNING:
                return f"experiment {experiment.name!r}"
        return ""

    async def stop_on(self, model: str, reason: str) -> None:
        for experiment in await self._run(self._store.listed):
            if experiment.model == model and experiment.state == xpb.Experiment.RUNNING:
                await self._run(self._store.stop, experiment.name, reason)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    async def StartExperiment(
        self, request: xpb.StartExperimentRequest, context: aio.ServicerContext[Any, Any]
    ) -> xpb.Experiment:
        experiment = request.experiment
        if self._gate is not None:
            remaining = context.time_remaining()
            await self._admit(request, 60.0 if remaining is None else remaining - 1.0)
        started = await self._run(self._store.start, experiment)
        # An experiment moves production traffic like a policy does: worth a line.
        log.info(
            "experiment %s on %s started: %s",
            started.name,
            started.model,
            ", ".join(f"{a.name}={a.version or a.label}:{a.percent:g}%" for a in started.arms),
        )
        return started

    async def _admit(self, request: xpb.StartExperimentRequest, timeout_s: float) -> None:
        """One owner, one signature and READY arms: the assignment of keys to arms is only
        right if every arm really serves its share from the first request."""
        assert self._gate is not None
        experiment = request.experiment
        rules.check(experiment)
        policy = rules.split_policy(experiment)
        await self._run(self._store.models.validate_policy, experiment.model, policy)
        what = f"experiment {experiment.name!r}"
        await self._run(self._store.require_new, experiment.name)
        await self._gate.claim(experiment.model, what, force=request.force)
        arms = await self._run(self._store.models.routed_versions, experiment.model, policy)
        if not request.allow_signature_change:
            control = experiment.arms[0]
            base = await self._run(
                self._store.models.resolve, experiment.model, control.version, control.label
            )
            await self._gate.require_versions_compatible(
                experiment.model, arms, what, base_version=base.version
            )
        await self._gate.make_ready(experiment.model, policy, what, what, timeout_s)

    async def StopExperiment(
        self, request: xpb.StopExperimentRequest, context: aio.ServicerContext[Any, Any]
    ) -> xpb.Experiment:
        return await self._run(self._store.stop, request.name, request.reason)

    async def GetExperiment(
        self, request: xpb.GetExperimentRequest, context: aio.ServicerContext[Any, Any]
    ) -> xpb.Experiment:
        return await self._run(self._store.get, request.name)

    async def ListExperiments(
        self, request: xpb.ListExperimentsRequest, context: aio.ServicerContext[Any, Any]
    ) -> xpb.ListExperimentsResponse:
        return xpb.ListExperimentsResponse(experiments=await self._run(self._store.listed))

    async def RecordOutcome(
        self, request: xpb.RecordOutcomeRequest, context: aio.ServicerContext[Any, Any]
    ) -> xpb.RecordOutcomeResponse:
        arm, experiment = await self._run(
            self._store.record,
            request.experiment,
            request.routing_key,
            request.arm,
            request.metric,
            request.value,
        )
        return xpb.RecordOutcomeResponse(arm=arm, experiment=experiment)

    async def GetReport(
        self, request: xpb.GetReportRequest, context: aio.ServicerContext[Any, Any]
    ) -> xpb.ExperimentReport:
        return await self._run(self._store.report, request.name)
