"""V2 metadata built from registry records: Triton's conventions for config dims, datatype
enums, instance groups and repository index states."""

from __future__ import annotations

from modelserve.proto.inference import model_config_pb2 as mc
from modelserve.proto.modelserve.v1 import common_pb2, registry_pb2
from modelserve.v2.metadata import PLATFORM, model_config, model_metadata, repository_index


def version(
    model: str = "fraud",
    number: int = 1,
    max_batch_size: int = 8,
    execution_provider: str = "cpu",
    inputs: tuple[tuple[str, str, list[int]], ...] = (("transaction", "FP32", [-1, 8]),),
    outputs: tuple[tuple[str, str, list[int]], ...] = (("fraud_probability", "FP32", [-1, 1]),),
) -> registry_pb2.ModelVersion:
    return registry_pb2.ModelVersion(
        model=model,
        version=number,
        sha256="ab" * 32,
        inputs=[common_pb2.TensorSpec(name=n, datatype=d, shape=s) for n, d, s in inputs],
        outputs=[common_pb2.TensorSpec(name=n, datatype=d, shape=s) for n, d, s in outputs],
        config=registry_pb2.ServingConfig(
            max_batch_size=max_batch_size,
            max_queue_delay_us=500,
            preferred_batch_sizes=[4, 8],
            max_queue_size=32,
            instance_count=2,
            execution_provider=execution_provider,
        ),
    )


def test_batched_config_drops_the_batch_dimension() -> None:
    config = model_config(version(max_batch_size=8)).config
    assert config.max_batch_size == 8
    assert [(i.name, list(i.dims)) for i in config.input] == [("transaction", [8])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("fraud_probability", [1])]
    batching = config.dynamic_batching
    assert list(batching.preferred_batch_size) == [4, 8]
    assert batching.max_queue_delay_microseconds == 500
    assert batching.default_queue_policy.max_queue_size == 32


def test_unbatched_config_keeps_every_dimension() -> None:
    unbatched = version(
        max_batch_size=0,
        inputs=(("image", "FP32", [3, 224, 224]),),
        outputs=(("logits", "FP32", [1000]),),
    )
    config = model_config(unbatched).config
    assert config.max_batch_size == 0
    assert list(config.input[0].dims) == [3, 224, 224]
    assert list(config.output[0].dims) == [1000]
    assert not config.HasField("dynamic_batching")


def test_datatypes_map_to_triton_enums() -> None:
    v = version(
        inputs=(
            ("a", "FP32", [-1, 1]),
            ("b", "INT64", [-1, 1]),
            ("c", "BYTES", [-1, 1]),
            ("d", "BOOL", [-1, 1]),
            ("e", "FP16", [-1, 1]),
            ("f", "UINT8", [-1, 1]),
        ),
        outputs=(("g", "FP64", [-1, 1]), ("h", "INT32", [-1, 1])),
    )
    config = model_config(v).config
    assert [i.data_type for i in config.input] == [
        mc.TYPE_FP32,
        mc.TYPE_INT64,
        mc.TYPE_STRING,  # V2 BYTES is Triton's TYPE_STRING
        mc.TYPE_BOOL,
        mc.TYPE_FP16,
        mc.TYPE_UINT8,
    ]
    assert [o.data_type for o in config.output] == [mc.TYPE_FP64, mc.TYPE_INT32]


def test_config_identity_instances_and_parameters() -> None:
    config = model_config(version(number=3)).config
    assert config.name == "fraud"
    assert config.platform == PLATFORM == "onnxruntime_onnx"
    assert config.backend == "onnxruntime"
    (group,) = config.instance_group
    assert group.count == 2 and group.kind == mc.ModelInstanceGroup.KIND_CPU
    assert config.parameters["modelserve_version"].string_value == "3"
    assert config.parameters["sha256"].string_value == "ab" * 32
    gpu = model_config(version(execution_provider="cuda")).config.instance_group[0]
    assert gpu.kind == mc.ModelInstanceGroup.KIND_GPU
    zero = version()
    zero.config.instance_count = 0
    assert model_config(zero).config.instance_group[0].count == 1  # never zero instances


def test_metadata_keeps_the_batch_dimension_and_lists_versions_in_order() -> None:
    model = registry_pb2.Model(name="fraud", versions=[version(number=10), version(number=2)])
    meta = model_metadata(model, model.versions[0])
    assert meta.name == "fraud"
    assert list(meta.versions) == ["2", "10"]  # numeric order, not string order
    assert meta.platform == PLATFORM
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("transaction", "FP32", [-1, 8])
    ]
    assert [t.name for t in meta.outputs] == ["fraud_probability"]


def index_rows(ready: set[tuple[str, int]] | None) -> list[tuple[str, str, str, bool]]:
    models = [
        registry_pb2.Model(name="tabular", versions=[version("tabular", 1)]),
        registry_pb2.Model(name="fraud", versions=[version(number=2), version(number=1)]),
    ]
    return [
        (m.name, m.version, m.state, bool(m.reason)) for m in repository_index(models, ready).models
    ]


def test_repository_index_marks_versions_not_loaded_unavailable() -> None:
    assert index_rows({("fraud", 2)}) == [
        ("fraud", "1", "UNAVAILABLE", True),
        ("fraud", "2", "READY", False),
        ("tabular", "1", "UNAVAILABLE", True),
    ]


def test_repository_index_without_readiness_reports_every_version_ready() -> None:
    assert index_rows(None) == [
        ("fraud", "1", "READY", False),
        ("fraud", "2", "READY", False),
        ("tabular", "1", "READY", False),
    ]
    assert [s for *_, s in index_rows(set())] == [True, True, True]  # empty set: none ready
