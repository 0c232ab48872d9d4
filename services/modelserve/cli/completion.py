"""Shell completion: click's own protocol (``_MODELSERVE_COMPLETE=bash_source modelserve``)
and ``modelserve completion bash|zsh|fish``, which prints the script to source:

    eval "$(modelserve completion bash)"      # or: modelserve completion zsh > ~/.zfunc/_modelserve

Model names complete from the registry when it answers within ``TIMEOUT_S``; any failure
completes nothing, quietly, so a TAB never hangs or prints an error into the shell.
"""

from __future__ import annotations

import os

import click
from click.shell_completion import CompletionItem, get_completion_class

from modelserve.cli import connect
from modelserve.cli.options import address

SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_MODELSERVE_COMPLETE"
TIMEOUT_S = float(os.environ.get("MODELSERVE_COMPLETE_TIMEOUT", "0.5"))


def model_names(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    try:
        names = _registry_models(address(ctx, "registry"))
    except Exception:  # completion must stay silent: no registry, TLS, auth, anything
        return []
    return [CompletionItem(n) for n in names if n.startswith(incomplete)]


def _registry_models(registry: str) -> list[str]:
    # A blocking channel: completion runs once per TAB, outside any event loop.
    import grpc

    from modelserve.proto.modelserve.v1 import registry_pb2, registry_pb2_grpc

    tls = connect.current()
    channel = (
        grpc.secure_channel(registry, tls.credentials(), options=tls.options())
        if tls is not None
        else grpc.insecure_channel(registry)
    )
    token = connect.token()
    metadata = [("authorization", f"Bearer {token}")] if token else None
    with channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        reply = stub.ListModels(
            registry_pb2.ListModelsRequest(), timeout=TIMEOUT_S, metadata=metadata
        )
    return sorted(m.name for m in reply.models)


@click.command("completion", help="print the shell completion script for SHELL")
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def command(ctx: click.Context, shell: str) -> int:
    root = ctx.find_root().command
    script = get_completion_class(shell)(root, {}, "modelserve", COMPLETE_VAR)  # type: ignore[misc]
    click.echo(script.source())
    return 0
