"""How an ensemble's member outputs become its outputs (composite.proto, Ensemble.Combine).

Pure numpy, so the rules can be tested without a process and read in one place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from modelserve.errors import InvalidArgumentError

Outputs = Mapping[str, np.ndarray]


def mean(results: Sequence[Outputs], weights: Sequence[float] = ()) -> dict[str, np.ndarray]:
    """Element-wise (weighted) mean of each output, in the first member's dtype. Weights are
    normalised to sum to 1; none means equal weights."""
    if not results:
        raise ValueError("mean of no results")
    w = np.asarray(weights or [1.0] * len(results), dtype=np.float64)
    w = w / w.sum()
    out = {}
    for name, first in results[0].items():
        arrays = [_same_shape(name, first, r[name]) for r in results]
        # Accumulate in float64 so FP16/FP32 members are not rounded between additions.
        total = sum(wi * a.astype(np.float64) for wi, a in zip(w, arrays, strict=True))
        out[name] = np.asarray(total).astype(first.dtype)
    return out


def majority_vote(scores: Sequence[np.ndarray]) -> np.ndarray:
    """One class per row: each member votes for the argmax of its scores (last axis; the
    first maximum on ties), the class with most votes wins, ties going to the lowest class
    index. Returns INT64 of shape scores.shape[:-1] + (1,)."""
    if not scores:
        raise ValueError("vote of no members")
    votes = np.stack([np.argmax(s, axis=-1) for s in scores], axis=-1)  # [..., members]
    classes = max(int(s.shape[-1]) for s in scores)
    # One-hot counts per class; argmax over counts returns the lowest index among ties.
    counts = (votes[..., None] == np.arange(classes)).sum(axis=-2)
    return np.argmax(counts, axis=-1).astype(np.int64)[..., None]


def stack(results: Sequence[Outputs], order: Sequence[Sequence[str]]) -> np.ndarray:
    """Every member's outputs concatenated along the last axis: members in order, each
    member's outputs in ``order`` (its signature's output order)."""
    parts = [np.asarray(r[name]) for r, names in zip(results, order, strict=True) for name in names]
    rows = {p.shape[:-1] for p in parts}
    if len(rows) > 1:
        raise InvalidArgumentError(
            f"members' outputs cannot be concatenated: leading shapes differ ({sorted(rows)})"
        )
    return np.concatenate(parts, axis=-1)


def _same_shape(name: str, first: np.ndarray, other: np.ndarray) -> np.ndarray:
    if other.shape != first.shape:
        raise InvalidArgumentError(
            f"members' output '{name}' differ in shape: {list(first.shape)} vs {list(other.shape)}"
        )
    return other
