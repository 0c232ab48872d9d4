"""Model signatures as the codec wants them, built once per version rather than per request."""

from __future__ import annotations

from dataclasses import dataclass

from modelserve.proto.modelserve.v1 import registry_pb2
from modelserve.tensors import TensorSpec


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int


class SignatureCache:
    def __init__(self) -> None:
        self._cache: dict[tuple[str, int, str], Signature] = {}

    def get(self, version: registry_pb2.ModelVersion) -> Signature:
        key = (version.model, version.version, version.sha256)
        found = self._cache.get(key)
        if found is None:
            if len(self._cache) > 4096:  # bounded: versions come and go
                self._cache.clear()
            found = self._cache[key] = Signature(
                inputs=tuple(
                    TensorSpec(s.name, s.datatype, tuple(s.shape)) for s in version.inputs
                ),
                outputs=tuple(
                    TensorSpec(s.name, s.datatype, tuple(s.shape)) for s in version.outputs
                ),
                max_batch_size=version.config.max_batch_size,
            )
        return found
