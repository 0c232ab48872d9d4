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
    # Pushed by reference: where the artifact lives (the registry keeps no copy); "" = uploaded.
    artifact_uri: str = ""


@dataclass(frozen=True)
class SplitShare:
    """One target of a weighted split: a version (>= 1) or a label, and its weight."""

    version: int = 0
    label: str = ""
    basis_points: int = 0  # hundredths of a percent: a split's shares sum to 10 000

    def describe(self) -> str:
        return f"version {self.version}" if self.version else f"label {self.label!r}"


@dataclass(frozen=True)
class ShadowTarget:
    """Mirror ``fraction`` of the calls to ``target`` (a version number or a label)."""

    target: str
    fraction: float
    agreement_tolerance: float = 0.0  # 0 = the default (modelserve.shadow)

    @property
    def version(self) -> int:
        return int(self.target) if self.target.isascii() and self.target.isdigit() else 0


@dataclass(frozen=True)
class RoutingPolicy:
    """A split or a single target label, and maybe a shadow; none of them = the default
    resolution (no policy). Only a shadow = the default resolution, mirrored."""

    split: tuple[SplitShare, ...] = ()
    target_label: str = ""
    shadow: ShadowTarget | None = None
    # Set by the registry when the policy is written (the version served before it); not
    # part of what the caller asked for, so equality ignores it.
    fallback_version: int = field(default=0, compare=False)

    def versions(self) -> set[int]:
        """The version numbers this policy routes (or mirrors) to directly."""
        found = {s.version for s in self.split if s.version}
        if self.shadow is not None and self.shadow.version:
            found.add(self.shadow.version)
        return found

    @property
    def empty(self) -> bool:
        return not self.routes and self.shadow is None

    @property
    def routes(self) -> bool:
        """Whether the policy chooses the version (a shadow alone does not)."""
        return bool(self.split) or bool(self.target_label)

    def labels(self) -> set[str]:
        """The labels this policy routes (or mirrors) through."""
        found = {s.label for s in self.split if s.label}
        if self.shadow is not None and not self.shadow.version:
            found.add(self.shadow.target)
        return found | ({self.target_label} if self.target_label else set())


@dataclass(frozen=True)
class PolicyRevision:
    """A model's policy as of one of its policy revisions (1, 2, ... per model)."""

    model: str
    revision: int
    policy: RoutingPolicy
    note: str = ""
    created_unix_ms: int = 0


WAITING, FAILED = "waiting", "failed"


@dataclass(frozen=True)
class PendingPolicy:
    """A policy accepted but not in force until every version it routes to is READY on a
    serving worker (``registry.policies.gate``); a failed one keeps its reason."""

    model: str
    policy: RoutingPolicy
    note: str = ""
    state: str = WAITING
    reason: str = ""
    created_unix_ms: int = 0
    deadline_unix_ms: int = 0


@dataclass(frozen=True)
class ModelRecord:
    name: str
    versions: tuple[VersionRecord, ...]  # ascending by version
    labels: Mapping[str, int] = field(default_factory=dict)  # label -> version
    policy: PolicyRevision | None = None  # the current revision; None if never set
    pending: PendingPolicy | None = None
    unloaded: bool = False  # RepositoryModelUnload: no version is deployed


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
