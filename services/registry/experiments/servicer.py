"""The Experiments RPCs: decode, run the store off the event loop, encode."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from grpc import aio

from modelserve.proto.modelserve.v1 import experiments_pb2 as xpb
from modelserve.proto.modelserve.v1 import experiments_pb2_grpc
from registry.experiments.store import ExperimentStore

log = logging.getLogger(__name__)
T = TypeVar("T")


class ExperimentServicer(experiments_pb2_grpc.ExperimentsServicer):
    def __init__(self, *, store: ExperimentStore) -> None:
        self._store = store

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    async def StartExperiment(
        self, request: xpb.StartExperimentRequest, context: aio.ServicerContext[Any, Any]
    ) -> xpb.Experiment:
        started = await self._run(self._store.start, request.experiment)
        # An experiment moves production traffic like a policy does: worth a line.
        log.info(
            "experiment %s on %s started: %s",
            started.name,
            started.model,
            ", ".join(f"{a.name}={a.version or a.label}:{a.percent:g}%" for a in started.arms),
        )
        return started

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
