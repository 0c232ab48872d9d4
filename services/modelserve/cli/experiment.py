"""``modelserve experiment``: A/B experiments in the registry.

modelserve experiment start NAME --model M --arm control=1:50 --arm treatment=2:50 \\
    [--guard 'error<=0.05'] [--guard 'click>=0.01'] [--alpha 0.05]
modelserve experiment outcome NAME --key K --metric click --value 1   # or --arm ARM
modelserve experiment report|show|stop NAME            modelserve experiment list
"""

from __future__ import annotations

import re

import click

from modelserve.cli import completion, connect, output
from modelserve.cli.options import (
    Args,
    BadValue,
    Parsed,
    read_command,
    run_against_registry,
)
from modelserve.proto.modelserve.v1 import experiments_pb2 as xpb
from modelserve.proto.modelserve.v1 import experiments_pb2_grpc

ARM_RE = re.compile(r"^([^=]+)=([^:]+):([0-9.]+)$")
GUARD_RE = re.compile(r"^([^<>=]+)(<=|>=)(-?[0-9.eE+-]+)$")


@click.group("experiment", help="A/B experiments: arms, outcomes, sequential tests")
def group() -> None:
    pass


def _run(ctx: click.Context, args: Args) -> int:
    return run_against_registry(ctx, args, run)


@group.command("start", help="split MODEL's traffic between arms and start")
@click.argument("name")
@click.option("--model", required=True, shell_complete=completion.model_names)
@click.option(
    "--arm",
    "arms",
    multiple=True,
    required=True,
    type=Parsed(lambda t: _arm(t), "NAME=TARGET:PERCENT"),
    help="TARGET a version number or a label; the first arm is the control",
)
@click.option(
    "--guard",
    multiple=True,
    type=Parsed(lambda t: _guard(t), "METRIC<=VALUE|METRIC>=VALUE"),
    help="stop when a treatment's mean of METRIC is surely past VALUE",
)
@click.option("--alpha", type=float, default=0.0, help="significance level (0.05)")
@click.option("--force", is_flag=True, help="take over from a running canary")
@click.option(
    "--allow-signature-change",
    is_flag=True,
    help="accept arms whose inputs/outputs differ from the control arm's",
)
@click.pass_context
def start(ctx: click.Context, name: str, model: str, arms: tuple[xpb.ExperimentArm, ...],
          guard: tuple[xpb.GuardRail, ...], alpha: float, force: bool,
          allow_signature_change: bool) -> int:  # fmt: skip
    args = Args(experiment_command="start", name=name, model=model, arm=list(arms),
                guard=list(guard), alpha=alpha, force=force,
                allow_signature_change=allow_signature_change)  # fmt: skip
    return _run(ctx, args)


@group.command("outcome", help="record one outcome (a click, a conversion)")
@click.argument("name")
@click.option("--key", default="", help="the request's routing key")
@click.option("--arm", default="", help="the arm, when the caller knows it")
@click.option("--metric", required=True)
@click.option("--value", type=float, required=True)
@click.pass_context
def outcome(ctx: click.Context, name: str, key: str, arm: str, metric: str, value: float) -> int:
    if bool(key) == bool(arm):
        raise click.UsageError("give one of --key or --arm")
    args = Args(experiment_command="outcome", name=name, key=key, arm=arm, metric=metric,
                value=value)  # fmt: skip
    return _run(ctx, args)


def _read(command: str, text: str) -> None:
    @group.command(command, help=text)
    @click.argument("name")
    @click.pass_context
    @read_command
    def read(ctx: click.Context, name: str) -> int:
        return _run(ctx, Args(experiment_command=command, name=name))


_read("report", "per-arm counts, means, tests")
_read("show", "the definition")


@group.command("stop", help="stop NAME: all traffic to the control arm")
@click.argument("name")
@click.option("--reason", default="")
@click.pass_context
def stop(ctx: click.Context, name: str, reason: str) -> int:
    return _run(ctx, Args(experiment_command="stop", name=name, reason=reason))


@group.command("list", help="every experiment")
@click.pass_context
@read_command
def list_experiments(ctx: click.Context) -> int:
    return _run(ctx, Args(experiment_command="list"))


async def run(args: Args) -> int:
    async with connect.channel(args.registry) as channel:
        stub = experiments_pb2_grpc.ExperimentsStub(channel)
        command = args.experiment_command
        if command == "start":
            experiment = xpb.Experiment(
                name=args.name,
                model=args.model,
                arms=args.arm,
                guard_rails=args.guard,
                alpha=args.alpha,
            )
            request = xpb.StartExperimentRequest(
                experiment=experiment,
                force=args.force,
                allow_signature_change=args.allow_signature_change,
            )
            # Waits while workers load the arms' versions (the registry applies the split then).
            print(describe(await stub.StartExperiment(request, timeout=90)))
        elif command == "outcome":
            recorded = await stub.RecordOutcome(
                xpb.RecordOutcomeRequest(
                    experiment=args.name,
                    routing_key=args.key,
                    arm=args.arm,
                    metric=args.metric,
                    value=args.value,
                ),
                timeout=10,
            )
            print(f"{args.name}: {args.metric}={args.value:g} recorded for arm {recorded.arm}")
            if recorded.experiment.state == xpb.Experiment.STOPPED:
                print(describe(recorded.experiment))
        elif command == "report":
            report = await stub.GetReport(xpb.GetReportRequest(name=args.name), timeout=10)
            output.emit(args.output, report, lambda: format_report(report))
        elif command == "show":
            found = await stub.GetExperiment(xpb.GetExperimentRequest(name=args.name), timeout=10)
            output.emit(args.output, found, lambda: describe(found))
        elif command == "stop":
            stop = xpb.StopExperimentRequest(name=args.name, reason=args.reason)
            print(describe(await stub.StopExperiment(stop, timeout=10)))
        else:
            listed = await stub.ListExperiments(xpb.ListExperimentsRequest(), timeout=10)
            output.emit(
                args.output, listed, lambda: "\n".join(describe(e) for e in listed.experiments)
            )
    return 0


def describe(experiment: xpb.Experiment) -> str:
    arms = " ".join(f"{a.name}={a.version or a.label}:{a.percent:g}%" for a in experiment.arms)
    state = xpb.Experiment.State.Name(experiment.state).lower()
    line = f"{experiment.name} on {experiment.model}: {state}; arms {arms}"
    if experiment.stop_reason:
        line += f"; {experiment.stop_reason}"
    return line


def format_report(report: xpb.ExperimentReport) -> str:
    lines = [describe(report.experiment)]
    header = f"{'metric':<12} {'arm':<12} {'count':>8} {'mean':>10} {'95% CI':>22}"
    lines.append(header + f" {'diff vs control (always valid)':>36} {'p':>8}  significant")
    for m in report.metrics:
        ci = f"[{m.ci_low:.4g}, {m.ci_high:.4g}]"
        row = f"{m.metric:<12} {m.arm:<12} {m.count:>8} {m.mean:>10.4g} {ci:>22}"
        if m.is_control:
            row += f" {'(control)':>36}"
        else:
            diff = f"{m.difference:+.4g} [{m.difference_low:.4g}, {m.difference_high:.4g}]"
            row += f" {diff:>36} {m.p_value:>8.3g}  {'yes' if m.significant else 'no'}"
        lines.append(row)
    return "\n".join(lines)


def _arm(text: str) -> xpb.ExperimentArm:
    found = ARM_RE.fullmatch(text)
    if not found:
        raise BadValue(f"expected NAME=TARGET:PERCENT; got {text!r}")
    name, target, percent = found.groups()
    arm = xpb.ExperimentArm(name=name, percent=float(percent))
    if target.isdigit():
        arm.version = int(target)
    else:
        arm.label = target
    return arm


def _guard(text: str) -> xpb.GuardRail:
    found = GUARD_RE.fullmatch(text.replace(" ", ""))
    if not found:
        raise BadValue(f"expected METRIC<=VALUE or METRIC>=VALUE; got {text!r}")
    metric, op, value = found.groups()
    guard = xpb.GuardRail(metric=metric)
    if op == "<=":
        guard.max_mean = float(value)
    else:
        guard.min_mean = float(value)
    return guard
