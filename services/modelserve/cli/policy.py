"""``modelserve policy``: routing policies in the registry (weighted splits, blue-green).

modelserve policy split MODEL 1=90 2=10      # versions by number, labels by name
modelserve policy switch MODEL green         # all traffic to one label, atomically
modelserve policy rollback MODEL             # the policy before the last change
modelserve policy show|history|clear MODEL
A write to versions no worker holds READY yet is accepted as pending and applied once they are
(``--wait`` waits for that); a model a canary or an experiment steers refuses manual writes
unless ``--force`` (which ends the owner first); a version whose signature differs from the
one served now needs ``--allow-signature-change``.
modelserve policy shadow MODEL 2 --fraction 0.1   # and shadow-off, shadow-report (shadow_report)
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

from modelserve.cli import completion, connect, output, shadow_report
from modelserve.cli.options import (
    Args,
    BadValue,
    Parsed,
    read_command,
    run_against_registry,
)
from modelserve.proto.modelserve.v1 import registry_pb2, registry_pb2_grpc

F = TypeVar("F", bound=Callable[..., Any])

Runner = Callable[[click.Context, Args], int]


@click.group("policy", help="routing policies: weighted splits, blue-green")
def group() -> None:
    pass


def _run(ctx: click.Context, args: Args) -> int:
    return run_against_registry(ctx, args, run)


def _write_flags(f: F) -> F:
    f = click.option("--wait", type=float, default=0.0, metavar="SECONDS",
                     help="if the policy is pending, wait this long for it to apply "
                     "(exit 1 if it fails)")(f)  # fmt: skip
    f = click.option(
        "--allow-signature-change",
        is_flag=True,
        help="accept versions whose inputs/outputs differ from the version served now",
    )(f)
    return click.option(
        "--force", is_flag=True, help="take over from a running canary or experiment"
    )(f)


MODEL = click.argument("model", shell_complete=completion.model_names)


@group.command("split", help="split MODEL's traffic by percent")
@MODEL
@click.argument(
    "targets",
    nargs=-1,
    required=True,
    metavar="TARGET=PERCENT...",
    type=Parsed(lambda t: _split_target(t), "TARGET=PERCENT"),
)
@click.option("--note", default="", help="why (kept in the history)")
@_write_flags
@click.pass_context
def split(ctx: click.Context, model: str, targets: tuple[registry_pb2.SplitTarget, ...],
          **flags: Any) -> int:  # fmt: skip
    """TARGET is a version number or a label, PERCENT its share; shares sum to 100."""
    return _run(ctx, Args(policy_command="split", model=model, targets=list(targets), **flags))


@group.command("switch", help="send all of MODEL's traffic to LABEL")
@MODEL
@click.argument("label")
@click.option("--note", default="")
@_write_flags
@click.pass_context
def switch(ctx: click.Context, model: str, label: str, **flags: Any) -> int:
    return _run(ctx, Args(policy_command="switch", model=model, label=label, **flags))


@group.command("rollback", help="restore the policy before the last change")
@MODEL
@click.option("--to", type=int, default=0, metavar="REVISION", help="this one instead")
@_write_flags
@click.pass_context
def rollback(ctx: click.Context, model: str, to: int, **flags: Any) -> int:
    return _run(ctx, Args(policy_command="rollback", model=model, to=to, **flags))


@group.command("clear", help="no policy: production label, else newest version")
@MODEL
@click.option("--note", default="")
@click.option("--force", is_flag=True, help="take over from a canary/experiment")
@click.pass_context
def clear(ctx: click.Context, model: str, note: str, force: bool) -> int:
    return _run(ctx, Args(policy_command="clear", model=model, note=note, force=force))


@group.command("show", help="the policy in force")
@MODEL
@click.pass_context
@read_command
def show(ctx: click.Context, model: str) -> int:
    return _run(ctx, Args(policy_command="show", model=model))


@group.command("history", help="every revision of MODEL's policy, oldest first")
@MODEL
@click.option("--limit", type=int, default=0, help="newest N (default 100)")
@click.pass_context
@read_command
def history(ctx: click.Context, model: str, limit: int) -> int:
    return _run(ctx, Args(policy_command="history", model=model, limit=limit))


shadow_report.add_commands(group, _run)


async def run(args: Args) -> int:
    async with connect.channel(args.registry) as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        command = args.policy_command
        if command in shadow_report.COMMANDS:
            return await shadow_report.run(stub, args)
        elif command in ("split", "switch"):
            policy = registry_pb2.RoutingPolicy(
                split=args.targets if command == "split" else [],
                target_label=args.label if command == "switch" else "",
            )
            current = await shadow_report.current_policy(stub, args.model)
            if current.HasField("shadow"):  # a new split keeps the shadow already in force
                policy.shadow.CopyFrom(current.shadow)
            request = registry_pb2.SetPolicyRequest(
                model=args.model,
                policy=policy,
                note=args.note,
                force=args.force,
                allow_signature_change=args.allow_signature_change,
            )
            return await _written(stub, args, await stub.SetPolicy(request, timeout=30))
        elif command == "rollback":
            rollback = registry_pb2.RollbackPolicyRequest(
                model=args.model,
                to_revision=args.to,
                force=args.force,
                allow_signature_change=args.allow_signature_change,
            )
            return await _written(stub, args, await stub.RollbackPolicy(rollback, timeout=30))
        elif command == "clear":
            clear = registry_pb2.ClearPolicyRequest(
                model=args.model, note=args.note, force=args.force
            )
            print(_line(await stub.ClearPolicy(clear, timeout=10)))
        elif command == "show":
            model = await stub.GetModel(registry_pb2.GetModelRequest(name=args.model), timeout=10)
            if args.output == "json":
                shown = {
                    "policy": output.as_json(model.policy),
                    "pending": output.as_json(model.pending) if model.HasField("pending") else None,
                    "owner": model.owner,
                }
                print(json.dumps(shown, indent=2, sort_keys=True))
                return 0
            print(_line(model.policy) if model.HasField("policy") else f"{args.model}: no policy")
            if model.policy.policy.fallback_version:
                print(f"  fallback: version {model.policy.policy.fallback_version}")
            if model.HasField("pending"):
                print("  " + _pending_line(model.pending))
            print(f"  owner: {model.owner or 'none (manual edits allowed)'}")
        else:
            listed = await stub.ListPolicyHistory(
                registry_pb2.ListPolicyHistoryRequest(model=args.model, limit=args.limit),
                timeout=10,
            )
            if args.output == "json":
                print(json.dumps(output.as_json(listed), indent=2, sort_keys=True))
                return 0
            for revision in listed.revisions:
                when = time.strftime(
                    "%Y-%m-%d %H:%M:%S", time.gmtime(revision.created_unix_ms / 1000)
                )
                note = f"  ({revision.note})" if revision.note else ""
                print(f"{revision.revision:>5}  {when}Z  {describe(revision.policy)}{note}")
    return 0


async def _written(
    stub: registry_pb2_grpc.RegistryStub,
    args: Args,
    answer: registry_pb2.PolicyRevision,
) -> int:
    if not answer.pending:
        print(_line(answer))
        return 0
    print(f"{answer.model}: policy pending ({answer.pending_reason}); in force meanwhile:")
    print("  " + _line(answer))
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        model = await stub.GetModel(registry_pb2.GetModelRequest(name=args.model), timeout=10)
        if not model.HasField("pending"):
            print(f"applied: {_line(model.policy)}")
            return 0
        if model.pending.state == "failed":
            print(f"pending policy failed: {model.pending.reason}", file=sys.stderr)
            return 1
    if args.wait:
        print(f"still pending after {args.wait:g} s", file=sys.stderr)
        return 1
    return 0


def _pending_line(pending: registry_pb2.PendingPolicy) -> str:
    text = f"pending ({pending.state}): {describe(pending.policy)}"
    return text + (f": {pending.reason}" if pending.reason else "")


def describe(policy: registry_pb2.RoutingPolicy) -> str:
    if policy.target_label:
        routes = f"all -> label {policy.target_label}"
    elif policy.split:
        shares = (f"{t.version or t.label}={t.percent:g}%" for t in policy.split)
        routes = "split " + " ".join(shares)
    else:
        routes = "none (production label, else newest version)"
    if policy.HasField("shadow"):
        shadow = policy.shadow
        routes += f"; shadow {shadow.target} x{shadow.fraction:g}"
        if shadow.agreement_tolerance:
            routes += f" (tolerance {shadow.agreement_tolerance:g})"
    return routes


def _line(revision: registry_pb2.PolicyRevision) -> str:
    return f"{revision.model}: policy revision {revision.revision}: {describe(revision.policy)}"


def _split_target(text: str) -> registry_pb2.SplitTarget:
    target, sep, percent = text.partition("=")
    try:
        share = float(percent)
    except ValueError:
        share = None
    if not sep or not target or share is None:
        raise BadValue(f"expected TARGET=PERCENT (e.g. 2=10 or canary=10); got {text!r}")
    if target.isascii() and target.isdigit():
        return registry_pb2.SplitTarget(version=int(target), percent=share)
    return registry_pb2.SplitTarget(label=target, percent=share)
