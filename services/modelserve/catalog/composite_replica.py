"""A local replica of the registry's composites, fed by WatchComposites (as ``Catalog`` is fed
by Watch), and the ``Members`` view over both that gateway and router resolve through."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from modelserve.catalog import composites
from modelserve.catalog.replica import Catalog
from modelserve.channels import EndpointSet, follow_stream
from modelserve.discovery import Discovery
from modelserve.errors import NotFoundError
from modelserve.proto.modelserve.v1 import composite_pb2, composite_pb2_grpc, registry_pb2

log = logging.getLogger(__name__)


class CompositeCatalog:
    """Composites as the registry last told us, looked up beside ``catalog``'s models."""

    def __init__(
        self, discovery: Discovery, catalog: Catalog, *, registry_service: str = "registry"
    ) -> None:
        self._discovery = discovery
        self._service = registry_service
        self._endpoints = EndpointSet()
        self.catalog = catalog
        self.items: dict[str, composite_pb2.Composite] = {}
        self.synced = asyncio.Event()
        self._signatures: dict[str, tuple[int, composites.Signature]] = {}
        self._generation = 0
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every applied event."""
        self._listeners.append(listener)

    def pinned_versions(self) -> set[tuple[str, int]]:
        """(model, version) of every member named by version number: workers deploy these
        too, since a version that is neither labelled nor newest would otherwise not load."""
        return {
            (ref.model, ref.version)
            for item in self.items.values()
            for ref in composites.references(item)
            if ref.version and ref.model not in self.items
        }

    def __contains__(self, name: object) -> bool:
        return name in self.items

    # ---- composites.Members ----
    def composite(self, name: str) -> composite_pb2.Composite | None:
        return self.items.get(name)

    def version(self, ref: composite_pb2.ModelRef) -> registry_pb2.ModelVersion:
        return self.catalog.resolve(ref.model, str(ref.version) if ref.version else "", ref.label)

    def get(self, name: str, version: str = "") -> composite_pb2.Composite:
        """The composite; a V2 version, when given, must be its revision (its only version)."""
        found = self.items.get(name)
        if found is None:
            raise NotFoundError(f"unknown composite '{name}'")
        if version and version != str(found.revision):
            raise NotFoundError(
                f"composite '{name}' has no version {version} (versions: {found.revision})"
            )
        return found

    def signature(self, name: str) -> composites.Signature:
        """The composite's signature now; cached until models or composites change (a
        signature follows labels and policies, so every catalog revision invalidates it)."""
        key = self._generation + self.catalog.revision
        cached = self._signatures.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        found = composites.signature(name, self)
        self._signatures[name] = (key, found)
        return found

    def apply(self, event: composite_pb2.CompositeEvent) -> None:
        if event.snapshot:
            self.items = {}
        for item in event.composites:
            self.items[item.name] = item
        for name in event.deleted:
            self.items.pop(name, None)
        # Generations grow faster than catalog revisions can catch up, so the sum is unique
        # enough to key the cache (a stale hit would need both to move in lockstep).
        self._generation += 1 << 32
        self._signatures.clear()
        if event.snapshot:
            self.synced.set()
        for listener in self._listeners:
            try:
                listener()
            except Exception:
                log.exception("composite catalog listener failed")

    async def run(self) -> None:
        """Follow WatchComposites forever, reconnecting with backoff on any failure."""
        await follow_stream(
            discovery=self._discovery,
            service=self._service,
            endpoints=self._endpoints,
            open_stream=lambda e: e.stub(composite_pb2_grpc.CompositeRegistryStub).WatchComposites(
                composite_pb2.WatchCompositesRequest()
            ),
            apply=self.apply,
            what="composite watch",
        )

    async def close(self) -> None:
        await self._endpoints.close()
