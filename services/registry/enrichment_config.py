"""The parts of a serving config the router acts on: feature inputs and the prediction cache.

The registry cannot see feature views (they live in the feature store), so it checks what the
model's signature allows: the filled input exists, is [-1, W] with a fixed W and a numeric
datatype, and W can hold the declared features (one element each at least). Whether the
view's features really sum to W is known only once the store answers; the router checks it
on every call and answers FAILED_PRECONDITION naming both widths.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from modelserve.errors import InvalidArgumentError
from modelserve.names import validate_name
from modelserve.tensors import TensorSpec

ENTITY_DATATYPES = ("BYTES", "INT64", "INT32")
# Datatypes feature values can be cast into (BF16 has no numpy type, BYTES is not numeric).
FILLABLE_DATATYPES = frozenset(
    {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"}
    | {"FP16", "FP32", "FP64"}
)
MAX_FEATURE_INPUTS = 16
MAX_FEATURES_PER_INPUT = 256
DEFAULT_PREDICTION_CACHE_TTL_S = 60
MAX_PREDICTION_CACHE_TTL_S = 86_400


@dataclass(frozen=True)
class FeatureInput:
    """``model_input`` is filled from ``view``'s ``features``, keyed by ``entity_input``."""

    model_input: str
    view: str
    features: tuple[str, ...]
    entity_input: str
    entity_input_is_model_input: bool = False
    entity_datatype: str = "BYTES"
    # Fail-open row used when the feature store cannot answer; empty = fail closed (T33).
    fallback_values: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        what = f"config.feature_inputs[{self.model_input[:64]!r}]"
        validate_name(self.model_input, "config.feature_inputs model_input")
        validate_name(self.view, f"{what} view")
        validate_name(self.entity_input, f"{what} entity_input")
        if not 1 <= len(self.features) <= MAX_FEATURES_PER_INPUT:
            raise InvalidArgumentError(
                f"{what}: expected 1 to {MAX_FEATURES_PER_INPUT} features, got {len(self.features)}"
            )
        for name in self.features:
            validate_name(name, f"{what} feature name")
        if len(set(self.features)) != len(self.features):
            raise InvalidArgumentError(
                f"{what}: features must not repeat; got {list(self.features)}"
            )
        if self.entity_datatype not in ENTITY_DATATYPES:
            raise InvalidArgumentError(
                f"{what}: entity_datatype must be one of {', '.join(ENTITY_DATATYPES)}; "
                f"got {self.entity_datatype[:32]!r}"
            )
        if self.entity_input == self.model_input:
            raise InvalidArgumentError(
                f"{what}: entity_input must differ from model_input; both are {self.model_input!r}"
            )


@dataclass(frozen=True)
class PredictionCacheConfig:
    enabled: bool = False
    ttl_seconds: int = DEFAULT_PREDICTION_CACHE_TTL_S

    def __post_init__(self) -> None:
        if not 1 <= self.ttl_seconds <= MAX_PREDICTION_CACHE_TTL_S:
            raise InvalidArgumentError(
                f"config.prediction_cache.ttl_seconds must be in "
                f"[1, {MAX_PREDICTION_CACHE_TTL_S}]; got {self.ttl_seconds}"
            )


def check_feature_inputs(
    feature_inputs: Sequence[FeatureInput], inputs: Sequence[TensorSpec], max_batch_size: int
) -> None:
    """Check ``feature_inputs`` against the model's signature (INVALID_ARGUMENT on faults)."""
    if not feature_inputs:
        return
    if len(feature_inputs) > MAX_FEATURE_INPUTS:
        raise InvalidArgumentError(
            f"config.feature_inputs: at most {MAX_FEATURE_INPUTS}; got {len(feature_inputs)}"
        )
    if max_batch_size <= 0:
        raise InvalidArgumentError(
            "config.feature_inputs needs max_batch_size > 0: features are looked up per row "
            "of the batch dimension"
        )
    specs = {s.name: s for s in inputs}
    filled = {f.model_input for f in feature_inputs}
    if len(filled) != len(feature_inputs):
        raise InvalidArgumentError(
            "config.feature_inputs: each model input may be filled by one feature input only"
        )
    entity_types: dict[str, str] = {}
    for fi in feature_inputs:
        _check_filled(fi, specs.get(fi.model_input), list(specs))
        entity_types.setdefault(fi.entity_input, _entity_type(fi, specs, filled))
        if entity_types[fi.entity_input] != _entity_type(fi, specs, filled):
            raise InvalidArgumentError(
                f"config.feature_inputs: entity input {fi.entity_input!r} is declared with "
                "different datatypes or roles; declare it the same way in each feature input"
            )


def _check_filled(fi: FeatureInput, spec: TensorSpec | None, known: list[str]) -> None:
    what = f"config.feature_inputs[{fi.model_input!r}]"
    if spec is None:
        raise InvalidArgumentError(f"{what}: the model has no input {fi.model_input!r} ({known})")
    if spec.datatype not in FILLABLE_DATATYPES:
        raise InvalidArgumentError(
            f"{what}: input {spec.name!r} is {spec.datatype}; features fill numeric inputs only"
        )
    if len(spec.shape) != 2 or spec.shape[0] != -1 or spec.shape[1] <= 0:
        raise InvalidArgumentError(
            f"{what}: input {spec.name!r} must have shape [-1, W] with a fixed W; "
            f"got {list(spec.shape)}"
        )
    if fi.fallback_values and len(fi.fallback_values) != spec.shape[1]:
        raise InvalidArgumentError(
            f"{what}: fallback_values must hold the input's width ({spec.shape[1]}) values, "
            f"or none (fail closed); got {len(fi.fallback_values)}"
        )
    if not all(math.isfinite(v) for v in fi.fallback_values):
        raise InvalidArgumentError(f"{what}: fallback_values must be finite numbers")
    if len(fi.features) > spec.shape[1]:
        raise InvalidArgumentError(
            f"{what}: {len(fi.features)} features cannot fit input {spec.name!r} of width "
            f"{spec.shape[1]} (each feature is at least one element)"
        )


def _entity_type(fi: FeatureInput, specs: dict[str, TensorSpec], filled: set[str]) -> str:
    """The role and datatype of ``fi``'s entity input, checked against the signature."""
    what = f"config.feature_inputs[{fi.model_input!r}]"
    spec = specs.get(fi.entity_input)
    if not fi.entity_input_is_model_input:
        if spec is not None:
            raise InvalidArgumentError(
                f"{what}: the model has an input named {fi.entity_input!r}; set "
                "entity_input_is_model_input, or pick another entity_input name"
            )
        return f"caller:{fi.entity_datatype}"
    if spec is None:
        raise InvalidArgumentError(
            f"{what}: entity_input_is_model_input is set but the model has no input "
            f"{fi.entity_input!r}"
        )
    if fi.entity_input in filled:
        raise InvalidArgumentError(f"{what}: entity input {fi.entity_input!r} is itself filled")
    if spec.datatype not in ENTITY_DATATYPES or spec.shape not in ((-1,), (-1, 1)):
        raise InvalidArgumentError(
            f"{what}: entity input {spec.name!r} must be {'/'.join(ENTITY_DATATYPES)} of "
            f"shape [-1] or [-1, 1]; got {spec.datatype} {list(spec.shape)}"
        )
    return f"model:{spec.datatype}"
