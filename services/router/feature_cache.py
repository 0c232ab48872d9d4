"""A small in-process TTL cache of feature rows in front of the feature store.

Keyed by (view, feature list, entity key); a value is one entity's row: one flat array per
feature, as the store answered it (defaults included for missing or expired values, so a
missing entity does not cost a lookup per request either). Bounded in entries, least
recently used first out; a TTL of about a second keeps values close to the store while hot
keys skip the network.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable

import numpy as np

FeatureRow = tuple[np.ndarray, ...]
CacheKey = tuple[Hashable, ...]


class FeatureCache:
    """``ttl_s`` <= 0 or ``max_entries`` <= 0 turns the cache off (every get misses)."""

    def __init__(
        self,
        *,
        ttl_s: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl_s
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[CacheKey, tuple[float, FeatureRow]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self._ttl > 0 and self._max > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey) -> FeatureRow | None:
        found = self._entries.get(key)
        if found is None:
            return None
        expires, row = found
        if expires <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return row

    def put_many(self, items: Iterable[tuple[CacheKey, FeatureRow]]) -> None:
        if not self.enabled:
            return
        expires = self._clock() + self._ttl
        for key, row in items:
            self._entries[key] = (expires, row)
            self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
