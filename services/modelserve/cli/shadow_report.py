"""``modelserve policy shadow|shadow-off|shadow-report``: shadow traffic from the command line.

modelserve policy shadow MODEL 2 --fraction 0.1         # mirror 10% of calls to version 2
modelserve policy shadow-off MODEL                      # the rest of the policy stays
modelserve policy shadow-report MODEL --router A,B      # summed over routers

A shadow is one field of the model's routing policy, so setting it keeps the split or target
label in force (read, changed, written back as a new revision), and so does removing it.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from modelserve.cli import connect
from modelserve.proto.modelserve.v1 import (
    registry_pb2,
    registry_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
)

SubParsers = argparse._SubParsersAction  # argparse exposes no public name for it
COMMANDS = ("shadow", "shadow-off", "shadow-report")
DEFAULT_ROUTER = "127.0.0.1:8101"


def add_parsers(psub: SubParsers) -> None:
    shadow = psub.add_parser("shadow", help="mirror a fraction of MODEL's calls to TARGET")
    shadow.add_argument("model")
    shadow.add_argument("target", help="a version number or a label")
    shadow.add_argument("--fraction", type=float, required=True, help="share mirrored, (0, 1]")
    shadow.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        help="largest absolute difference counted as agreement (default 1e-6)",
    )
    shadow.add_argument("--note", default="")

    off = psub.add_parser("shadow-off", help="stop mirroring MODEL's calls")
    off.add_argument("model")
    off.add_argument("--note", default="")

    report = psub.add_parser("shadow-report", help="agreement and latency of shadow traffic")
    report.add_argument("model")
    report.add_argument(
        "--router", default=DEFAULT_ROUTER, help="router address(es), comma-separated"
    )


async def current_policy(
    stub: registry_pb2_grpc.RegistryStub, model: str
) -> registry_pb2.RoutingPolicy:
    found = await stub.GetModel(registry_pb2.GetModelRequest(name=model), timeout=10)
    return found.policy.policy


async def set_shadow(
    stub: registry_pb2_grpc.RegistryStub, args: argparse.Namespace
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


async def run(stub: registry_pb2_grpc.RegistryStub, args: argparse.Namespace) -> str:
    """One of ``COMMANDS``; what to print."""
    if args.policy_command == "shadow-report":
        routers = [a.strip() for a in args.router.split(",") if a.strip()]
        pairs, dropped = summarise(await fetch_reports(args.model, routers))
        return "\n".join(render(args.model, pairs, dropped))
    revision = await set_shadow(stub, args)
    return f"{revision.model}: policy revision {revision.revision}"
