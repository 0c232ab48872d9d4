"""``modelserve stream run MODEL[:VERSION|@LABEL] --source URL --sink URL --group G ...``:
one streaming consumer in the foreground, the streamer service with its health port, metrics
and SIGTERM drain. The short flags map onto the streamer's ``stream_*`` settings; any other
flag (``--port``, ``--metrics-port``, ``--stream-reclaim-idle-ms`` ...) goes to the service as
it is. Two consumers on one host need different ports: ``stream run`` binds a free gRPC (and
metrics) port unless ``--port`` is given.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from typing import Any

import click

from modelserve.cli.options import ADDRESSES, Args, globals_of

GATEWAY_ENV = ADDRESSES["gateway"][0]
FLAGS = {
    "source": "--stream-source",
    "sink": "--stream-sink",
    "group": "--stream-group",
    "consumer": "--stream-consumer",
    "max_batch": "--stream-max-batch",
    "max_wait_ms": "--stream-max-wait-ms",
    "max_in_flight": "--stream-max-in-flight",
    "dead_letter": "--stream-dead-letter",
    "max_attempts": "--stream-max-attempts",
    "gateway": "--gateway-addr",
}


@click.group("stream", help="streaming inference: event stream -> model -> results")
def group() -> None:
    pass


@group.command(
    "run",
    help=__doc__,
    short_help="consume an event stream, score through the gateway, write results",
    context_settings={"ignore_unknown_options": True},
)
@click.argument("model")
@click.option(
    "--source", required=True, help="redis://H:P/DB?stream=S or nats://H:P?stream=S&subject=X"
)
@click.option("--sink", required=True, help="result stream URL (same forms)")
@click.option("--group", required=True, help="consumer group / durable consumer name")
@click.option("--consumer", help="this consumer's name (default hostname-pid)")
@click.option("--max-batch", type=int, help="events per micro-batch (32)")
@click.option("--max-wait-ms", type=int, help="wait for a batch to fill (5)")
@click.option("--max-in-flight", type=int, help="batches scored at once (4)")
@click.option("--dead-letter", help="dead-letter stream URL (default: sink stream + .dlq)")
@click.option("--max-attempts", type=int, help="attempts before dead-lettering (3)")
@click.option("--gateway", help="gateway address (env MODELSERVE_GATEWAY, default 127.0.0.1:8001)")
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def run_command(ctx: click.Context, extra: tuple[str, ...], **given: Any) -> int:
    """MODEL is MODEL, MODEL:VERSION or MODEL@LABEL."""
    args = Args(**given)
    # The gateway from the global flag or the environment when not given here (else the
    # streamer's own default and MODELSERVE_GATEWAY_ADDR apply).
    args.gateway = args.gateway or globals_of(ctx).gateway or os.environ.get(GATEWAY_ENV)
    return run(args, extra)


def service_argv(args: Args, extra: Sequence[str]) -> list[str]:
    """The streamer's own flags for what ``stream run`` was given."""
    argv = ["--stream-model", args.model]
    for name, flag in FLAGS.items():
        value = getattr(args, name, None)
        if value is not None:
            argv += [flag, str(value)]
    if not any(a == "--port" or a.startswith("--port=") for a in extra):
        argv += ["--port", "0"]
    return [*argv, *extra]


def run(args: Args, extra: Sequence[str]) -> int:
    from modelserve.server import serve

    spec = importlib.import_module("streamer").SPEC  # found by name, like `serve`
    serve(spec, service_argv(args, extra))
    return 0
