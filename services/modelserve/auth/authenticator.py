"""From ``authorization: Bearer <token>`` metadata to an ``Identity``, or a refusal.

Tokens with two dots are JWTs (when a JWT key is configured); anything else is looked up as
an API key by its hash. Messages name what is wrong, never the token.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from modelserve.auth.identity import Identity
from modelserve.auth.jwts import JwtVerifier, TokenRejected
from modelserve.auth.keys import KeyStore
from modelserve.auth.peers import PeerPolicy

AUTHORIZATION = "authorization"
MISSING = "missing credential: send 'authorization: Bearer <token>' metadata"
JWT_CACHE_SIZE = 4096
JWT_CACHE_S = 30.0  # a verified JWT is trusted this long (at most until its exp)


class AuthFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    for key, value in metadata or ():
        if key == AUTHORIZATION and isinstance(value, str):
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return ""
    return None


# Maps a call's transport peer (e.g. an mTLS client certificate in context.auth_context())
# to an identity, or None. Consulted only when the call carries no bearer token.
PeerResolver = Callable[[Any], Identity | None]


class Authenticator:
    def __init__(
        self,
        keys: KeyStore | None = None,
        jwts: JwtVerifier | None = None,
        peer: PeerResolver | None = None,
        peers: PeerPolicy | None = None,
    ) -> None:
        self._keys = keys
        self._jwts = jwts
        self._peers = peers or PeerPolicy()
        # An explicit resolver wins; else the verified certificate's SANs (tls_service_sans).
        self._peer = peer or (self._peers.service_identity if self._peers.service_sans else None)
        self._jwt_cache: dict[str, tuple[Identity, float]] = {}

    @classmethod
    def from_settings(cls, settings: Any) -> Authenticator:
        keys = KeyStore(settings.auth_keys_file) if settings.auth_keys_file else None
        jwts = None
        if settings.auth_jwt_key_file or settings.auth_jwks_file:
            jwts = JwtVerifier(
                key_file=settings.auth_jwt_key_file,
                jwks_file=settings.auth_jwks_file,
                issuer=settings.auth_jwt_issuer,
                audience=settings.auth_jwt_audience,
                algorithms=[
                    a.strip() for a in settings.auth_jwt_algorithms.split(",") if a.strip()
                ],
            )
        return cls(keys, jwts, peers=PeerPolicy.from_settings(settings))

    def admin_refusal(self, identity: Identity, context: Any) -> str | None:
        """Why ``identity`` may not use the admin plane from ``context``'s peer (the
        ``tls_admin_sans`` allow-list), or None."""
        return self._peers.admin_refusal(identity, context)

    def check_files(self) -> None:
        """Load every configured key file now; raises OSError/ValueError naming the problem."""
        if self._keys is not None:
            self._keys.check()
        if self._jwts is not None:
            self._jwts.check()

    def authenticate(
        self, metadata: Iterable[tuple[str, Any]] | None, context: Any = None
    ) -> Identity:
        """The identity of a call with ``metadata``: its bearer token's, else (no token) the
        transport peer's when a ``peer`` resolver is set and knows ``context``'s peer."""
        token = bearer_token(metadata)
        if token is None and self._peer is not None and context is not None:
            identity = self._peer(context)
            if identity is not None:
                return identity
        if token is None:
            raise AuthFailed(MISSING)
        if not token:
            raise AuthFailed("malformed credential: expected 'Bearer <token>'")
        if self._jwts is not None and token.count(".") == 2:
            return self._jwt(token, self._jwts)
        identity = None
        if self._keys is not None:
            try:
                identity = self._keys.lookup(token)
            except (OSError, ValueError):
                raise AuthFailed("credentials cannot be checked (keys file unreadable)") from None
        if identity is None:
            raise AuthFailed("invalid credential")
        return identity

    def _jwt(self, token: str, verifier: JwtVerifier) -> Identity:
        now = time.monotonic()
        cached = self._jwt_cache.get(token)
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            identity, exp = verifier.verify(token)
        except TokenRejected as exc:
            raise AuthFailed(f"invalid credential: {exc.reason}") from None
        except (OSError, ValueError):
            raise AuthFailed("credentials cannot be checked (JWT keys unreadable)") from None
        if len(self._jwt_cache) >= JWT_CACHE_SIZE:
            self._jwt_cache.clear()
        # Trusted for a short while only, so expiry and key rotation still bite quickly.
        self._jwt_cache[token] = (identity, now + min(JWT_CACHE_S, exp - time.time()))
        return identity
