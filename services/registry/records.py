"""The registry's domain records: plain frozen dataclasses, no protobuf."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from modelserve.tensors import TensorSpec
from registry.config import ServingConfig

PRODUCTION = "production"  # the label a request without version or label resolves to


@dataclass(frozen=True)
class VersionRecord:
    model: str
    version: int
    sha256: str
    size_bytes: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    config: ServingConfig
    platform: str
    created_unix_ms: int
    description: str = ""
    parent_version: int = 0
    labels: tuple[str, ...] = ()  # labels pointing at this version when it was read


@dataclass(frozen=True)
class ModelRecord:
    name: str
    versions: tuple[VersionRecord, ...]  # ascending by version
    labels: Mapping[str, int] = field(default_factory=dict)  # label -> version


@dataclass(frozen=True)
class ChangeEvent:
    """One committed change: the full state of each changed model at ``revision``."""

    revision: int
    models: tuple[ModelRecord, ...]
    deleted: tuple[str, ...] = ()


@dataclass(frozen=True)
class Snapshot:
    """Every model as of ``revision`` (read in one transaction)."""

    revision: int
    models: tuple[ModelRecord, ...]
