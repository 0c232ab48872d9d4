"""T34: a black-holed worker (a real server process SIGSTOPped: its socket accepts and holds
bytes, nothing answers, no RST) is ejected and routed around, under load, by the router's
worker hop with the production channel options (keepalive 30 s + 10 s untouched).

What detects it is the deadline, not keepalive: calls to it fail DEADLINE_EXCEEDED (reconnects
hang in the handshake too), and the worker hop counts those towards ejection (5 in a row).
Two real gRPC server processes serve grpc.health.v1 Check (the call under test) with the
internal server options; the client side is production code: channel_options(), Endpoint,
pick (power of two choices, ejection) and modelserve.workers.worker_hop (the router's and the
direct lane's)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from testsupport import HEALTH_SERVER_SCRIPT

from modelserve.calls import Call, pick_from
from modelserve.channels import Endpoint, channel_options
from modelserve.deadlines import Deadline
from modelserve.workers import worker_hop

DEADLINE_S = 1.0
CALLERS = 4


@pytest.fixture
def servers() -> Iterator[list[tuple[subprocess.Popen[bytes], str]]]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", HEALTH_SERVER_SCRIPT], stdout=subprocess.PIPE, env=os.environ
        )
        for _ in range(2)
    ]
    try:
        found = []
        for proc in procs:
            assert proc.stdout is not None
            found.append((proc, f"127.0.0.1:{int(proc.stdout.readline())}"))
        yield found
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait(10)


async def test_a_sigstopped_worker_is_ejected_within_a_few_deadlines_and_routed_around(
    servers: list[tuple[subprocess.Popen[bytes], str]],
) -> None:
    endpoints = [
        Endpoint(address, aio.insecure_channel(address, options=channel_options()))
        for _, address in servers
    ]
    hop = worker_hop(retry_attempts=1, default_timeout=None)  # the router's worker hop
    pick = pick_from(lambda: endpoints)
    stopped_proc = servers[1][0]
    stopped = endpoints[1]
    outcomes: list[tuple[float, str, float]] = []  # (when it ended, code, seconds)
    done = asyncio.Event()

    async def caller() -> None:
        while not done.is_set():
            began = time.monotonic()
            try:
                await hop.unary(
                    pick,
                    lambda e: e.stub(health_pb2_grpc.HealthStub).Check,
                    health_pb2.HealthCheckRequest(),
                    Call(Deadline.after(DEADLINE_S)),
                )
                code = "OK"
            except Exception as exc:  # the hop's domain error: its code
                code = getattr(getattr(exc, "code", None), "name", type(exc).__name__)
            now = time.monotonic()
            outcomes.append((now, code, now - began))
            await asyncio.sleep(0.01)

    tasks = [asyncio.create_task(caller()) for _ in range(CALLERS)]
    try:
        await asyncio.sleep(1.0)
        assert any(c == "OK" for _, c, _ in outcomes)
        os.kill(stopped_proc.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        ejected_at = None
        while time.monotonic() - stopped_at < 8.0:
            if stopped.ejected(time.monotonic()) and ejected_at is None:
                ejected_at = time.monotonic()
            if ejected_at is not None and time.monotonic() > ejected_at + 2 * DEADLINE_S:
                break
            await asyncio.sleep(0.05)
    finally:
        done.set()
        await asyncio.gather(*tasks)
        for e in endpoints:
            await e.close()
    after = [o for o in outcomes if o[0] > stopped_at]
    failed = [o for o in after if o[1] != "OK"]
    print(
        f"T34: ejected {ejected_at and round(ejected_at - stopped_at, 2)} s after SIGSTOP; "
        f"{len(after)} calls after it, {len(failed)} failed "
        f"({sorted({c for _, c, _ in failed})}), slowest {max(s for *_, s in after):.2f} s"
    )
    assert ejected_at is not None, "the black-holed peer was never ejected"
    # Five consecutive expiries at most, CALLERS at a time: well under 5 deadlines.
    assert ejected_at - stopped_at <= 5 * DEADLINE_S
    # Nothing waits past its deadline, and once ejected (plus one deadline for calls already
    # on it) every call is served by the other peer.
    assert max(s for *_, s in after) <= DEADLINE_S + 0.5
    settled = [o for o in after if o[0] > ejected_at + DEADLINE_S]
    assert settled and all(c == "OK" for _, c, _ in settled), {c for _, c, _ in settled}
    assert {c for _, c, _ in failed} <= {"DEADLINE_EXCEEDED"}
