"""Views and helpers shared by the feature store tests."""

from __future__ import annotations

import struct
import time

import numpy as np

from featurestore.views import Feature, FeatureView


def user_view(
    *,
    name: str = "users",
    ttl_seconds: int = 0,
    entity_type: str = "STRING",
    extra: tuple[Feature, ...] = (),
) -> FeatureView:
    """A view with a scalar FP32 (default 1.5), an INT64 [3] vector and a BYTES feature."""
    return FeatureView(
        name=name,
        entity_key="user_id",
        entity_type=entity_type,
        features=(
            Feature("score", "FP32", (), default_raw=struct.pack("<f", 1.5)),
            Feature("counts", "INT64", (3,)),
            Feature("country", "BYTES", ()),
            *extra,
        ),
        ttl_seconds=ttl_seconds,
    )


def user_columns(count: int, base: float = 0.0) -> dict[str, np.ndarray]:
    """Columns for ``count`` entities of ``user_view``; values derive from ``base`` and i."""
    country = np.empty(count, dtype=object)
    country[:] = [f"c{base:g}-{i}".encode() for i in range(count)]
    return {
        "score": (np.arange(count, dtype=np.float32) + np.float32(base)),
        "counts": (np.arange(count * 3, dtype=np.int64) + int(base)).reshape(count, 3),
        "country": country,
    }


def now_ms() -> int:
    return time.time_ns() // 1_000_000
