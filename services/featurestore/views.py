"""Feature views: what a view is, what a valid one looks like, and how one may evolve.

A view names an entity key (``user_id``: STRING or INT64) and the features stored per entity,
and optionally its offline source (a Parquet/CSV file that ``modelserve features
materialize`` reads client-side; the server only stores its description). Views are immutable
values, validated when built, so every other module can trust them.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from featurestore.values import FEATURE_DTYPES, decode_bytes_value, numpy_dtype
from modelserve.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from modelserve.names import validate_name

ENTITY_TYPES = ("STRING", "INT64")
SOURCE_FORMATS = ("parquet", "csv")
# Bounds on what an admin may declare (RELIABILITY.md rule 9: every count is bounded).
MAX_FEATURES = 1024
MAX_RANK = 8
MAX_ELEMENTS_PER_ENTITY = 65_536
MAX_TTL_SECONDS = 100 * 365 * 86_400
MAX_DESCRIPTION = 4096
MAX_SOURCE_PATH = 4096
_JSON_FORMAT = 1


@dataclass(frozen=True)
class Feature:
    """One feature: a V2 datatype and the shape of one entity's value (() = scalar)."""

    name: str
    datatype: str
    shape: tuple[int, ...] = ()
    # One entity's value as V2 raw bytes, returned for missing/expired values; b"" = zeros.
    default_raw: bytes = b""

    def __post_init__(self) -> None:
        validate_name(self.name, "feature name")
        what = f"feature {self.name!r}"
        if self.datatype not in FEATURE_DTYPES:
            raise InvalidArgumentError(
                f"{what}: datatype must be one of {', '.join(FEATURE_DTYPES)}, "
                f"got {self.datatype!r}"
            )
        if len(self.shape) > MAX_RANK or any(d < 1 for d in self.shape):
            raise InvalidArgumentError(
                f"{what}: shape must have at most {MAX_RANK} dimensions, each >= 1, "
                f"got {list(self.shape)}"
            )
        if self.elements > MAX_ELEMENTS_PER_ENTITY:
            raise InvalidArgumentError(
                f"{what}: at most {MAX_ELEMENTS_PER_ENTITY} elements per entity, "
                f"shape {list(self.shape)} has {self.elements}"
            )
        if self.default_raw:
            self._check_default()

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    @property
    def is_bytes(self) -> bool:
        return self.datatype == "BYTES"

    @property
    def value_nbytes(self) -> int:
        """Bytes of one entity's value; only meaningful for fixed-width datatypes."""
        return self.elements * numpy_dtype(self.datatype).itemsize

    def _check_default(self) -> None:
        what = f"feature {self.name!r} default"
        if self.is_bytes:
            decode_bytes_value(
                self.default_raw, self.elements, self.name, kind="default of feature"
            )
        elif len(self.default_raw) != self.value_nbytes:
            raise InvalidArgumentError(
                f"{what}: expected {self.value_nbytes} bytes ({self.elements} x "
                f"{self.datatype}), got {len(self.default_raw)}"
            )

    @cached_property
    def default_value(self) -> np.ndarray:
        """One entity's default value, shape ``self.shape`` (read-only, shared)."""
        if self.is_bytes:
            if self.default_raw:
                flat = decode_bytes_value(self.default_raw, self.elements, self.name)
            else:
                flat = np.empty(self.elements, dtype=object)
                flat[:] = b""
            value = flat.reshape(self.shape)
        elif self.default_raw:
            value = np.frombuffer(self.default_raw, numpy_dtype(self.datatype)).reshape(self.shape)
        else:
            value = np.zeros(self.shape, numpy_dtype(self.datatype))
        value.flags.writeable = False
        return value


@dataclass(frozen=True)
class FeatureSource:
    """A view's offline file: format, where it is, and its timestamp columns.

    The path is documentation (and the CLI's default): no server code ever opens it
    (RELIABILITY.md rule 8). The entity column is named like the view's entity key.
    """

    format: str
    event_timestamp_column: str
    path: str = ""
    created_timestamp_column: str = ""  # "" = none

    def __post_init__(self) -> None:
        if self.format not in SOURCE_FORMATS:
            raise InvalidArgumentError(
                f"feature source: format must be parquet or csv, got {self.format[:32]!r}"
            )
        validate_name(self.event_timestamp_column, "event timestamp column")
        if self.created_timestamp_column:
            validate_name(self.created_timestamp_column, "created timestamp column")
            if self.created_timestamp_column == self.event_timestamp_column:
                raise InvalidArgumentError(
                    "feature source: the created timestamp column must differ from the event "
                    f"timestamp column {self.event_timestamp_column!r}"
                )
        if len(self.path) > MAX_SOURCE_PATH or any(ord(c) < 32 for c in self.path):
            raise InvalidArgumentError(
                f"feature source: path must be at most {MAX_SOURCE_PATH} printable characters"
            )

    @property
    def timestamp_columns(self) -> tuple[str, ...]:
        return tuple(c for c in (self.event_timestamp_column, self.created_timestamp_column) if c)


@dataclass(frozen=True)
class FeatureView:
    """A named set of features stored per entity; values older than ``ttl_seconds`` expire."""

    name: str
    entity_key: str
    entity_type: str
    features: tuple[Feature, ...]
    ttl_seconds: int = 0  # 0 = never expire
    description: str = ""
    source: FeatureSource | None = None  # None: filled by pushes only
    _by_name: dict[str, Feature] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        validate_name(self.name, "feature view name")
        what = f"feature view {self.name!r}"
        validate_name(self.entity_key, "entity key name")
        if self.entity_type not in ENTITY_TYPES:
            raise InvalidArgumentError(
                f"{what}: entity_type must be STRING or INT64, got {self.entity_type!r}"
            )
        if not 1 <= len(self.features) <= MAX_FEATURES:
            raise InvalidArgumentError(
                f"{what}: expected 1 to {MAX_FEATURES} features, got {len(self.features)}"
            )
        by_name: dict[str, Feature] = {}
        for feature in self.features:
            if feature.name in by_name:
                raise InvalidArgumentError(f"{what}: feature {feature.name!r} is declared twice")
            by_name[feature.name] = feature
        object.__setattr__(self, "_by_name", by_name)
        if not 0 <= self.ttl_seconds <= MAX_TTL_SECONDS:
            raise InvalidArgumentError(
                f"{what}: ttl_seconds must be 0 (never expire) to {MAX_TTL_SECONDS}, "
                f"got {self.ttl_seconds}"
            )
        if len(self.description) > MAX_DESCRIPTION:
            raise InvalidArgumentError(
                f"{what}: description is {len(self.description)} characters, "
                f"at most {MAX_DESCRIPTION}"
            )
        if self.source is not None:
            self._check_source_columns(self.source)

    def _check_source_columns(self, source: FeatureSource) -> None:
        # One source column per role: a timestamp column that is also the key or a feature
        # would make a file mean two things at once.
        taken = {self.entity_key, *self._by_name}
        for column in source.timestamp_columns:
            if column in taken:
                raise InvalidArgumentError(
                    f"feature view {self.name!r}: source timestamp column {column!r} is also "
                    "the entity key or a feature; name it differently"
                )

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def feature(self, name: str) -> Feature:
        """The feature called ``name``, or NOT_FOUND naming it and what the view has."""
        validate_name(name, "feature name")
        try:
            return self._by_name[name]
        except KeyError:
            raise NotFoundError(
                f"feature view {self.name!r} has no feature {name[:128]!r}; "
                f"it has {_listing(self.feature_names)}"
            ) from None


def _listing(names: tuple[str, ...], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_evolution(old: FeatureView, new: FeatureView) -> None:
    """Refuse changes that would misread rows already stored under ``old``.

    Adding features, changing defaults, ttl, description and source are fine. Changing the
    entity key or type, or a feature's datatype or shape, would reinterpret stored bytes;
    removing a feature would let a later re-add with another datatype do the same.
    """
    what = f"feature view {old.name!r}"
    if (new.entity_key, new.entity_type) != (old.entity_key, old.entity_type):
        raise FailedPreconditionError(
            f"{what}: the entity key cannot change: stored as {old.entity_key} "
            f"{old.entity_type}, got {new.entity_key} {new.entity_type}; create a new view"
        )
    for before in old.features:
        if before.name not in new.feature_names:
            raise FailedPreconditionError(
                f"{what}: feature {before.name!r} cannot be removed (stored rows hold it); "
                "keep it in the view or create a new view"
            )
        after = new.feature(before.name)
        if (after.datatype, after.shape) != (before.datatype, before.shape):
            raise FailedPreconditionError(
                f"{what}: feature {before.name!r} cannot change from {before.datatype} "
                f"{list(before.shape)} to {after.datatype} {list(after.shape)}; "
                "add a feature with a new name instead"
            )


def view_to_json(view: FeatureView) -> str:
    """The catalog's storage form: plain JSON text (never pickle, RELIABILITY.md rule 11)."""
    doc = {
        "format": _JSON_FORMAT,
        "name": view.name,
        "entity_key": view.entity_key,
        "entity_type": view.entity_type,
        "ttl_seconds": view.ttl_seconds,
        "description": view.description,
        "source": None if view.source is None else _source_to_doc(view.source),
        "features": [
            {
                "name": f.name,
                "datatype": f.datatype,
                "shape": list(f.shape),
                "default_b64": base64.b64encode(f.default_raw).decode("ascii"),
            }
            for f in view.features
        ],
    }
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)


def _source_to_doc(source: FeatureSource) -> dict[str, str]:
    return {
        "format": source.format,
        "path": source.path,
        "event_timestamp_column": source.event_timestamp_column,
        "created_timestamp_column": source.created_timestamp_column,
    }


def view_from_json(text: str) -> FeatureView:
    doc: dict[str, Any] = json.loads(text)
    if doc.get("format") != _JSON_FORMAT:
        raise ValueError(f"unknown feature view format {doc.get('format')!r}")
    source = doc.get("source")  # absent in views stored before sources existed
    return FeatureView(
        name=doc["name"],
        entity_key=doc["entity_key"],
        entity_type=doc["entity_type"],
        ttl_seconds=int(doc["ttl_seconds"]),
        description=doc["description"],
        source=None if source is None else FeatureSource(**source),
        features=tuple(
            Feature(
                name=f["name"],
                datatype=f["datatype"],
                shape=tuple(int(d) for d in f["shape"]),
                default_raw=base64.b64decode(f["default_b64"]),
            )
            for f in doc["features"]
        ),
    )
