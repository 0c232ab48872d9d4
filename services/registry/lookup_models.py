"""Models of kind lookup: precomputed predictions served from a feature view.

A batch job writes predictions by entity key into a feature view; a lookup version names that
view, the entity input and how the view's features become V2 outputs. It has no ONNX file:
PushVersion takes a header whose config carries ``lookup`` and no chunks, and the registry
stores the definition's canonical JSON as the artifact, so the version still has a content
address (sha256) like any other. The signature is derived here, so gateway validation and V2
metadata work unchanged; workers skip platform ``lookup`` and the router answers it itself.

The proto conversion lives here too (not in convert.py) so that the lookup kind stays in
one module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from modelserve.catalog.lookups import PLATFORM, STATUS_OUTPUT
from modelserve.errors import InvalidArgumentError
from modelserve.names import validate_name
from modelserve.proto.modelserve.v1 import registry_pb2
from modelserve.tensors import DTYPES, TensorSpec
from registry.onnx_inspect import ModelSignature

ENTITY_DATATYPES = ("BYTES", "INT64")
MAX_OUTPUTS = 64
MAX_ELEMENTS_PER_ROW = 1 << 16
# BF16 has no numpy type to cast feature values into.
OUTPUT_DATATYPES = tuple(name for name, dt in DTYPES.items() if dt.numpy is not None)


@dataclass(frozen=True)
class LookupOutput:
    name: str
    feature: str
    datatype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        what = f"lookup output {self.name[:64]!r}"
        validate_name(self.name, "lookup output name")
        validate_name(self.feature, f"{what} feature name")
        if self.name == STATUS_OUTPUT:
            raise InvalidArgumentError(
                f"lookup output name {STATUS_OUTPUT!r} is reserved for the per-row status"
            )
        if self.datatype not in OUTPUT_DATATYPES:
            raise InvalidArgumentError(
                f"{what}: datatype must be one of {', '.join(OUTPUT_DATATYPES)}; "
                f"got {self.datatype[:32]!r}"
            )
        elements = 1
        for dim in self.shape:
            if dim < 1:
                raise InvalidArgumentError(
                    f"{what}: every dimension of the per-row shape must be >= 1; "
                    f"got {list(self.shape)}"
                )
            elements *= dim
        if not self.shape or elements > MAX_ELEMENTS_PER_ROW:
            raise InvalidArgumentError(
                f"{what}: per-row shape must have 1 to {MAX_ELEMENTS_PER_ROW} elements, "
                f"e.g. [1]; got {list(self.shape)}"
            )


@dataclass(frozen=True)
class LookupConfig:
    view: str
    entity_input: str
    outputs: tuple[LookupOutput, ...]
    entity_datatype: str = "BYTES"

    def __post_init__(self) -> None:
        validate_name(self.view, "lookup view name")
        validate_name(self.entity_input, "lookup entity_input")
        if self.entity_datatype not in ENTITY_DATATYPES:
            raise InvalidArgumentError(
                f"lookup entity_datatype must be one of {', '.join(ENTITY_DATATYPES)}; "
                f"got {self.entity_datatype[:32]!r}"
            )
        if not 1 <= len(self.outputs) <= MAX_OUTPUTS:
            raise InvalidArgumentError(
                f"a lookup needs 1 to {MAX_OUTPUTS} outputs; got {len(self.outputs)}"
            )
        names = [o.name for o in self.outputs]
        if len(set(names)) != len(names):
            raise InvalidArgumentError(f"lookup output names must not repeat; got {names}")
        if self.entity_input in names:
            raise InvalidArgumentError(
                f"lookup entity_input {self.entity_input!r} is also an output name"
            )


def signature(lookup: LookupConfig) -> ModelSignature:
    """The version's V2 signature: the entity input, the mapped outputs and the status."""
    outputs = tuple(TensorSpec(o.name, o.datatype, (-1, *o.shape)) for o in lookup.outputs)
    return ModelSignature(
        inputs=(TensorSpec(lookup.entity_input, lookup.entity_datatype, (-1, 1)),),
        outputs=(*outputs, TensorSpec(STATUS_OUTPUT, "INT32", (-1, 1))),
        platform=PLATFORM,
    )


def definition_bytes(lookup: LookupConfig) -> bytes:
    """The canonical JSON stored as the version's artifact (its sha256 names the version)."""
    return json.dumps(to_json(lookup), sort_keys=True, separators=(",", ":")).encode()


def to_json(lookup: LookupConfig) -> dict[str, Any]:
    return {
        "view": lookup.view,
        "entity_input": lookup.entity_input,
        "entity_datatype": lookup.entity_datatype,
        "outputs": [
            {"name": o.name, "feature": o.feature, "datatype": o.datatype, "shape": list(o.shape)}
            for o in lookup.outputs
        ],
    }


def from_json(data: dict[str, Any]) -> LookupConfig:
    return LookupConfig(
        view=data["view"],
        entity_input=data["entity_input"],
        entity_datatype=data["entity_datatype"],
        outputs=tuple(
            LookupOutput(o["name"], o["feature"], o["datatype"], tuple(o["shape"]))
            for o in data["outputs"]
        ),
    )


def from_proto(lookup: registry_pb2.LookupConfig) -> LookupConfig:
    return LookupConfig(
        view=lookup.view,
        entity_input=lookup.entity_input,
        entity_datatype=lookup.entity_datatype or "BYTES",
        outputs=tuple(
            LookupOutput(o.name, o.feature or o.name, o.datatype, tuple(o.shape))
            for o in lookup.outputs
        ),
    )


def to_proto(lookup: LookupConfig) -> registry_pb2.LookupConfig:
    return registry_pb2.LookupConfig(
        view=lookup.view,
        entity_input=lookup.entity_input,
        entity_datatype=lookup.entity_datatype,
        outputs=[
            registry_pb2.LookupOutput(
                name=o.name, feature=o.feature, datatype=o.datatype, shape=list(o.shape)
            )
            for o in lookup.outputs
        ],
    )
