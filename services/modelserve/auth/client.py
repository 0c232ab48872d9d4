"""Outbound credentials: ``authorization: Bearer <token>`` on every call a channel makes.

Services call each other with the service token of ``service_token_file`` (read again when
the file changes): ``set_service_token_file`` is called once at start-up, and every internal
channel (``modelserve.channels.insecure_channel``, hence every ``EndpointSet``, watch, status
stream and reader) gets ``outbound_interceptors()``. The CLI passes its ``--token`` with
``bearer_interceptors``. No token configured: no interceptor, no per-call cost. The hops'
own calls (``calls.Hop`` on ``Endpoint.hot_stub``) add the same header themselves
(``service_authorization``) and skip the interceptor, which costs a task per call.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from grpc import aio

from modelserve.auth.authenticator import AUTHORIZATION
from modelserve.auth.files import Reloading


class _Bearer:
    """Adds ``authorization: Bearer <token()>`` to a call's metadata (an earlier one replaced)."""

    def __init__(self, token: Callable[[], str]) -> None:
        self._token = token

    def _details(self, details: aio.ClientCallDetails) -> aio.ClientCallDetails:
        kept = [(k, v) for k, v in (details.metadata or ()) if k != AUTHORIZATION]
        kept.append((AUTHORIZATION, f"Bearer {self._token()}"))
        return aio.ClientCallDetails(
            details.method,
            details.timeout,
            aio.Metadata(*kept),
            details.credentials,
            details.wait_for_ready,
        )


# One class per call kind: grpc.aio files an interceptor under the first kind it matches
# (if/elif), so one class implementing all four would only ever see unary-unary calls.
class _BearerUnaryUnary(_Bearer, aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


class _BearerUnaryStream(_Bearer, aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


class _BearerStreamUnary(_Bearer, aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: aio.ClientCallDetails, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


class _BearerStreamStream(_Bearer, aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: aio.ClientCallDetails, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


def bearer(token: Callable[[], str]) -> list[aio.ClientInterceptor]:
    """Interceptors for every call kind, each sending ``token()``."""
    return [
        _BearerUnaryUnary(token),
        _BearerUnaryStream(token),
        _BearerStreamUnary(token),
        _BearerStreamStream(token),
    ]


def bearer_interceptors(token: str | None) -> list[aio.ClientInterceptor] | None:
    """Interceptors sending ``token`` (None when there is no token)."""
    if not token:
        return None
    fixed = token.strip()
    return bearer(lambda: fixed)


class TokenFile:
    """A token kept in a file (first line), read again when the file changes."""

    def __init__(self, path: str | Path) -> None:
        self._file = Reloading(path, _first_line, "service token")

    def __call__(self) -> str:
        """The token; "" while the file is missing or empty (logged by ``Reloading``): the
        peer then answers UNAUTHENTICATED, which callers and watch loops handle, instead of an
        exception from inside a channel that a watch loop would die of."""
        try:
            return self._file.get()
        except (OSError, ValueError):
            return ""


def _first_line(text: str) -> str:
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not token:
        raise ValueError("token file is empty")
    return token


_service_token: TokenFile | None = None


def set_service_token_file(path: str | Path | None) -> None:
    """The token this process sends on every internal call ("" or None: none)."""
    global _service_token
    _service_token = TokenFile(path) if path else None


def service_authorization() -> tuple[str, str] | None:
    """``("authorization", "Bearer <service token>")`` for a call that adds its own metadata
    (``calls.Hop`` on ``Endpoint.hot_stub``), or None when no token is configured."""
    source = _service_token
    return (AUTHORIZATION, f"Bearer {source()}") if source is not None else None


def outbound_interceptors() -> list[aio.ClientInterceptor] | None:
    source = _service_token
    return bearer(source) if source is not None else None
