"""JWT bearer tokens: HS256, RS256 or ES256, with issuer, audience and expiry checked.

Keys come from a file (a PEM public key or certificate for RS256/ES256, or an HS256 shared
secret) or a JWKS file (keys chosen by ``kid``); both are read again when they change. The
algorithm follows the key: a PEM key never verifies an HS256 token (no algorithm confusion).

Claims: ``sub`` is the identity; roles from ``roles`` (a list or a space-separated string) or
from ``scope`` (space-separated, known role names only); ``models`` (optional) limits infer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from modelserve.auth.files import Reloading
from modelserve.auth.identity import ROLES, Identity

ASYMMETRIC = ("RS256", "ES256")
SYMMETRIC = ("HS256",)


class TokenRejected(Exception):
    """The token is not acceptable; ``reason`` is safe to show (it never contains the token)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class _Key:
    key: Any
    algorithms: tuple[str, ...]


def _parse_key_file(text: str) -> _Key:
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        from cryptography.hazmat.primitives.serialization import load_pem_public_key
        from cryptography.x509 import load_pem_x509_certificate

        data = stripped.encode()
        key = (
            load_pem_x509_certificate(data).public_key()
            if "CERTIFICATE" in stripped.splitlines()[0]
            else load_pem_public_key(data)
        )
        return _Key(key, ASYMMETRIC)
    if len(stripped) < 32:
        raise ValueError("an HS256 secret must be at least 32 bytes")
    return _Key(stripped.encode(), SYMMETRIC)


def _parse_jwks(text: str) -> dict[str, _Key]:
    keys: dict[str, _Key] = {}
    for i, jwk in enumerate(jwt.PyJWKSet.from_json(text).keys):
        algorithm = jwk.algorithm_name
        if algorithm not in ASYMMETRIC + SYMMETRIC:
            raise ValueError(f"JWKS key {jwk.key_id or i}: algorithm {algorithm} not accepted")
        keys[jwk.key_id or ""] = _Key(jwk.key, (algorithm,))
    return keys


class JwtVerifier:
    def __init__(
        self,
        *,
        key_file: str = "",
        jwks_file: str = "",
        issuer: str = "",
        audience: str = "",
        algorithms: Sequence[str] = ASYMMETRIC + SYMMETRIC,
        leeway_s: float = 30.0,
    ) -> None:
        self._key = Reloading(key_file, _parse_key_file, "JWT key") if key_file else None
        self._jwks = Reloading(jwks_file, _parse_jwks, "JWKS") if jwks_file else None
        self._issuer = issuer
        self._audience = audience
        self._algorithms = tuple(algorithms)
        self._leeway = leeway_s

    def check(self) -> None:
        for source in (self._key, self._jwks):
            if source is not None:
                source.get()

    def _keys_for(self, token: str) -> list[_Key]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRejected("malformed token") from None
        found: list[_Key] = []
        if self._jwks is not None:
            keys = self._jwks.get()
            kid = header.get("kid")
            if kid is not None and kid in keys:
                found.append(keys[kid])
            elif kid is None:
                found += keys.values()
        if self._key is not None:
            found.append(self._key.get())
        return found

    def verify(self, token: str) -> tuple[Identity, float]:
        """(the identity ``token`` stands for, its exp as a Unix time); TokenRejected when it
        does not verify."""
        keys = self._keys_for(token)
        if not keys:
            raise TokenRejected("no key verifies this token")
        last = "bad signature"
        for key in keys:
            algorithms = [a for a in key.algorithms if a in self._algorithms]
            if not algorithms:
                continue
            try:
                claims = jwt.decode(
                    token,
                    key.key,
                    algorithms=algorithms,
                    audience=self._audience or None,
                    issuer=self._issuer or None,
                    leeway=self._leeway,
                    options={"require": ["exp", "sub"], "verify_aud": bool(self._audience)},
                )
            except jwt.ExpiredSignatureError:
                raise TokenRejected("token expired") from None
            except jwt.InvalidSignatureError:
                continue
            except jwt.InvalidAudienceError:
                raise TokenRejected("wrong audience") from None
            except jwt.InvalidIssuerError:
                raise TokenRejected("wrong issuer") from None
            except jwt.MissingRequiredClaimError as exc:
                raise TokenRejected(f"missing claim {exc.claim}") from None
            except jwt.PyJWTError:
                last = "invalid token"
                continue
            return _identity(claims), float(claims["exp"])
        raise TokenRejected(last)


def _identity(claims: dict[str, Any]) -> Identity:
    raw = claims.get("roles")
    if isinstance(raw, str):
        roles = raw.split()
    elif isinstance(raw, list):
        roles = [r for r in raw if isinstance(r, str)]
    else:
        roles = str(claims.get("scope", "")).split()
    known = frozenset(r for r in roles if r in ROLES)
    models = claims.get("models", [])
    patterns = tuple(m for m in models if isinstance(m, str)) if isinstance(models, list) else ()
    return Identity(str(claims["sub"]), known, patterns, "jwt")
