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

import time
from typing import Any

import click

from modelserve.cli import completion, connect, output
from modelserve.cli.options import (
    Args,
    read_command,
    run_against_registry,
)
from modelserve.proto.modelserve.v1 import canary_pb2, canary_pb2_grpc

MODEL = click.argument("model", shell_complete=completion.model_names)


@click.group("canary", help="canary releases with automatic promotion/rollback")
def group() -> None:
    pass


def _run(ctx: click.Context, args: Args) -> int:
    return run_against_registry(ctx, args, run)


@group.command("start", help="move MODEL's traffic to CANDIDATE in gated steps")
@MODEL
@click.option("--baseline", type=int, required=True)
@click.option("--candidate", type=int, required=True)
@click.option(
    "--steps", default="5,25,50,100", show_default=True, help="candidate percents, ending in 100"
)
@click.option("--min-requests", type=int, default=0, help="per version per step (100)")
@click.option("--min-seconds", type=float, default=0.0, help="per step (60)")
@click.option("--max-error-rate-delta", type=float, default=0.0, help="(0.01)")
@click.option("--max-p99-ratio", type=float, default=0.0, help="(1.5)")
@click.option("--ready-timeout", type=float, default=0.0, help="seconds (120)")
@click.option(
    "--max-step-seconds",
    type=float,
    default=0.0,
    help="longest a step waits for enough calls before rolling back (600)",
)
@click.option("--router", default="", help="router addresses, comma-separated")
@click.option("--force", is_flag=True, help="take over from a running experiment")
@click.option(
    "--allow-signature-change",
    is_flag=True,
    help="accept a candidate whose inputs/outputs differ from the baseline's",
)
@click.option(
    "--gateway",
    default="",
    help="gateway addresses, comma-separated (their rejections count against a version)",
)
@click.option(
    "--business-metric",
    default="",
    help="a metric the candidate must not lose on (outcomes: canary outcome)",
)
@click.option("--lower-is-better", is_flag=True, help="the business metric is a cost")
@click.option("--business-alpha", type=float, default=0.0, help="of the sequential test (0.05)")
@click.pass_context
def start(ctx: click.Context, **given: Any) -> int:
    return _run(ctx, Args(canary_command="start", **given))


@group.command("status", help="a model's latest canary and its decisions")
@MODEL
@click.option(
    "--limit", type=int, default=20, show_default=True, help="latest decisions shown (0 = all)"
)
@click.pass_context
@read_command
def status(ctx: click.Context, model: str, limit: int) -> int:
    return _run(ctx, Args(canary_command="status", model=model, limit=limit))


@group.command("abort", help="stop MODEL's canary; all traffic to the baseline")
@MODEL
@click.pass_context
def abort(ctx: click.Context, model: str) -> int:
    return _run(ctx, Args(canary_command="abort", model=model))


@group.command("outcome", help="post one business outcome of MODEL's canary")
@MODEL
@click.option("--version", type=int, default=0, help="the answer's model_version")
@click.option("--routing-key", default="", help="or the request's routing key")
@click.option("--metric", required=True)
@click.option("--value", type=float, required=True, help="e.g. 1 click, 0 none")
@click.pass_context
def outcome(ctx: click.Context, model: str, version: int, routing_key: str, metric: str,
            value: float) -> int:  # fmt: skip
    if bool(version) == bool(routing_key):
        raise click.UsageError("give one of --version or --routing-key")
    args = Args(canary_command="outcome", model=model, version=version,
                routing_key=routing_key, metric=metric, value=value)  # fmt: skip
    return _run(ctx, args)


async def run(args: Args) -> int:
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
            output.emit(args.output, found, lambda: describe(found))
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
