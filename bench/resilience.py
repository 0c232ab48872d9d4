"""Fault runs against the real suite: `./dev resilience` (not part of the fast test run).

One suite (two workers) runs under `modelserve up`'s supervisor; each scenario drives the
gateway with concurrent clients, injects its fault a second in, and reports what the clients
saw: requests sent, ok, failed by status, the recovery time (fault -> last failure), and the
suite's RSS before and after. Between scenarios the supervisor brings every process back and
the next one starts only when both workers are routed to again.

    ./dev resilience                      # every scenario, 8 s of load each
    ./dev resilience --scenarios kill9-worker,deadline-1ms --seconds 3 --json

Scenarios: kill9-<service> and sigterm-<service> for worker, router, registry, featurestore,
gateway; idle-streams (1,100 idle ModelStreamInfer streams beside the load); deadline-1ms and
deadline-50ms (the load itself with those deadlines); watch-flood (300 idle registry Watch
streams, then a worker is killed and must come back).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from suitesupport import ready_suite  # noqa: E402

from modelserve.cli.suite import Suite, Supervisor, start_suite  # noqa: E402
from modelserve.proto.inference import grpc_service_pb2 as pb  # noqa: E402
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc  # noqa: E402
from modelserve.proto.modelserve.v1 import (  # noqa: E402
    registry_pb2,
    registry_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
)
from modelserve.tensors import encode_inputs  # noqa: E402

SERVICES = ("worker", "router", "registry", "featurestore", "gateway")
CLIENTS = 8
messages: dict[str, str] = {}  # the last message seen per failing status, for the note


@dataclass
class Outcome:
    scenario: str
    sent: int = 0
    ok: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    recovery_s: float = 0.0
    rss_before_mib: float = 0.0
    rss_after_mib: float = 0.0
    note: str = ""


def rss_mib(suite: Suite) -> float:
    total = 0
    for proc in suite.processes.values():
        try:
            status = Path(f"/proc/{proc.process.pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return round(total / 1024, 1)


async def routed_workers(suite: Suite) -> int:
    async with grpc.aio.insecure_channel(suite.address("router")) as channel:
        reply = await router_pb2_grpc.RouterControlStub(channel).ListWorkers(
            router_pb2.ListWorkersRequest(), timeout=2
        )
    return sum(1 for w in reply.workers if w.serving and w.ready_versions)


async def settle(suite: Suite, supervisor: Supervisor, timeout: float = 90) -> None:
    """Every process running again, both workers routed to, and ten requests in a row
    answered through the gateway (its channels reconnected)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        supervisor.check()
        if all(p.process.poll() is None for p in suite.processes.values()):
            try:
                if await routed_workers(suite) == 2 and await answers(suite, 10):
                    return
            except grpc.RpcError:
                pass
        await asyncio.sleep(0.2)
    raise TimeoutError("the suite did not come back")


async def answers(suite: Suite, count: int) -> bool:
    async with grpc.aio.insecure_channel(suite.address("gateway")) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(count):
            request = pb.ModelInferRequest(model_name="fraud")
            encode_inputs(request, {"transaction": np.ones((1, 8), np.float32)})
            await stub.ModelInfer(request, timeout=2)
    return True


async def load(
    suite: Suite, seconds: float, timeout: float, fault: Callable[[], Awaitable[str]]
) -> tuple[list[tuple[float, str]], float, str]:
    """CLIENTS loops of fraud ModelInfer for ``seconds``; ``fault`` runs after one second."""
    results: list[tuple[float, str]] = []
    messages.clear()
    stop_at = time.monotonic() + seconds
    fault_at = 0.0
    note = ""

    async def client(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
        while time.monotonic() < stop_at:
            request = pb.ModelInferRequest(model_name="fraud")
            encode_inputs(request, {"transaction": np.ones((1, 8), np.float32)})
            try:
                await stub.ModelInfer(request, timeout=timeout)
                results.append((time.monotonic(), "OK"))
            except grpc.RpcError as exc:
                results.append((time.monotonic(), exc.code().name))
                messages[exc.code().name] = exc.details() or ""
                await asyncio.sleep(0.01)  # a refused client backs off a little

    async def inject() -> None:
        nonlocal fault_at, note
        await asyncio.sleep(1.0)
        fault_at = time.monotonic()
        note = await fault()

    async with grpc.aio.insecure_channel(suite.address("gateway")) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        await asyncio.gather(inject(), *(client(stub) for _ in range(CLIENTS)))
    return results, fault_at, note


def signal_fault(suite: Suite, service: str, sig: signal.Signals) -> Callable[[], Awaitable[str]]:
    name = "worker1" if service == "worker" else service

    async def fault() -> str:
        suite.processes[name].process.send_signal(sig)
        return f"{sig.name} {name}"

    return fault


async def run_scenario(
    suite: Suite, supervisor: Supervisor, scenario: str, seconds: float
) -> Outcome:
    outcome = Outcome(scenario, rss_before_mib=rss_mib(suite))
    release = asyncio.Event()
    extra: list[asyncio.Task[None]] = []
    timeout = 2.0

    async def nothing() -> str:
        return ""

    fault: Callable[[], Awaitable[str]] = nothing
    if scenario.startswith(("kill9-", "sigterm-")):
        kind, service = scenario.split("-", 1)
        fault = signal_fault(suite, service, signal.SIGKILL if kind == "kill9" else signal.SIGTERM)
    elif scenario.startswith("deadline-"):
        timeout = float(scenario.removeprefix("deadline-").removesuffix("ms")) / 1000
    elif scenario in ("idle-streams", "watch-flood"):
        target = "gateway" if scenario == "idle-streams" else "registry"
        count = 1100 if scenario == "idle-streams" else 300
        channel = grpc.aio.insecure_channel(suite.address(target))

        async def hold() -> None:
            try:
                if target == "gateway":
                    stub = pb_grpc.GRPCInferenceServiceStub(channel)

                    async def silent() -> AsyncIterator[pb.ModelInferRequest]:
                        await release.wait()
                        return
                        yield

                    async for _ in stub.ModelStreamInfer(silent()):
                        pass
                else:
                    watch = registry_pb2_grpc.RegistryStub(channel).Watch(
                        registry_pb2.WatchRequest()
                    )
                    async for _ in watch:
                        if release.is_set():
                            watch.cancel()
            except (grpc.RpcError, asyncio.CancelledError):
                pass

        extra = [asyncio.create_task(hold()) for _ in range(count)]
        if scenario == "watch-flood":
            fault = signal_fault(suite, "worker", signal.SIGKILL)

    async def supervise() -> None:  # as `modelserve up` does, every half second
        while True:
            supervisor.check()
            await asyncio.sleep(0.5)

    watcher = asyncio.create_task(supervise())
    try:
        results, fault_at, outcome.note = await load(suite, seconds, timeout, fault)
    finally:
        watcher.cancel()
    outcome.sent = len(results)
    outcome.ok = sum(1 for _, code in results if code == "OK")
    outcome.failed = dict(collections.Counter(code for _, code in results if code != "OK"))
    if messages:
        outcome.note += " (" + "; ".join(f"{k}: {v[:80]}" for k, v in messages.items()) + ")"
    failures = [t for t, code in results if code != "OK" and t >= fault_at]
    if fault is not nothing and failures:
        outcome.recovery_s = round(max(failures) - fault_at, 2)
    if scenario == "watch-flood":
        try:
            await settle(suite, supervisor, timeout=20)
            outcome.note += "; the killed worker synced and is routed to again"
        except TimeoutError:
            outcome.note += "; the killed worker did NOT come back within 20 s (watch limit)"
    release.set()
    for task in extra:
        task.cancel()
    await asyncio.gather(*extra, return_exceptions=True)
    if extra:
        await channel.close()
    outcome.rss_after_mib = rss_mib(suite)
    return outcome


ALL = [
    *(f"kill9-{s}" for s in SERVICES),
    *(f"sigterm-{s}" for s in ("worker", "router", "registry")),
    "idle-streams",
    "deadline-1ms",
    "deadline-50ms",
    "watch-flood",
]


async def run(scenarios: list[str], seconds: float) -> list[Outcome]:
    data = Path(tempfile.mkdtemp(prefix="resilience-"))
    suite = start_suite(data, workers=2)
    supervisor = Supervisor(suite, say=lambda line: print(f"  [supervisor] {line}", flush=True))
    outcomes = []
    try:
        await ready_suite(suite)
        for scenario in scenarios:
            await settle(suite, supervisor)
            print(f"- {scenario} ...", flush=True)
            outcomes.append(await run_scenario(suite, supervisor, scenario, seconds))
    finally:
        suite.stop(timeout=20)
    return outcomes


def table(outcomes: list[Outcome]) -> str:
    lines = [
        "| scenario | sent | ok | failed (by status) | recovery s | RSS MiB before -> after "
        "| note |",
        "|---|---:|---:|---|---:|---|---|",
    ]
    for o in outcomes:
        failed = ", ".join(f"{k} {v}" for k, v in sorted(o.failed.items())) or "0"
        lines.append(
            f"| {o.scenario} | {o.sent} | {o.ok} | {failed} | {o.recovery_s} | "
            f"{o.rss_before_mib} -> {o.rss_after_mib} | {o.note} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default=",".join(ALL))
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = [s for s in scenarios if s not in ALL]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; choose from {', '.join(ALL)}")
    outcomes = asyncio.run(run(scenarios, args.seconds))
    print(json.dumps([asdict(o) for o in outcomes], indent=2) if args.json else table(outcomes))


if __name__ == "__main__":
    main()
