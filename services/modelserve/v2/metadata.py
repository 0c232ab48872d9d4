"""V2 metadata answers built from registry records, shared by gateway, router and worker.

Triton's conventions are kept so tritonclient and perf_analyzer read them as they read
Triton's: platform ``onnxruntime_onnx``; metadata shapes include the batch dimension (-1);
config ``dims`` exclude it when ``max_batch_size`` > 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from modelserve.catalog.signatures import caller_inputs
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import model_config_pb2 as mc
from modelserve.proto.modelserve.v1 import common_pb2, registry_pb2
from modelserve.tensors import DTYPES

PLATFORM = "onnxruntime_onnx"


def model_metadata(
    model: registry_pb2.Model, version: registry_pb2.ModelVersion, *, caller_view: bool = False
) -> pb.ModelMetadataResponse:
    """``caller_view``: inputs as callers send them (gateway, router); without it, the
    model's own signature (a worker, which runs the model on fully assembled inputs)."""

    def tensors(
        specs: Iterable[common_pb2.TensorSpec],
    ) -> list[pb.ModelMetadataResponse.TensorMetadata]:
        return [
            pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape)
            for s in specs
        ]

    return pb.ModelMetadataResponse(
        name=model.name,
        versions=[str(v.version) for v in sorted(model.versions, key=lambda v: v.version)],
        platform=version.platform or PLATFORM,
        inputs=tensors(caller_inputs(version) if caller_view else version.inputs),
        outputs=tensors(version.outputs),
    )


def _dims(spec: common_pb2.TensorSpec, batched: bool) -> list[int]:
    return list(spec.shape[1:] if batched else spec.shape)


def model_config(
    version: registry_pb2.ModelVersion, *, caller_view: bool = False
) -> pb.ModelConfigResponse:
    cfg = version.config
    batched = cfg.max_batch_size > 0
    inputs = caller_inputs(version) if caller_view else version.inputs
    config = mc.ModelConfig(
        name=version.model,
        platform=version.platform or PLATFORM,
        backend="onnxruntime",
        max_batch_size=cfg.max_batch_size,
        input=[
            mc.ModelInput(
                name=s.name,
                data_type=mc.DataType.Value(DTYPES[s.datatype].config),
                dims=_dims(s, batched),
            )
            for s in inputs
        ],
        output=[
            mc.ModelOutput(
                name=s.name,
                data_type=mc.DataType.Value(DTYPES[s.datatype].config),
                dims=_dims(s, batched),
            )
            for s in version.outputs
        ],
        instance_group=[
            mc.ModelInstanceGroup(
                name=f"{version.model}_0",
                count=max(cfg.instance_count, 1),
                kind=mc.ModelInstanceGroup.KIND_GPU
                if cfg.execution_provider == "cuda"
                else mc.ModelInstanceGroup.KIND_CPU,
            )
        ],
        version_policy=mc.ModelVersionPolicy(all=mc.ModelVersionPolicy.All()),
        default_model_filename="model.onnx",
    )
    if batched:
        config.dynamic_batching.CopyFrom(
            mc.ModelDynamicBatching(
                preferred_batch_size=list(cfg.preferred_batch_sizes),
                max_queue_delay_microseconds=cfg.max_queue_delay_us,
                default_queue_policy=mc.ModelQueuePolicy(max_queue_size=cfg.max_queue_size),
            )
        )
    config.parameters["modelserve_version"].string_value = str(version.version)
    config.parameters["sha256"].string_value = version.sha256
    return pb.ModelConfigResponse(config=config)


def repository_index(
    models: Iterable[registry_pb2.Model],
    ready: set[tuple[str, int]] | None = None,
    failures: Mapping[tuple[str, int], str] | None = None,
) -> pb.RepositoryIndexResponse:
    """Every version; state READY when in ``ready`` (or when readiness is unknown), except
    for unloaded models (reason "unloaded"); ``failures``: why a version failed to load."""
    out = pb.RepositoryIndexResponse()
    for model in sorted(models, key=lambda m: m.name):
        for v in sorted(model.versions, key=lambda v: v.version):
            key = (model.name, v.version)
            is_ready = not model.unloaded and (ready is None or key in ready)
            if is_ready:
                reason = ""
            elif model.unloaded:
                reason = "unloaded"
            elif failures and key in failures:
                reason = f"load failed: {failures[key]}"
            else:
                reason = "not loaded on any serving worker"
            out.models.add(
                name=model.name,
                version=str(v.version),
                state="READY" if is_ready else "UNAVAILABLE",
                reason=reason,
            )
    return out
