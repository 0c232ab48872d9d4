"""Events in, results out: the JSON (or binary V2) event format and the JSON result format.

An event decodes into one V2 ModelInferRequest for the stream's model, with the event key as
its ``routing_key`` parameter, so splits, canaries and experiments decide per key exactly as
they do for online calls. Everything wrong with an event is an ``EventError`` carrying the
status code a gateway would give it; the pipeline dead-letters those.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from modelserve.errors import InvalidArgumentError, ModelServeError
from modelserve.names import validate_name
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.tensors import DTYPES, decode_outputs, encode_inputs
from streamer.brokers import Delivery

MAX_ID_CHARS = 256
MAX_KEY_CHARS = 256  # the router's routing-key limit is larger; keys are ids, not payloads
ROUTING_KEY = "routing_key"


class EventError(Exception):
    """An event that can never be scored as it is (dead-lettered at once)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.event_id: str | None = None  # when the event got as far as naming itself


def invalid(message: str) -> EventError:
    return EventError(grpc.StatusCode.INVALID_ARGUMENT, message)


@dataclass(frozen=True)
class ModelRef:
    """``MODEL``, ``MODEL:VERSION`` or ``MODEL@LABEL``."""

    name: str
    version: str = ""
    label: str = ""

    @classmethod
    def parse(cls, spec: str) -> ModelRef:
        name, at, label = spec.partition("@")
        name, colon, version = name.partition(":")
        validate_name(name)
        if colon and not (version.isdigit() and int(version) > 0):
            raise InvalidArgumentError(f"model version must be a positive integer; got {version!r}")
        if at:
            validate_name(label, "label")
        if colon and at:
            raise InvalidArgumentError("give MODEL:VERSION or MODEL@LABEL, not both")
        return cls(name, version, label)

    @property
    def selector(self) -> str:
        """What ModelMetadata takes as its version: a number or a label."""
        return self.version or self.label

    def __str__(self) -> str:
        return (
            self.name
            + (f":{self.version}" if self.version else "")
            + (f"@{self.label}" if self.label else "")
        )


@dataclass
class Event:
    id: str
    key: str
    request: pb.ModelInferRequest
    event_time_ms: float
    delivery: Delivery


def _identifier(value: Any, what: str, limit: int) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise invalid(f"event {what} must be a string or an integer; got {type(value).__name__}")
    text = str(value)
    if not text or len(text) > limit:
        raise invalid(f"event {what} must be 1-{limit} characters; got {len(text)}")
    return text


def _set_parameter(request: pb.ModelInferRequest, name: str, value: Any) -> None:
    param = request.parameters[name]
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    elif isinstance(value, str):
        param.string_param = value
    else:
        raise invalid(f"event parameter {name!r} must be a string, number or boolean")


def _array(name: str, value: Any, datatype: str) -> np.ndarray:
    dt = DTYPES[datatype]
    if dt.numpy is None:
        raise invalid(f"input {name!r}: {datatype} cannot be sent as JSON; send a V2 request")
    try:
        if datatype == "BYTES":
            arr = np.asarray(value, dtype=object)
            flat = [v.encode() if isinstance(v, str) else v for v in arr.ravel()]
            if not all(isinstance(v, bytes) for v in flat):
                raise ValueError("BYTES elements must be strings")
            out = np.empty(arr.shape, dtype=object)
            out.ravel()[:] = flat
            return out
        arr = np.asarray(value, dtype=dt.numpy)
    except (ValueError, TypeError, OverflowError) as exc:
        raise invalid(f"input {name!r}: not a nested list of {datatype}: {exc}") from None
    if arr.ndim == 0:
        raise invalid(f"input {name!r}: expected a nested list (rows), got a scalar")
    return arr


def _json_event(
    body: Any, delivery: Delivery, model: ModelRef, signature: Mapping[str, str]
) -> Event:
    if not isinstance(body, dict):
        raise invalid(f"event must be a JSON object; got {type(body).__name__}")
    event_id = _identifier(body.get("id", f"msg-{delivery.message_id}"), "id", MAX_ID_CHARS)
    try:
        return _json_body(event_id, body, delivery, model, signature)
    except EventError as exc:
        exc.event_id = event_id
        raise
    except ModelServeError as exc:  # from the tensor codec
        err = EventError(exc.code, exc.message)
        err.event_id = event_id
        raise err from None


def _json_body(
    event_id: str,
    body: dict[str, Any],
    delivery: Delivery,
    model: ModelRef,
    signature: Mapping[str, str],
) -> Event:
    key = _identifier(body["key"], "key", MAX_KEY_CHARS) if body.get("key") is not None else ""
    inputs = body.get("inputs")
    if not isinstance(inputs, dict) or not inputs:
        raise invalid("event needs 'inputs': an object of input name -> nested list")
    unknown = sorted(set(inputs) - set(signature))
    if unknown:
        raise invalid(f"model {model.name} has no input(s) {unknown}; inputs: {sorted(signature)}")
    request = _request(model, event_id)
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise invalid("event 'parameters' must be an object")
    for name, value in params.items():
        if name in (ROUTING_KEY, "label"):
            raise invalid(f"event parameter {name!r} is set by the streamer (use 'key')")
        _set_parameter(request, str(name), value)
    encode_inputs(request, {n: _array(n, v, signature[n]) for n, v in inputs.items()})
    if key:
        request.parameters[ROUTING_KEY].string_param = key
    return Event(event_id, key, request, _event_time(body.get("event_time"), delivery), delivery)


def _request(model: ModelRef, event_id: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model.name, model_version=model.version, id=event_id)
    if model.label:
        request.parameters["label"].string_param = model.label
    return request


def _event_time(value: Any, delivery: Delivery) -> float:
    """Milliseconds since the epoch: the event's own ``event_time`` (ms number or ISO 8601
    string) if it has one, else the time the broker took the message."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        from datetime import datetime

        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000
        except ValueError:
            raise invalid(f"event_time {value!r} is neither epoch ms nor ISO 8601") from None
    return delivery.timestamp_ms


def _binary_event(data: bytes, delivery: Delivery, model: ModelRef) -> Event:
    request = pb.ModelInferRequest()
    try:
        request.ParseFromString(data)
    except DecodeError:
        raise invalid("event is neither JSON nor a binary V2 ModelInferRequest") from None
    if request.model_name and request.model_name != model.name:
        raise invalid(f"event asks for model {request.model_name!r}; this stream scores {model}")
    if "label" in request.parameters:
        raise invalid("event parameter 'label' is set by the streamer (from MODEL@LABEL)")
    request.model_name = model.name
    request.model_version = model.version
    if model.label:
        request.parameters["label"].string_param = model.label
    event_id = _identifier(request.id or f"msg-{delivery.message_id}", "id", MAX_ID_CHARS)
    request.id = event_id
    key = ""
    if ROUTING_KEY in request.parameters:
        param = request.parameters[ROUTING_KEY]
        which = param.WhichOneof("parameter_choice")
        if which not in ("string_param", "int64_param", "uint64_param"):
            raise invalid(f"event parameter {ROUTING_KEY!r} must be a string or an integer")
        key = _identifier(getattr(param, which), "key", MAX_KEY_CHARS)
    return Event(event_id, key, request, delivery.timestamp_ms, delivery)


def decode_event(delivery: Delivery, model: ModelRef, signature: Mapping[str, str]) -> Event:
    """The event in a delivery; ``signature`` maps input name -> V2 datatype (JSON events)."""
    data = delivery.data
    if data is None:
        raise invalid("stream entry has no 'data' field")
    if data.lstrip()[:1] == b"{":
        try:
            body = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise invalid(f"event is not valid JSON: {exc}") from None
        return _json_event(body, delivery, model, signature)
    return _binary_event(data, delivery, model)


def _jsonable(arr: np.ndarray) -> Any:
    """Nested lists like the event's inputs; BYTES elements as text."""
    if arr.dtype != object:
        return arr.tolist()
    texts = [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in arr.ravel()]
    out = np.empty(arr.shape, dtype=object)
    out.ravel()[:] = texts
    return out.tolist()


def result_json(event: Event, response: pb.ModelInferResponse, scored_at_ms: float) -> bytes:
    outputs = {name: _jsonable(arr) for name, arr in decode_outputs(response).items()}
    return json.dumps(
        {
            "id": event.id,
            "key": event.key,
            "model": response.model_name,
            "version": response.model_version,
            "outputs": outputs,
            "event_time": event.event_time_ms,
            "scored_at": scored_at_ms,
            "latency_ms": round(scored_at_ms - event.event_time_ms, 3),
        },
        allow_nan=True,
    ).encode()


def dead_letter_json(
    delivery: Delivery, event_id: str | None, code: str, error: str, attempts: int
) -> bytes:
    data = delivery.data or b""
    try:
        payload: Any = data.decode()
        encoding = "utf-8"
    except UnicodeDecodeError:
        import base64

        payload, encoding = base64.b64encode(data).decode(), "base64"
    return json.dumps(
        {
            "id": event_id,
            "message_id": delivery.message_id,
            "code": code,
            "error": error,
            "attempts": attempts,
            "deliveries": delivery.deliveries,
            "failed_at": time.time() * 1000,
            "data": payload,
            "data_encoding": encoding,
        }
    ).encode()
