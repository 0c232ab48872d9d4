"""The V2 REST/HTTP face (KServe Open Inference Protocol HTTP binding, as Triton serves it).

It is a second door into the same V2 servicer: each route decodes its HTTP request into the
V2 protobuf request the gRPC method takes, calls that ``V2Servicer`` method with a context
that carries the deadline and forwarded metadata the way a gRPC context would, and encodes the
answer as Triton's HTTP server does (``rest_codec``). So validation, routing, merging,
classification, repository rules and errors are the gRPC path's own; nothing here decides
anything about a model.

Errors: a ``ModelServeError`` becomes Triton's status for its code (``STATUS``) with the body
``{"error": "<message>"}``; anything else 500 with a reference id (the stack goes to the log).
INTERNAL answers carry the caller's ``x-request-id`` when it is a plain token, as the gRPC
face's do (T39).
Deadlines: the request parameter ``timeout`` (µs, what tritonclient.http's ``timeout=`` sends;
Triton has no timeout header) is the client's deadline, clamped at the edge like a gRPC one;
without it the edge's default applies. ``x-request-id`` and ``x-routing-key`` headers travel
like the gRPC metadata of the same names.
"""

from __future__ import annotations

import gzip
import logging
import re
import uuid
import zlib
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import unquote

import grpc

from modelserve import metrics, tracing
from modelserve.errors import InvalidArgumentError, ModelServeError, NotFoundError, error_for
from modelserve.httpserver import SERVERS, HttpRequest, HttpResponse
from modelserve.interceptors import plain_request_id
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.server import Runtime
from modelserve.v2 import rest_codec as codec
from modelserve.v2.servicer import V2Servicer

log = logging.getLogger(__name__)

# Triton's HttpCodeFromError, plus the codes Triton's core has no name for.
STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.ALREADY_EXISTS: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.CANCELLED: 400,
    grpc.StatusCode.UNKNOWN: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    # Overload: Triton answers a full queue UNAVAILABLE (503); a client retries either.
    grpc.StatusCode.RESOURCE_EXHAUSTED: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
FORWARDED_HEADERS = ("x-request-id", "x-routing-key")
RETRY_AFTER_S = "1"
_OK = HttpResponse(200)
_NOT_READY = HttpResponse(400)  # Triton: 200 when live/ready, 400 when not, no body

_MODEL = re.compile(
    r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?"
    r"(?:/(?P<action>ready|config|stats|infer))?$"
)
_REPOSITORY = re.compile(r"^/v2/repository/models/(?P<name>[^/]+)/(?P<action>load|unload)$")


_HEALTH = ("/v2/health/live", "/v2/health/ready")
_ROUTES = ("/v2", *_HEALTH, "/v2/repository/index")


def _route_of(path: str) -> str:
    """``path`` with model names and versions as placeholders (span names stay few)."""
    match = _MODEL.match(path)
    if match is not None:
        if path == "/v2/models/stats":
            return path
        version = "/versions/{version}" if match["version"] else ""
        action = f"/{match['action']}" if match["action"] else ""
        return "/v2/models/{model}" + version + action
    match = _REPOSITORY.match(path)
    if match is not None:
        return "/v2/repository/models/{model}/" + match["action"]
    return path if path in _ROUTES else "(unknown)"


class _Context:
    """What the servicer reads of a gRPC context: the deadline and the invocation metadata."""

    __slots__ = ("_metadata", "_remaining")

    def __init__(self, remaining: float | None, metadata: tuple[tuple[str, str], ...]) -> None:
        self._remaining = remaining
        self._metadata = metadata

    def time_remaining(self) -> float | None:
        return self._remaining

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def code(self) -> grpc.StatusCode | None:
        return None

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        """What the auth interceptor calls to refuse: the domain error of ``code``, which
        ``HttpFace`` answers with its HTTP status (401, 403, 503...)."""
        raise error_for(code, details)


# What the auth interceptor reads besides the forwarded headers (never forwarded onward:
# Call keeps only FORWARDED_METADATA).
AUTH_HEADERS = ("authorization",)
V2_SERVICE = "/inference.GRPCInferenceService/"


class _Authorized:
    """``servicer`` with every method passed through the process's auth interceptor, so REST
    requests meet the same role table, model patterns, limits and audit as gRPC ones."""

    def __init__(self, servicer: V2Servicer, auth: Any) -> None:
        self._servicer = servicer
        self._auth = auth
        self._wrapped: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        found = self._wrapped.get(name)
        if found is None:
            method = getattr(self._servicer, name)
            found = self._wrapped[name] = self._auth.wrap(V2_SERVICE + name, method, False)
        return found


def _error(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> HttpResponse:
    return HttpResponse(status, codec.dumps({"error": message}), headers=headers or [])


def _json(value: Any) -> HttpResponse:
    return HttpResponse(200, codec.dumps(value))


class HttpFace:
    """Routes V2 REST requests to ``servicer``; ``ready()`` gates /v2/health/ready (the
    process's own readiness, e.g. not while draining); at most ``max_in_flight`` requests
    other than health are served at once (more: 503, as the gRPC port's admission)."""

    def __init__(
        self,
        servicer: V2Servicer,
        *,
        ready: Callable[[], bool],
        max_in_flight: int = 1024,
        service: str = "gateway",
        max_body_bytes: int = 16 << 20,
        auth: Any = None,
    ) -> None:
        self._max_body_bytes = max_body_bytes
        # With auth on, every servicer call goes through the same interceptor as gRPC's, but
        # /v2/health/live|ready: load balancers' probes carry no credentials and learn only
        # what grpc.health.v1 (never authenticated) tells anyone.
        self._servicer: Any = servicer if auth is None else _Authorized(servicer, auth)
        self._health: Any = servicer
        self._service = service
        self._ready = ready
        self._max_in_flight = max_in_flight
        self.in_flight = 0

    async def handle(self, request: HttpRequest) -> HttpResponse:
        route = _route_of(request.path)
        response = await self._handle(request, route)
        metrics.HTTP_REQUESTS.labels(route, str(response.status)).inc()
        return response

    async def _handle(self, request: HttpRequest, route: str) -> HttpResponse:
        # Health is never counted or refused (as on the gRPC port): a busy gateway still
        # answers its probes.
        if self.in_flight >= self._max_in_flight and route not in _HEALTH:
            return _error(
                503,
                f"server busy: {self.in_flight} requests in progress (limit "
                f"{self._max_in_flight}); retry shortly",
                [("Retry-After", RETRY_AFTER_S)],
            )
        self.in_flight += 1
        try:
            with tracing.http_server_span(
                self._service, request.method, route, request.headers
            ) as span:
                response = await self._answer(request)
                tracing.set_http_status(span, response.status)
                return response
        finally:
            self.in_flight -= 1

    async def _answer(self, request: HttpRequest) -> HttpResponse:
        try:
            return await self._route(request)
        except ModelServeError as exc:
            status = STATUS.get(exc.code, 400)
            extra = [("Retry-After", RETRY_AFTER_S)] if status == 503 else None
            message = exc.message
            rid = plain_request_id(request.headers.get("x-request-id"))
            if rid and exc.code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                message = f"{message} (request-id {rid})"  # as the gRPC face's abort_for
            return _error(status, message, extra)
        except Exception:
            ref = uuid.uuid4().hex[:12]
            rid = plain_request_id(request.headers.get("x-request-id"))
            tag = f"request-id {rid}, ref {ref}" if rid else f"ref {ref}"
            log.exception("unexpected error in %s %s (%s)", request.method, request.path, tag)
            return _error(500, f"internal error ({tag})")

    async def _route(self, request: HttpRequest) -> HttpResponse:
        path, method = request.path, request.method
        if path.startswith("/v2/models/"):
            match = _MODEL.match(path)
            if match is None:
                return _error(404, "Not Found")
            if path == "/v2/models/stats":
                return await self._only(method, "GET", self._stats(request, "", ""))
            name = unquote(match["name"])
            version = unquote(match["version"] or "")
            action = match["action"]
            if action == "infer":
                return await self._only(method, "POST", self._infer(request, name, version))
            if action == "ready":
                return await self._only(method, "GET", self._model_ready(request, name, version))
            if action == "config":
                return await self._only(method, "GET", self._config(request, name, version))
            if action == "stats":
                return await self._only(method, "GET", self._stats(request, name, version))
            return await self._only(method, "GET", self._metadata(request, name, version))
        if path in ("/v2", "/v2/"):
            return await self._only(method, "GET", self._server_metadata(request))
        if path == "/v2/health/live":
            return await self._only(method, "GET", self._live(request))
        if path == "/v2/health/ready":
            return await self._only(method, "GET", self._server_ready(request))
        if path == "/v2/repository/index":
            return await self._only(method, "POST", self._index(request))
        match = _REPOSITORY.match(path)
        if match is not None:
            name = unquote(match["name"])
            action = self._load if match["action"] == "load" else self._unload
            return await self._only(method, "POST", action(request, name))
        return _error(404, "Not Found")

    @staticmethod
    async def _only(
        method: str, allowed: str, answer: Coroutine[Any, Any, HttpResponse]
    ) -> HttpResponse:
        if method != allowed:
            answer.close()  # never awaited: no warning
            return _error(405, "Method Not Allowed")
        return await answer

    @staticmethod
    def _context(request: HttpRequest, timeout_s: float | None = None) -> Any:
        headers = request.headers
        metadata = tuple(
            (k, headers[k]) for k in (*FORWARDED_HEADERS, *AUTH_HEADERS) if k in headers
        )
        return _Context(timeout_s, metadata)

    # --- health and metadata ---
    async def _live(self, request: HttpRequest) -> HttpResponse:
        answer = await self._health.ServerLive(pb.ServerLiveRequest(), self._context(request))
        return _OK if answer.live else _NOT_READY

    async def _server_ready(self, request: HttpRequest) -> HttpResponse:
        if not self._ready():
            return _NOT_READY
        answer = await self._health.ServerReady(pb.ServerReadyRequest(), self._context(request))
        return _OK if answer.ready else _NOT_READY

    async def _server_metadata(self, request: HttpRequest) -> HttpResponse:
        answer = await self._servicer.ServerMetadata(
            pb.ServerMetadataRequest(), self._context(request)
        )
        return _json(
            {"name": answer.name, "version": answer.version, "extensions": list(answer.extensions)}
        )

    async def _model_ready(self, request: HttpRequest, name: str, version: str) -> HttpResponse:
        answer = await self._servicer.ModelReady(
            pb.ModelReadyRequest(name=name, version=version), self._context(request)
        )
        return _OK if answer.ready else _NOT_READY

    async def _metadata(self, request: HttpRequest, name: str, version: str) -> HttpResponse:
        answer = await self._servicer.ModelMetadata(
            pb.ModelMetadataRequest(name=name, version=version), self._context(request)
        )
        return _json(codec.message_json(answer))

    async def _config(self, request: HttpRequest, name: str, version: str) -> HttpResponse:
        answer = await self._servicer.ModelConfig(
            pb.ModelConfigRequest(name=name, version=version), self._context(request)
        )
        return _json(codec.message_json(answer.config))  # Triton answers the config itself

    async def _stats(self, request: HttpRequest, name: str, version: str) -> HttpResponse:
        answer = await self._servicer.ModelStatistics(
            pb.ModelStatisticsRequest(name=name, version=version), self._context(request)
        )
        return _json(codec.message_json(answer, defaults=True))

    # --- model repository ---
    async def _index(self, request: HttpRequest) -> HttpResponse:
        doc = codec.parse_json(request.body) if request.body.strip() else {}
        if not isinstance(doc, dict):
            raise InvalidArgumentError("the repository index request must be a JSON object")
        ready = doc.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidArgumentError("'ready' must be true or false")
        answer = await self._servicer.RepositoryIndex(
            pb.RepositoryIndexRequest(ready=ready), self._context(request)
        )
        models = [codec.message_json(m) for m in answer.models]
        if ready:
            models = [m for m in models if m.get("state") == "READY"]
        return _json(models)

    def _repository_parameters(self, request: HttpRequest, target: Any) -> None:
        doc = codec.parse_json(request.body) if request.body.strip() else {}
        if not isinstance(doc, dict):
            raise InvalidArgumentError("the request body must be a JSON object")
        for key, value in codec._parameters(doc.get("parameters"), "request").items():
            codec.set_parameter(target, key, value)

    async def _load(self, request: HttpRequest, name: str) -> HttpResponse:
        message = pb.RepositoryModelLoadRequest(model_name=name)
        self._repository_parameters(request, message.parameters)
        await self._servicer.RepositoryModelLoad(message, self._context(request))
        return _OK

    async def _unload(self, request: HttpRequest, name: str) -> HttpResponse:
        message = pb.RepositoryModelUnloadRequest(model_name=name)
        self._repository_parameters(request, message.parameters)
        await self._servicer.RepositoryModelUnload(message, self._context(request))
        return _OK

    # --- inference ---
    async def _infer(self, request: HttpRequest, name: str, version: str) -> HttpResponse:
        if not name:
            raise NotFoundError("model name is required")
        payload = request.body
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":
            inflated = _inflate(payload, encoding, self._max_body_bytes)
            if inflated is None:
                return _error(
                    413, f"request body over {self._max_body_bytes} bytes once decompressed"
                )
            payload = inflated
        parsed = codec.infer_request(name, version, payload, request.headers)
        answer = await self._servicer.ModelInfer(
            parsed.request, self._context(request, parsed.timeout_s)
        )
        body, header_length = codec.infer_response(answer, parsed)
        headers: list[tuple[str, str]] = []
        if header_length is not None:  # the JSON's length before any compression, as Triton
            headers.append(("Inference-Header-Content-Length", str(header_length)))
        accepted = _accepted_encoding(request.headers.get("accept-encoding", ""))
        if accepted == "gzip":
            body = gzip.compress(body, compresslevel=6)
        elif accepted == "deflate":
            body = zlib.compress(body)
        if accepted:
            headers.append(("Content-Encoding", accepted))
        content_type = "application/json" if header_length is None else "application/octet-stream"
        return HttpResponse(200, body, content_type, headers)


_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def _inflate(body: bytes, encoding: str, limit: int) -> bytes | None:
    """A ``Content-Encoding: gzip | deflate`` (zlib, as tritonclient sends it) infer body,
    decompressed; None when it would exceed ``limit`` (a zip bomb stops at the limit)."""
    wbits = _WBITS.get(encoding)
    if wbits is None:
        raise InvalidArgumentError(
            f"unsupported Content-Encoding {encoding[:32]!r}: expected gzip, deflate or identity"
        )
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidArgumentError(
            f"the {encoding} request body does not decompress: {exc}"
        ) from None
    if len(out) > limit or inflater.unconsumed_tail:
        return None
    return out


def _accepted_encoding(header: str) -> str:
    """The response compression a client asked for (Triton: gzip or deflate, else none)."""
    for token in header.split(","):
        name, _, quality = token.strip().lower().partition(";")
        if name in ("gzip", "deflate") and quality.strip() not in ("q=0", "q=0.0"):
            return name
    return ""


def serve_http(runtime: Runtime, servicer: V2Servicer, *, port: int, server: str) -> HttpFace:
    """Serve ``servicer`` over V2 REST on ``port`` (-1: any free port) in ``runtime``'s
    lifecycle: it listens once the gRPC server does, reports not ready while the process is
    not serving, and stops with the gRPC server, in-flight requests given the same grace."""
    settings = runtime.settings
    face = HttpFace(
        servicer,
        ready=lambda: runtime.serving and not runtime.stopping.is_set(),
        max_in_flight=settings.max_concurrent_rpcs,
        service=runtime.spec.name,
        max_body_bytes=settings.max_receive_message_bytes,
        auth=runtime.auth,
    )
    start = SERVERS.get(server)
    if start is None:
        raise ValueError(f"http_server {server!r}: expected one of {sorted(SERVERS)}")

    async def listen() -> Any:
        return await start(
            face.handle,
            settings.host,
            max(port, 0),
            max_body_bytes=settings.max_receive_message_bytes,
        )

    runtime.add_listener("http", listen)
    return face
