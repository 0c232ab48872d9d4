"""Who is calling: the ``Identity`` every authenticated RPC runs as, and the roles it holds.

An identity comes from an API key, a JWT or (later) an mTLS peer certificate; handlers read it
with ``current_identity()`` (audit, per-identity limits) and never see the credential itself.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

INFER = "infer"
READ = "read"
ADMIN = "admin"
SERVICE = "service"
ROLES = (INFER, READ, ADMIN, SERVICE)
# Metadata naming the caller an edge authenticated, forwarded to the hops behind it for their
# logs (modelserve.calls); trusted only from a service identity, never a credential.
CALLER_METADATA = "x-modelserve-caller"

# What holding a role also grants. ``admin`` and ``service`` may read and infer (an operator
# tries the model they pushed; services call each other's inference); ``infer`` and ``read``
# grant only themselves. ``service`` is never implied: only service identities watch the
# registry, fetch artifacts and read features for enrichment.
IMPLIES: dict[str, frozenset[str]] = {
    INFER: frozenset({INFER}),
    READ: frozenset({READ}),
    ADMIN: frozenset({ADMIN, READ, INFER}),
    SERVICE: frozenset({SERVICE, READ, INFER}),
}


@dataclass(frozen=True)
class Identity:
    """An authenticated caller. ``models``: glob patterns the ``infer`` role is limited to
    (empty = every model); ``source``: where it came from (api-key, jwt, mtls)."""

    id: str
    roles: frozenset[str]
    models: tuple[str, ...] = ()
    source: str = "api-key"
    granted: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        granted: set[str] = set()
        for role in self.roles:
            granted |= IMPLIES.get(role, frozenset())
        object.__setattr__(self, "granted", frozenset(granted))

    def has(self, role: str) -> bool:
        return role in self.granted

    @property
    def is_service(self) -> bool:
        return SERVICE in self.roles

    def may_infer(self, model: str) -> bool:
        """Whether the ``infer`` role covers ``model`` (admin and service identities are never
        limited by patterns)."""
        if not self.models or ADMIN in self.roles or SERVICE in self.roles:
            return True
        return any(fnmatchcase(model, pattern) for pattern in self.models)


_CURRENT: ContextVar[Identity | None] = ContextVar("modelserve_identity", default=None)


def current_identity() -> Identity | None:
    """The identity of the RPC being served (None when auth is off)."""
    return _CURRENT.get()
