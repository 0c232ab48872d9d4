"""``modelserve canary start|status|abort|outcome``: canary releases from the command line.

modelserve canary start MODEL --baseline 1 --candidate 2 --steps 5,25,50,100 \\
    --min-requests 50 --min-seconds 5 --max-error-rate-delta 0.01 --max-p99-ratio 1.5 \\
    --max-step-seconds 600 [--business-metric ctr [--lower-is-better] \\
    [--business-alpha 0.05]] [--router A,B] [--gateway C,D]
modelserve canary status MODEL          # state, step and the decisions with their numbers
modelserve canary abort MODEL           # all traffic back to the baseline
modelserve canary outcome MODEL --version 2 --metric ctr --value 1   # or --routing-key K
"""

from __future__ import annotations

import argparse
import time

from modelserve.cli import connect, output
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
    start.add_argument(
        "--max-step-seconds",
        type=float,
        default=0.0,
        help="longest a step waits for enough calls before rolling back (600)",
    )
    start.add_argument("--router", default="", help="router addresses, comma-separated")
    start.add_argument("--force", action="store_true", help="take over from a running experiment")
    start.add_argument(
        "--allow-signature-change",
        action="store_true",
        help="accept a candidate whose inputs/outputs differ from the baseline's",
    )
    start.add_argument(
        "--gateway",
        default="",
        help="gateway addresses, comma-separated (their rejections count against a version)",
    )
    start.add_argument(
        "--business-metric",
        default="",
        help="a metric the candidate must not lose on (outcomes: canary outcome)",
    )
    start.add_argument(
        "--lower-is-better", action="store_true", help="the business metric is a cost"
    )
    start.add_argument(
        "--business-alpha", type=float, default=0.0, help="of the sequential test (0.05)"
    )
    status = csub.add_parser("status", help="a model's latest canary and its decisions")
    status.add_argument("model")
    status.add_argument("--limit", type=int, default=20, help="latest decisions shown (0 = all)")
    output.add_output_flag(status)
    abort = csub.add_parser("abort", help="stop MODEL's canary; all traffic to the baseline")
    abort.add_argument("model")
    outcome = csub.add_parser("outcome", help="post one business outcome of MODEL's canary")
    outcome.add_argument("model")
    arm = outcome.add_mutually_exclusive_group(required=True)
    arm.add_argument("--version", type=int, default=0, help="the answer's model_version")
    arm.add_argument("--routing-key", default="", help="or the request's routing key")
    outcome.add_argument("--metric", required=True)
    outcome.add_argument("--value", type=float, required=True, help="e.g. 1 click, 0 none")


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
                max_step_seconds=args.max_step_seconds,
                business_metric=args.business_metric,
                lower_is_better=args.lower_is_better,
                business_alpha=args.business_alpha,
                routers=_addresses(args.router),
                gateways=_addresses(args.gateway),
            )
            request = canary_pb2.StartCanaryRequest(
                spec=spec, force=args.force, allow_signature_change=args.allow_signature_change
            )
            print(describe(await stub.StartCanary(request, timeout=10)))
        elif args.canary_command == "status":
            get = canary_pb2.GetCanaryRequest(model=args.model, limit=args.limit)
            found = await stub.GetCanary(get, timeout=10)
            output.emit(args, found, lambda: describe(found))
        elif args.canary_command == "outcome":
            posted = canary_pb2.RecordCanaryOutcomeRequest(
                model=args.model,
                version=args.version,
                routing_key=args.routing_key,
                metric=args.metric,
                value=args.value,
            )
            answer = await stub.RecordCanaryOutcome(posted, timeout=10)
            print(f"{args.model} v{answer.version}: {answer.count} {args.metric} outcomes")
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
        f"{steps}); gates: {spec.min_requests} calls, {spec.min_seconds:g}-"
        f"{spec.max_step_seconds:g} s, error rate "
        f"+{spec.max_error_rate_delta:g}, p99 x{spec.max_p99_ratio:g}" + _business(spec)
    ]
    for d in status.decisions:
        when = time.strftime("%H:%M:%S", time.gmtime(d.unix_ms / 1000))
        lines.append(
            f"  {when}Z {d.action:<8} {d.percent:>6g}%  base {_arm(d.baseline)}  "
            f"cand {_arm(d.candidate)}  {d.step_seconds:.1f}s  {d.reason}"
        )
        if d.HasField("metric"):
            lines.append(f"{'':13}{_metric(d.metric)}")
    return "\n".join(lines)


def _business(spec: canary_pb2.CanarySpec) -> str:
    if not spec.business_metric:
        return ""
    direction = "lower" if spec.lower_is_better else "higher"
    return f", {spec.business_metric} ({direction} is better, alpha {spec.business_alpha:g})"


def _metric(m: canary_pb2.CanaryMetric) -> str:
    return (
        f"{m.name}: base {m.baseline_mean:.4f} (n={m.baseline_count})  cand "
        f"{m.candidate_mean:.4f} (n={m.candidate_count})  diff {m.difference:+.4f} "
        f"[{m.difference_low:+.4f}, {m.difference_high:+.4f}]  p {m.p_value:.4g}"
    )


def _addresses(text: str) -> list[str]:
    return [a.strip() for a in text.split(",") if a.strip()]


def _arm(arm: canary_pb2.CanaryArm) -> str:
    return f"{arm.errors}/{arm.requests} err p99 {arm.p99_s * 1000:.1f}ms"
