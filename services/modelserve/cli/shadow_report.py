"""``modelserve policy shadow|shadow-off|shadow-report``: shadow traffic from the command line.

modelserve policy shadow MODEL 2 --fraction 0.1         # mirror 10% of calls to version 2
modelserve policy shadow-off MODEL                      # the rest of the policy stays
modelserve policy shadow-report MODEL --router A,B      # summed over routers

A shadow is one field of the model's routing policy, so setting it keeps the split or target
label in force (read, changed, written back as a new revision), and so does removing it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click

from modelserve.cli import completion, connect, output
from modelserve.cli.options import Args, read_command
from modelserve.proto.modelserve.v1 import (
    registry_pb2,
    registry_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
)

F = TypeVar("F", bound=Callable[..., Any])
COMMANDS = ("shadow", "shadow-off", "shadow-report")
DEFAULT_ROUTER = "127.0.0.1:8101"
ROUTER_ENV = "MODELSERVE_ROUTER"


def routers_of(values: Sequence[str]) -> list[str]:
    """Router addresses from ``--router`` (repeatable, each comma-separated), else
    $MODELSERVE_ROUTER (comma-separated), else the local default."""
    given = list(values) or [os.environ.get(ROUTER_ENV, "")]
    found = [a.strip() for value in given for a in value.split(",") if a.strip()]
    return list(dict.fromkeys(found)) or [DEFAULT_ROUTER]


def router_option(f: F) -> F:
    return click.option(
        "--router",
        multiple=True,
        metavar="ADDR",
        help=f"router address(es), repeatable or comma-separated (env {ROUTER_ENV}, "
        f"default {DEFAULT_ROUTER})",
    )(f)


def add_commands(group: click.Group, runner: Callable[[click.Context, Args], int]) -> None:
    """``policy shadow|shadow-off|shadow-report``; ``runner`` connects and runs ``run``."""
    model = click.argument("model", shell_complete=completion.model_names)

    @group.command("shadow", help="mirror a fraction of MODEL's calls to TARGET")
    @model
    @click.argument("target")
    @click.option("--fraction", type=float, required=True, help="share mirrored, (0, 1]")
    @click.option(
        "--tolerance",
        type=float,
        default=0.0,
        help="largest absolute difference counted as agreement (default 1e-6)",
    )
    @click.option("--note", default="")
    @click.pass_context
    def shadow(ctx: click.Context, model: str, target: str, fraction: float, tolerance: float,
               note: str) -> int:  # fmt: skip
        """TARGET is a version number or a label."""
        args = Args(policy_command="shadow", model=model, target=target, fraction=fraction,
                    tolerance=tolerance, note=note)  # fmt: skip
        return runner(ctx, args)

    @group.command("shadow-off", help="stop mirroring MODEL's calls")
    @model
    @click.option("--note", default="")
    @click.pass_context
    def shadow_off(ctx: click.Context, model: str, note: str) -> int:
        return runner(ctx, Args(policy_command="shadow-off", model=model, note=note))

    @group.command("shadow-report", help="agreement and latency of shadow traffic")
    @model
    @router_option
    @click.pass_context
    @read_command
    def report(ctx: click.Context, model: str, router: tuple[str, ...]) -> int:
        return runner(ctx, Args(policy_command="shadow-report", model=model, router=router))


async def current_policy(
    stub: registry_pb2_grpc.RegistryStub, model: str
) -> registry_pb2.RoutingPolicy:
    found = await stub.GetModel(registry_pb2.GetModelRequest(name=model), timeout=10)
    return found.policy.policy


async def set_shadow(
    stub: registry_pb2_grpc.RegistryStub, args: Args
) -> registry_pb2.PolicyRevision:
    """``shadow`` and ``shadow-off``: the current policy with its shadow replaced or gone."""
    policy = registry_pb2.RoutingPolicy()
    policy.CopyFrom(await current_policy(stub, args.model))
    if args.policy_command == "shadow":
        policy.shadow.CopyFrom(
            registry_pb2.Shadow(
                target=args.target, fraction=args.fraction, agreement_tolerance=args.tolerance
            )
        )
    else:
        policy.ClearField("shadow")
        if not policy.split and not policy.target_label:  # nothing left: no policy at all
            clear = registry_pb2.ClearPolicyRequest(model=args.model, note=args.note)
            result: registry_pb2.PolicyRevision = await stub.ClearPolicy(clear, timeout=10)
            return result
    request = registry_pb2.SetPolicyRequest(model=args.model, policy=policy, note=args.note)
    answer: registry_pb2.PolicyRevision = await stub.SetPolicy(request, timeout=10)
    return answer


@dataclass
class Summed:
    """One (primary, shadow) pair's figures summed over routers."""

    pairs: int = 0
    agreements: int = 0
    errors: int = 0
    timeouts: int = 0
    max_abs_diff: float = 0.0
    # (samples, weight of each sample) per router, so routers with more traffic count more.
    primary: list[tuple[Sequence[float], float]] = field(default_factory=list)
    shadow: list[tuple[Sequence[float], float]] = field(default_factory=list)

    def add(self, pair: router_pb2.ShadowPair) -> None:
        self.pairs += pair.pairs
        self.agreements += pair.agreements
        self.errors += pair.shadow_errors
        self.timeouts += pair.shadow_timeouts
        self.max_abs_diff = max(self.max_abs_diff, pair.max_abs_diff)
        for samples, into in (
            (pair.primary_latency_samples_s, self.primary),
            (pair.shadow_latency_samples_s, self.shadow),
        ):
            if samples:
                into.append((list(samples), pair.pairs / len(samples)))


def summarise(
    reports: Sequence[router_pb2.ShadowReportResponse],
) -> tuple[dict[tuple[int, int], Summed], int]:
    pairs: dict[tuple[int, int], Summed] = {}
    for report in reports:
        for pair in report.pairs:
            pairs.setdefault((pair.primary_version, pair.shadow_version), Summed()).add(pair)
    return pairs, sum(r.dropped for r in reports)


def quantile(samples: Sequence[tuple[Sequence[float], float]], q: float) -> float | None:
    """The ``q`` quantile of weighted samples (router.shadow_stats keeps the same rule; the
    CLI does not import services)."""
    points = sorted((v, w) for values, w in samples for v in values)
    total = sum(w for _, w in points)
    if not points or total <= 0:
        return None
    running = 0.0
    for value, weight in points:
        running += weight
        if running >= q * total:
            return value
    return points[-1][0]


def render(model: str, pairs: dict[tuple[int, int], Summed], dropped: int) -> list[str]:
    if not pairs:
        return [f"{model}: no shadow traffic recorded"]
    lines = []
    for (primary, shadow), s in sorted(pairs.items()):
        rate = f"{100 * s.agreements / s.pairs:.2f}%" if s.pairs else "n/a"
        lines.append(
            f"{model} v{primary} -> shadow v{shadow}: {s.pairs} pairs, agreement {rate} "
            f"({s.agreements}/{s.pairs}), max abs diff {s.max_abs_diff:.3g}, "
            f"shadow errors {s.errors}, timeouts {s.timeouts}"
        )
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            a, b = quantile(s.primary, q), quantile(s.shadow, q)
            if a is None or b is None:
                continue
            lines.append(
                f"  latency {name}: primary {a * 1000:.2f} ms, shadow {b * 1000:.2f} ms, "
                f"delta {(b - a) * 1000:+.2f} ms"
            )
    if dropped:
        lines.append(f"shadow calls dropped (too many in flight, all models): {dropped}")
    return lines


async def fetch_reports(
    model: str, routers: Sequence[str]
) -> list[router_pb2.ShadowReportResponse]:
    async def one(address: str) -> router_pb2.ShadowReportResponse:
        async with connect.channel(address) as channel:
            stub = router_pb2_grpc.RouterControlStub(channel)
            answer: router_pb2.ShadowReportResponse = await stub.ShadowReport(
                router_pb2.ShadowReportRequest(model=model), timeout=10
            )
            return answer

    return list(await asyncio.gather(*(one(a) for a in routers)))


async def run(stub: registry_pb2_grpc.RegistryStub, args: Args) -> int:
    """One of ``COMMANDS``, printed."""
    if args.policy_command == "shadow-report":
        await print_report(args.model, routers_of(args.router), args.output)
        return 0
    revision = await set_shadow(stub, args)
    print(f"{revision.model}: policy revision {revision.revision}")
    return 0


async def print_report(model: str, routers: Sequence[str], fmt: str) -> None:
    pairs, dropped = summarise(await fetch_reports(model, routers))
    if fmt == "json":
        output.print_json(report_json(model, pairs, dropped))
    else:
        print("\n".join(render(model, pairs, dropped)))


def report_json(model: str, pairs: dict[tuple[int, int], Summed], dropped: int) -> dict[str, Any]:
    """What ``render`` shows, as numbers (latencies in seconds; null when not sampled)."""
    return {
        "model": model,
        "dropped": dropped,
        "pairs": [
            {
                "primary_version": primary,
                "shadow_version": shadow,
                "pairs": s.pairs,
                "agreements": s.agreements,
                "max_abs_diff": s.max_abs_diff,
                "shadow_errors": s.errors,
                "shadow_timeouts": s.timeouts,
                **{
                    f"{side}_{name}_s": quantile(samples, q)
                    for side, samples in (("primary", s.primary), ("shadow", s.shadow))
                    for q, name in ((0.5, "p50"), (0.99, "p99"))
                },
            }
            for (primary, shadow), s in sorted(pairs.items())
        ],
    }
