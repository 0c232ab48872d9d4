"""``modelserve experiment``: A/B experiments in the registry.

modelserve experiment start NAME --model M --arm control=1:50 --arm treatment=2:50 \\
    [--guard 'error<=0.05'] [--guard 'click>=0.01'] [--alpha 0.05]
modelserve experiment outcome NAME --key K --metric click --value 1   # or --arm ARM
modelserve experiment report|show|stop NAME            modelserve experiment list
"""

from __future__ import annotations

import argparse
import re

from modelserve.cli import connect
from modelserve.proto.modelserve.v1 import experiments_pb2 as xpb
from modelserve.proto.modelserve.v1 import experiments_pb2_grpc

SubParsers = argparse._SubParsersAction  # argparse exposes no public name for it
ARM_RE = re.compile(r"^([^=]+)=([^:]+):([0-9.]+)$")
GUARD_RE = re.compile(r"^([^<>=]+)(<=|>=)(-?[0-9.eE+-]+)$")


def add_parser(sub: SubParsers, default_registry: str) -> None:
    exp = sub.add_parser("experiment", help="A/B experiments: arms, outcomes, sequential tests")
    exp.add_argument("--registry", default=default_registry, help="registry address")
    esub = exp.add_subparsers(dest="experiment_command", required=True)

    start = esub.add_parser("start", help="split MODEL's traffic between arms and start")
    start.add_argument("name")
    start.add_argument("--model", required=True)
    start.add_argument(
        "--arm",
        action="append",
        type=_arm,
        required=True,
        metavar="NAME=TARGET:PERCENT",
        help="TARGET a version number or a label; the first arm is the control",
    )
    start.add_argument(
        "--guard",
        action="append",
        type=_guard,
        default=[],
        metavar="METRIC<=VALUE|METRIC>=VALUE",
        help="stop when a treatment's mean of METRIC is surely past VALUE",
    )
    start.add_argument("--alpha", type=float, default=0.0, help="significance level (0.05)")
    start.add_argument("--force", action="store_true", help="take over from a running canary")
    start.add_argument(
        "--allow-signature-change",
        action="store_true",
        help="accept arms whose inputs/outputs differ from the control arm's",
    )

    outcome = esub.add_parser("outcome", help="record one outcome (a click, a conversion)")
    outcome.add_argument("name")
    which = outcome.add_mutually_exclusive_group(required=True)
    which.add_argument("--key", default="", help="the request's routing key")
    which.add_argument("--arm", default="", help="the arm, when the caller knows it")
    outcome.add_argument("--metric", required=True)
    outcome.add_argument("--value", type=float, required=True)

    for name, text in (("report", "per-arm counts, means, tests"), ("show", "the definition")):
        esub.add_parser(name, help=text).add_argument("name")
    stop = esub.add_parser("stop", help="stop NAME: all traffic to the control arm")
    stop.add_argument("name")
    stop.add_argument("--reason", default="")
    esub.add_parser("list", help="every experiment")


async def run(args: argparse.Namespace) -> int:
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
            print(format_report(report))
        elif command == "show":
            print(describe(await stub.GetExperiment(xpb.GetExperimentRequest(name=args.name))))
        elif command == "stop":
            stop = xpb.StopExperimentRequest(name=args.name, reason=args.reason)
            print(describe(await stub.StopExperiment(stop, timeout=10)))
        else:
            listed = await stub.ListExperiments(xpb.ListExperimentsRequest(), timeout=10)
            for experiment in listed.experiments:
                print(describe(experiment))
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
        raise argparse.ArgumentTypeError(f"expected NAME=TARGET:PERCENT; got {text!r}")
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
        raise argparse.ArgumentTypeError(f"expected METRIC<=VALUE or METRIC>=VALUE; got {text!r}")
    metric, op, value = found.groups()
    guard = xpb.GuardRail(metric=metric)
    if op == "<=":
        guard.max_mean = float(value)
    else:
        guard.min_mean = float(value)
    return guard
