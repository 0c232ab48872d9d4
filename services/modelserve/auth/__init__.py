"""Identity and roles: who may call which RPC (README "Security", docs/architecture.md).

Floor code: every service enforces the same table (``roles.RPC_ROLES``) with the same
interceptor (``interceptor.AuthInterceptor``) when ``auth`` is on, and sends its service token
on every internal call (``client``).
"""

from modelserve.auth.identity import (
    ADMIN,
    INFER,
    READ,
    ROLES,
    SERVICE,
    Identity,
    current_identity,
)
from modelserve.auth.keys import hash_token, new_key, write_local_tokens

__all__ = [
    "ADMIN",
    "INFER",
    "READ",
    "ROLES",
    "SERVICE",
    "Identity",
    "current_identity",
    "hash_token",
    "new_key",
    "write_local_tokens",
]
