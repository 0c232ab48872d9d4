"""The model of a batch run, resolved through the registry exactly as online requests are
(``modelserve.catalog.resolve_version``: a version number, a label, else the routing policy's
primary target, else ``production``, else the newest), its artifact fetched once and verified.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import grpc

from modelserve.catalog.replica import resolve_version
from modelserve.cli import connect
from modelserve.cli.batch.columns import BatchInputError
from modelserve.cli.batch.scoring import fetch_artifact
from modelserve.errors import ModelServeError
from modelserve.proto.modelserve.v1 import registry_pb2, registry_pb2_grpc
from modelserve.tensors import TensorSpec

_REF = re.compile(r"^([^:@]+)(?::(\d+)|@([^:@]+))?$")


@dataclass(frozen=True)
class ResolvedModel:
    model: str
    version: int
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    artifact: Path

    @property
    def label(self) -> str:
        return f"{self.model} v{self.version}"


def parse_ref(ref: str) -> tuple[str, str, str]:
    """MODEL, MODEL:VERSION or MODEL@LABEL -> (model, version, label)."""
    match = _REF.match(ref)
    if match is None:
        raise BatchInputError(f"model must be MODEL, MODEL:VERSION or MODEL@LABEL; got {ref!r}")
    name, version, label = match.groups()
    return name, version or "", label or ""


async def resolve_model(registry: str, ref: str, cache_dir: Path) -> ResolvedModel:
    name, version, label = parse_ref(ref)
    async with connect.channel(registry) as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        try:
            model = await stub.GetModel(registry_pb2.GetModelRequest(name=name), timeout=10)
            chosen = resolve_version(model, version, label)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise BatchInputError(f"unknown model: {exc.details()}") from None
            raise
        except ModelServeError as exc:
            raise BatchInputError(f"cannot resolve {ref!r}: {exc.message}") from None
        if chosen.platform not in ("", "onnx", "onnxruntime_onnx"):
            raise BatchInputError(
                f"{name} v{chosen.version} is a {chosen.platform!r} model; batch runs score "
                "ONNX versions"
            )
        try:
            artifact = await fetch_artifact(stub, cache_dir, name, chosen.version, chosen.sha256)
        except ModelServeError as exc:
            raise BatchInputError(f"cannot fetch {name} v{chosen.version}: {exc.message}") from None
    return ResolvedModel(
        model=name,
        version=chosen.version,
        sha256=chosen.sha256,
        inputs=tuple(TensorSpec(s.name, s.datatype, tuple(s.shape)) for s in chosen.inputs),
        outputs=tuple(TensorSpec(s.name, s.datatype, tuple(s.shape)) for s in chosen.outputs),
        artifact=artifact,
    )
