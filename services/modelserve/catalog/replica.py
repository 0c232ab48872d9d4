"""A local replica of the registry, fed by its Watch stream; the one place versions resolve.

Gateway, router and worker each keep one, so they agree on what ``model`` + version or label
means without asking the registry per request. Resolution rules (DESIGN.md, router):
a numeric version string selects that version; a non-numeric one, or the ``label`` request
parameter, selects a label; neither selects what the model's routing policy says when it has
one (``modelserve.catalog.routing``), else the ``production`` label, else the newest version.

``route_version`` is for requests being served (a split picks by the routing key, at random
without one); ``resolve_version`` for everything else (metadata, readiness), where a split
answers with its largest share so the answer does not change from call to call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from modelserve.catalog import routing
from modelserve.channels import EndpointSet, follow_stream
from modelserve.discovery import Discovery
from modelserve.errors import NotFoundError, UnavailableError
from modelserve.names import validate_name
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.modelserve.v1 import registry_pb2, registry_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_LABEL = "production"


def resolve_version(
    model: registry_pb2.Model, version: str = "", label: str = ""
) -> registry_pb2.ModelVersion:
    """Pick one version of ``model`` by the rules above; NOT_FOUND names what exists."""
    return _resolve(model, version, label, None)


def route_version(
    model: registry_pb2.Model, version: str = "", label: str = "", routing_key: str = ""
) -> registry_pb2.ModelVersion:
    """The version that serves one request: as ``resolve_version``, except that a split
    policy picks by ``routing_key``'s bucket (a random bucket when the key is "")."""
    return _resolve(model, version, label, routing_key)


def _resolve(
    model: registry_pb2.Model,
    version: str,
    label: str,
    key: str | None,
    by_number: dict[int, registry_pb2.ModelVersion] | None = None,
) -> registry_pb2.ModelVersion:
    if by_number is None:
        by_number = {v.version: v for v in model.versions}
    if version and version.isascii() and version.isdigit():
        found = by_number.get(int(version))
        if found is None:
            have = ", ".join(str(n) for n in sorted(by_number)) or "none"
            raise NotFoundError(f"model '{model.name}' has no version {version} (versions: {have})")
        return found
    label = label or version
    if label:
        validate_name(label, "label")
        if label not in model.labels:
            have = ", ".join(sorted(model.labels)) or "none"
            raise NotFoundError(f"model '{model.name}' has no label '{label}' (labels: {have})")
        return by_number[model.labels[label]]
    target = routing.policy_target(model, key)
    if target is not None:
        return _policy_version(model, by_number, target)
    if DEFAULT_LABEL in model.labels and model.labels[DEFAULT_LABEL] in by_number:
        return by_number[model.labels[DEFAULT_LABEL]]
    if not by_number:
        raise NotFoundError(f"model '{model.name}' has no versions")
    return by_number[max(by_number)]


def _policy_version(
    model: registry_pb2.Model,
    by_number: dict[int, registry_pb2.ModelVersion],
    target: routing.Share,
) -> registry_pb2.ModelVersion:
    number = target.version or model.labels.get(target.label, 0)
    found = by_number.get(number)
    if found is None:  # the registry refuses such policies; only a damaged replica gets here
        raise NotFoundError(
            f"model '{model.name}' policy revision {model.policy.revision} routes to "
            f"{target.describe()}, which the model does not have"
        )
    return found


def unloaded_message(name: str) -> str:
    return (
        f"model '{name}' is unloaded; load it with RepositoryModelLoad (tritonclient "
        f"load_model('{name}')) or `modelserve models load {name}`"
    )


class Catalog:
    """Models as the registry last told us; ``synced`` is set after the first snapshot."""

    def __init__(self, discovery: Discovery, *, registry_service: str = "registry") -> None:
        self._discovery = discovery
        self._service = registry_service
        self._endpoints = EndpointSet()
        self.models: dict[str, registry_pb2.Model] = {}
        # model -> version number -> version: the decided path of every hop is one lookup.
        self._versions: dict[str, dict[int, registry_pb2.ModelVersion]] = {}
        self._unloaded: set[str] = set()  # models marked unloaded (RepositoryModelUnload)
        self.revision = 0
        self.synced = asyncio.Event()
        self._listeners: list[Callable[[set[str]], None]] = []

    @property
    def registry_endpoints(self) -> EndpointSet:
        """The registry instances this replica watches (and a writer may call)."""
        return self._endpoints

    def is_unloaded(self, name: str) -> bool:
        return name in self._unloaded

    def on_change(self, listener: Callable[[set[str]], None]) -> None:
        """Call ``listener(changed_model_names)`` after every applied event."""
        self._listeners.append(listener)

    def get_model(self, name: str) -> registry_pb2.Model:
        model = self.models.get(name)
        if model is None:
            validate_name(name)
            raise NotFoundError(f"unknown model '{name}'")
        return model

    def resolve(self, name: str, version: str = "", label: str = "") -> registry_pb2.ModelVersion:
        return resolve_version(self.get_model(name), version, label)

    def route(
        self, name: str, version: str = "", label: str = "", routing_key: str = ""
    ) -> registry_pb2.ModelVersion:
        model = self.get_model(name)
        return _resolve(model, version, label, routing_key, self._versions.get(name))

    def policy_fallback(self, name: str) -> int:
        """The version ``name``'s policy in force falls back to (0: none or no policy)."""
        model = self.models.get(name)
        if model is None or not model.HasField("policy"):
            return 0
        return model.policy.policy.fallback_version

    def versions_of(self, name: str) -> dict[int, registry_pb2.ModelVersion]:
        """``name``'s versions by number ({} for an unknown model)."""
        return self._versions.get(name, {})

    def decide(
        self,
        request: pb.ModelInferRequest,
        metadata: routing.Metadata | None,
        *,
        inner: bool = False,
    ) -> registry_pb2.ModelVersion:
        """The version that serves ``request``, decided once per hop: a request that arrives
        decided (a numeric ``model_version``, as the gateway sends it on) keeps that version;
        otherwise its label, else the model's policy by routing key, else the defaults.

        An unloaded model is refused UNAVAILABLE, except a decided request at an ``inner`` hop
        (router, worker): the edge admitted it before the unload (it may have waited in a merge
        lane), and the worker keeps the version for its unload grace to answer exactly those
        (T23: requests in flight complete OK)."""
        number = request.model_version
        if self._unloaded and request.model_name in self._unloaded:
            if not (inner and number.isascii() and number.isdigit()):
                raise UnavailableError(unloaded_message(request.model_name))
        if number and number.isascii() and number.isdigit():
            found = self._versions.get(request.model_name, {}).get(int(number))
            if found is not None:
                return found
            return self.route(request.model_name, number)  # NOT_FOUND naming what exists
        return self.route(
            request.model_name,
            request.model_version,
            routing.label_of(request),
            routing.routing_key_of(request, metadata),
        )

    def apply(self, event: registry_pb2.WatchEvent) -> None:
        changed = {m.name for m in event.models} | set(event.deleted)
        if event.snapshot:
            changed |= set(self.models)
            self.models = {}
        for model in event.models:
            self.models[model.name] = model
        for name in event.deleted:
            self.models.pop(name, None)
        for name in changed:
            current = self.models.get(name)
            if current is None:
                self._versions.pop(name, None)
            else:
                self._versions[name] = {v.version: v for v in current.versions}
            if current is not None and current.unloaded:
                self._unloaded.add(name)
            else:
                self._unloaded.discard(name)
        self.revision = event.revision
        for listener in self._listeners:
            try:
                listener(changed)
            except Exception:
                log.exception("catalog listener failed")
        if event.snapshot:
            self.synced.set()

    async def run(self) -> None:
        """Follow the registry's Watch forever, reconnecting with backoff on any failure."""
        await follow_stream(
            discovery=self._discovery,
            service=self._service,
            endpoints=self._endpoints,
            open_stream=lambda e: e.stub(registry_pb2_grpc.RegistryStub).Watch(
                registry_pb2.WatchRequest()
            ),
            apply=self.apply,
            what="registry watch",
        )

    async def close(self) -> None:
        await self._endpoints.close()
