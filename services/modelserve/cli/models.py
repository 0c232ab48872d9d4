"""``modelserve models``: push, list, show, label, load/unload, optimise models in the registry."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click
import grpc

from modelserve.cli import completion, connect, lookup, output, push_flags
from modelserve.cli import policy as policy_cli
from modelserve.cli.options import Args, address, client, output_format, read_command
from modelserve.cli.registry_client import push_version
from modelserve.errors import ModelServeError
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import registry_pb2, registry_pb2_grpc

Stub = registry_pb2_grpc.RegistryStub
NAME = click.argument("name", shell_complete=completion.model_names)


@click.group("models", help="manage models in the registry")
def group() -> None:
    pass


def _registry(ctx: click.Context, work: Callable[[Stub], Awaitable[int | None]]) -> int:
    client(ctx)

    async def call() -> int:
        async with connect.channel(address(ctx, "registry")) as channel:
            return (await work(registry_pb2_grpc.RegistryStub(channel))) or 0

    return asyncio.run(call())


@group.command(
    "push",
    help="push FILE.onnx as a new version of NAME, or (--uri URI --sha256 HEX, no FILE) "
    "register the artifact at URI by reference: the registry verifies it and keeps no copy",
)
@NAME
@click.argument("file", type=click.Path(path_type=Path), required=False)
@click.option(
    "--uri",
    default="",
    metavar="URI",
    help="push by reference: file:///abs/path, http(s)://..., s3://bucket/key (needs --sha256)",
)
@click.option("--sha256", default="", metavar="HEX", help="the artifact's sha256 (checked)")
@click.option("--label", multiple=True, help="label(s) for the new version")
@click.option("--description", default="")
@push_flags.config_options
@click.option(
    "--wait",
    type=float,
    default=0.0,
    metavar="SECONDS",
    help="then wait until the gateway says the new version is READY (exit 1 if not)",
)
@click.pass_context
def push(ctx: click.Context, name: str, file: Path | None, uri: str, sha256: str,
         label: tuple[str, ...], description: str, wait: float, **config: Any) -> int:  # fmt: skip
    # Checked before any connection is made.
    if (file is None) == (not uri):
        raise click.UsageError("give FILE or --uri URI (one of them)")
    if uri and not sha256:
        raise click.UsageError("--uri needs --sha256 HEX: the registry checks the artifact by it")
    if file is not None and not file.is_file():
        raise click.UsageError(f"no such file: {file}")

    async def work(stub: Stub) -> int:
        v = await push_version(
            stub,
            name,
            file,
            labels=list(label),
            description=description,
            config=push_flags.config_from_args(Args(**config)),
            sha256=sha256.strip().lower(),
            artifact_uri=uri,
        )
        where = f" uri={v.artifact_uri}" if v.artifact_uri else ""
        print(
            f"pushed {v.model} version {v.version} sha256={v.sha256[:12]} "
            f"labels={list(v.labels)}{where}"
        )
        if wait:
            return await _wait_ready(address(ctx, "gateway"), v.model, v.version, wait)
        return 0

    return _registry(ctx, work)


@group.command("list", help="list models, versions and labels")
@click.pass_context
@read_command
def list_models(ctx: click.Context) -> int:
    async def work(stub: Stub) -> None:
        reply = await stub.ListModels(registry_pb2.ListModelsRequest(), timeout=10)
        output.emit(output_format(ctx), reply, lambda: "\n".join(map(_model_lines, reply.models)))

    return _registry(ctx, work)


@group.command("show", help="one model: versions, labels, policy, pending, owner")
@NAME
@click.pass_context
@read_command
def show(ctx: click.Context, name: str) -> int:
    async def work(stub: Stub) -> None:
        found = await stub.GetModel(registry_pb2.GetModelRequest(name=name), timeout=10)
        output.emit(output_format(ctx), found, lambda: _model_lines(found, detail=True))

    return _registry(ctx, work)


@group.command("label", help="point LABEL of NAME at VERSION")
@NAME
@click.argument("version", type=int)
@click.argument("label")
@click.pass_context
def label(ctx: click.Context, name: str, version: int, label: str) -> int:
    async def work(stub: Stub) -> None:
        request = registry_pb2.SetLabelRequest(model=name, label=label, version=version)
        m = await stub.SetLabel(request, timeout=10)
        print(f"{m.name}: {label} -> version {m.labels[label]}")

    return _registry(ctx, work)


@group.command("unlabel", help="remove LABEL from NAME")
@NAME
@click.argument("label")
@click.pass_context
def unlabel(ctx: click.Context, name: str, label: str) -> int:
    async def work(stub: Stub) -> None:
        request = registry_pb2.DeleteLabelRequest(model=name, label=label)
        m = await stub.DeleteLabel(request, timeout=10)
        print(f"{m.name}: label {label} removed")

    return _registry(ctx, work)


def _loaded_command(verb: str, what: str) -> None:
    @group.command(verb, help=what)
    @NAME
    @click.pass_context
    def set_loaded(ctx: click.Context, name: str) -> int:
        async def work(stub: Stub) -> None:
            request = registry_pb2.SetModelLoadedRequest(model=name, loaded=verb == "load")
            m = await stub.SetModelLoaded(request, timeout=10)
            print(f"{m.name}: {'unloaded' if m.unloaded else 'loaded'}")

        return _registry(ctx, work)


_loaded_command("unload", "mark NAME unloaded: workers let it go, inference answers UNAVAILABLE")
_loaded_command("load", "clear the unloaded mark (servable once a worker has it warm)")


@group.command(
    "optimize", help="derive an optimised version of NAME v VERSION, measure it, push it"
)
@NAME
@click.option("--version", type=int, required=True, help="the parent version number")
@click.option("--int8", is_flag=True, help="ONNX Runtime dynamic INT8 quantisation (required)")
@click.option("--per-channel", is_flag=True, help="one weight scale per channel")
@click.option("--label", multiple=True, help="label(s) for the new version")
@click.option(
    "--samples", type=int, default=256, show_default=True, help="seeded sample rows compared"
)
@click.option("--seed", type=int, default=0)
@click.option(
    "--latency-runs", type=int, default=200, show_default=True, help="timed runs per batch size"
)
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
@click.option("--force", is_flag=True, help="push it even if it is bigger or slower")
@click.pass_context
def optimize(ctx: click.Context, name: str, version: int, int8: bool, per_channel: bool,
             label: tuple[str, ...], samples: int, seed: int, latency_runs: int, as_json: bool,
             force: bool) -> int:  # fmt: skip
    if not int8:  # the only method today; the flag names it so that others can follow
        raise click.UsageError("say how: --int8")

    async def work(stub: Stub) -> int:
        # Imported here: only this command needs onnx and ORT's quantiser loaded at start-up.
        from modelserve.cli.optimize import optimize_int8

        try:
            report = await optimize_int8(
                stub,
                name,
                version,
                labels=list(label),
                per_channel=per_channel,
                sample_rows=samples,
                seed=seed,
                latency_runs=latency_runs,
                force=force,
            )
        except ModelServeError as exc:
            print(f"error: {exc.code.name}: {exc.message}", file=sys.stderr)
            return 1
        wants_json = as_json or output_format(ctx) == "json"
        print(json.dumps(report.to_json(), indent=2) if wants_json else report.table())
        return 0

    return _registry(ctx, work)


@group.command("push-lookup", help="push a lookup table of predictions (a feature view) as NAME")
@click.argument("name")
@click.option("--view", required=True, help="the feature view holding the predictions")
@click.option("--entity-input", required=True, help="the input holding one key per row")
@click.option(
    "--entity-datatype", type=click.Choice(("BYTES", "INT64")), default="BYTES", show_default=True
)
@click.option(
    "--output",
    "outputs",
    multiple=True,
    required=True,
    type=lookup.OUTPUT_TYPE,
    help="a V2 output from the view's feature (default: NAME), e.g. score=FP32[1]",
)
@click.option("--label", multiple=True, help="label(s) for the new version")
@click.option("--description", default="")
@click.pass_context
def push_lookup(ctx: click.Context, name: str, view: str, entity_input: str,
                entity_datatype: str, outputs: tuple[registry_pb2.LookupOutput, ...],
                label: tuple[str, ...], description: str) -> int:  # fmt: skip
    args = Args(
        name=name,
        view=view,
        entity_input=entity_input,
        entity_datatype=entity_datatype,
        output=list(outputs),
        label=list(label),
        description=description,
    )

    async def work(stub: Stub) -> None:
        v = await lookup.push_lookup(stub, args)
        print(f"pushed lookup {v.model} version {v.version} labels={list(v.labels)}")

    return _registry(ctx, work)


def _model_lines(m: registry_pb2.Model, *, detail: bool = False) -> str:
    labels = ", ".join(f"{k}->{v}" for k, v in sorted(m.labels.items()))
    state = "  (unloaded)" if m.unloaded else ""
    lines = [f"{m.name}  labels: {labels or '-'}{state}"]
    for v in m.versions:
        sig = ", ".join(f"{s.name}:{s.datatype}{list(s.shape)}" for s in v.inputs)
        where = f"  uri: {v.artifact_uri}" if v.artifact_uri else ""
        lines.append(f"  v{v.version}  sha256={v.sha256[:12]}  inputs: {sig}{where}")
    if detail:
        policy = policy_cli.describe(m.policy.policy) if m.HasField("policy") else "none"
        lines.append(f"  policy: {policy}")
        if m.HasField("pending"):
            lines.append(f"  pending ({m.pending.state}): {policy_cli.describe(m.pending.policy)}")
        lines.append(f"  owner: {m.owner or 'none'}")
    return "\n".join(lines)


async def _wait_ready(gateway: str, model: str, version: int, seconds: float) -> int:
    """Poll the gateway's ModelReady for ``model`` v``version`` until it is READY."""
    deadline = asyncio.get_running_loop().time() + seconds
    async with connect.channel(gateway) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while True:
            try:
                ready = await stub.ModelReady(
                    pb.ModelReadyRequest(name=model, version=str(version)), timeout=2
                )
                if ready.ready:
                    print(f"{model} version {version} is READY")
                    return 0
            except grpc.RpcError:
                pass  # not there yet (the gateway learns of the version through Watch)
            if asyncio.get_running_loop().time() > deadline:
                print(
                    f"error: {model} version {version} not READY after {seconds:g} s "
                    "(modelserve policy show / the worker's log say why)",
                    file=sys.stderr,
                )
                return 1
            await asyncio.sleep(0.25)
