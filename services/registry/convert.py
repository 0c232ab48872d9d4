"""modelserve.v1 registry messages <-> domain records: the only module that knows both."""

from __future__ import annotations

import math
from dataclasses import dataclass

from modelserve.artifact_uris import ArtifactUri, parse_artifact_uri
from modelserve.catalog.routing import basis_points
from modelserve.errors import InvalidArgumentError
from modelserve.proto.modelserve.v1 import common_pb2, registry_pb2
from modelserve.tensors import TensorSpec
from registry import lookup_models
from registry.artifacts import check_sha256
from registry.config import ConfigOverrides, OutputLabels, ServingConfig
from registry.enrichment_config import (
    DEFAULT_PREDICTION_CACHE_TTL_S,
    FeatureInput,
    PredictionCacheConfig,
)
from registry.records import (
    ChangeEvent,
    ModelRecord,
    PendingPolicy,
    PolicyRevision,
    RoutingPolicy,
    ShadowTarget,
    Snapshot,
    SplitShare,
    VersionRecord,
)
from registry.store import check_push


@dataclass(frozen=True)
class PushHeader:
    model: str
    labels: tuple[str, ...]
    config: ConfigOverrides | None
    description: str
    parent_version: int
    sha256: str  # "" = the caller gave none
    artifact_uri: ArtifactUri | None = None  # set: a push by reference, no chunks follow


def header_from_proto(header: registry_pb2.PushVersionRequest.Header) -> PushHeader:
    """Decode and check a push header (before any artifact byte is accepted)."""
    labels = tuple(header.labels)
    check_push(header.model, labels, header.description, header.parent_version)
    sha256 = header.sha256.strip().lower()
    if sha256:
        check_sha256(sha256)
    config = overrides_from_proto(header.config) if header.HasField("config") else None
    uri = None
    if header.artifact_uri:
        uri = parse_artifact_uri(header.artifact_uri)
        if not sha256:  # by reference the registry never holds the bytes it would hash
            raise InvalidArgumentError(
                "a push by reference (artifact_uri) must give the artifact's sha256"
            )
        if config is not None and config.lookup is not None:
            raise InvalidArgumentError(
                f"model {header.model!r} is a lookup (config.lookup is set): it has no "
                "artifact, so no artifact_uri"
            )
    return PushHeader(
        model=header.model,
        labels=labels,
        config=config,
        description=header.description,
        parent_version=header.parent_version,
        sha256=sha256,
        artifact_uri=uri,
    )


def overrides_from_proto(config: registry_pb2.ServingConfig) -> ConfigOverrides:
    """proto3 scalars have no presence, so a zero value means "not given" (take the default).

    Consequence: max_batch_size 0 and warmup_iterations 0 cannot be requested explicitly.
    """
    return ConfigOverrides(
        max_batch_size=config.max_batch_size or None,
        max_queue_delay_us=config.max_queue_delay_us or None,
        preferred_batch_sizes=tuple(config.preferred_batch_sizes) or None,
        max_queue_size=config.max_queue_size or None,
        instance_count=config.instance_count or None,
        warmup_iterations=config.warmup_iterations or None,
        execution_provider=config.execution_provider or None,
        intra_op_threads=config.intra_op_threads or None,
        feature_inputs=tuple(feature_input_from_proto(f) for f in config.feature_inputs) or None,
        prediction_cache=(
            prediction_cache_from_proto(config.prediction_cache)
            if config.HasField("prediction_cache")
            else None
        ),
        lookup=lookup_models.from_proto(config.lookup) if config.HasField("lookup") else None,
        output_labels=tuple(
            OutputLabels(output=o.output, labels=tuple(o.labels)) for o in config.output_labels
        )
        or None,
    )


def feature_input_from_proto(fi: registry_pb2.FeatureInput) -> FeatureInput:
    return FeatureInput(
        model_input=fi.model_input,
        view=fi.view,
        features=tuple(fi.features),
        entity_input=fi.entity_input,
        entity_input_is_model_input=fi.entity_input_is_model_input,
        entity_datatype=fi.entity_datatype or "BYTES",
        fallback_values=tuple(fi.fallback_values),
    )


def prediction_cache_from_proto(cache: registry_pb2.PredictionCache) -> PredictionCacheConfig:
    return PredictionCacheConfig(
        enabled=cache.enabled, ttl_seconds=cache.ttl_seconds or DEFAULT_PREDICTION_CACHE_TTL_S
    )


def spec_to_proto(spec: TensorSpec) -> common_pb2.TensorSpec:
    return common_pb2.TensorSpec(name=spec.name, datatype=spec.datatype, shape=list(spec.shape))


def config_to_proto(config: ServingConfig) -> registry_pb2.ServingConfig:
    return registry_pb2.ServingConfig(
        max_batch_size=config.max_batch_size,
        max_queue_delay_us=config.max_queue_delay_us,
        preferred_batch_sizes=list(config.preferred_batch_sizes),
        max_queue_size=config.max_queue_size,
        instance_count=config.instance_count,
        warmup_iterations=config.warmup_iterations,
        execution_provider=config.execution_provider,
        intra_op_threads=config.intra_op_threads,
        feature_inputs=[
            registry_pb2.FeatureInput(
                model_input=fi.model_input,
                view=fi.view,
                features=list(fi.features),
                entity_input=fi.entity_input,
                entity_input_is_model_input=fi.entity_input_is_model_input,
                entity_datatype=fi.entity_datatype,
                fallback_values=list(fi.fallback_values),
            )
            for fi in config.feature_inputs
        ],
        prediction_cache=registry_pb2.PredictionCache(
            enabled=config.prediction_cache.enabled,
            ttl_seconds=config.prediction_cache.ttl_seconds,
        ),
        lookup=lookup_models.to_proto(config.lookup) if config.lookup else None,
        output_labels=[
            registry_pb2.OutputLabels(output=o.output, labels=list(o.labels))
            for o in config.output_labels
        ],
    )


def version_to_proto(record: VersionRecord) -> registry_pb2.ModelVersion:
    return registry_pb2.ModelVersion(
        model=record.model,
        version=record.version,
        sha256=record.sha256,
        size_bytes=record.size_bytes,
        inputs=[spec_to_proto(s) for s in record.inputs],
        outputs=[spec_to_proto(s) for s in record.outputs],
        config=config_to_proto(record.config),
        platform=record.platform,
        created_unix_ms=record.created_unix_ms,
        description=record.description,
        labels=list(record.labels),
        parent_version=record.parent_version,
        artifact_uri=record.artifact_uri,
    )


def model_to_proto(record: ModelRecord) -> registry_pb2.Model:
    model = registry_pb2.Model(
        name=record.name,
        versions=[version_to_proto(v) for v in record.versions],
        labels=dict(record.labels),
        unloaded=record.unloaded,
    )
    if record.policy is not None:
        model.policy.CopyFrom(revision_to_proto(record.policy))
    if record.pending is not None:
        model.pending.CopyFrom(pending_to_proto(record.pending))
    return model


def pending_to_proto(pending: PendingPolicy) -> registry_pb2.PendingPolicy:
    return registry_pb2.PendingPolicy(
        policy=policy_to_proto(pending.policy),
        note=pending.note,
        state=pending.state,
        reason=pending.reason,
        created_unix_ms=pending.created_unix_ms,
        deadline_unix_ms=pending.deadline_unix_ms,
    )


def policy_from_proto(policy: registry_pb2.RoutingPolicy) -> RoutingPolicy:
    """Decode a policy; percentages become basis points (exact integers), so a split's sum
    is checked without floating-point slack."""
    return RoutingPolicy(
        split=tuple(
            SplitShare(version=t.version, label=t.label, basis_points=_basis_points(i, t.percent))
            for i, t in enumerate(policy.split)
        ),
        target_label=policy.target_label,
        shadow=(
            ShadowTarget(
                target=policy.shadow.target,
                fraction=policy.shadow.fraction,
                agreement_tolerance=policy.shadow.agreement_tolerance,
            )
            if policy.HasField("shadow")
            else None
        ),
    )


def _basis_points(index: int, percent: float) -> int:
    if not math.isfinite(percent):
        raise InvalidArgumentError(f"split target {index}: percent must be a number; got {percent}")
    points = basis_points(percent)
    if abs(percent * 100 - points) > 1e-6:
        raise InvalidArgumentError(
            f"split target {index}: percent {percent:g} has more than two decimals"
        )
    return points


def policy_to_proto(policy: RoutingPolicy) -> registry_pb2.RoutingPolicy:
    return registry_pb2.RoutingPolicy(
        split=[
            registry_pb2.SplitTarget(version=s.version, label=s.label, percent=s.basis_points / 100)
            for s in policy.split
        ],
        target_label=policy.target_label,
        shadow=(
            registry_pb2.Shadow(
                target=policy.shadow.target,
                fraction=policy.shadow.fraction,
                agreement_tolerance=policy.shadow.agreement_tolerance,
            )
            if policy.shadow is not None
            else None
        ),
        fallback_version=policy.fallback_version,
    )


def revision_to_proto(record: PolicyRevision) -> registry_pb2.PolicyRevision:
    return registry_pb2.PolicyRevision(
        model=record.model,
        revision=record.revision,
        policy=policy_to_proto(record.policy),
        note=record.note,
        created_unix_ms=record.created_unix_ms,
    )


def snapshot_to_proto(snapshot: Snapshot) -> registry_pb2.WatchEvent:
    return registry_pb2.WatchEvent(
        revision=snapshot.revision,
        snapshot=True,
        models=[model_to_proto(m) for m in snapshot.models],
    )


def event_to_proto(event: ChangeEvent) -> registry_pb2.WatchEvent:
    return registry_pb2.WatchEvent(
        revision=event.revision,
        models=[model_to_proto(m) for m in event.models],
        deleted=list(event.deleted),
    )
