"""The one error model: domain errors carry a gRPC status code and an actionable message.

Raise these anywhere in a service; ``modelserve.interceptors.ErrorInterceptor`` is the one place
that turns them into gRPC statuses (RELIABILITY.md, "Status codes"). Anything else that escapes
a handler becomes INTERNAL with an opaque id; the stack goes to the log, never to the caller.
"""

from __future__ import annotations

import logging

import grpc

log = logging.getLogger(__name__)


class ModelServeError(Exception):
    """Base of every domain error; ``code`` is the gRPC status the caller sees."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgumentError(ModelServeError):
    """Malformed request: bad tensor name, dtype, shape, byte size, bad name or config."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(ModelServeError):
    """Unknown model, version, label, feature view or feature."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(ModelServeError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPreconditionError(ModelServeError):
    """The request is well formed but the system is not in a state to do it (bad artifact)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class UnavailableError(ModelServeError):
    """Retryable: not ready, no worker, draining, worker queue full."""

    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhaustedError(ModelServeError):
    """Not retried: gateway-wide overload or quota."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceededError(ModelServeError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class PermissionDeniedError(ModelServeError):
    code = grpc.StatusCode.PERMISSION_DENIED


class UnauthenticatedError(ModelServeError):
    code = grpc.StatusCode.UNAUTHENTICATED


class UnimplementedError(ModelServeError):
    code = grpc.StatusCode.UNIMPLEMENTED


_BY_CODE: dict[grpc.StatusCode, type[ModelServeError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        AlreadyExistsError,
        FailedPreconditionError,
        UnavailableError,
        ResourceExhaustedError,
        DeadlineExceededError,
        PermissionDeniedError,
        UnauthenticatedError,
        UnimplementedError,
    )
}
# Transport-level details name peers and addresses; callers get a short message instead.
_TRANSPORT_MARKERS = (
    "ipv4:",
    "ipv6:",
    "unix:",
    "failed to connect",
    "Socket closed",
    "GOAWAY",
    "errors resolving",
    "DNS resolution failed",
    "lookup",
    "Stream removed",  # e.g. "Stream removed (recvmsg:Connection reset by peer (104))"
    "recvmsg",
    "sendmsg",
    "Connection reset",
    "Broken pipe",
    "Connection refused",
)


def from_rpc_error(exc: grpc.RpcError, hop: str) -> ModelServeError:
    """Carry a downstream status upstream unchanged, minus transport internals."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    if code == grpc.StatusCode.CANCELLED:
        details = details or "cancelled"
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        # A peer refused *this service's* token (every caller's own credential was checked
        # at the edge): a misconfiguration the caller cannot fix, and must not read as a
        # problem with their token. Never UNAVAILABLE, which every client retries.
        log.error("%s refused this service's credentials (%s): %s", hop, code.name, details)
        return ModelServeError(f"{hop} refused this service's credentials ({code.name.lower()})")
    if any(marker in details for marker in _TRANSPORT_MARKERS) or code in (
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    ):
        details = (
            f"{hop} failed ({code.name.lower()})"
            if code != grpc.StatusCode.UNAVAILABLE
            else (f"{hop} unavailable")
        )
    return error_for(code, details)


def error_for(code: grpc.StatusCode, details: str) -> ModelServeError:
    """The domain error that stands for ``code`` (a plain ModelServeError carrying it when no
    class does)."""
    cls = _BY_CODE.get(code)
    err = cls(details) if cls is not None else ModelServeError(details)
    if cls is None:
        err.code = code
    return err
