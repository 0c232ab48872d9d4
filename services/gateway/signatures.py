"""Model signatures as the codec wants them, built once per version rather than per request.

The signature is the caller's: for a version with feature inputs, the inputs the router fills
from the feature store are left out and their entity inputs are in
(``modelserve.catalog.signatures.caller_inputs``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from modelserve.catalog.signatures import caller_inputs
from modelserve.proto.modelserve.v1 import registry_pb2
from modelserve.tensors import PassedLayouts, TensorSpec


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    # False for versions whose prediction cache is on: the router caches per call, so a
    # merged call would only hit when the same requests met again in the same merge
    # (docs/architecture.md, "Prediction cache").
    mergeable: bool = True
    # Output name -> class labels (ServingConfig.output_labels), for classification answers.
    labels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Request layouts this signature has passed (validate_infer_request's memo): a request
    # shaped like one before is checked by its payload sizes alone.
    passed: PassedLayouts = field(default_factory=dict, compare=False)


class SignatureCache:
    def __init__(self) -> None:
        self._cache: dict[tuple[str, int, str], Signature] = {}

    def get(self, version: registry_pb2.ModelVersion) -> Signature:
        # A version's serving config is fixed when it is pushed (no RPC changes it), so the
        # caller's signature needs no part of the config in the key.
        key = (version.model, version.version, version.sha256)
        found = self._cache.get(key)
        if found is None:
            if len(self._cache) > 4096:  # bounded: versions come and go
                self._cache.clear()
            found = self._cache[key] = Signature(
                inputs=tuple(
                    TensorSpec(s.name, s.datatype, tuple(s.shape)) for s in caller_inputs(version)
                ),
                outputs=tuple(
                    TensorSpec(s.name, s.datatype, tuple(s.shape)) for s in version.outputs
                ),
                max_batch_size=version.config.max_batch_size,
                mergeable=not version.config.prediction_cache.enabled,
                labels={o.output: tuple(o.labels) for o in version.config.output_labels},
            )
        return found
