"""The verified peer certificate as a credential (issue 11: "the peer certificate is the
service identity"; T38: "the admin plane additionally checks the SAN allow-list").

- ``tls_service_sans``: a caller without a token whose verified client certificate names one
  of these is the service identity ``mtls:<name>`` (role ``service``), so hops between
  services over mTLS need no service token;
- ``tls_admin_sans``: when set, an RPC that needs role ``admin`` is served only to a caller
  whose verified certificate names one of these (an operator's machine), whatever its token:
  a stolen admin token is not enough from anywhere else. Service identities are exempt (the
  gateway relays RepositoryModelLoad as ``service``; workers fetch artifacts).

Names are the certificate's SANs (DNS, IP, URI as gRPC reports them); its subject CN counts
only when it has no SAN, as in hostname verification. gRPC fills ``auth_context()`` only with
certificates it verified against the listener's CA, so a name here is as trusted as that CA.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from modelserve.auth.identity import SERVICE, Identity
from modelserve.tls import peer_identity

MTLS = "mtls"


def parse_names(value: str) -> tuple[str, ...]:
    """``"a, b,*.ops"`` -> ``("a", "b", "*.ops")``."""
    return tuple(n.strip() for n in value.split(",") if n.strip())


def certificate_names(context: Any) -> tuple[str, ...]:
    """The names the caller's verified certificate vouches for (SANs, else its CN); () for a
    plaintext caller or one that showed no certificate."""
    try:
        peer = peer_identity(context)
    except Exception:  # a context without a transport (in-process tests) names nobody
        return ()
    if peer is None:
        return ()
    if peer.sans:
        return peer.sans
    return (peer.common_name,) if peer.common_name else ()


def _match(names: Sequence[str], patterns: Sequence[str]) -> str | None:
    for name in names:
        if any(fnmatchcase(name, pattern) for pattern in patterns):
            return name
    return None


@dataclass(frozen=True)
class PeerPolicy:
    service_sans: tuple[str, ...] = ()
    admin_sans: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Any) -> PeerPolicy:
        return cls(
            service_sans=parse_names(getattr(settings, "tls_service_sans", "")),
            admin_sans=parse_names(getattr(settings, "tls_admin_sans", "")),
        )

    @property
    def active(self) -> bool:
        return bool(self.service_sans or self.admin_sans)

    def service_identity(self, context: Any) -> Identity | None:
        """The service identity of ``context``'s peer certificate, or None."""
        if not self.service_sans:
            return None
        name = _match(certificate_names(context), self.service_sans)
        if name is None:
            return None
        return Identity(id=f"{MTLS}:{name}", roles=frozenset({SERVICE}), source=MTLS)

    def admin_refusal(self, identity: Identity, context: Any) -> str | None:
        """Why ``identity`` may not use the admin plane from this peer (None: it may)."""
        if not self.admin_sans or identity.is_service:
            return None
        names = certificate_names(context)
        if _match(names, self.admin_sans) is not None:
            return None
        shown = ", ".join(n[:64] for n in names[:4]) or "none"
        return (
            "the admin plane needs a client certificate named in tls_admin_sans "
            f"(certificate names: {shown})"
        )
