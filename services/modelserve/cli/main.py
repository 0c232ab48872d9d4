"""The ``modelserve`` command: run the suite, run one service, manage models, infer."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
import numpy as np

from modelserve.cli import auth as auth_cli
from modelserve.cli import canary as canary_cli
from modelserve.cli import connect, output, push_flags
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

# Every address can come from the environment, so a shell (or the `up` banner) sets it once.
DEFAULT_GATEWAY = os.environ.get("MODELSERVE_GATEWAY", "127.0.0.1:8001")
DEFAULT_REGISTRY = os.environ.get("MODELSERVE_REGISTRY", "127.0.0.1:8301")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="modelserve", description=__doc__)
    p.add_argument("--version", action="version", version=f"modelserve {_version()}")
    tls = p.add_argument_group("TLS (client commands; `up --secure` prints the files)")
    tls.add_argument(
        "--tls-ca", default=None, help="CA of the suite's certificates (MODELSERVE_TLS_CA)"
    )
    tls.add_argument(
        "--tls-cert",
        default=None,
        help="client certificate, for internal services (MODELSERVE_TLS_CERT)",
    )
    tls.add_argument("--tls-key", default=None, help="its private key (MODELSERVE_TLS_KEY)")
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
        "--console-port", type=int, default=8080, help="the read-only web console (-1: none)"
    )
    up.add_argument(
        "--secure",
        action="store_true",
        help="TLS on every listener, mTLS between services (certificates in DATA_DIR/tls)",
    )
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
    push.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="then wait until the gateway says the new version is READY (exit 1 if not)",
    )
    push.add_argument("--gateway", default=DEFAULT_GATEWAY, help="for --wait")
    output.add_output_flag(msub.add_parser("list", help="list models, versions and labels"))
    show = msub.add_parser("show", help="one model: versions, labels, policy, pending, owner")
    show.add_argument("name")
    output.add_output_flag(show)
    label = msub.add_parser("label", help="point LABEL of NAME at VERSION")
    label.add_argument("name")
    label.add_argument("version", type=int)
    label.add_argument("label")
    unlabel = msub.add_parser("unlabel", help="remove LABEL from NAME")
    unlabel.add_argument("name")
    unlabel.add_argument("label")
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


_AS_COMMAND = False


def command() -> int:
    """The ``modelserve`` console script."""
    global _AS_COMMAND
    _AS_COMMAND = True
    return main()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("modelserve")
    except PackageNotFoundError:
        return "unknown"


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
    opt.add_argument("--force", action="store_true", help="push it even if it is bigger or slower")


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
    """The one error handler: whatever goes wrong ends in one line on stderr and a non-zero
    exit code, never a traceback (MODELSERVE_DEBUG=1 shows it)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        return 130
    except SystemExit:
        raise
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        print(f"error: {code.name if code else 'RPC'}: {details}", file=sys.stderr)
        return 1
    except ModelServeError as exc:
        print(f"error: {exc.code.name}: {exc.message}", file=sys.stderr)
        return 1
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the user's mistake or ours: one line, and how to see more
        if os.environ.get("MODELSERVE_DEBUG"):
            raise
        what = str(exc) or type(exc).__name__
        print(f"error: {what} (MODELSERVE_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


def _main(argv: Sequence[str] | None = None) -> int:
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
            Path(args.data_dir),
            demo=not args.no_demo,
            workers=args.workers,
            secure=args.secure,
            auth=args.auth,
            console_port=args.console_port,
        )
    if args.command == "auth":
        return auth_cli.run(args)
    try:
        connect.configure(connect.tls_from(args.tls_ca, args.tls_cert, args.tls_key))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "features":
        return features_cli.run(args)
    if args.command == "batch":
        return batch_cli.run(args)
    # Client commands only (never a server): `modelserve models list | head` ends quietly.
    # Only as the command itself: main() called in a longer-lived process (tests) must not
    # make a later write to a closed pipe kill that process.
    if _AS_COMMAND:
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    _check_args(args)
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
        if args.wait:
            return await _wait_ready(args.gateway, v.model, v.version, args.wait)
    elif args.models_command == "list":
        reply = await stub.ListModels(registry_pb2.ListModelsRequest(), timeout=10)
        output.emit(args, reply, lambda: "\n".join(_model_lines(m) for m in reply.models))
    elif args.models_command == "show":
        found = await stub.GetModel(registry_pb2.GetModelRequest(name=args.name), timeout=10)
        output.emit(args, found, lambda: _model_lines(found, detail=True))
    elif args.models_command == "unlabel":
        m = await stub.DeleteLabel(
            registry_pb2.DeleteLabelRequest(model=args.name, label=args.label), timeout=10
        )
        print(f"{m.name}: label {args.label} removed")
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


def _model_lines(m: registry_pb2.Model, *, detail: bool = False) -> str:
    labels = ", ".join(f"{k}->{v}" for k, v in sorted(m.labels.items()))
    state = "  (unloaded)" if m.unloaded else ""
    lines = [f"{m.name}  labels: {labels or '-'}{state}"]
    for v in m.versions:
        sig = ", ".join(f"{s.name}:{s.datatype}{list(s.shape)}" for s in v.inputs)
        lines.append(f"  v{v.version}  sha256={v.sha256[:12]}  inputs: {sig}")
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
            force=args.force,
        )
    except ModelServeError as exc:
        print(f"error: {exc.code.name}: {exc.message}", file=sys.stderr)
        return 1
    print(json.dumps(report.to_json(), indent=2) if args.json else report.table())
    return 0


class UsageError(ValueError):
    """A mistake in the command line: its message is the whole story."""


def _check_args(args: argparse.Namespace) -> None:
    """Mistakes found before any connection is made, each one line (``main`` prints it)."""
    if args.command == "models" and args.models_command == "push":
        if not args.file.is_file():
            raise UsageError(f"no such file: {args.file}")
    if args.command == "infer":
        for item in args.input:
            name, sep, raw = item.partition("=")
            if not sep or not name:
                raise UsageError(f"--input takes NAME=JSON (e.g. x='[[1,2]]'); got {item!r}")
            try:
                json.loads(raw)
            except json.JSONDecodeError as exc:
                raise UsageError(
                    f"--input {name}: not JSON ({exc.msg} at {exc.pos}): {raw!r}"
                ) from None


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
    sys.exit(command())
