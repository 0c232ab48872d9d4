"""RegistryStore on a real SQLite file and artifact directory in tmp_path."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from onnx import TensorProto, helper
from registry_testkit import FRAUD_V1, FRAUD_V2, model_bytes, open_store, push_direct, stage

from modelserve.cli import demo_models
from modelserve.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from registry.config import ConfigOverrides, OutputLabels, ServingConfig
from registry.records import ChangeEvent
from registry.store import RegistryStore

pytestmark = pytest.mark.usefixtures("database_url")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RegistryStore]:
    store = open_store(tmp_path / "data")
    yield store
    store.close()


def fixed_batch_model() -> bytes:
    """A model whose only input has a fixed first dimension: it cannot be batched."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model_bytes(model)


def test_versions_count_up_per_model_and_identical_artifacts_share_one_file(
    store: RegistryStore, tmp_path: Path
) -> None:
    v1 = push_direct(store, "fraud", FRAUD_V1)
    v2 = push_direct(store, "fraud", FRAUD_V2)
    other = push_direct(store, "fraud-copy", FRAUD_V1)
    v3 = push_direct(store, "fraud", FRAUD_V1)
    assert (v1.version, v2.version, other.version, v3.version) == (1, 2, 1, 3)
    assert v1.sha256 == hashlib.sha256(FRAUD_V1).hexdigest() == v3.sha256
    files = sorted((tmp_path / "data" / "artifacts").rglob("*.onnx"))
    digest = v1.sha256
    assert tmp_path / "data" / "artifacts" / "sha256" / digest[:2] / f"{digest}.onnx" in files
    assert len(files) == 2
    assert store.artifact_path("fraud", 3).read_bytes() == FRAUD_V1
    assert store.revision() == 4


def test_resolve_rules(store: RegistryStore) -> None:
    push_direct(store, "fraud", FRAUD_V1)
    push_direct(store, "fraud", FRAUD_V2)
    assert store.resolve("fraud").version == 2  # no production label: newest
    store.set_label("fraud", "production", 1)
    store.set_label("fraud", "staging", 2)
    assert store.resolve("fraud").version == 1  # production wins over newest
    assert store.resolve("fraud", label="staging").version == 2
    assert store.resolve("fraud", version=2).version == 2
    assert store.resolve("fraud", version=1).labels == ("production",)
    with pytest.raises(InvalidArgumentError, match="not both"):
        store.resolve("fraud", version=1, label="staging")
    with pytest.raises(InvalidArgumentError, match=">= 0"):
        store.resolve("fraud", version=-1)


def test_not_found_messages_list_what_exists(store: RegistryStore) -> None:
    push_direct(store, "fraud", FRAUD_V1)
    push_direct(store, "fraud", FRAUD_V2)
    store.set_label("fraud", "production", 1)
    store.set_label("fraud", "staging", 2)
    with pytest.raises(NotFoundError) as info:
        store.resolve("fraud", version=7)
    assert info.value.message == "model 'fraud' has no version 7 (versions: 1, 2)"
    with pytest.raises(NotFoundError) as info:
        store.resolve("fraud", label="canary")
    assert info.value.message == "model 'fraud' has no label 'canary' (labels: production, staging)"
    with pytest.raises(NotFoundError, match=r"^unknown model 'x' \(models: fraud\)$"):
        store.get_model("x")
    with pytest.raises(NotFoundError, match="no label 'canary'"):
        store.delete_label("fraud", "canary")
    with pytest.raises(NotFoundError, match="no version 9"):
        store.set_label("fraud", "canary", 9)


def test_labels_move_atomically_and_every_change_bumps_the_revision(store: RegistryStore) -> None:
    push_direct(store, "fraud", FRAUD_V1, labels=["production"])
    push_direct(store, "fraud", FRAUD_V2)
    start = store.revision()
    model = store.set_label("fraud", "production", 2)
    assert model.labels == {"production": 2}
    assert [v.labels for v in model.versions] == [(), ("production",)]
    assert store.revision() == start + 1
    store.set_label("fraud", "production", 2)  # already so: no change, no revision
    assert store.revision() == start + 1
    model = store.delete_label("fraud", "production")
    assert model.labels == {}
    assert store.revision() == start + 2
    assert store.resolve("fraud").version == 2  # back to newest


def test_push_with_a_label_the_model_already_has_moves_it(store: RegistryStore) -> None:
    push_direct(store, "fraud", FRAUD_V1, labels=["production"])
    v2 = push_direct(store, "fraud", FRAUD_V2, labels=["production"])
    assert store.get_model("fraud").labels == {"production": v2.version}
    assert store.resolve("fraud").version == 2


def test_changes_are_announced_in_order_with_the_full_model(tmp_path: Path) -> None:
    events: list[ChangeEvent] = []
    store = open_store(tmp_path / "data", on_change=events.append)
    try:
        push_direct(store, "fraud", FRAUD_V1, labels=["production", "staging"])
        store.set_label("fraud", "staging", 1)  # no-op: not announced
        push_direct(store, "fraud", FRAUD_V2)
        store.set_label("fraud", "staging", 2)
        store.delete_label("fraud", "production")
    finally:
        store.close()
    assert [e.revision for e in events] == [1, 2, 3, 4]
    first = events[0].models[0]
    assert first.name == "fraud" and first.labels == {"production": 1, "staging": 1}
    assert [len(e.models[0].versions) for e in events] == [1, 2, 2, 2]
    assert events[-1].models[0].labels == {"staging": 2}


def test_default_config_follows_the_signature(store: RegistryStore) -> None:
    batched = push_direct(store, "fraud", FRAUD_V1)
    assert batched.config == ServingConfig(max_batch_size=64)
    assert batched.config.max_queue_size == 64
    assert batched.config.warmup_iterations == 3
    assert batched.config.execution_provider == "auto"
    fixed = push_direct(store, "fixed", fixed_batch_model())
    assert fixed.config.max_batch_size == 0


def test_overrides_apply_and_bad_configs_store_nothing(
    store: RegistryStore, tmp_path: Path
) -> None:
    overrides = ConfigOverrides(max_batch_size=8, preferred_batch_sizes=(4, 8), instance_count=2)
    record = push_direct(store, "fraud", FRAUD_V1, config=overrides)
    assert (record.config.max_batch_size, record.config.preferred_batch_sizes) == (8, (4, 8))
    assert record.config.instance_count == 2
    with pytest.raises(InvalidArgumentError, match="variable first dimension"):
        push_direct(store, "fixed", fixed_batch_model(), config=ConfigOverrides(max_batch_size=4))
    with pytest.raises(InvalidArgumentError, match="execution_provider"):
        push_direct(store, "fraud", FRAUD_V2, config=ConfigOverrides(execution_provider="tpu"))
    with pytest.raises(
        InvalidArgumentError, match=r"preferred_batch_sizes must each be in \[1, 8\]"
    ):
        push_direct(
            store,
            "fraud",
            FRAUD_V2,
            config=ConfigOverrides(max_batch_size=8, preferred_batch_sizes=(16,)),
        )
    for field, value in (("max_batch_size", 65), ("instance_count", 0), ("instance_count", 17)):
        with pytest.raises(InvalidArgumentError, match=f"config.{field} must be in"):
            ConfigOverrides(**{field: value})  # type: ignore[arg-type]
    assert [v.version for v in store.get_model("fraud").versions] == [1]
    assert store.list_models()[0].name == "fraud" and len(store.list_models()) == 1
    assert len(list((tmp_path / "data" / "artifacts").rglob("*.onnx"))) == 1


@pytest.mark.parametrize("name", ["../x", "", "a" * 200, ".", "x/y", "-x"])
def test_bad_names_are_refused_before_anything_is_written(
    store: RegistryStore, tmp_path: Path, name: str
) -> None:
    with pytest.raises(InvalidArgumentError, match="invalid model name"):
        push_direct(store, name, FRAUD_V1)
    with pytest.raises(InvalidArgumentError, match="invalid label"):
        push_direct(store, "fraud", FRAUD_V1, labels=[name])
    assert store.list_models() == ()
    assert list((tmp_path / "data" / "artifacts").rglob("*.onnx")) == []


def test_everything_survives_a_restart(tmp_path: Path) -> None:
    store = open_store(tmp_path / "data")
    push_direct(store, "fraud", FRAUD_V1, labels=["production"])
    push_direct(store, "fraud", FRAUD_V2, labels=["staging"])
    push_direct(store, "tabular", model_bytes(demo_models.tabular()))
    before = store.list_models(), store.revision()
    store.close()

    store = open_store(tmp_path / "data")
    try:
        assert (store.list_models(), store.revision()) == before
        assert store.artifact_path("fraud", 2).read_bytes() == FRAUD_V2
        assert push_direct(store, "fraud", FRAUD_V1).version == 3
        assert store.revision() == before[1] + 1
    finally:
        store.close()


def test_leftovers_of_a_crash_are_cleaned_on_start(tmp_path: Path) -> None:
    store = open_store(tmp_path / "data")
    kept = push_direct(store, "fraud", FRAUD_V1)
    # A crash mid-upload, and one between the artifact rename and the row commit.
    upload, _, _ = stage(store, FRAUD_V2)
    orphan = store._artifacts.path_for(hashlib.sha256(FRAUD_V2).hexdigest())
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(FRAUD_V2)
    store.close()

    store = open_store(tmp_path / "data")
    try:
        assert not upload.exists() and list((tmp_path / "data" / "tmp").iterdir()) == []
        assert not orphan.exists()
        assert store.artifact_path("fraud", 1).read_bytes() == FRAUD_V1
        assert kept.sha256 in store.artifact_path("fraud", 1).name
    finally:
        store.close()


def test_one_process_owns_a_data_dir(store: RegistryStore, tmp_path: Path) -> None:
    with pytest.raises(FailedPreconditionError, match="another registry process"):
        open_store(tmp_path / "data")


def test_a_missing_artifact_file_is_reported_without_its_path(
    store: RegistryStore, tmp_path: Path
) -> None:
    push_direct(store, "fraud", FRAUD_V1)
    store.artifact_path("fraud", 1).unlink()
    with pytest.raises(FailedPreconditionError) as info:
        store.artifact_path("fraud", 1)
    assert "missing" in info.value.message and str(tmp_path) not in info.value.message


def test_output_labels_are_stored_and_must_name_an_output(tmp_path: Path) -> None:
    labels = (OutputLabels(output="fraud_probability", labels=("legit", "fraud")),)
    store = open_store(tmp_path / "data")
    try:
        record = push_direct(store, "fraud", FRAUD_V1, config=ConfigOverrides(output_labels=labels))
        assert record.config.output_labels == labels
        with pytest.raises(InvalidArgumentError, match="output 'nope', which the model"):
            push_direct(
                store,
                "fraud",
                FRAUD_V2,
                config=ConfigOverrides(output_labels=(OutputLabels("nope", ("a",)),)),
            )
        with pytest.raises(InvalidArgumentError, match="has no labels"):
            ConfigOverrides(output_labels=(OutputLabels("fraud_probability", ()),))
    finally:
        store.close()
    reopened = open_store(tmp_path / "data")  # read back from the stored JSON
    try:
        assert reopened.resolve("fraud", 1).config.output_labels == labels
    finally:
        reopened.close()
