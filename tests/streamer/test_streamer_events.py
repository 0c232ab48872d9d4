"""The event and result formats, and the stream's URLs and settings (no broker needed)."""

from __future__ import annotations

import argparse
import json

import grpc
import numpy as np
import pytest

from modelserve.cli.stream import service_argv
from modelserve.errors import InvalidArgumentError
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.settings import SettingsError, load_settings
from modelserve.tensors import decode_inputs, encode_inputs, encode_outputs
from streamer.brokers import Delivery
from streamer.events import EventError, ModelRef, dead_letter_json, decode_event, result_json
from streamer.settings import StreamerSettings
from streamer.urls import dead_letter_default, parse

SIGNATURE = {"INPUT0": "FP32", "names": "BYTES"}


def delivery(data: bytes | None, mid: str = "1700000000000-0") -> Delivery:
    return Delivery(mid, data, 1, 1_700_000_000_000.0)


def test_a_json_event_becomes_a_request_with_its_key_as_routing_key() -> None:
    body = {
        "id": "e1",
        "key": "user-7",
        "inputs": {"INPUT0": [[1, 2], [3, 4]]},
        "parameters": {"threshold": 0.5, "tag": "x"},
        "event_time": 1_699_999_999_000,
    }
    e = decode_event(delivery(json.dumps(body).encode()), ModelRef.parse("tabular"), SIGNATURE)
    assert (e.id, e.key, e.event_time_ms) == ("e1", "user-7", 1_699_999_999_000)
    r = e.request
    assert r.model_name == "tabular" and r.model_version == "" and r.id == "e1"
    assert r.parameters["routing_key"].string_param == "user-7"
    assert r.parameters["threshold"].double_param == 0.5
    x = decode_inputs(r)["INPUT0"]
    assert x.dtype == np.float32 and x.tolist() == [[1, 2], [3, 4]]


def test_versions_and_labels_come_from_the_model_spec() -> None:
    data = json.dumps({"inputs": {"INPUT0": [[1.0]]}}).encode()
    pinned = decode_event(delivery(data), ModelRef.parse("m:3"), SIGNATURE).request
    assert pinned.model_version == "3"
    labelled = decode_event(delivery(data), ModelRef.parse("m@staging"), SIGNATURE)
    assert labelled.request.parameters["label"].string_param == "staging"
    assert labelled.id == "msg-1700000000000-0"  # no id: the broker's id, stable on redelivery
    assert labelled.event_time_ms == 1_700_000_000_000.0  # no event_time: the broker's
    for bad in ("m:x", "m:0", "../m", "m:1@l", "m@../x"):
        with pytest.raises(InvalidArgumentError):
            ModelRef.parse(bad)


def test_a_binary_v2_request_is_an_event_too() -> None:
    request = pb.ModelInferRequest(id="b1")
    request.parameters["routing_key"].int64_param = 42
    encode_inputs(request, {"INPUT0": np.ones((1, 3), np.float32)})
    e = decode_event(delivery(request.SerializeToString()), ModelRef.parse("m"), SIGNATURE)
    assert (e.id, e.key, e.request.model_name) == ("b1", "42", "m")
    other = pb.ModelInferRequest(model_name="other")
    with pytest.raises(EventError, match="other"):
        decode_event(delivery(other.SerializeToString()), ModelRef.parse("m"), SIGNATURE)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "no 'data' field"),
        (b"{nope", "not valid JSON"),
        (b"\xff\x00garbage", "neither JSON nor a binary V2"),
        (b'["a list"]', "neither JSON"),
        (b'{"id": "x"}', "needs 'inputs'"),
        (b'{"id": "x", "inputs": {"OTHER": [[1]]}}', "no input(s) ['OTHER']"),
        (b'{"id": "x", "inputs": {"INPUT0": [[1], [2, 3]]}}', "not a nested list of FP32"),
        (b'{"id": "x", "inputs": {"INPUT0": 5}}', "got a scalar"),
        (b'{"id": {"a": 1}, "inputs": {"INPUT0": [[1]]}}', "id must be a string"),
        (
            b'{"id": "x", "inputs": {"INPUT0": [[1]]}, "parameters": {"routing_key": "y"}}',
            "set by the streamer",
        ),
    ],
)
def test_undecodable_and_invalid_events_say_why(data: bytes | None, message: str) -> None:
    with pytest.raises(EventError) as caught:
        decode_event(delivery(data), ModelRef.parse("m"), SIGNATURE)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.message


def test_bytes_inputs_and_outputs_travel_as_text() -> None:
    body = {"id": "t", "inputs": {"names": [["ab", "cd"]]}}
    e = decode_event(delivery(json.dumps(body).encode()), ModelRef.parse("m"), SIGNATURE)
    assert decode_inputs(e.request)["names"].tolist() == [[b"ab", b"cd"]]
    response = pb.ModelInferResponse(model_name="m", model_version="2")
    encode_outputs(
        response,
        {
            "names": np.array([[b"ab", b"cd"]], dtype=object),
            "score": np.array([[0.25]], np.float32),
        },
    )
    result = json.loads(result_json(e, response, e.event_time_ms + 12.5))
    assert result == {
        "id": "t",
        "key": "",
        "model": "m",
        "version": "2",
        "outputs": {"names": [["ab", "cd"]], "score": [[0.25]]},
        "event_time": e.event_time_ms,
        "scored_at": e.event_time_ms + 12.5,
        "latency_ms": 12.5,
    }


def test_dead_letters_keep_the_event_and_base64_binary_ones() -> None:
    text = json.loads(dead_letter_json(delivery(b'{"a": 1}'), "a", "INVALID_ARGUMENT", "bad", 1))
    assert text["data"] == '{"a": 1}' and text["data_encoding"] == "utf-8"
    binary = json.loads(dead_letter_json(delivery(b"\xff\x00"), None, "INVALID_ARGUMENT", "b", 0))
    assert binary["data_encoding"] == "base64" and binary["data"] == "/wA="
    assert binary["message_id"] == "1700000000000-0" and binary["attempts"] == 0


def test_urls() -> None:
    r = parse("redis://:pw@h:6380/2?stream=s&maxlen=500")
    assert (r.is_redis, r.stream, r.maxlen, r.server) == (True, "s", 500, "redis://:pw@h:6380/2")
    assert "pw" not in r.describe()
    n = parse("nats://h:4222?stream=S&subject=a.b")
    assert (n.is_redis, n.stream, n.subject, n.server) == (False, "S", "a.b", "nats://h:4222")
    assert parse("nats://h:4222?stream=S").subject == "S"
    for bad in ("redis://h/0", "kafka://h?stream=s", "nats://h?stream=s&maxlen=1"):
        with pytest.raises(SettingsError):
            parse(bad)
    assert dead_letter_default("redis://h/0?stream=out") == "redis://h/0?stream=out.dlq"
    assert (
        dead_letter_default("nats://h:1?stream=OUT&subject=out")
        == "nats://h:1?stream=OUT-dlq&subject=out.dlq"
    )


def test_settings_fail_fast_and_stream_run_maps_its_flags() -> None:
    with pytest.raises(SettingsError, match="stream_model is required"):
        load_settings(StreamerSettings, [], {})
    env = {
        "MODELSERVE_STREAM_MODEL": "fraud",
        "MODELSERVE_STREAM_SOURCE": "redis://h/0?stream=in",
        "MODELSERVE_STREAM_SINK": "redis://h/0?stream=out",
        "MODELSERVE_STREAM_GROUP": "g",
    }
    s = load_settings(StreamerSettings, ["--stream-max-batch", "64"], env)
    assert s.stream_max_batch == 64 and s.resolved_dead_letter() == "redis://h/0?stream=out.dlq"
    with pytest.raises(SettingsError, match="redis://"):
        load_settings(StreamerSettings, [], {**env, "MODELSERVE_STREAM_SINK": "kafka://x"})
    with pytest.raises(SettingsError, match="needs \\?stream="):
        load_settings(StreamerSettings, [], {**env, "MODELSERVE_STREAM_SOURCE": "redis://h/0"})
    with pytest.raises(SettingsError, match="stream_model: invalid model name"):
        load_settings(StreamerSettings, [], {**env, "MODELSERVE_STREAM_MODEL": "../etc"})
    args = argparse.Namespace(
        model="fraud@prod",
        source=env["MODELSERVE_STREAM_SOURCE"],
        sink="nats://n:4222?stream=O",
        group="g",
        consumer=None,
        max_batch=8,
        max_wait_ms=None,
        max_in_flight=None,
        dead_letter=None,
        max_attempts=5,
        gateway="gw:1",
    )
    argv = service_argv(args, ["--metrics-port", "9000"])
    s = load_settings(StreamerSettings, argv, {})
    assert (s.stream_model, s.stream_group) == ("fraud@prod", "g")
    assert s.stream_sink == "nats://n:4222?stream=O" and s.stream_source.endswith("stream=in")
    assert (s.stream_max_batch, s.stream_max_attempts, s.gateway_addr) == (8, 5, "gw:1")
    assert s.port == 0 and s.metrics_port == 9000  # two consumers on one host never collide
