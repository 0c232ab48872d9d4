"""Two registry processes on one PostgreSQL database (issue 13): a push and a label change
made through one are seen by a Watch stream on the other; a canary is driven by exactly one
replica's controller (its decisions name the replica), and when that replica is killed -9
the other takes the lease over and drives the next canary."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from pgsupport import fresh_database

from modelserve.cli import demo_models
from modelserve.cli.registry_client import push_version
from modelserve.cli.suite import wait_serving
from modelserve.proto.modelserve.v1 import (
    canary_pb2,
    canary_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)

CLI = Path(sys.executable).parent / "modelserve"


class Replica:
    def __init__(self, name: str, url: str, workdir: Path) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        port_file = workdir / f"{name}.port.json"
        argv = [
            str(CLI), "serve", "registry", "--port", "0", "--metrics-port", "-2",
            "--port-file", str(port_file), "--data-dir", str(workdir / name),
            "--registry-database-url", url, "--replica-id", name,
            "--canary-interval-seconds", "0.2", "--lease-seconds", "4",
        ]  # fmt: skip
        with self.log_path.open("ab") as out:
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"{name} did not start:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.05)
        self.address = f"127.0.0.1:{json.loads(port_file.read_text())['port']}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def database() -> Iterator[str]:
    with fresh_database() as url:
        yield url


def lease_holder(url: str) -> str:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT holder FROM leases WHERE name = 'canary-controller'").fetchone()
    return "" if row is None else str(row[0])


def decisions(url: str) -> list[dict[str, object]]:
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT decision FROM canary_decisions ORDER BY seq").fetchall()
    return [json.loads(r[0]) for r in rows]


async def eventually(check: object, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not within {within}s"
        await asyncio.sleep(0.1)


async def test_two_registry_replicas_on_one_postgresql(database: str, tmp_path: Path) -> None:
    model_file = tmp_path / "fraud.onnx"
    model_file.write_bytes(demo_models.fraud(1).SerializeToString())
    a, b = Replica("replica-a", database, tmp_path), Replica("replica-b", database, tmp_path)
    try:
        await wait_serving(a.address, 30)
        await wait_serving(b.address, 30)
        async with (
            grpc.aio.insecure_channel(a.address) as ca,
            grpc.aio.insecure_channel(b.address) as cb,
        ):
            on_a, on_b = registry_pb2_grpc.RegistryStub(ca), registry_pb2_grpc.RegistryStub(cb)
            watch = on_b.Watch(registry_pb2.WatchRequest())
            first = await watch.read()
            assert first.snapshot and not first.models
            await push_version(on_a, "fraud", model_file, labels=["production"])
            event = await asyncio.wait_for(watch.read(), 10)
            assert [m.name for m in event.models] == ["fraud"]
            await push_version(on_a, "fraud", model_file)
            await on_a.SetLabel(
                registry_pb2.SetLabelRequest(model="fraud", label="staging", version=2)
            )
            labels: dict[str, int] = {}
            while labels.get("staging") != 2:
                event = await asyncio.wait_for(watch.read(), 10)
                labels = dict(event.models[0].labels)
            watch.cancel()

            # A canary with no router to read waits for its candidate, then rolls back once
            # its ready timeout passes: one decision, made by the lease holder alone. The
            # holder is frozen (SIGSTOP) past that timeout, for less than its lease: the
            # other replica must not step in meanwhile; the holder decides once thawed.
            await eventually(lambda: lease_holder(database) in (a.name, b.name))
            holder = lease_holder(database)
            frozen, other = (a, b) if holder == a.name else (b, a)
            spec = canary_pb2.CanarySpec(
                model="fraud", baseline=1, candidate=2, steps=[50, 100], ready_timeout_seconds=1
            )
            stub = canary_pb2_grpc.CanaryStub(cb if other is b else ca)
            frozen.proc.send_signal(signal.SIGSTOP)
            try:
                await stub.StartCanary(canary_pb2.StartCanaryRequest(spec=spec))
                await asyncio.sleep(2.0)  # the ready timeout passes; the lease has 3 s left
                assert [d["action"] for d in decisions(database)] == ["start"]
            finally:
                frozen.proc.send_signal(signal.SIGCONT)
            await eventually(lambda: any(d["action"] == "rollback" for d in decisions(database)))
            await asyncio.sleep(1.0)  # the other replica's rounds, were it acting
            made = [d for d in decisions(database) if d["action"] != "start"]
            assert [d["replica"] for d in made] == [holder], made
        dead, survivor = (a, b) if holder == a.name else (b, a)
        dead.proc.kill()  # kill -9: no lease release, it has to expire
        dead.proc.wait(10)
        async with grpc.aio.insecure_channel(survivor.address) as channel:
            await canary_pb2_grpc.CanaryStub(channel).StartCanary(
                canary_pb2.StartCanaryRequest(spec=spec)
            )
        await eventually(
            lambda: (
                [d["replica"] for d in decisions(database) if d["action"] == "rollback"]
                == [dead.name, survivor.name]
            )
        )
    finally:
        a.stop()
        b.stop()
