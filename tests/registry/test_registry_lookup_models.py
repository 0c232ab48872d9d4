"""Lookup versions in the registry: pushed as a header alone, their signature derived from
the definition, the definition kept across restarts and served as the artifact, and bad
definitions refused with INVALID_ARGUMENT before anything is stored."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import grpc
import pytest
from registry_testkit import Registry, expect_status

from modelserve.proto.modelserve.v1 import registry_pb2
from registry.lookup_models import LookupConfig, LookupOutput, from_json, to_json

pytestmark = pytest.mark.usefixtures("database_url")


def lookup_config(**changes: object) -> registry_pb2.ServingConfig:
    lookup = registry_pb2.LookupConfig(
        view="preds",
        entity_input="user_id",
        entity_datatype="INT64",
        outputs=[
            registry_pb2.LookupOutput(name="score", datatype="FP32", shape=[1]),
            registry_pb2.LookupOutput(name="probs", feature="p", datatype="FP64", shape=[2, 3]),
        ],
    )
    for name, value in changes.items():
        setattr(lookup, name, value)
    config = registry_pb2.ServingConfig()
    config.lookup.CopyFrom(lookup)
    return config


def header(model: str, config: registry_pb2.ServingConfig) -> registry_pb2.PushVersionRequest:
    return registry_pb2.PushVersionRequest(
        header=registry_pb2.PushVersionRequest.Header(model=model, config=config)
    )


async def test_a_lookup_is_pushed_as_a_header_and_gets_a_derived_signature(
    registry: Registry,
) -> None:
    version = await registry.push_raw([header("churn", lookup_config())])
    assert version.platform == "lookup"
    assert [(s.name, s.datatype, list(s.shape)) for s in version.inputs] == [
        ("user_id", "INT64", [-1, 1])
    ]
    assert [(s.name, s.datatype, list(s.shape)) for s in version.outputs] == [
        ("score", "FP32", [-1, 1]),
        ("probs", "FP64", [-1, 2, 3]),
        ("lookup_status", "INT32", [-1, 1]),
    ]
    assert version.config.lookup.outputs[0].feature == "score"  # defaults to the name
    assert version.config.max_batch_size == 64
    chunks = await registry.fetch("churn")
    definition = json.loads(b"".join(c.data for c in chunks))
    assert definition["view"] == "preds" and chunks[0].sha256 == version.sha256


async def test_the_definition_survives_a_restart(
    start_registry: Callable[..., Awaitable[Registry]],
) -> None:
    first = await start_registry()
    pushed = await first.push_raw([header("churn", lookup_config())])
    await first.stop()
    second = await start_registry()
    got = await second.stub.GetVersion(registry_pb2.GetVersionRequest(model="churn"))
    assert got.config.lookup == pushed.config.lookup
    assert got.platform == "lookup" and list(got.outputs) == list(pushed.outputs)


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"view": "no/slashes"}, "lookup view name"),
        ({"view": ""}, "lookup view name"),
        ({"entity_input": "a b"}, "lookup entity_input"),
        ({"entity_datatype": "FP32"}, "entity_datatype must be one of"),
    ],
)
async def test_bad_definitions_are_refused(
    registry: Registry, changes: dict[str, object], fragment: str
) -> None:
    await expect_status(
        registry.push_raw([header("bad", lookup_config(**changes))]),
        grpc.StatusCode.INVALID_ARGUMENT,
        fragment,
    )


@pytest.mark.parametrize(
    ("output", "fragment"),
    [
        (registry_pb2.LookupOutput(name="s", datatype="FP99", shape=[1]), "datatype must be"),
        (registry_pb2.LookupOutput(name="s", datatype="BF16", shape=[1]), "datatype must be"),
        (registry_pb2.LookupOutput(name="s", datatype="FP32", shape=[]), "per-row shape"),
        (registry_pb2.LookupOutput(name="s", datatype="FP32", shape=[0]), "dimension"),
        (registry_pb2.LookupOutput(name="lookup_status", datatype="INT32", shape=[1]), "reserved"),
        (registry_pb2.LookupOutput(name="user_id", datatype="INT64", shape=[1]), "also an output"),
    ],
)
async def test_bad_outputs_are_refused(
    registry: Registry, output: registry_pb2.LookupOutput, fragment: str
) -> None:
    config = lookup_config()
    del config.lookup.outputs[:]
    config.lookup.outputs.append(output)
    await expect_status(
        registry.push_raw([header("bad", config)]), grpc.StatusCode.INVALID_ARGUMENT, fragment
    )


async def test_a_lookup_takes_no_chunks_no_features_and_no_prediction_cache(
    registry: Registry,
) -> None:
    await expect_status(
        registry.push_raw(
            [header("bad", lookup_config()), registry_pb2.PushVersionRequest(chunk=b"x")]
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "no artifact chunks",
    )
    cached = lookup_config()
    cached.prediction_cache.enabled = True
    await expect_status(
        registry.push_raw([header("bad", cached)]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "neither config.feature_inputs nor a prediction_cache",
    )
    listed = await registry.stub.ListModels(registry_pb2.ListModelsRequest())
    assert not listed.models


def test_the_json_form_round_trips() -> None:
    lookup = LookupConfig(
        view="v",
        entity_input="k",
        entity_datatype="BYTES",
        outputs=(LookupOutput("a", "f", "BYTES", (1,)), LookupOutput("b", "b", "INT8", (4,))),
    )
    assert from_json(json.loads(json.dumps(to_json(lookup)))) == lookup
