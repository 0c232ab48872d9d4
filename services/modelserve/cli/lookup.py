"""``modelserve models push-lookup``: push a precomputed-prediction table as a model version.

    modelserve models push-lookup churn_scores --view churn_predictions \\
        --entity-input user_id --output score=FP32[1] --output segment:seg=INT64[1]

The version has no ONNX file: one PushVersion header whose config carries ``lookup``
(registry.proto LookupConfig). The registry validates the definition.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from modelserve.cli.options import Args, BadValue, Parsed
from modelserve.proto.modelserve.v1 import registry_pb2, registry_pb2_grpc

# NAME[:FEATURE]=DATATYPE[d1,d2,...]
_OUTPUT = re.compile(r"^([^:=]+)(?::([^=]+))?=([A-Za-z0-9]+)\[([0-9,\s]*)\]$")


def parse_output(text: str) -> registry_pb2.LookupOutput:
    match = _OUTPUT.match(text.strip())
    if match is None:
        raise BadValue(f"expected NAME[:FEATURE]=DATATYPE[SHAPE], e.g. score=FP32[1]; got {text!r}")
    name, feature, datatype, dims = match.groups()
    try:
        shape = [int(d) for d in dims.split(",") if d.strip()]
    except ValueError:
        raise BadValue(f"bad shape in {text!r}") from None
    return registry_pb2.LookupOutput(
        name=name.strip(), feature=(feature or "").strip(), datatype=datatype, shape=shape
    )


def header_of(args: Args) -> registry_pb2.PushVersionRequest.Header:
    header = registry_pb2.PushVersionRequest.Header(
        model=args.name, labels=args.label, description=args.description
    )
    header.config.lookup.CopyFrom(
        registry_pb2.LookupConfig(
            view=args.view,
            entity_input=args.entity_input,
            entity_datatype=args.entity_datatype,
            outputs=args.output,
        )
    )
    return header


async def push_lookup(
    stub: registry_pb2_grpc.RegistryStub, args: Args
) -> registry_pb2.ModelVersion:
    async def one_header() -> AsyncIterator[registry_pb2.PushVersionRequest]:
        yield registry_pb2.PushVersionRequest(header=header_of(args))

    version: registry_pb2.ModelVersion = await stub.PushVersion(one_header(), timeout=30)
    return version


OUTPUT_TYPE = Parsed(parse_output, "NAME[:FEATURE]=DATATYPE[SHAPE]")
