"""Server interceptors: the single place errors become statuses, and server spans begin.

grpc.aio interceptors receive a method handler; we return a copy whose behaviour is wrapped,
for all four call kinds, so no RPC can forget the error mapping (CONVENTIONS.md habit 3).

A service's runtime does not install these as gRPC interceptors: it wraps each method handler
once, when the service is registered (``wrap_method_handlers``, ``WrappingRegistrar``). A
grpc.aio interceptor costs a chain of coroutines per RPC before the handler even runs: three
pass-through interceptors took ~25 us of server CPU per RPC on a 2-vCPU box, the gateway's
whole Python path ~30 us (bench/gateway_path.py, issue 14). The wrapped behaviours are the same
either way, so tests still install them as interceptors on bare servers.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any

import grpc
from grpc import aio

from modelserve.auth.identity import CALLER_METADATA, current_identity
from modelserve.errors import ModelServeError

log = logging.getLogger(__name__)

# Health and reflection stay out of traces and error rewriting.
_SKIPPED_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")

Behaviour = Callable[..., Any]
Wrapper = Callable[[str, Behaviour, bool], Behaviour]


def _rewrap(handler: grpc.RpcMethodHandler, method: str, wrap: Wrapper) -> grpc.RpcMethodHandler:
    """Return ``handler`` with its behaviour passed through ``wrap(method, fn, streaming)``."""
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            wrap(method, handler.unary_unary, False),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            wrap(method, handler.unary_stream, True),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            wrap(method, handler.stream_unary, False),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return grpc.stream_stream_rpc_method_handler(
        wrap(method, handler.stream_stream, True),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


# A caller's x-request-id is echoed in INTERNAL errors only when it is this plain: it goes back
# into a status message and a log line, so no control character or markup rides along.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


async def abort_for(exc: BaseException, context: aio.ServicerContext, method: str) -> None:
    """Abort ``context`` with the status that ``exc`` stands for (never returns).

    INTERNAL and UNKNOWN carry a generic text and the caller's request id (RELIABILITY.md
    rule 10, T39): "internal error (request-id R, ref X)" for an unexpected exception here
    (the stack is logged under the ref), "router failed (internal) (request-id R)" for one
    relayed from a hop behind. Nothing else of the failure reaches the caller."""
    rid = _request_id(context)
    if isinstance(exc, ModelServeError):
        message = exc.message
        if rid and exc.code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            message = f"{message} (request-id {rid})"
        await context.abort(exc.code, message)
    if isinstance(exc, NotImplementedError):  # a generated base method nobody overrode
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "method not implemented")
    ref = uuid.uuid4().hex[:12]
    tag = f"request-id {rid}, ref {ref}" if rid else f"ref {ref}"
    log.error("unexpected error in %s (%s%s)", method, tag, _caller(context), exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error ({tag})")


def plain_request_id(value: object) -> str:
    """``value`` if it is a request id plain enough to echo (see _REQUEST_ID), else ""."""
    return value if isinstance(value, str) and _REQUEST_ID.fullmatch(value) else ""


def _request_id(context: aio.ServicerContext) -> str:
    """The caller's x-request-id if it is a plain token (see _REQUEST_ID), else ""."""
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id":
            return plain_request_id(value)
    return ""


def _caller(context: aio.ServicerContext) -> str:
    """ ", caller X" for the log line of a failed call when auth knows who called: the
    identity itself, or the caller a service identity forwarded (x-modelserve-caller)."""
    identity = current_identity()
    if identity is None:
        return ""
    if identity.is_service:
        for key, value in context.invocation_metadata() or ():
            if key == CALLER_METADATA and isinstance(value, str):
                return f", caller {value[:128]} via {identity.id}"
    return f", caller {identity.id}"


class BehaviourInterceptor(aio.ServerInterceptor):
    """A server interceptor that wraps each RPC's behaviour (``wrap``), health and reflection
    excepted: the base of the error and tracing interceptors."""

    def __init__(self) -> None:
        # A method's handler is the same object on every call: wrap it once, not per RPC.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_SKIPPED_PREFIXES):
            return handler
        found = self._wrapped.get(method)
        if found is not None and found[0] is handler:
            return found[1]
        wrapped = _rewrap(handler, method, self.wrap)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def wrap(self, method: str, fn: Behaviour, streaming: bool) -> Behaviour:
        raise NotImplementedError


def wrap_method_handlers(
    service: str,
    handlers: Mapping[str, grpc.RpcMethodHandler],
    behaviours: Sequence[BehaviourInterceptor],
) -> dict[str, grpc.RpcMethodHandler]:
    """``handlers`` (method name -> handler of ``service``) with each behaviour wrapped by
    ``behaviours``, the first outermost (the order of a gRPC interceptor list); health and
    reflection untouched, as the interceptors leave them."""
    out: dict[str, grpc.RpcMethodHandler] = {}
    for name, handler in handlers.items():
        method = f"/{service}/{name}"
        if not method.startswith(_SKIPPED_PREFIXES):
            handler = _rewrap(handler, method, partial(wrap_behaviour, behaviours=behaviours))
        out[name] = handler
    return out


def wrap_behaviour(
    method: str, fn: Behaviour, streaming: bool, behaviours: Sequence[BehaviourInterceptor]
) -> Behaviour:
    """``fn`` (the behaviour of ``method``) wrapped by ``behaviours``, the first outermost:
    what every registered handler gets, and what the worker's lane runs each message through."""
    for behaviour in reversed(behaviours):
        fn = behaviour.wrap(method, fn, streaming)
    return fn


class _WrappedGenericHandler(grpc.GenericRpcHandler):
    """A generic handler whose method handlers are wrapped on first use (for registrations
    that give no method table: generated code of older gRPC, hand-made generic handlers)."""

    def __init__(
        self, inner: grpc.GenericRpcHandler, behaviours: Sequence[BehaviourInterceptor]
    ) -> None:
        self._inner = inner
        self._behaviours = behaviours
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = self._inner.service(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_SKIPPED_PREFIXES):
            return handler
        found = self._wrapped.get(method)
        if found is not None and found[0] is handler:
            return found[1]
        wrapped = _rewrap(handler, method, partial(wrap_behaviour, behaviours=self._behaviours))
        self._wrapped[method] = (handler, wrapped)
        return wrapped


class WrappingRegistrar:
    """Stands in for the server in a generated ``add_<Service>Servicer_to_server`` call and
    registers the service's handlers on the real server with ``behaviours`` wrapped around
    them. Generated code calls ``add_generic_rpc_handlers`` and then (gRPC >= 1.62)
    ``add_registered_method_handlers`` with the same table: the table is wrapped once and
    registered both ways; a registration that never gives the table is wrapped per method."""

    def __init__(self, server: aio.Server, behaviours: Sequence[BehaviourInterceptor]) -> None:
        self._server = server
        self._behaviours = tuple(behaviours)
        self._generic: list[grpc.GenericRpcHandler] = []
        self._registered = False

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._generic.extend(handlers)

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        wrapped = wrap_method_handlers(service, handlers, self._behaviours)
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, wrapped),)
        )
        self._server.add_registered_method_handlers(service, wrapped)
        self._registered = True

    def finish(self) -> None:
        """Register what came without a method table (call once, after the add function)."""
        if not self._registered and self._generic:
            self._server.add_generic_rpc_handlers(
                tuple(_WrappedGenericHandler(g, self._behaviours) for g in self._generic)
            )
        self._generic = []


class ErrorInterceptor(BehaviourInterceptor):
    """Maps ``ModelServeError`` to its status and anything unexpected to INTERNAL + a ref id."""

    def wrap(self, method: str, fn: Behaviour, streaming: bool) -> Behaviour:
        return _wrap_errors(method, fn, streaming)


def _wrap_errors(method: str, fn: Behaviour, streaming: bool) -> Behaviour:
    if streaming:

        async def stream_behaviour(
            request: Any, context: aio.ServicerContext
        ) -> AsyncIterator[Any]:
            try:
                async for item in fn(request, context):
                    yield item
            except (asyncio.CancelledError, aio.AbortError):
                raise
            except Exception as exc:  # the one catch-all: mapped, logged, never leaked
                await abort_for(exc, context, method)

        return stream_behaviour

    async def unary_behaviour(request: Any, context: aio.ServicerContext) -> Any:
        try:
            return await fn(request, context)
        except (asyncio.CancelledError, aio.AbortError):
            raise
        except Exception as exc:
            await abort_for(exc, context, method)

    return unary_behaviour
