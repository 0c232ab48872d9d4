"""The ``modelserve`` command: run the suite, run one service, manage models, infer.

Built on click (why: modelserve.cli.options). ``main`` is the one error handler: whatever goes
wrong ends in one line on stderr and an exit code (2 for a mistake in the command line, 1 for
a refusal or failure), never a traceback (MODELSERVE_DEBUG=1 shows it).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import click
import grpc
import numpy as np

from modelserve.cli import auth as auth_cli
from modelserve.cli import canary as canary_cli
from modelserve.cli import completion, connect, tls_cmd
from modelserve.cli import experiment as experiment_cli
from modelserve.cli import features as features_cli
from modelserve.cli import models as models_cli
from modelserve.cli import policy as policy_cli
from modelserve.cli import shadow as shadow_cli
from modelserve.cli import stream as stream_cli
from modelserve.cli.batch import cli as batch_cli
from modelserve.cli.options import AS_COMMAND, address, client, install
from modelserve.cli.suite import SERVICES
from modelserve.errors import ModelServeError
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.tensors import DTYPES, decode_outputs, encode_inputs

CONTEXT = {"help_option_names": ["-h", "--help"]}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("modelserve")
    except PackageNotFoundError:
        return "unknown"


@click.group(context_settings=CONTEXT, help=__doc__.split("\n", 1)[0])
@click.version_option(
    _version(), "--version", prog_name="modelserve", message="%(prog)s %(version)s"
)
def cli() -> None:
    pass


@cli.command("up", help="run the whole suite on this machine until Ctrl-C")
@click.option(
    "--data-dir", default=".modelserve-data", show_default=True, help="state of registry, workers"
)
@click.option("--no-demo", is_flag=True, help="do not register the demo models")
@click.option(
    "--workers", type=int, default=1, show_default=True, help="number of worker processes"
)
@click.option(
    "--console-port",
    type=int,
    default=8080,
    show_default=True,
    help="the read-only web console (-1: none)",
)
@click.option(
    "--secure",
    is_flag=True,
    help="TLS on every listener, mTLS between services (certificates in DATA_DIR/tls)",
)
@click.option(
    "--auth",
    is_flag=True,
    help="require credentials: tokens/{admin,infer,service} and keys.json in the data dir",
)
def up(data_dir: str, no_demo: bool, workers: int, console_port: int, secure: bool,
       auth: bool) -> int:  # fmt: skip
    from modelserve.cli.up import run_up

    return run_up(
        Path(data_dir),
        demo=not no_demo,
        workers=workers,
        secure=secure,
        auth=auth,
        console_port=console_port,
    )


@cli.command(
    "serve",
    help="run one service (every argument after SERVICE goes to the service)",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.argument("service", type=click.Choice([*SERVICES, "streamer"]), metavar="SERVICE")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def serve(service: str, args: tuple[str, ...]) -> int:
    module = importlib.import_module(service)  # services are found by name, not imported
    from modelserve.server import serve as serve_spec

    serve_spec(module.SPEC, list(args))
    return 0


@cli.command("infer", help="send one V2 inference to the gateway")
@click.argument("model", shell_complete=completion.model_names)
@click.option("--version", default="", help="version number or label")
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="NAME=JSON",
    help="input tensor as a JSON nested list, e.g. transaction='[[0.1, 0.2, ...]]'",
)
@click.option("--timeout", type=float, default=5.0, show_default=True)
@click.pass_context
def infer(ctx: click.Context, model: str, version: str, inputs: tuple[str, ...],
          timeout: float) -> int:  # fmt: skip
    client(ctx)
    arrays_json = _parse_inputs(inputs)  # mistakes are found before any connection is made
    return asyncio.run(_infer(address(ctx, "gateway"), model, version, arrays_json, timeout))


cli.add_command(models_cli.group)
cli.add_command(auth_cli.group)
cli.add_command(policy_cli.group)
cli.add_command(experiment_cli.group)
cli.add_command(canary_cli.group)
cli.add_command(shadow_cli.group)
cli.add_command(features_cli.group)
cli.add_command(stream_cli.group)
cli.add_command(batch_cli.group)
cli.add_command(tls_cmd.group)
cli.add_command(completion.command)
# Every client command takes the global options; `serve` hands its arguments on as they are.
install(cli, skip=("serve", "up", "auth", "tls", "completion"))


def command() -> int:
    """The ``modelserve`` console script."""
    AS_COMMAND[0] = True
    return main()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default: sys.argv) and return its exit code; one line on
    stderr for any failure."""
    try:
        result = cli.main(
            args=None if argv is None else list(argv),
            prog_name="modelserve",
            standalone_mode=False,
        )
        return result if isinstance(result, int) else 0
    except click.exceptions.NoArgsIsHelpError as exc:  # `modelserve models`: its help
        click.echo(exc.format_message(), err=True)
        return 2
    except click.UsageError as exc:
        where = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
        print(f"error: {_one_line(exc.format_message())}{where}", file=sys.stderr)
        return 2
    except click.ClickException as exc:
        print(f"error: {_one_line(exc.format_message())}", file=sys.stderr)
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt):
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
    except Exception as exc:  # the user's mistake or ours: one line, and how to see more
        if os.environ.get("MODELSERVE_DEBUG"):
            raise
        what = str(exc) or type(exc).__name__
        print(f"error: {_one_line(what)} (MODELSERVE_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.strip().splitlines() if line.strip())


def _parse_inputs(items: Sequence[str]) -> list[tuple[str, str]]:
    parsed = []
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise click.UsageError(f"--input takes NAME=JSON (e.g. x='[[1,2]]'); got {item!r}")
        try:
            json.loads(raw)
        except json.JSONDecodeError as exc:
            raise click.UsageError(
                f"--input {name}: not JSON ({exc.msg} at {exc.pos}): {raw!r}"
            ) from None
        parsed.append((name, raw))
    return parsed


async def _infer(
    gateway: str, model: str, version: str, inputs: list[tuple[str, str]], timeout: float
) -> int:
    async with connect.channel(gateway) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        meta = await stub.ModelMetadata(
            pb.ModelMetadataRequest(name=model, version=version), timeout=timeout
        )
        dtypes = {t.name: t.datatype for t in meta.inputs}
        arrays: dict[str, np.ndarray] = {}
        for name, raw in inputs:
            if name not in dtypes:
                print(
                    f"error: model {model} has no input {name!r}; inputs: {sorted(dtypes)}",
                    file=sys.stderr,
                )
                return 2
            arrays[name] = np.asarray(json.loads(raw), dtype=DTYPES[dtypes[name]].numpy)
        request = pb.ModelInferRequest(model_name=model, model_version=version)
        encode_inputs(request, arrays)
        response = await stub.ModelInfer(request, timeout=timeout)
    outputs = {k: v.tolist() for k, v in decode_outputs(response).items()}
    answer = {"model": response.model_name, "version": response.model_version, "outputs": outputs}
    print(json.dumps(answer, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(command())
