"""Channels of the operator CLI and client tools to the suite: plaintext, or TLS, carrying
the operator's ``--token`` (or ``MODELSERVE_TOKEN``) as ``authorization: Bearer``.

TLS comes from ``--tls-ca`` / ``--tls-cert`` / ``--tls-key`` (``modelserve --tls-ca ca.pem
models list``) or ``MODELSERVE_TLS_CA`` / ``MODELSERVE_TLS_CERT`` / ``MODELSERVE_TLS_KEY``;
a CA alone is enough for the gateway, internal services (registry, featurestore, router,
worker) also want a client certificate. Services themselves use
``modelserve.channels.internal_channel``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from grpc import aio

from modelserve.auth.client import bearer_interceptors
from modelserve.tls import ClientTLS

ENV_CA, ENV_CERT, ENV_KEY = "MODELSERVE_TLS_CA", "MODELSERVE_TLS_CERT", "MODELSERVE_TLS_KEY"
TOKEN_ENV = "MODELSERVE_TOKEN"

# RELIABILITY.md's client retry policy, for inference only (admin and registry writes are never
# retried): 3 attempts on UNAVAILABLE with 50 ms -> 0.5 s backoff, and retry throttling (10
# tokens, ratio 0.1) so a fleet that is down is not hammered. gRPC waits at least a server's
# ``grpc-retry-pushback-ms`` before the next attempt; RESOURCE_EXHAUSTED (gateway overload, a
# rate limit) is not retryable, so a refused caller is never retried behind its back (T17).
RETRY_POLICY: dict[str, Any] = {
    "maxAttempts": 3,
    "initialBackoff": "0.05s",
    "maxBackoff": "0.5s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
SERVICE_CONFIG: dict[str, Any] = {
    "methodConfig": [
        {"name": [{"service": "inference.GRPCInferenceService"}], "retryPolicy": RETRY_POLICY}
    ],
    "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
}
CLIENT_OPTIONS = [("grpc.enable_retries", 1), ("grpc.service_config", json.dumps(SERVICE_CONFIG))]

_configured: ClientTLS | None = None
_token: str | None = None


def set_token(token: str | None) -> None:
    """The token every channel made by ``channel`` sends (None: ``MODELSERVE_TOKEN``)."""
    global _token
    _token = token


def _current_token() -> str | None:
    return _token if _token is not None else (os.environ.get(TOKEN_ENV) or None)


token = _current_token  # the CLI's token (``--token`` or MODELSERVE_TOKEN)


def tls_from(
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    env: Mapping[str, str] | None = None,
) -> ClientTLS | None:
    """Flags over environment; None (plaintext) when neither names a CA or a certificate."""
    env = os.environ if env is None else env
    ca = ca or env.get(ENV_CA, "")
    cert = cert or env.get(ENV_CERT, "")
    key = key or env.get(ENV_KEY, "")
    if bool(cert) != bool(key):
        raise ValueError("a client certificate needs its key: give both --tls-cert and --tls-key")
    if not (ca or cert):
        return None
    return ClientTLS(ca_file=ca, cert_file=cert, key_file=key)


def configure(tls: ClientTLS | None) -> None:
    """What ``channel`` uses when not told otherwise (set once by ``modelserve`` main)."""
    global _configured
    _configured = tls


def current() -> ClientTLS | None:
    return _configured if _configured is not None else tls_from()


def channel(address: str, tls: ClientTLS | None = None, *, token: str | None = None) -> aio.Channel:
    """A channel to ``address``: secure when ``tls`` (or the configured TLS) is set, sending
    ``token`` (else the CLI's token), if any, with the client retry policy above."""
    tls = tls if tls is not None else current()
    interceptors = bearer_interceptors(token or _current_token())
    if tls is None:
        return aio.insecure_channel(address, options=CLIENT_OPTIONS, interceptors=interceptors)
    return aio.secure_channel(
        address,
        tls.credentials(),
        options=[*tls.options(), *CLIENT_OPTIONS],
        interceptors=interceptors,
    )
