"""A version's signature as callers see it: what every hop agrees a caller sends."""

from __future__ import annotations

from modelserve.proto.modelserve.v1 import common_pb2, registry_pb2

# Shape callers send an entity input in when the model does not take it itself.
ENTITY_INPUT_SHAPE = (-1, 1)


def caller_inputs(version: registry_pb2.ModelVersion) -> list[common_pb2.TensorSpec]:
    """The inputs a caller sends: the model's inputs minus those the router fills from the
    feature store, plus the entity inputs that key them (registry.proto FeatureInput)."""
    feature_inputs = version.config.feature_inputs
    if not feature_inputs:
        return list(version.inputs)
    filled = {f.model_input for f in feature_inputs}
    out = [s for s in version.inputs if s.name not in filled]
    seen = {s.name for s in out}
    for fi in feature_inputs:
        if fi.entity_input not in seen:
            seen.add(fi.entity_input)
            out.append(
                common_pb2.TensorSpec(
                    name=fi.entity_input,
                    datatype=fi.entity_datatype or "BYTES",
                    shape=ENTITY_INPUT_SHAPE,
                )
            )
    return out
