"""The CompositeRegistry RPCs: store calls off the event loop, one write at a time so watchers
see changes in the order they were made."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from grpc import aio

from modelserve.proto.modelserve.v1 import composite_pb2, composite_pb2_grpc
from registry.composites.store import CompositeHub, CompositeStore, next_event

log = logging.getLogger(__name__)
T = TypeVar("T")


class CompositeServicer(composite_pb2_grpc.CompositeRegistryServicer):
    def __init__(self, *, store: CompositeStore, hub: CompositeHub) -> None:
        self._store = store
        self._hub = hub
        self._write = asyncio.Lock()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    async def SetComposite(
        self, request: composite_pb2.SetCompositeRequest, context: aio.ServicerContext[Any, Any]
    ) -> composite_pb2.Composite:
        async with self._write:
            stored = await self._run(self._store.set, request.composite)
            self._hub.publish(composite_pb2.CompositeEvent(composites=[stored]))
        # Composites move production traffic like policies do: worth a line each.
        log.info("composite %s at revision %d", stored.name, stored.revision)
        return stored

    async def GetComposite(
        self, request: composite_pb2.GetCompositeRequest, context: aio.ServicerContext[Any, Any]
    ) -> composite_pb2.Composite:
        return await self._run(self._store.get, request.name)

    async def ListComposites(
        self, request: composite_pb2.ListCompositesRequest, context: aio.ServicerContext[Any, Any]
    ) -> composite_pb2.ListCompositesResponse:
        items = await self._run(self._store.list)
        return composite_pb2.ListCompositesResponse(composites=items)

    async def DeleteComposite(
        self,
        request: composite_pb2.DeleteCompositeRequest,
        context: aio.ServicerContext[Any, Any],
    ) -> composite_pb2.DeleteCompositeResponse:
        async with self._write:
            await self._run(self._store.delete, request.name)
            self._hub.publish(composite_pb2.CompositeEvent(deleted=[request.name]))
        log.info("composite %s deleted", request.name)
        return composite_pb2.DeleteCompositeResponse()

    async def WatchComposites(
        self, request: composite_pb2.WatchCompositesRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[composite_pb2.CompositeEvent]:
        # Subscribe, then snapshot: a change in between is in both, which is harmless (events
        # carry whole composites), and none is missed.
        with self._hub.subscribe() as queue:
            async with self._write:
                snapshot = await self._run(self._store.list)
            yield composite_pb2.CompositeEvent(snapshot=True, composites=snapshot)
            while True:
                yield await next_event(queue)
