"""The server interceptor that enforces ``RPC_ROLES`` on every RPC of every service.

Placed right after admission. No credential, or one that does not verify: UNAUTHENTICATED.
A valid identity without the RPC's role (or, for inference, the model's pattern):
PERMISSION_DENIED naming the role. The identity is set for the handler (``current_identity``)
and every admin RPC is written to the ``modelserve.audit`` log with its outcome. Credentials
never appear in a message or a log line.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.message import Message
from grpc import aio
from prometheus_client import Counter

from modelserve.auth.authenticator import Authenticator, AuthFailed
from modelserve.auth.identity import _CURRENT, ADMIN, CALLER_METADATA, Identity
from modelserve.auth.limits import IdentityLimits, LimitExceeded
from modelserve.auth.roles import Rule, rule_for
from modelserve.errors import PermissionDeniedError
from modelserve.interceptors import Behaviour, BehaviourInterceptor

log = logging.getLogger(__name__)
audit_log = logging.getLogger("modelserve.audit")
TARGET_FIELDS = ("model", "name", "model_name", "view", "experiment")
REFUSED = Counter(
    "modelserve_auth_refused_total",
    "RPCs refused by auth, by status (UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED)",
    ["code"],
)


class AuthInterceptor(BehaviourInterceptor):
    def __init__(self, authenticator: Authenticator, limits: IdentityLimits | None = None) -> None:
        super().__init__()
        self._authenticator = authenticator
        self._limits = limits or IdentityLimits()

    def wrap(self, method: str, fn: Behaviour, streaming: bool) -> Behaviour:
        rule = rule_for(method)
        limits = self._limits
        if streaming:

            async def stream_behaviour(
                request: Any, context: aio.ServicerContext
            ) -> AsyncIterator[Any]:
                identity = await self._admit(method, rule, request, context)
                assert rule is not None
                try:
                    limits.open_stream(identity.id)
                except LimitExceeded as exc:
                    await _exhausted(context, exc)
                _CURRENT.set(identity)  # this RPC's own task: nothing to reset
                if rule.model_field and _is_stream(request):
                    request = _checked_stream(request, rule, identity)
                try:
                    async for item in fn(request, context):
                        yield item
                finally:
                    limits.close_stream(identity.id)

            return stream_behaviour

        async def unary_behaviour(request: Any, context: aio.ServicerContext) -> Any:
            identity = await self._admit(method, rule, request, context)
            assert rule is not None
            limited = limits.limits_unary and not identity.is_service
            if limited:
                try:
                    limits.start_unary(identity.id)
                except LimitExceeded as exc:
                    await _exhausted(context, exc)
            token = _CURRENT.set(identity)
            target: list[str] = []
            if rule.model_field and _is_stream(request):
                request = _checked_stream(request, rule, identity)
            elif rule.audit and _is_stream(request):
                request = _targeted(request, target)
            outcome = "OK"
            try:
                return await fn(request, context)
            except aio.AbortError:
                outcome = _code_of(context)
                raise
            except BaseException as exc:
                outcome = type(exc).__name__
                raise
            finally:
                _CURRENT.reset(token)
                if limited:
                    limits.end_unary(identity.id)
                if rule.audit:
                    _audit(
                        identity,
                        method,
                        target[0] if target else _target(request),
                        outcome,
                        context,
                    )

        return unary_behaviour

    async def _admit(
        self, method: str, rule: Rule | None, request: Any, context: aio.ServicerContext
    ) -> Identity:
        """The caller's identity if it may call ``method``; aborts otherwise."""
        try:
            identity = self._authenticator.authenticate(context.invocation_metadata(), context)
        except AuthFailed as exc:
            # Debug only: a caller without credentials must not be able to flood the logs.
            log.debug("refused %s: %s", method, exc.reason)
            REFUSED.labels("UNAUTHENTICATED").inc()
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, exc.reason)
            raise AssertionError("unreachable") from None
        if rule is None:
            REFUSED.labels("PERMISSION_DENIED").inc()
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"{method} is not in the RPC role table"
            )
        assert rule is not None
        if not any(identity.has(role) for role in rule.roles):
            message = f"{method} needs role {rule.role}; identity {identity.id} lacks it"
            if rule.audit:
                _audit(identity, method, _target(request), "PERMISSION_DENIED", context)
            REFUSED.labels("PERMISSION_DENIED").inc()
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)
        if ADMIN in rule.roles:
            # The admin plane also wants the caller's certificate on tls_admin_sans (T38).
            refusal = self._authenticator.admin_refusal(identity, context)
            if refusal is not None:
                if rule.audit:
                    _audit(identity, method, _target(request), "PERMISSION_DENIED", context)
                REFUSED.labels("PERMISSION_DENIED").inc()
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
        if rule.model_field and isinstance(request, Message):
            model = getattr(request, rule.model_field, "")
            if not identity.may_infer(model):
                REFUSED.labels("PERMISSION_DENIED").inc()
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED, _not_covered(identity, model)
                )
        return identity


def _is_stream(request: Any) -> bool:
    """A client-streaming RPC's handler gets an iterator of requests, not a request."""
    return hasattr(request, "__aiter__")


def _not_covered(identity: Identity, model: str) -> str:
    return f"role infer of identity {identity.id} does not cover model {model[:128]!r}"


def _check_model(identity: Identity, model: str) -> None:
    """Inside the handler (a stream's next request): ErrorInterceptor maps the error."""
    if not identity.may_infer(model):
        raise PermissionDeniedError(_not_covered(identity, model))


async def _checked_stream(
    requests: AsyncIterator[Any], rule: Rule, identity: Identity
) -> AsyncIterator[Any]:
    """``requests``, each checked against the identity's model patterns (ModelStreamInfer)."""
    async for request in requests:
        if rule.model_field and isinstance(request, Message):
            _check_model(identity, getattr(request, rule.model_field, ""))
        yield request


async def _targeted(requests: AsyncIterator[Any], target: list[str]) -> AsyncIterator[Any]:
    """``requests`` passed through, the first one's target noted for the audit line."""
    async for request in requests:
        if not target:
            target.append(_target(request))
        yield request


def _target(request: Any) -> str:
    """The model or object name an admin request is about (top level or one level down)."""
    if not isinstance(request, Message):
        return ""
    for value in (request, *(v for f, v in request.ListFields() if isinstance(v, Message))):
        for name in TARGET_FIELDS:
            found = getattr(value, name, None) if name in value.DESCRIPTOR.fields_by_name else None
            if isinstance(found, str) and found:
                return found
    return ""


def _code_of(context: aio.ServicerContext) -> str:
    try:
        code = context.code()
    except Exception:  # older grpc.aio contexts do not expose it
        return "ABORTED"
    return code.name if isinstance(code, grpc.StatusCode) else str(code or "ERROR")


def _audit(
    identity: Identity, method: str, target: str, outcome: str, context: aio.ServicerContext
) -> None:
    """One line per admin RPC; a service relaying a caller's write (the gateway's
    RepositoryModelLoad) names that caller too."""
    via = ""
    if identity.is_service:
        for key, value in context.invocation_metadata() or ():
            if key == CALLER_METADATA and isinstance(value, str):
                via = f" caller={value[:128]}"
    audit_log.info(
        "audit identity=%s method=%s target=%s outcome=%s%s",
        identity.id,
        method,
        target or "-",
        outcome,
        via,
    )


async def _exhausted(context: aio.ServicerContext, exc: LimitExceeded) -> None:
    REFUSED.labels("RESOURCE_EXHAUSTED").inc()
    await context.abort(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        exc.message,
        trailing_metadata=(("grpc-retry-pushback-ms", str(exc.pushback_ms)),),
    )
