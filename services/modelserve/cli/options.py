"""The options every ``modelserve`` client command shares, accepted anywhere on the line.

The CLI is built on click rather than typer: click is one small, well-kept dependency with
shell completion built in, while typer adds rich and shellingham for annotations we do not
need (our commands are plain functions building RPC requests).

Global options (``--token``, ``--tls-*``, ``--registry``, ``--gateway``, ``--featurestore``,
``-o``) are declared on the root, on every group and on every leaf (``install``), so
``modelserve --registry A models list``, ``modelserve models --registry A list`` and
``modelserve models list --registry A`` mean the same. Each occurrence is stored in one
``Globals`` object on the root context; a later one (closer to the leaf) wins. Environment
variables are read only when no flag was given, so a flag always beats the environment.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, TypeVar

import click

from modelserve.cli import connect

Args = SimpleNamespace  # what the command modules' run() functions read (attribute access)
F = TypeVar("F", bound=Callable[..., Any])

# name -> (environment variable, default)
ADDRESSES: dict[str, tuple[str, str]] = {
    "registry": ("MODELSERVE_REGISTRY", "127.0.0.1:8301"),
    "gateway": ("MODELSERVE_GATEWAY", "127.0.0.1:8001"),
    "featurestore": ("MODELSERVE_FEATURESTORE_ADDR", "127.0.0.1:8401"),
}
OUTPUTS = ("table", "json")


@dataclass
class Globals:
    token: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    registry: str | None = None
    gateway: str | None = None
    featurestore: str | None = None
    output: str | None = None


def globals_of(ctx: click.Context) -> Globals:
    root = ctx.find_root()
    if not isinstance(root.obj, Globals):
        root.obj = Globals()
    return root.obj


def address(ctx: click.Context, name: str) -> str:
    """The address of service ``name``: a flag anywhere, else its environment variable, else
    the local default."""
    given = getattr(globals_of(ctx), name)
    env, default = ADDRESSES[name]
    return str(given or os.environ.get(env) or default)


def output_format(ctx: click.Context) -> str:
    return globals_of(ctx).output or "table"


def _store(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value is not None and param.name is not None:
        setattr(globals_of(ctx), param.name, value)
    return value


def _option(*decls: str, help: str, **kw: Any) -> click.Option:
    return click.Option(
        list(decls), default=None, expose_value=False, callback=_store, help=help, **kw
    )


def _shared() -> list[click.Option]:
    """Fresh option objects (click binds nothing to them, but one per command keeps help and
    completion independent)."""
    return [
        _option("--token", metavar="TOKEN", help="bearer token sent to every service called "
                "(env MODELSERVE_TOKEN)"),
        _option("--tls-ca", metavar="FILE", help="CA of the suite's certificates "
                "(env MODELSERVE_TLS_CA; `up --secure` prints the files)"),
        _option("--tls-cert", metavar="FILE", help="client certificate, for internal services "
                "(env MODELSERVE_TLS_CERT)"),
        _option("--tls-key", metavar="FILE", help="its private key (env MODELSERVE_TLS_KEY)"),
        *(
            _option(f"--{name}", metavar="HOST:PORT", help=f"{name} address "
                    f"(env {env}, default {default})")
            for name, (env, default) in ADDRESSES.items()
        ),
    ]  # fmt: skip


def _output() -> click.Option:
    return _option(
        "-o",
        "--output",
        type=click.Choice(OUTPUTS),
        help="table (default) or json (the answer in protobuf's JSON mapping)",
    )


def read_command(f: F) -> F:
    """Mark a leaf as a read command: it takes ``-o json|table`` (``install`` adds it)."""
    f.__modelserve_read__ = True  # type: ignore[attr-defined]
    return f


def install(root: click.Group, skip: Iterable[str] = ()) -> None:
    """Add the shared options to ``root``, every group under it and every leaf, except the
    commands named in ``skip`` (those that hand their arguments on, like ``serve``) and any
    option a command already declares itself (``canary start --gateway`` is a list)."""
    skipped = set(skip)

    def visit(command: click.Command, is_root: bool) -> None:
        if command.name in skipped and not is_root:
            return
        is_group = isinstance(command, click.Group)
        is_read = getattr(command.callback, "__modelserve_read__", False)
        taken = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
        wanted = _shared() + ([_output()] if is_group or is_read else [])
        for option in wanted:
            if not taken & set(option.opts):
                command.params.append(option)
        if isinstance(command, click.Group):
            for child in command.commands.values():
                visit(child, False)

    visit(root, True)


AS_COMMAND = [False]  # set by main.command(): running as the console script


def client(ctx: click.Context) -> Globals:
    """Apply the token and TLS of the command line; a bad TLS pair is a usage error."""
    given = globals_of(ctx)
    connect.set_token(given.token)
    try:
        connect.configure(connect.tls_from(given.tls_ca, given.tls_cert, given.tls_key))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    # `modelserve models list | head` ends quietly. Only as the command itself: main() called
    # in a longer-lived process (tests) must not make a later write to a closed pipe kill it.
    if AS_COMMAND[0]:
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    return given


class Parsed(click.ParamType):
    """A click type from a parse function that raises ValueError with the whole story."""

    def __init__(self, parse: Callable[[str], Any], metavar: str) -> None:
        self.parse = parse
        self.name = metavar

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self.parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str | None:
        return self.name


class BadValue(ValueError):
    """A value on the command line that cannot be parsed; its message is the whole story."""


def run_against_registry(
    ctx: click.Context, args: Args, run: Callable[[Args], Coroutine[Any, Any, int]]
) -> int:
    """Run a registry command (policy, canary, experiment): client credentials, the
    registry's address and the output format from the global options, then ``run(args)``."""
    client(ctx)
    args.registry = address(ctx, "registry")
    args.output = output_format(ctx)
    return asyncio.run(run(args))
