"""The ``modelserve`` command: run the suite, run one service, manage models, infer."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
import numpy as np

from modelserve.cli import auth as auth_cli
from modelserve.cli import canary as canary_cli
from modelserve.cli import connect, push_flags
from modelserve.cli import experiment as experiment_cli
from modelserve.cli import features as features_cli
from modelserve.cli import lookup as lookup_cli
from modelserve.cli import policy as policy_cli
from modelserve.cli import shadow as shadow_cli
from modelserve.cli import stream as stream_cli
from modelserve.cli.batch import cli as batch_cli
from modelserve.cli.registry_client import push_version
from modelserve.cli.suite import SERVICES
from modelserve.errors import ModelServeError
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import registry_pb2, registry_pb2_grpc
from modelserve.tensors import DTYPES, decode_outputs, encode_inputs

DEFAULT_GATEWAY = "127.0.0.1:8001"
DEFAULT_REGISTRY = "127.0.0.1:8301"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="modelserve", description=__doc__)
    p.add_argument(
        "--token",
        default=None,
        help="bearer token sent to every service called (default $MODELSERVE_TOKEN); "
        "may be given after any subcommand",
    )
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole suite on this machine until Ctrl-C")
    up.add_argument("--data-dir", default=".modelserve-data", help="state of registry, workers")
    up.add_argument("--no-demo", action="store_true", help="do not register the demo models")
    up.add_argument("--workers", type=int, default=1, help="number of worker processes")
    up.add_argument(
        "--auth",
        action="store_true",
        help="require credentials: tokens/{admin,infer,service} and keys.json in the data dir",
    )

    serve = sub.add_parser("serve", help="run one service (flags after it go to the service)")
    serve.add_argument("service", choices=[*SERVICES, "streamer"])
    serve.add_argument("args", nargs=argparse.REMAINDER)

    models = sub.add_parser("models", help="manage models in the registry")
    models.add_argument("--registry", default=DEFAULT_REGISTRY, help="registry address")
    msub = models.add_subparsers(dest="models_command", required=True)
    push = msub.add_parser("push", help="push FILE.onnx as a new version of NAME")
    push.add_argument("name")
    push.add_argument("file", type=Path)
    push.add_argument("--label", action="append", default=[], help="label(s) for the new version")
    push.add_argument("--description", default="")
    push_flags.add_config_flags(push)
    msub.add_parser("list", help="list models, versions and labels")
    label = msub.add_parser("label", help="point LABEL of NAME at VERSION")
    label.add_argument("name")
    label.add_argument("version", type=int)
    label.add_argument("label")
    for verb, what in (
        ("unload", "mark NAME unloaded: workers let it go, inference answers UNAVAILABLE"),
        ("load", "clear the unloaded mark (servable once a worker has it warm)"),
    ):
        msub.add_parser(verb, help=what).add_argument("name")
    _add_optimize(msub)
    lookup_cli.add_parser(msub)

    auth_cli.add_parser(sub)

    infer = sub.add_parser("infer", help="send one V2 inference to the gateway")
    infer.add_argument("model")
    infer.add_argument("--version", default="", help="version number or label")
    infer.add_argument("--gateway", default=DEFAULT_GATEWAY)
    infer.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="input tensor as a JSON nested list, e.g. transaction='[[0.1, 0.2, ...]]'",
    )
    infer.add_argument("--timeout", type=float, default=5.0)
    policy_cli.add_parser(sub, DEFAULT_REGISTRY)
    experiment_cli.add_parser(sub, DEFAULT_REGISTRY)
    canary_cli.add_parser(sub, DEFAULT_REGISTRY)
    shadow_cli.add_parser(sub)
    features_cli.add_parser(sub)
    stream_cli.add_parser(sub)
    batch_cli.add_parser(sub)
    return p


def _add_optimize(msub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    opt = msub.add_parser(
        "optimize", help="derive an optimised version of NAME v VERSION, measure it, push it"
    )
    opt.add_argument("name")
    opt.add_argument("--version", type=int, required=True, help="the parent version number")
    how = opt.add_mutually_exclusive_group(required=True)
    how.add_argument("--int8", action="store_true", help="ONNX Runtime dynamic INT8 quantisation")
    opt.add_argument("--per-channel", action="store_true", help="one weight scale per channel")
    opt.add_argument("--label", action="append", default=[], help="label(s) for the new version")
    opt.add_argument("--samples", type=int, default=256, help="seeded sample rows compared")
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--latency-runs", type=int, default=200, help="timed runs per batch size")
    opt.add_argument("--json", action="store_true", help="print the report as JSON")


def hoist_token(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``--token T`` (or ``--token=T``) moved before the subcommand, so every
    command takes it wherever it is written."""
    rest: list[str] = []
    front: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        item = items[i]
        if item == "--token" and i + 1 < len(items):
            front = ["--token", items[i + 1]]
            i += 2
            continue
        if item.startswith("--token="):
            front = [item]
        else:
            rest.append(item)
        i += 1
    return front + rest


def main(argv: Sequence[str] | None = None) -> int:
    argv = hoist_token(sys.argv[1:] if argv is None else argv)
    args, extra = _parser().parse_known_args(argv)
    connect.set_token(args.token)
    if args.command == "stream":  # unknown flags go to the streamer's settings
        return stream_cli.run(args, extra)
    if extra:
        _parser().parse_args(argv)  # the usual error for unknown arguments
    if args.command == "serve":
        module = importlib.import_module(args.service)  # services are found by name, not imported
        from modelserve.server import serve

        serve(module.SPEC, args.args)
        return 0
    if args.command == "up":
        from modelserve.cli.up import run_up

        return run_up(
            Path(args.data_dir), demo=not args.no_demo, workers=args.workers, auth=args.auth
        )
    if args.command == "auth":
        return auth_cli.run(args)
    if args.command == "features":
        return features_cli.run(args)
    if args.command == "batch":
        return batch_cli.run(args)
    # Client commands only (never a server): `modelserve models list | head` ends quietly.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        return asyncio.run(_client_command(args))
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1


async def _client_command(args: argparse.Namespace) -> int:
    if args.command == "policy":
        return await policy_cli.run(args)
    if args.command == "experiment":
        return await experiment_cli.run(args)
    if args.command == "canary":
        return await canary_cli.run(args)
    if args.command == "shadow":
        return await shadow_cli.run(args)
    if args.command == "models":
        async with connect.channel(args.registry) as channel:
            stub = registry_pb2_grpc.RegistryStub(channel)
            return await _models(stub, args)
    async with connect.channel(args.gateway) as channel:
        return await _infer(pb_grpc.GRPCInferenceServiceStub(channel), args)


async def _models(stub: registry_pb2_grpc.RegistryStub, args: argparse.Namespace) -> int:
    if args.models_command == "push":
        v = await push_version(
            stub,
            args.name,
            args.file,
            labels=args.label,
            description=args.description,
            config=push_flags.config_from_args(args),
        )
        print(
            f"pushed {v.model} version {v.version} sha256={v.sha256[:12]} labels={list(v.labels)}"
        )
    elif args.models_command == "list":
        reply = await stub.ListModels(registry_pb2.ListModelsRequest(), timeout=10)
        for m in reply.models:
            labels = ", ".join(f"{k}->{v}" for k, v in sorted(m.labels.items()))
            state = "  (unloaded)" if m.unloaded else ""
            print(f"{m.name}  labels: {labels or '-'}{state}")
            for v in m.versions:
                sig = ", ".join(f"{s.name}:{s.datatype}{list(s.shape)}" for s in v.inputs)
                print(f"  v{v.version}  sha256={v.sha256[:12]}  inputs: {sig}")
    elif args.models_command == "label":
        m = await stub.SetLabel(
            registry_pb2.SetLabelRequest(model=args.name, label=args.label, version=args.version),
            timeout=10,
        )
        print(f"{m.name}: {args.label} -> version {m.labels[args.label]}")
    elif args.models_command in ("load", "unload"):
        m = await stub.SetModelLoaded(
            registry_pb2.SetModelLoadedRequest(
                model=args.name, loaded=args.models_command == "load"
            ),
            timeout=10,
        )
        print(f"{m.name}: {'unloaded' if m.unloaded else 'loaded'}")
    elif args.models_command == "optimize":
        return await _optimize(stub, args)
    elif args.models_command == "push-lookup":
        v = await lookup_cli.push_lookup(stub, args)
        print(f"pushed lookup {v.model} version {v.version} labels={list(v.labels)}")
    return 0


async def _optimize(stub: registry_pb2_grpc.RegistryStub, args: argparse.Namespace) -> int:
    # Imported here: only this command needs onnx and ORT's quantiser loaded at start-up.
    from modelserve.cli.optimize import optimize_int8

    try:
        report = await optimize_int8(
            stub,
            args.name,
            args.version,
            labels=args.label,
            per_channel=args.per_channel,
            sample_rows=args.samples,
            seed=args.seed,
            latency_runs=args.latency_runs,
        )
    except ModelServeError as exc:
        print(f"error: {exc.code.name}: {exc.message}", file=sys.stderr)
        return 1
    print(json.dumps(report.to_json(), indent=2) if args.json else report.table())
    return 0


async def _infer(stub: pb_grpc.GRPCInferenceServiceStub, args: argparse.Namespace) -> int:
    meta = await stub.ModelMetadata(
        pb.ModelMetadataRequest(name=args.model, version=args.version), timeout=args.timeout
    )
    dtypes = {t.name: t.datatype for t in meta.inputs}
    arrays: dict[str, np.ndarray] = {}
    for item in args.input:
        name, _, raw = item.partition("=")
        if name not in dtypes:
            print(
                f"error: model {args.model} has no input {name!r}; inputs: {sorted(dtypes)}",
                file=sys.stderr,
            )
            return 2
        dtype = DTYPES[dtypes[name]].numpy
        arrays[name] = np.asarray(json.loads(raw), dtype=dtype)
    request = pb.ModelInferRequest(model_name=args.model, model_version=args.version)
    encode_inputs(request, arrays)
    response = await stub.ModelInfer(request, timeout=args.timeout)
    outputs = {k: v.tolist() for k, v in decode_outputs(response).items()}
    print(
        json.dumps(
            {"model": response.model_name, "version": response.model_version, "outputs": outputs},
            default=str,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
