"""Service discovery: one small interface, two backends (static, consul).

Service names are the logical ones: "gateway", "router", "worker", "registry", "featurestore".
Backends: static (configured addresses), consul (the agent's catalog and checks), dns (the A/AAAA
records of configured names, e.g. Kubernetes headless Services).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Instance:
    """One running instance of a service as discovery knows it."""

    service: str
    instance_id: str
    address: str  # "host:port" for gRPC
    meta: Mapping[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Registration:
    """What a service announces about itself when it starts."""

    service: str
    instance_id: str
    host: str
    port: int
    meta: Mapping[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    tls: bool = False  # the listener speaks TLS (health checks must too)
    tls_server_name: str = ""  # the name its certificate is checked for, if not host


class Discovery(abc.ABC):
    """register/deregister this process; resolve/watch the passing instances of a service."""

    @abc.abstractmethod
    async def register(self, registration: Registration) -> None: ...

    @abc.abstractmethod
    async def update_meta(self, registration: Registration) -> None:
        """Re-announce with new meta (e.g. which model versions a worker holds)."""

    @abc.abstractmethod
    async def deregister(self, registration: Registration) -> None: ...

    @abc.abstractmethod
    async def resolve(self, service: str) -> list[Instance]:
        """The instances of ``service`` that pass their health checks, now."""

    @abc.abstractmethod
    def watch(self, service: str) -> AsyncIterator[list[Instance]]:
        """Yield the passing instances now and again every time the set changes."""

    def suspect(self, service: str, address: str) -> None:  # noqa: B027 - optional hook
        """A caller saw ``address`` of ``service`` fail (ejected, stream lost): a backend that
        polls may look again early. Consul pushes changes and static never changes: no-op."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
