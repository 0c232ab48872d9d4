"""A version's serving config: the defaults, the bounds, and how a push's overrides resolve.

Bounds follow RELIABILITY.md (max batch <= 64, bounded queues); anything outside them is the
caller's mistake, so INVALID_ARGUMENT naming the field, the allowed range and what came.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from modelserve.errors import InvalidArgumentError
from modelserve.tensors import TensorSpec
from registry.enrichment_config import FeatureInput, PredictionCacheConfig, check_feature_inputs
from registry.lookup_models import LookupConfig

EXECUTION_PROVIDERS = ("auto", "cpu", "cuda")
MAX_BATCH_SIZE = 64
DEFAULT_MAX_QUEUE_SIZE = 64
DEFAULT_INSTANCE_COUNT = 1
DEFAULT_WARMUP_ITERATIONS = 3
MAX_LABELS_PER_OUTPUT = 100_000
MAX_LABEL_CHARS = 1024

# field -> (lowest, highest) accepted value
_INT_BOUNDS: dict[str, tuple[int, int]] = {
    "max_batch_size": (0, MAX_BATCH_SIZE),
    "max_queue_delay_us": (0, 1_000_000),
    "max_queue_size": (1, 4096),
    "instance_count": (1, 16),
    "warmup_iterations": (0, 100),
    "intra_op_threads": (0, 64),
}


@dataclass(frozen=True)
class OutputLabels:
    """Class labels of one output, index i naming class i (Triton's ``label_filename``)."""

    output: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class ServingConfig:
    """How a worker serves one version (validated on construction)."""

    max_batch_size: int = 0
    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    instance_count: int = DEFAULT_INSTANCE_COUNT
    warmup_iterations: int = DEFAULT_WARMUP_ITERATIONS
    execution_provider: str = "auto"
    intra_op_threads: int = 0
    feature_inputs: tuple[FeatureInput, ...] = ()
    prediction_cache: PredictionCacheConfig = field(default_factory=PredictionCacheConfig)
    lookup: LookupConfig | None = None  # set: a precomputed-prediction table (lookup_models)
    output_labels: tuple[OutputLabels, ...] = ()  # class labels (classification extension)

    def __post_init__(self) -> None:
        for name, (low, high) in _INT_BOUNDS.items():
            _check_range(name, getattr(self, name), low, high)
        _check_output_labels(self.output_labels)
        if self.lookup is not None and (self.feature_inputs or self.prediction_cache.enabled):
            # The router answers a lookup from the store itself: nothing to enrich or cache.
            raise InvalidArgumentError(
                "a lookup version takes neither config.feature_inputs nor a prediction_cache"
            )
        if self.execution_provider not in EXECUTION_PROVIDERS:
            raise InvalidArgumentError(
                f"config.execution_provider must be one of {', '.join(EXECUTION_PROVIDERS)}; "
                f"got {self.execution_provider[:32]!r}"
            )
        _check_preferred(self.preferred_batch_sizes, self.max_batch_size)


@dataclass(frozen=True)
class ConfigOverrides:
    """What a push asked for; None = take the registry's default for that field."""

    max_batch_size: int | None = None
    max_queue_delay_us: int | None = None
    preferred_batch_sizes: tuple[int, ...] | None = None
    max_queue_size: int | None = None
    instance_count: int | None = None
    warmup_iterations: int | None = None
    execution_provider: str | None = None
    intra_op_threads: int | None = None
    feature_inputs: tuple[FeatureInput, ...] | None = None
    prediction_cache: PredictionCacheConfig | None = None
    lookup: LookupConfig | None = None
    output_labels: tuple[OutputLabels, ...] | None = None

    def __post_init__(self) -> None:
        # Range checks before any byte of the artifact is accepted; checks that need the
        # signature (batch dimension) happen in resolve_config.
        for name, (low, high) in _INT_BOUNDS.items():
            value = getattr(self, name)
            if value is not None:
                _check_range(name, value, low, high)
        if self.output_labels is not None:
            _check_output_labels(self.output_labels)


def default_config(inputs: Sequence[TensorSpec]) -> ServingConfig:
    """Defaults for a model: batching up to 64 when every input has a variable first dim."""
    batchable = _batchable(inputs)
    return ServingConfig(max_batch_size=MAX_BATCH_SIZE if batchable else 0)


def resolve_config(
    overrides: ConfigOverrides | None,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec] | None = None,
) -> ServingConfig:
    """The defaults for ``inputs`` with ``overrides`` applied, validated as a whole
    (``outputs``: the signature's outputs, which output labels must name)."""
    config = default_config(inputs)
    if overrides is not None:
        given: dict[str, Any] = {
            f.name: getattr(overrides, f.name)
            for f in fields(overrides)
            if getattr(overrides, f.name) is not None
        }
        config = replace(config, **given)
    if config.max_batch_size > 0 and not _batchable(inputs):
        fixed = next((s for s in inputs if not s.shape or s.shape[0] != -1), None)
        got = f"input {fixed.name!r} has shape {list(fixed.shape)}" if fixed else "it has no inputs"
        raise InvalidArgumentError(
            f"config.max_batch_size {config.max_batch_size} needs a variable first dimension "
            f"on every model input, but {got}; use max_batch_size 0"
        )
    check_feature_inputs(config.feature_inputs, inputs, config.max_batch_size)
    if outputs is not None:
        known = [s.name for s in outputs]
        for entry in config.output_labels:
            if entry.output not in known:
                raise InvalidArgumentError(
                    f"config.output_labels names output {entry.output!r}, which the model "
                    f"does not have (outputs: {', '.join(known) or 'none'})"
                )
    return config


def _batchable(inputs: Sequence[TensorSpec]) -> bool:
    return bool(inputs) and all(spec.shape and spec.shape[0] == -1 for spec in inputs)


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise InvalidArgumentError(f"config.{name} must be in [{low}, {high}]; got {value}")


def _check_output_labels(entries: tuple[OutputLabels, ...]) -> None:
    seen: set[str] = set()
    for entry in entries:
        if not entry.output:
            raise InvalidArgumentError("config.output_labels: an entry has no output name")
        if entry.output in seen:
            raise InvalidArgumentError(
                f"config.output_labels: output {entry.output!r} is given more than once"
            )
        seen.add(entry.output)
        if not entry.labels:
            raise InvalidArgumentError(
                f"config.output_labels: output {entry.output!r} has no labels"
            )
        if len(entry.labels) > MAX_LABELS_PER_OUTPUT:
            raise InvalidArgumentError(
                f"config.output_labels: output {entry.output!r} has {len(entry.labels)} "
                f"labels; at most {MAX_LABELS_PER_OUTPUT}"
            )
        for index, label in enumerate(entry.labels):
            if len(label) > MAX_LABEL_CHARS or "\n" in label or "\r" in label:
                raise InvalidArgumentError(
                    f"config.output_labels: label {index} of output {entry.output!r} must be "
                    f"one line of at most {MAX_LABEL_CHARS} characters"
                )


def _check_preferred(sizes: tuple[int, ...], max_batch_size: int) -> None:
    if not sizes:
        return
    if max_batch_size == 0:
        raise InvalidArgumentError(
            "config.preferred_batch_sizes needs max_batch_size > 0; got max_batch_size 0"
        )
    for size in sizes:
        if not 1 <= size <= max_batch_size:
            raise InvalidArgumentError(
                f"config.preferred_batch_sizes must each be in [1, {max_batch_size}] "
                f"(max_batch_size); got {size}"
            )
    if len(set(sizes)) != len(sizes):
        raise InvalidArgumentError(
            f"config.preferred_batch_sizes must not repeat a size; got {list(sizes)}"
        )
