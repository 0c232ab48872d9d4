"""Helpers for streaming tests: brokers of our own on free ports (so a test may kill and
restart them), streamer processes started through `modelserve stream run`, and readers of
result and dead-letter streams."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from modelserve.cli.suite import wait_serving

CLI = Path(sys.executable).parent / "modelserve"
SHARED_REDIS = "redis://127.0.0.1:6379/0"
SHARED_NATS = "nats://127.0.0.1:4222"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


@dataclass
class Broker:
    """A broker process of the test's own: it can be killed and started again on its port
    with its data directory (Redis with an fsync-always AOF, NATS with a JetStream store)."""

    kind: str
    port: int
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{self.kind}://127.0.0.1:{self.port}" + ("/0" if self.kind == "redis" else "")

    def start(self) -> None:
        if self.kind == "redis":
            argv = [
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "yes", "--appendfsync", "always",
                "--dir", str(self.data_dir), "--daemonize", "no",
            ]  # fmt: skip
        else:
            argv = ["nats-server", "-a", "127.0.0.1", "-p", str(self.port), "-js",
                    "-sd", str(self.data_dir)]  # fmt: skip
        log = (self.data_dir / f"{self.kind}.log").open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        _wait_listening(self.port, self.proc)

    def kill(self) -> None:
        """SIGKILL: a crash, not a clean shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        self.kill()


@contextmanager
def broker(kind: str, tmp_path: Path) -> Iterator[Broker]:
    data_dir = tmp_path / f"{kind}-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    b = Broker(kind, free_port(), data_dir)
    b.start()
    try:
        yield b
    finally:
        b.stop()


def redis_url(base: str, stream: str) -> str:
    return f"{base}?stream={stream}"


def nats_url(base: str, stream: str) -> str:
    return f"{base}?stream={stream}&subject={stream}.events"


@dataclass
class Streamer:
    proc: subprocess.Popen[bytes]
    log_path: Path
    port: int
    metrics_port: int | None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def terminate(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def spawn_streamer(
    gateway: str,
    model: str,
    *,
    source: str,
    sink: str,
    group: str,
    workdir: Path,
    consumer: str = "",
    dead_letter: str = "",
    args: Sequence[str] = (),
) -> Streamer:
    """`modelserve stream run ...` as a process; returns once its ports are bound."""
    name = consumer or unique("consumer")
    workdir.mkdir(parents=True, exist_ok=True)
    port_file = workdir / f"{name}.port.json"
    log_path = workdir / f"{name}.log"
    argv = [
        str(CLI), "stream", "run", model, "--source", source, "--sink", sink,
        "--group", group, "--consumer", name, "--gateway", gateway,
        "--port-file", str(port_file), "--drain-seconds", "0",
        *(["--dead-letter", dead_letter] if dead_letter else []), *args,
    ]  # fmt: skip
    with log_path.open("ab") as out:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"streamer did not start:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.05)
    info = json.loads(port_file.read_text())
    return Streamer(proc, log_path, info["port"], info.get("metrics_port"))


async def start_streamer(gateway: str, model: str, **kwargs: Any) -> Streamer:
    """``spawn_streamer``, then wait until the streamer reports SERVING (brokers connected,
    the model's inputs known)."""
    streamer = await asyncio.to_thread(spawn_streamer, gateway, model, **kwargs)
    try:
        await wait_serving(f"127.0.0.1:{streamer.port}", timeout=60)
    except TimeoutError:
        streamer.kill()
        raise AssertionError(f"streamer not SERVING:\n{streamer.log()}") from None
    return streamer


def event(event_id: str, key: str, inputs: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps({"id": event_id, "key": key, "inputs": inputs, **extra}).encode()


def xadd_events(client: redis.Redis, stream: str, payloads: Sequence[bytes]) -> None:
    pipe = client.pipeline(transaction=False)
    for p in payloads:
        pipe.xadd(stream, {"data": p})
    pipe.execute()


def redis_records(client: redis.Redis, stream: str) -> list[dict[str, Any]]:
    return [json.loads(fields[b"data"]) for _, fields in client.xrange(stream)]


def metric(streamer: Streamer, name: str) -> float:
    """Sum of one metric's samples on the streamer's metrics port."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{streamer.metrics_port}/metrics") as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def have_nats() -> bool:
    return shutil.which("nats-server") is not None


async def nats_publish(server: str, stream: str, payloads: Sequence[bytes]) -> None:
    import nats
    from nats.js.api import StreamConfig
    from nats.js.errors import NotFoundError

    nc = await nats.connect(server)
    try:
        js = nc.jetstream()
        try:
            await js.stream_info(stream)
        except NotFoundError:
            await js.add_stream(StreamConfig(name=stream, subjects=[f"{stream}.events"]))
        futures = [await js.publish_async(f"{stream}.events", p) for p in payloads]
        await asyncio.gather(*futures)
    finally:
        await nc.close()


async def nats_records(server: str, stream: str) -> list[dict[str, Any]]:
    """Every message of a JetStream stream, decoded (empty if the stream does not exist)."""
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(server)
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(stream)
        except NotFoundError:
            return []
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            if info.state.messages == 0:
                break
            msg = await js.get_msg(stream, seq)
            out.append(json.loads(msg.data or b"null"))
        return out
    finally:
        await nc.close()


async def nats_count(server: str, stream: str) -> int:
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(server)
    try:
        try:
            return int((await nc.jetstream().stream_info(stream)).state.messages)
        except NotFoundError:
            return 0
    finally:
        await nc.close()


async def nats_consumer_lag(server: str, stream: str, durable: str) -> tuple[int, int]:
    """(delivered but unacked, not yet delivered) of a durable consumer."""
    import nats

    nc = await nats.connect(server)
    try:
        info = await nc.jetstream().consumer_info(stream, durable)
        return int(info.num_ack_pending), int(info.num_pending)
    finally:
        await nc.close()
