"""``modelserve canary start|status|abort``: canary releases from the command line.

modelserve canary start MODEL --baseline 1 --candidate 2 --steps 5,25,50,100 \\
    --min-requests 50 --min-seconds 5 --max-error-rate-delta 0.01 --max-p99-ratio 1.5
modelserve canary status MODEL          # state, step and the decisions with their numbers
modelserve canary abort MODEL           # all traffic back to the baseline
"""

from __future__ import annotations

import argparse
import time

from modelserve.cli import connect
from modelserve.proto.modelserve.v1 import canary_pb2, canary_pb2_grpc

SubParsers = argparse._SubParsersAction  # argparse exposes no public name for it


def add_parser(sub: SubParsers, default_registry: str) -> None:
    canary = sub.add_parser("canary", help="canary releases with automatic promotion/rollback")
    canary.add_argument("--registry", default=default_registry, help="registry address")
    csub = canary.add_subparsers(dest="canary_command", required=True)
    start = csub.add_parser("start", help="move MODEL's traffic to CANDIDATE in gated steps")
    start.add_argument("model")
    start.add_argument("--baseline", type=int, required=True)
    start.add_argument("--candidate", type=int, required=True)
    start.add_argument("--steps", default="5,25,50,100", help="candidate percents, ending in 100")
    start.add_argument("--min-requests", type=int, default=0, help="per version per step (100)")
    start.add_argument("--min-seconds", type=float, default=0.0, help="per step (60)")
    start.add_argument("--max-error-rate-delta", type=float, default=0.0, help="(0.01)")
    start.add_argument("--max-p99-ratio", type=float, default=0.0, help="(1.5)")
    start.add_argument("--ready-timeout", type=float, default=0.0, help="seconds (120)")
    start.add_argument("--router", default="", help="router addresses, comma-separated")
    start.add_argument("--force", action="store_true", help="take over from a running experiment")
    start.add_argument(
        "--allow-signature-change",
        action="store_true",
        help="accept a candidate whose inputs/outputs differ from the baseline's",
    )
    status = csub.add_parser("status", help="a model's latest canary and its decisions")
    status.add_argument("model")
    status.add_argument("--limit", type=int, default=20, help="latest decisions shown (0 = all)")
    abort = csub.add_parser("abort", help="stop MODEL's canary; all traffic to the baseline")
    abort.add_argument("model")


async def run(args: argparse.Namespace) -> int:
    async with connect.channel(args.registry) as channel:
        stub = canary_pb2_grpc.CanaryStub(channel)
        if args.canary_command == "start":
            spec = canary_pb2.CanarySpec(
                model=args.model,
                baseline=args.baseline,
                candidate=args.candidate,
                steps=[float(s) for s in args.steps.split(",") if s.strip()],
                min_requests=args.min_requests,
                min_seconds=args.min_seconds,
                max_error_rate_delta=args.max_error_rate_delta,
                max_p99_ratio=args.max_p99_ratio,
                ready_timeout_seconds=args.ready_timeout,
                routers=[r.strip() for r in args.router.split(",") if r.strip()],
            )
            request = canary_pb2.StartCanaryRequest(
                spec=spec, force=args.force, allow_signature_change=args.allow_signature_change
            )
            print(describe(await stub.StartCanary(request, timeout=10)))
        elif args.canary_command == "status":
            get = canary_pb2.GetCanaryRequest(model=args.model, limit=args.limit)
            print(describe(await stub.GetCanary(get, timeout=10)))
        else:
            abort = canary_pb2.AbortCanaryRequest(model=args.model)
            print(describe(await stub.AbortCanary(abort, timeout=10)))
    return 0


def describe(status: canary_pb2.CanaryStatus) -> str:
    spec = status.spec
    steps = ",".join(f"{s:g}" for s in spec.steps)
    lines = [
        f"{spec.model}: v{spec.baseline} -> v{spec.candidate} {status.state}, step "
        f"{status.step_index + 1}/{len(spec.steps)} ({spec.steps[status.step_index]:g}% of "
        f"{steps}); gates: {spec.min_requests} calls, {spec.min_seconds:g} s, error rate "
        f"+{spec.max_error_rate_delta:g}, p99 x{spec.max_p99_ratio:g}"
    ]
    for d in status.decisions:
        when = time.strftime("%H:%M:%S", time.gmtime(d.unix_ms / 1000))
        lines.append(
            f"  {when}Z {d.action:<8} {d.percent:>6g}%  base {_arm(d.baseline)}  "
            f"cand {_arm(d.candidate)}  {d.step_seconds:.1f}s  {d.reason}"
        )
    return "\n".join(lines)


def _arm(arm: canary_pb2.CanaryArm) -> str:
    return f"{arm.errors}/{arm.requests} err p99 {arm.p99_s * 1000:.1f}ms"
