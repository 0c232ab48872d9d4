"""Feature inputs and the prediction cache in a version's serving config: what the registry
accepts against the model's signature, what it refuses (INVALID_ARGUMENT naming the fault),
how it travels (push header -> store -> Watch/GetVersion) and that configs written by older
builds, without these fields, still read."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from onnx import TensorProto, helper
from registry_testkit import FRAUD_V1, Registry, expect_status, model_bytes, open_store, push_direct

from modelserve.errors import InvalidArgumentError
from modelserve.proto.modelserve.v1 import registry_pb2
from registry.config import ConfigOverrides
from registry.enrichment_config import FeatureInput, PredictionCacheConfig
from registry.rows import config_from_json
from registry.store import RegistryStore

pytestmark = pytest.mark.usefixtures("database_url")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RegistryStore]:
    store = open_store(tmp_path / "data")
    yield store
    store.close()


def scorer(entity: tuple[str, int, list[int | str]] | None = None) -> bytes:
    """amount [-1,1] + user_features [-1,3] (+ an optional entity input) -> score."""
    inputs = [
        helper.make_tensor_value_info("amount", TensorProto.FLOAT, ["batch", 1]),
        helper.make_tensor_value_info("user_features", TensorProto.FLOAT, ["batch", 3]),
    ]
    nodes = [helper.make_node("Concat", ["amount", "user_features"], ["score"], axis=1)]
    outputs = [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 4])]
    if entity is not None:
        name, elem, shape = entity
        inputs.append(helper.make_tensor_value_info(name, elem, shape))
        nodes.append(helper.make_node("Identity", [name], ["echo"]))
        outputs.append(helper.make_tensor_value_info("echo", elem, shape))
    graph = helper.make_graph(nodes, "scorer", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model_bytes(model)


def users(**changes: object) -> FeatureInput:
    fields: dict[str, object] = {
        "model_input": "user_features",
        "view": "users",
        "features": ("spend", "visits", "tenure"),
        "entity_input": "user_id",
    }
    return FeatureInput(**{**fields, **changes})  # type: ignore[arg-type]


def test_feature_inputs_and_the_cache_are_stored_and_survive_a_restart(tmp_path: Path) -> None:
    store = open_store(tmp_path / "data")
    fail_open = users(fallback_values=(0.0, -1.0, 2.5))  # T33's per-model policy
    overrides = ConfigOverrides(
        feature_inputs=(fail_open,), prediction_cache=PredictionCacheConfig(True, 30)
    )
    record = push_direct(store, "scorer", scorer(), config=overrides)
    assert record.config.feature_inputs == (fail_open,)
    assert record.config.prediction_cache == PredictionCacheConfig(enabled=True, ttl_seconds=30)
    store.close()
    reopened = open_store(tmp_path / "data")
    try:
        assert reopened.resolve("scorer").config == record.config
    finally:
        reopened.close()


def test_configs_written_before_these_fields_existed_still_read(tmp_path: Path) -> None:
    store = RegistryStore(tmp_path / "data")
    push_direct(store, "fraud", FRAUD_V1)
    store.close()
    conn = sqlite3.connect(store.data_dir / "registry.sqlite3")
    data = json.loads(conn.execute("SELECT config_json FROM versions").fetchone()[0])
    del data["feature_inputs"], data["prediction_cache"]  # as an older build wrote it
    conn.execute("UPDATE versions SET config_json = ?", (json.dumps(data),))
    conn.commit()
    conn.close()
    old = config_from_json(json.dumps(data))
    assert old.feature_inputs == () and old.prediction_cache == PredictionCacheConfig()
    reopened = RegistryStore(store.data_dir)
    try:
        assert reopened.resolve("fraud").config == old
    finally:
        reopened.close()


@pytest.mark.parametrize(
    ("feature_input", "model", "fragment"),
    [
        (users(model_input="embedding"), None, "the model has no input 'embedding'"),
        (users(model_input="amount"), None, "cannot fit input 'amount' of width 1"),
        (users(features=("a", "b", "c", "d")), None, "4 features cannot fit"),
        (users(fallback_values=(0.0, 1.0)), None, "fallback_values must hold the input's width"),
        (users(fallback_values=(0.0, 1.0, float("nan"))), None, "must be finite"),
        (users(entity_input="amount"), None, "set entity_input_is_model_input"),
        (
            users(entity_input_is_model_input=True),
            None,
            "the model has no input 'user_id'",
        ),
        (
            users(entity_input="uid", entity_input_is_model_input=True),
            ("uid", TensorProto.FLOAT, ["batch", 1]),
            "must be BYTES/INT64/INT32",
        ),
    ],
)
def test_feature_inputs_that_do_not_fit_the_signature_are_refused(
    store: RegistryStore,
    feature_input: FeatureInput,
    model: tuple[str, int, list[int | str]] | None,
    fragment: str,
) -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        push_direct(
            store, "scorer", scorer(model), config=ConfigOverrides(feature_inputs=(feature_input,))
        )
    assert fragment in refused.value.message
    assert not store.list_models()


def test_feature_inputs_need_a_batch_dimension(store: RegistryStore) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["user_features"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("user_features", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    with pytest.raises(InvalidArgumentError, match="needs max_batch_size > 0"):
        push_direct(
            store, "fixed", model_bytes(model), config=ConfigOverrides(feature_inputs=(users(),))
        )


def test_an_entity_input_the_model_takes_is_allowed(store: RegistryStore) -> None:
    fi = users(entity_input="uid", entity_input_is_model_input=True)
    record = push_direct(
        store,
        "scorer",
        scorer(("uid", TensorProto.INT64, ["batch", 1])),
        config=ConfigOverrides(feature_inputs=(fi,)),
    )
    assert record.config.feature_inputs == (fi,)


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: users(view="../users"), "invalid config.feature_inputs['user_features'] view"),
        (lambda: users(features=()), "expected 1 to 256 features"),
        (lambda: users(features=("a", "a")), "must not repeat"),
        (lambda: users(entity_datatype="FP32"), "entity_datatype must be one of"),
        (lambda: users(entity_input="user_features"), "must differ from model_input"),
        (lambda: PredictionCacheConfig(True, 0), "ttl_seconds must be in [1, 86400]"),
        (lambda: PredictionCacheConfig(True, 86_401), "ttl_seconds must be in [1, 86400]"),
    ],
)
def test_malformed_declarations_are_refused(build: object, fragment: str) -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        build()  # type: ignore[operator]
    assert fragment in refused.value.message


async def test_the_push_header_carries_them_and_watchers_see_them(registry: Registry) -> None:
    config = registry_pb2.ServingConfig(
        max_batch_size=8,
        feature_inputs=[
            registry_pb2.FeatureInput(
                model_input="user_features",
                view="users",
                features=["spend", "visits", "tenure"],
                entity_input="user_id",
            )
        ],
        prediction_cache=registry_pb2.PredictionCache(enabled=True),
    )
    pushed = await registry.push("scorer", scorer(), config=config)
    (fi,) = pushed.config.feature_inputs
    assert (fi.model_input, fi.view, list(fi.features)) == (
        "user_features",
        "users",
        ["spend", "visits", "tenure"],
    )
    assert (fi.entity_input, fi.entity_datatype, fi.entity_input_is_model_input) == (
        "user_id",
        "BYTES",
        False,
    )
    assert pushed.config.prediction_cache == registry_pb2.PredictionCache(
        enabled=True, ttl_seconds=60
    )
    got = await registry.stub.GetVersion(registry_pb2.GetVersionRequest(model="scorer"))
    assert got.config == pushed.config

    bad = registry_pb2.ServingConfig()
    bad.CopyFrom(config)
    bad.feature_inputs[0].model_input = "nope"
    await expect_status(
        registry.push("scorer", scorer(), config=bad),
        grpc.StatusCode.INVALID_ARGUMENT,
        "the model has no input 'nope'",
    )
