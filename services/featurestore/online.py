"""Online feature semantics: validated writes (newest event wins) and batched lookups.

A lookup returns, per requested feature, a column of shape [len(keys), *feature shape] and a
status per key: PRESENT, MISSING (no stored value) or EXPIRED (event older than the view's
ttl). Missing and expired entries hold the feature's default. Backends only move bytes.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from featurestore.catalog import ViewCatalog
from featurestore.columns import assemble_column, split_column
from featurestore.online_store import OnlineStore, StoredRow
from featurestore.rows import MAX_EVENT_MS, CorruptRowError, decode_row, encode_row
from featurestore.views import Feature, FeatureView
from modelserve.errors import InvalidArgumentError

log = logging.getLogger(__name__)

MAX_KEYS_PER_CALL = 10_000
MAX_KEY_BYTES = 1024
# Values (elements) one lookup may return: bounds the memory a caller can make us allocate.
MAX_VALUES_PER_CALL = 4 * 1024 * 1024
_INT64_KEY = re.compile(r"-?[0-9]{1,19}")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class ValueStatus(IntEnum):
    """Same numbers as featurestore.proto's ValueStatus."""

    PRESENT = 1
    MISSING = 2
    EXPIRED = 3


@dataclass(frozen=True)
class FeatureColumn:
    """One requested feature: values [len(keys), *shape] and a ValueStatus per key (int8)."""

    feature: Feature
    values: np.ndarray
    status: np.ndarray


def now_unix_ms() -> int:
    return time.time_ns() // 1_000_000


class OnlineFeatures:
    """Writes and lookups over a view catalog and one online store backend."""

    def __init__(
        self,
        *,
        catalog: ViewCatalog,
        online_store: OnlineStore,
        max_keys_per_call: int = MAX_KEYS_PER_CALL,
        max_values_per_call: int = MAX_VALUES_PER_CALL,
        now_ms: Callable[[], int] = now_unix_ms,
    ) -> None:
        self._catalog = catalog
        self._store = online_store
        self._max_keys = max_keys_per_call
        self._max_values = max_values_per_call
        self._now_ms = now_ms

    async def delete_view(self, view: str) -> int:
        """Every stored row of ``view`` (all keys); returns how many were deleted."""
        return await self._store.delete_view(view)

    async def write(
        self,
        view_name: str,
        entity_keys: Sequence[str],
        columns: Mapping[str, np.ndarray],
        event_unix_ms: Sequence[int] = (),
    ) -> int:
        """Store one row per entity (every feature of the view); return the rows stored.

        A row older than the stored one for its entity is skipped; with a key repeated in
        the batch, the newest event (then the last one) wins.
        """
        view = self._catalog.get(view_name)
        keys = self._canonical_keys(view, entity_keys)
        events = self._event_times(view, len(keys), event_unix_ms)
        self._check_columns(view, columns)
        values = [split_column(f, columns[f.name], len(keys)) for f in view.features]
        newest: dict[str, int] = {}
        for i, key in enumerate(keys):
            seen = newest.get(key)
            if seen is None or events[i] >= events[seen]:
                newest[key] = i
        rows = [_stored_row(view, key, events[i], values, i) for key, i in newest.items()]
        return await self._store.write_rows(view.name, rows, ttl_seconds=view.ttl_seconds)

    async def read(
        self, view_name: str, features: Sequence[str], entity_keys: Sequence[str]
    ) -> list[FeatureColumn]:
        """Columns for ``features`` (empty = every feature of the view), in request order."""
        view = self._catalog.get(view_name)
        chosen = self._choose_features(view, features)
        keys = self._canonical_keys(view, entity_keys)
        total = len(keys) * sum(f.elements for f in chosen)
        if total > self._max_values:
            raise InvalidArgumentError(
                f"lookup on view {view.name!r} would return {total} values, at most "
                f"{self._max_values}; ask for fewer keys or features per call"
            )
        blobs = await self._store.read_rows(view.name, keys)
        wanted = frozenset(f.name.encode("ascii") for f in chosen)
        rows = [_decode(view, blob, wanted) for blob in blobs]
        now = self._now_ms()
        ttl_ms = view.ttl_seconds * 1000
        expired = [row is not None and ttl_ms > 0 and now - row[0] > ttl_ms for row in rows]
        return [_column(f, rows, expired) for f in chosen]

    def _canonical_keys(self, view: FeatureView, entity_keys: Sequence[str]) -> list[str]:
        if len(entity_keys) > self._max_keys:
            raise InvalidArgumentError(
                f"{len(entity_keys)} entity keys in one call, at most {self._max_keys}; "
                "split the call"
            )
        return [_canonical_key(view, key) for key in entity_keys]

    def _event_times(self, view: FeatureView, count: int, given: Sequence[int]) -> list[int]:
        if not given:
            return [self._now_ms()] * count
        if len(given) != count:
            raise InvalidArgumentError(
                f"view {view.name!r}: expected one event time per entity key ({count}) or "
                f"none, got {len(given)}"
            )
        for t in given:
            if not 0 <= t <= MAX_EVENT_MS:
                raise InvalidArgumentError(
                    f"view {view.name!r}: event time {t} is not unix milliseconds in "
                    f"[0, {MAX_EVENT_MS}]"
                )
        return list(given)

    @staticmethod
    def _check_columns(view: FeatureView, columns: Mapping[str, np.ndarray]) -> None:
        for name in columns:
            view.feature(name)  # NOT_FOUND naming an unknown feature
        missing = [name for name in view.feature_names if name not in columns]
        if missing:
            raise InvalidArgumentError(
                f"view {view.name!r}: a write carries every feature of the view; missing "
                f"{', '.join(repr(m) for m in missing[:20])}"
            )

    @staticmethod
    def _choose_features(view: FeatureView, names: Sequence[str]) -> list[Feature]:
        if not names:
            return list(view.features)
        chosen: dict[str, Feature] = {}
        for name in names:
            if name in chosen:
                raise InvalidArgumentError(
                    f"view {view.name!r}: feature {name[:128]!r} is requested twice"
                )
            chosen[name] = view.feature(name)  # NOT_FOUND at the first unknown name
        return list(chosen.values())


def _canonical_key(view: FeatureView, key: str) -> str:
    """The stored form of an entity key: INT64 keys as canonical base-10 ('007' -> '7')."""
    if view.entity_type == "INT64":
        if _INT64_KEY.fullmatch(key) and _INT64_MIN <= int(key) <= _INT64_MAX:
            return str(int(key))
        raise InvalidArgumentError(
            f"entity key {key[:64]!r}: view {view.name!r} has INT64 {view.entity_key} keys, "
            "expected a base-10 integer in the int64 range"
        )
    if not key or len(key.encode()) > MAX_KEY_BYTES:
        raise InvalidArgumentError(
            f"entity key {key[:64]!r}: expected 1 to {MAX_KEY_BYTES} bytes of "
            f"{view.entity_key}, got {len(key.encode())}"
        )
    return key


def _stored_row(
    view: FeatureView, key: str, event_ms: int, values: list[list[bytes]], i: int
) -> StoredRow:
    """Entity ``i``'s row: its value of every feature (``values`` is per feature, per entity)."""
    named = [(f.name, column[i]) for f, column in zip(view.features, values, strict=True)]
    return StoredRow(entity=key, event_ms=event_ms, blob=encode_row(event_ms, named))


Row = tuple[int, dict[str, bytes]]


def _decode(view: FeatureView, blob: bytes | None, wanted: frozenset[bytes]) -> Row | None:
    if blob is None:
        return None
    try:
        return decode_row(blob, wanted)
    except CorruptRowError as exc:
        # Serve the rest of the batch: a damaged row reads as MISSING and is logged.
        log.warning("view %s: unreadable stored row treated as missing: %s", view.name, exc)
        return None


def _column(feature: Feature, rows: list[Row | None], expired: list[bool]) -> FeatureColumn:
    stored = [None if row is None else row[1].get(feature.name) for row in rows]
    live = [None if gone else value for value, gone in zip(stored, expired, strict=True)]
    values, bad = assemble_column(feature, live)
    status = np.full(len(rows), ValueStatus.MISSING, dtype=np.int8)
    status[[i for i, value in enumerate(stored) if value is not None]] = ValueStatus.PRESENT
    status[[i for i, gone in enumerate(expired) if gone and stored[i] is not None]] = (
        ValueStatus.EXPIRED
    )
    if bad:
        log.warning(
            "feature %s: %d stored values malformed, read as missing", feature.name, len(bad)
        )
        status[bad] = ValueStatus.MISSING
    return FeatureColumn(feature=feature, values=values, status=status)
