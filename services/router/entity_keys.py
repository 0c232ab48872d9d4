"""Entity keys of a request's input, as the feature store takes them (enrichment and lookups)."""

from __future__ import annotations

import numpy as np

from modelserve.errors import InvalidArgumentError


def entity_keys(name: str, values: np.ndarray) -> list[str]:
    """One key per row: UTF-8 text, integers in base 10."""
    if not values.shape or values.shape[0] == 0:
        return []
    flat = values.reshape(values.shape[0], -1)
    if flat.shape[1] != 1:
        raise InvalidArgumentError(
            f"input {name!r}: expected one entity key per row, got {flat.shape[1]}"
        )
    if values.dtype == np.object_:
        try:
            return [bytes(v).decode("utf-8") for v in flat[:, 0]]
        except UnicodeDecodeError:
            raise InvalidArgumentError(f"input {name!r}: entity keys must be UTF-8 text") from None
    return [str(int(v)) for v in flat[:, 0]]
