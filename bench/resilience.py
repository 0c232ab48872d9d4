"""Fault runs against the real suite: `./dev resilience` (not part of the fast test run).

One suite (two workers; --workers N for more) runs under `modelserve up`'s supervisor; each
scenario drives the gateway with concurrent clients, injects its fault a second in, and
reports what the clients saw: requests sent, ok, failed by status, the recovery time (fault
-> last failure), and the suite's RSS before and after. Between scenarios the supervisor
brings every process back and the next one starts only when every worker is routed to again.

    ./dev resilience                      # every scenario, 8 s of load each
    ./dev resilience --scenarios kill9-worker,deadline-1ms --seconds 3 --json

Scenarios: kill9-<service> and sigterm-<service> for worker, router, registry, featurestore,
gateway; idle-streams (1,100 idle ModelStreamInfer streams beside the load); deadline-1ms and
deadline-50ms (the load itself with those deadlines); watch-flood (300 idle registry Watch
streams, then a worker is killed and must come back); consul-outage (T32: a suite of its
own on Consul discovery against the stand-in agent of tests/fakes/consul_agent.py, at --rate
requests/s; the agent stops for --outage seconds (60) and comes back without its state; the
load lasts until every registration is back and passing; the run fails unless nothing failed,
the router's worker set never changed and re-registration took <= 30 s); rolling-restart
(T29: at --rate requests/s, each worker in turn gets SIGTERM and the next one only once the
supervisor's replacement is routed to again; the load lasts until the last one is back, and
the run fails unless >= 99.9 % succeeded and no second went by without a success);
kill9-worker (T30: at --rate requests/s, kill -9 of worker1, the load lasting until the
supervisor's replacement is routed to again; the run fails unless the failures are at most
the requests in flight on the victim at the kill and the replacement serves within 30 s).

Every outcome reports the success ratio, the longest gap between two successes, and p95
latency before the fault (the first second: the baseline) and after it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import signal
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fakes.consul_agent import FakeConsulAgent  # noqa: E402
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

T = TypeVar("T")
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
    max_gap_s: float = 0.0  # longest stretch without a success, load start to end
    p95_before_ms: float = 0.0  # before the fault: the baseline
    p95_after_ms: float = 0.0
    # kill9-worker (T30): fraud requests in progress on the victim just before the kill (its
    # modelserve_model_in_flight), and seconds from the kill until its replacement is routed
    # to again (fraud READY); -1 when not measured.
    in_flight_at_fault: int = -1
    out_s: float = -1.0  # kill -> the router no longer routes to the victim
    back_s: float = -1.0
    # consul-outage (T32): changes of the router's worker set during the load, and seconds
    # from the agent's return until every registration is back on it and passing.
    flaps: int = -1
    reregistered_s: float = -1.0
    note: str = ""

    @property
    def success_ratio(self) -> float:
        return self.ok / self.sent if self.sent else 0.0


# T29's bar (RELIABILITY-CASES): a rolling restart of every worker costs under 0.1 % of the
# requests and never a second without a success.
ROLLING_MIN_SUCCESS = 0.999
ROLLING_MAX_GAP_S = 1.0


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
                workers = sum(1 for n in suite.processes if n.startswith("worker"))
                if await routed_workers(suite) == workers and await answers(suite, 10):
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


# (when it ended, status, latency in seconds)
Result = tuple[float, str, float]


async def load(
    suite: Suite,
    seconds: float,
    timeout: float,
    fault: Callable[[], Awaitable[str]],
    *,
    rate: float = 0.0,
    hold: bool = False,
) -> tuple[list[Result], float, str]:
    """CLIENTS loops of fraud ModelInfer for ``seconds``; ``fault`` runs after one second.
    ``rate`` > 0: the clients share a schedule of that many requests a second (each waits
    for its slot; a late one goes at once), instead of running flat out. ``hold``: the load
    goes on until the fault has finished, plus one second."""
    results: list[Result] = []
    messages.clear()
    started = time.monotonic()
    stop_at = started + seconds
    fault_at = 0.0
    fault_done = not hold
    note = ""
    tickets = iter(range(1 << 62))

    def running() -> bool:
        return time.monotonic() < stop_at or not fault_done

    async def client(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
        while running():
            if rate > 0:
                delay = started + next(tickets) / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            request = pb.ModelInferRequest(model_name="fraud")
            encode_inputs(request, {"transaction": np.ones((1, 8), np.float32)})
            sent = time.monotonic()
            try:
                await stub.ModelInfer(request, timeout=timeout)
                now = time.monotonic()
                results.append((now, "OK", now - sent))
            except grpc.RpcError as exc:
                now = time.monotonic()
                results.append((now, exc.code().name, now - sent))
                messages[exc.code().name] = exc.details() or ""
                await asyncio.sleep(0.01)  # a refused client backs off a little

    async def inject() -> None:
        nonlocal fault_at, note, fault_done, stop_at
        await asyncio.sleep(1.0)
        fault_at = time.monotonic()
        try:
            note = await fault()
        finally:
            if hold:
                stop_at = max(stop_at, time.monotonic() + 1.0)
                fault_done = True

    async with grpc.aio.insecure_channel(suite.address("gateway")) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        await asyncio.gather(inject(), *(client(stub) for _ in range(CLIENTS)))
    return results, fault_at, note


def longest_gap(results: list[Result]) -> tuple[float, float]:
    """The longest time between two successes (or the load's first result and the first
    success, or the last success and the load's last result), and when it began."""
    if not results:
        return 0.0, 0.0
    ends = sorted(t for t, _, _ in results)
    oks = sorted(t for t, code, _ in results if code == "OK")
    if not oks:
        return ends[-1] - ends[0], ends[0]
    marks = [ends[0], *oks, ends[-1]]
    return max((b - a, a) for a, b in itertools.pairwise(marks))


def p95_ms(latencies: list[float]) -> float:
    if not latencies:
        return 0.0
    return round(float(np.percentile(latencies, 95)) * 1000, 1)


def rolling_restart(suite: Suite, names: list[str]) -> Callable[[], Awaitable[str]]:
    """SIGTERM each of ``names`` in turn; the next one only once the supervisor (running
    beside the load) has started the replacement and the router routes to every worker."""

    async def fault() -> str:
        steps = []
        start = time.monotonic()
        for name in names:
            proc = suite.processes[name]
            restarts, began = proc.restarts, time.monotonic()
            proc.process.send_signal(signal.SIGTERM)
            exited = restarted = 0.0
            end = began + 120
            while time.monotonic() < end:
                await asyncio.sleep(0.1)
                if not exited and (proc.restarts != restarts or proc.process.poll() is not None):
                    exited = time.monotonic()
                if proc.restarts == restarts or proc.process.poll() is not None:
                    continue
                restarted = restarted or time.monotonic()
                try:
                    if await routed_workers(suite) == len(names):
                        break
                except grpc.RpcError:
                    pass
            else:
                raise TimeoutError(f"{name} was not routed to again within 120 s")
            steps.append(
                f"{name} (SIGTERM at {began - start:.1f}s, exited by {exited - start:.1f}s, "
                f"started {restarted - start:.1f}s) back in {time.monotonic() - began:.1f}s"
            )
        return "SIGTERM one at a time: " + ", ".join(steps)

    return fault


async def model_in_flight(suite: Suite, name: str) -> int:
    """The fraud requests in progress on ``name`` now, from its metrics port."""
    port = suite.processes[name].metrics_port
    async with httpx.AsyncClient(timeout=2, trust_env=False) as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("modelserve_model_in_flight{") and 'model="fraud"' in line
        )
    )


def kill9_worker(suite: Suite, outcome: Outcome) -> Callable[[], Awaitable[str]]:
    """T30: read the victim's in-flight count, kill -9 it, then wait (the load running on)
    until the supervisor's replacement is routed to again by the router."""

    async def fault() -> str:
        name = "worker1"
        proc = suite.processes[name]
        restarts = proc.restarts
        outcome.in_flight_at_fault = await model_in_flight(suite, name)
        proc.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        workers = sum(1 for n in suite.processes if n.startswith("worker"))
        out_at = 0.0
        while time.monotonic() < killed + 120:
            await asyncio.sleep(0.1)
            try:
                routed = await routed_workers(suite)
            except grpc.RpcError:
                continue
            if not out_at and routed < workers:
                out_at = time.monotonic()
                outcome.out_s = round(out_at - killed, 2)
            if proc.restarts != restarts and routed == workers:
                outcome.back_s = round(time.monotonic() - killed, 2)
                break
        else:
            raise TimeoutError(f"{name} was not routed to again within 120 s")
        left = f"out of routing after {outcome.out_s}s, " if out_at else ""
        return f"SIGKILL {name} ({outcome.in_flight_at_fault} in flight on it): {left}" + (
            f"replacement routed to {outcome.back_s}s after the kill"
        )

    return fault


class AgentThread:
    """The Consul stand-in (tests/fakes/consul_agent.py, an HTTP server speaking the agent
    API and running real gRPC health checks) on its own event loop in a thread: start_suite
    blocks, waiting for port files, while the services register with it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.agent: FakeConsulAgent = self.call(self._make())

    @staticmethod
    async def _make() -> FakeConsulAgent:
        agent = FakeConsulAgent()  # Consul's own floors: 1 s checks, 1 m deregister, 30 s reaper
        await agent.start()
        return agent

    def call(self, coro: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(_wrap(coro), self.loop).result(30)

    async def acall(self, coro: Awaitable[T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_wrap(coro), self.loop))

    async def passing(self) -> set[str]:
        async def ids() -> set[str]:
            return {sid for sid in self.agent.services if self.agent.check_status(sid) == "passing"}

        return await self.acall(ids())

    def close(self) -> None:
        self.call(self.agent.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


async def _wrap(coro: Awaitable[T]) -> T:
    return await coro


CONSUL_OUTAGE_S = [60.0]  # seconds the stand-in agent is away in consul-outage (--outage)
# T32's bar: 0 failures, no flap, every registration back and passing <= 30 s after return.
CONSUL_MAX_REREGISTER_S = 30.0


def consul_outage(
    suite: Suite, agent: AgentThread, outcome: Outcome, flaps: list[int]
) -> Callable[[], Awaitable[str]]:
    """T32: stop the stand-in agent for CONSUL_OUTAGE_S, bring it back on its port without its
    state (wiped: a dev agent, a lost data dir), and wait until every instance that passed
    before is registered again (the services' reconcile loops) and passing."""

    async def fault() -> str:
        async def registered() -> int:
            return len(agent.agent.services)

        before = await agent.passing()
        wait_until = time.monotonic() + 10  # a check that has not run yet: give it its turn
        while len(before) < await agent.acall(registered()) and time.monotonic() < wait_until:
            await asyncio.sleep(0.1)
            before = await agent.passing()
        port = agent.agent.port
        flaps.clear()  # count from the outage on
        await agent.acall(agent.agent.stop())
        await asyncio.sleep(CONSUL_OUTAGE_S[0])

        async def back() -> None:
            agent.agent.wipe()
            await agent.agent.start(port=port)

        await agent.acall(back())
        returned = time.monotonic()
        while time.monotonic() < returned + 120:
            if before <= await agent.passing():
                outcome.reregistered_s = round(time.monotonic() - returned, 2)
                break
            await asyncio.sleep(0.1)
        else:
            raise TimeoutError("the registrations did not come back within 120 s")
        return (
            f"Consul stand-in away {CONSUL_OUTAGE_S[0]:.0f}s, back without its state; "
            f"{len(before)} registrations back and passing {outcome.reregistered_s}s later"
        )

    return fault


async def count_flaps(suite: Suite, flaps: list[int], stop: asyncio.Event) -> None:
    """Every change of the router's worker address set, polled every 0.1 s, into ``flaps``."""
    last: list[str] | None = None
    async with grpc.aio.insecure_channel(suite.address("router")) as channel:
        stub = router_pb2_grpc.RouterControlStub(channel)
        while not stop.is_set():
            try:
                reply = await stub.ListWorkers(router_pb2.ListWorkersRequest(), timeout=2)
                now = sorted(w.address for w in reply.workers if w.serving)
                if last is not None and now != last:
                    flaps.append(len(now))
                last = now
            except grpc.RpcError:
                pass
            await asyncio.sleep(0.1)


def signal_fault(suite: Suite, service: str, sig: signal.Signals) -> Callable[[], Awaitable[str]]:
    name = "worker1" if service == "worker" else service

    async def fault() -> str:
        suite.processes[name].process.send_signal(sig)
        return f"{sig.name} {name}"

    return fault


async def run_scenario(
    suite: Suite,
    supervisor: Supervisor,
    scenario: str,
    seconds: float,
    agent: AgentThread | None = None,
) -> Outcome:
    outcome = Outcome(scenario, rss_before_mib=rss_mib(suite))
    release = asyncio.Event()
    extra: list[asyncio.Task[None]] = []
    timeout = 2.0

    async def nothing() -> str:
        return ""

    fault: Callable[[], Awaitable[str]] = nothing
    rate, hold = 0.0, False
    if scenario == "rolling-restart":
        workers = sorted(n for n in suite.processes if n.startswith("worker"))
        fault, rate, hold = rolling_restart(suite, workers), ROLLING_RATE[0], True
    elif scenario == "kill9-worker":  # T30: paced at --rate, until the replacement serves
        fault, rate, hold = kill9_worker(suite, outcome), ROLLING_RATE[0], True
    elif scenario == "consul-outage":  # T32: paced at --rate, until re-registered
        assert agent is not None, "consul-outage runs on a suite with Consul discovery"
        flap_list: list[int] = []
        done = asyncio.Event()
        extra_flaps = asyncio.create_task(count_flaps(suite, flap_list, done))
        fault = consul_outage(suite, agent, outcome, flap_list)
        rate, hold = ROLLING_RATE[0], True
    elif scenario.startswith(("kill9-", "sigterm-")):
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
            # In a thread: a restart waits (blocking) for the new process's port file, which
            # would freeze this loop's clients too, a stall `up`'s callers never see.
            await asyncio.to_thread(supervisor.check)
            await asyncio.sleep(0.5)

    watcher = asyncio.create_task(supervise())
    try:
        results, fault_at, outcome.note = await load(
            suite, seconds, timeout, fault, rate=rate, hold=hold
        )
    finally:
        watcher.cancel()
    if scenario == "consul-outage":
        done.set()
        await extra_flaps
        outcome.flaps = len(flap_list)
        outcome.note += f"; {outcome.flaps} changes of the router's worker set"
    outcome.sent = len(results)
    outcome.ok = sum(1 for _, code, _ in results if code == "OK")
    outcome.failed = dict(collections.Counter(code for _, code, _ in results if code != "OK"))
    gap, gap_began = longest_gap(results)
    outcome.max_gap_s = round(gap, 3)
    if gap_began >= fault_at > 0:
        outcome.note += f"; longest gap began {gap_began - fault_at:.2f}s after the fault"
    outcome.p95_before_ms = p95_ms([lat for t, c, lat in results if c == "OK" and t < fault_at])
    outcome.p95_after_ms = p95_ms([lat for t, c, lat in results if c == "OK" and t >= fault_at])
    if messages:
        outcome.note += " (" + "; ".join(f"{k}: {v[:80]}" for k, v in messages.items()) + ")"
    failures = [t for t, code, _ in results if code != "OK" and t >= fault_at]
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
    "rolling-restart",
    "consul-outage",
]
LAST_STOP_CODES: dict[str, int | None] = {}  # exit codes of the last run's suite.stop()
ROLLING_RATE = [100.0]  # requests/s of rolling-restart and kill9-worker (--rate)


def rolling_problems(outcome: Outcome) -> list[str]:
    """What keeps a rolling-restart outcome from T29's bar (empty: it holds)."""
    problems = []
    if outcome.success_ratio < ROLLING_MIN_SUCCESS:
        problems.append(
            f"success {outcome.success_ratio:.4%} < {ROLLING_MIN_SUCCESS:.1%} "
            f"({outcome.ok}/{outcome.sent}, failed {outcome.failed})"
        )
    if outcome.max_gap_s >= ROLLING_MAX_GAP_S:
        problems.append(f"{outcome.max_gap_s} s without a success (bar: < {ROLLING_MAX_GAP_S} s)")
    return problems


# T30's bar: client failures <= the requests in flight on the killed replica; its replacement
# serving within 30 s.
KILL9_MAX_BACK_S = 30.0


def kill9_problems(outcome: Outcome) -> list[str]:
    """What keeps a kill9-worker outcome from T30's bar (empty: it holds)."""
    problems = []
    failed = outcome.sent - outcome.ok
    if failed > max(outcome.in_flight_at_fault, 0):
        problems.append(
            f"{failed} failed > {outcome.in_flight_at_fault} in flight on the victim "
            f"({outcome.failed})"
        )
    if not 0 <= outcome.back_s <= KILL9_MAX_BACK_S:
        problems.append(f"replacement routed to after {outcome.back_s} s (bar: 30 s)")
    return problems


def consul_problems(outcome: Outcome) -> list[str]:
    """What keeps a consul-outage outcome from T32's bar (empty: it holds)."""
    problems = []
    if outcome.ok != outcome.sent:
        problems.append(f"{outcome.sent - outcome.ok} failed ({outcome.failed})")
    if outcome.flaps != 0:
        problems.append(f"the router's worker set changed {outcome.flaps} times")
    if not 0 <= outcome.reregistered_s <= CONSUL_MAX_REREGISTER_S:
        problems.append(f"re-registered after {outcome.reregistered_s} s (bar: 30 s)")
    return problems


async def run(
    scenarios: list[str],
    seconds: float,
    workers: int = 2,
    *,
    consul: bool = False,
    reconcile_s: float = 10.0,
) -> list[Outcome]:
    """``scenarios`` on one suite; ``consul``: on Consul discovery against the stand-in agent
    (consul-outage needs it), every service's reconcile loop every ``reconcile_s`` (the
    default: consul_reconcile_seconds' own)."""
    data = Path(tempfile.mkdtemp(prefix="resilience-"))
    agent = AgentThread() if consul else None
    env = {}
    if agent is not None:
        env = {
            "MODELSERVE_DISCOVERY": "consul",
            "MODELSERVE_CONSUL_ADDR": agent.agent.addr,
            "MODELSERVE_CONSUL_RECONCILE_SECONDS": str(reconcile_s),
            "MODELSERVE_DRAIN_SECONDS": "0.5",  # the 11 s Consul default would only slow stop
        }
    try:
        suite = start_suite(data, workers=workers, extra_env=env)
    except BaseException:
        if agent is not None:
            agent.close()
        raise
    supervisor = Supervisor(suite, say=lambda line: print(f"  [supervisor] {line}", flush=True))
    outcomes = []
    try:
        await ready_suite(suite)
        for scenario in scenarios:
            await settle(suite, supervisor)
            print(f"- {scenario} ...", flush=True)
            outcomes.append(await run_scenario(suite, supervisor, scenario, seconds, agent))
    finally:
        LAST_STOP_CODES.clear()
        LAST_STOP_CODES.update(suite.stop(timeout=20))
        if agent is not None:
            agent.close()
    return outcomes


def table(outcomes: list[Outcome]) -> str:
    lines = [
        "| scenario | sent | ok | failed (by status) | recovery s | longest gap s "
        "| p95 ms before -> after | RSS MiB before -> after | note |",
        "|---|---:|---:|---|---:|---:|---|---|---|",
    ]
    for o in outcomes:
        failed = ", ".join(f"{k} {v}" for k, v in sorted(o.failed.items())) or "0"
        lines.append(
            f"| {o.scenario} | {o.sent} | {o.ok} | {failed} | {o.recovery_s} | {o.max_gap_s} | "
            f"{o.p95_before_ms} -> {o.p95_after_ms} | "
            f"{o.rss_before_mib} -> {o.rss_after_mib} | {o.note} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default=",".join(ALL))
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--rate",
        type=float,
        default=ROLLING_RATE[0],
        help="requests/s of rolling-restart and kill9-worker",
    )
    parser.add_argument("--workers", type=int, default=2, help="workers in the suite (>= 2)")
    parser.add_argument(
        "--outage", type=float, default=CONSUL_OUTAGE_S[0], help="seconds of consul-outage"
    )
    args = parser.parse_args()
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = [s for s in scenarios if s not in ALL]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; choose from {', '.join(ALL)}")
    ROLLING_RATE[0] = args.rate
    if args.workers < 2:
        parser.error("--workers must be at least 2 (a worker is always being faulted)")
    CONSUL_OUTAGE_S[0] = args.outage
    static = [s for s in scenarios if s != "consul-outage"]
    outcomes = asyncio.run(run(static, args.seconds, args.workers)) if static else []
    if "consul-outage" in scenarios:  # a suite of its own, on Consul discovery
        outcomes += asyncio.run(run(["consul-outage"], args.seconds, args.workers, consul=True))
    print(json.dumps([asdict(o) for o in outcomes], indent=2) if args.json else table(outcomes))
    bars = {
        "rolling-restart": ("T29", rolling_problems),
        "kill9-worker": ("T30", kill9_problems),
        "consul-outage": ("T32", consul_problems),
    }
    problems = [
        f"{bars[o.scenario][0]} {o.scenario}: {p}" for o in outcomes if o.scenario in bars
        for p in bars[o.scenario][1](o)
    ]  # fmt: skip
    if problems:
        print("FAILED " + "; ".join(problems), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
