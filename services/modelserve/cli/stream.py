"""``modelserve stream run MODEL[:VERSION|@LABEL] --source URL --sink URL --group G ...``:
one streaming consumer in the foreground, the streamer service with its health port, metrics
and SIGTERM drain. The short flags map onto the streamer's ``stream_*`` settings; any other
flag (``--port``, ``--metrics-port``, ``--stream-reclaim-idle-ms`` ...) goes to the service as
it is. Two consumers on one host need different ports: ``stream run`` binds a free gRPC (and
metrics) port unless ``--port`` is given.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

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


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    stream = sub.add_parser("stream", help="streaming inference: event stream -> model -> results")
    ssub = stream.add_subparsers(dest="stream_command", required=True)
    run = ssub.add_parser(
        "run",
        help="consume an event stream, score through the gateway, write results",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("model", help="MODEL, MODEL:VERSION or MODEL@LABEL")
    run.add_argument(
        "--source", required=True, help="redis://H:P/DB?stream=S or nats://H:P?stream=S&subject=X"
    )
    run.add_argument("--sink", required=True, help="result stream URL (same forms)")
    run.add_argument("--group", required=True, help="consumer group / durable consumer name")
    run.add_argument("--consumer", help="this consumer's name (default hostname-pid)")
    run.add_argument("--max-batch", type=int, help="events per micro-batch (32)")
    run.add_argument("--max-wait-ms", type=int, help="wait for a batch to fill (5)")
    run.add_argument("--max-in-flight", type=int, help="batches scored at once (4)")
    run.add_argument("--dead-letter", help="dead-letter stream URL (default: sink stream + .dlq)")
    run.add_argument("--max-attempts", type=int, help="attempts before dead-lettering (3)")
    run.add_argument("--gateway", help="gateway address (127.0.0.1:8001)")


def service_argv(args: argparse.Namespace, extra: Sequence[str]) -> list[str]:
    """The streamer's own flags for what ``stream run`` was given."""
    argv = ["--stream-model", args.model]
    for name, flag in FLAGS.items():
        value = getattr(args, name, None)
        if value is not None:
            argv += [flag, str(value)]
    if not any(a == "--port" or a.startswith("--port=") for a in extra):
        argv += ["--port", "0"]
    return [*argv, *extra]


def run(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from modelserve.server import serve

    spec = importlib.import_module("streamer").SPEC  # found by name, like `serve`
    serve(spec, service_argv(args, extra))
    return 0
