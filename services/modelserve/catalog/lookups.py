"""Models of kind lookup (precomputed predictions): the facts every service agrees on.

The registry derives a lookup version's signature (registry/lookup_models.py), workers skip
it (no ONNX file to load) and the router answers it from the feature store
(router/lookup.py).
"""

from __future__ import annotations

from modelserve.proto.modelserve.v1 import registry_pb2

PLATFORM = "lookup"
# Per-row output beside the mapped features: INT32 [-1, 1].
STATUS_OUTPUT = "lookup_status"
STATUS_PRESENT = 1
STATUS_MISSING = 2  # no value for the key: the features' defaults are returned
STATUS_EXPIRED = 3  # older than the view's TTL: the features' defaults are returned


def is_lookup(version: registry_pb2.ModelVersion) -> bool:
    return version.platform == PLATFORM
