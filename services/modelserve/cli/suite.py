"""Starting the five services as separate processes on loopback: ``modelserve up`` and the
end-to-end tests share this launcher, so the tests exercise what users run.

Services start in dependency order, each as ``python -m <service>`` with static discovery
pointing at the ports the earlier ones reported (port 0 in tests, fixed defaults in ``up``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelserve.auth.keys import write_local_tokens
from modelserve.cli import connect
from modelserve.tls import ClientTLS

if TYPE_CHECKING:  # tls_material needs cryptography (modelserve[cli]), only for tls=True
    from modelserve.cli.tls_material import LocalPKI

log = logging.getLogger(__name__)

SERVICES = ("registry", "featurestore", "worker", "router", "gateway")
CLIENT_CERT = "client"  # tls_material.CLIENT: the operator's certificate (its SAN)
DEFAULT_PORTS = {
    "gateway": 8001,
    "router": 8101,
    "worker": 8201,
    "registry": 8301,
    "featurestore": 8401,
}
DEFAULT_HTTP_PORT = 8000  # the gateway's V2 REST face (Triton's HTTP port)


@dataclass
class ServiceProcess:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int | None
    log_path: Path
    command: list[str] = field(default_factory=list)  # how it was started, for a restart
    env: dict[str, str] = field(default_factory=dict)
    restarts: int = 0
    started_at: float = field(default_factory=time.monotonic)
    http_port: int | None = None  # the gateway's V2 REST port, when it serves one

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class Suite:
    data_dir: Path
    processes: dict[str, ServiceProcess] = field(default_factory=dict)
    pki: LocalPKI | None = None  # set when the suite runs with TLS (``start_suite(tls=True)``)

    @property
    def client_tls(self) -> ClientTLS | None:
        """What a client of this suite uses: the CA and the operator's client certificate
        (internal listeners require one; the gateway needs only the CA)."""
        if self.pki is None:
            return None
        pair = self.pki.pair("client")
        return ClientTLS(ca_file=str(self.pki.ca), cert_file=str(pair.cert), key_file=str(pair.key))

    # With auth: paths of tokens/admin, tokens/infer, tokens/service and keys_file.
    tokens: dict[str, Path] = field(default_factory=dict)

    def token(self, role: str) -> str | None:
        """The local token of ``role`` (admin, infer, service); None without auth."""
        path = self.tokens.get(role)
        return path.read_text().strip() if path is not None else None

    def address(self, name: str) -> str:
        return self.processes[name].address

    def http_address(self, name: str = "gateway") -> str:
        """host:port of ``name``'s V2 REST face (the gateway's, on ``http_port``)."""
        port = self.processes[name].http_port
        if port is None:
            raise LookupError(f"{name} serves no HTTP port")
        return f"127.0.0.1:{port}"

    def stop(self, timeout: float = 40.0) -> dict[str, int | None]:
        """SIGTERM every process, edge first, so in-flight requests drain inward."""
        # Every process, worker1.. included (they are not in SERVICES by name: missing them
        # cost each stop its whole timeout and then a SIGKILL).
        rank = {service: i for i, service in enumerate(SERVICES)}
        for name in sorted(self.processes, key=lambda n: -rank[_service_of(n)]):
            proc = self.processes[name]
            if proc.process.poll() is None:
                proc.process.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        deadline = time.monotonic() + timeout
        for name, proc in self.processes.items():
            try:
                codes[name] = proc.process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.process.kill()
                codes[name] = proc.process.wait()
        return codes


def _service_of(name: str) -> str:
    """The service a suite process runs: worker1, worker2 .. are workers."""
    return "worker" if name.startswith("worker") else name


def _wait_port_file(
    path: Path, proc: subprocess.Popen[bytes], name: str, timeout: float
) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode} while starting")
        if path.exists():
            data: dict[str, int] = json.loads(path.read_text())
            return data
        time.sleep(0.02)
    raise TimeoutError(f"{name} did not start within {timeout:.0f}s")


async def wait_serving(
    address: str, timeout: float, service: str = "", tls: ClientTLS | None = None
) -> None:
    """Poll grpc.health.v1 until SERVING (the service says it is warm)."""
    deadline = time.monotonic() + timeout
    async with connect.channel(address, tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address} not SERVING within {timeout:.0f}s")
            await asyncio.sleep(0.05)


class _PickedPortTaken(RuntimeError):
    """A port chosen here ahead of its process was taken by someone else in between."""


PORT_RACE_ATTEMPTS = 3


def start_suite(
    data_dir: Path,
    *,
    ports: Mapping[str, int] | None = None,
    extra_env: Mapping[str, str] | None = None,
    extra_args: Mapping[str, Sequence[str]] | None = None,
    workers: int = 1,
    timeout: float = 60.0,
    tls: bool = False,
    auth: bool = False,
    http_port: int = -1,
) -> Suite:
    """Start registry, featurestore, worker(s), router and gateway; return once all listen.

    ``tls``: certificates from ``data_dir/tls`` (made or reused, ``tls_material``), TLS on
    every listener, client certificates required everywhere but at the gateway, and mTLS on
    every channel between the services.
    ``auth``: every service requires credentials; the keys file and the admin, infer and
    service tokens are made in ``data_dir`` (``write_local_tokens``; ``suite.token(role)``).
    ``http_port``: the gateway's V2 REST port (-1 any free one, 0 off).

    The router's and gateway's ports are picked before the registry starts (it must know
    them); another process on the machine may take one in between (seen once in a full e2e
    run), so the launch is tried again with new ports, up to ``PORT_RACE_ATTEMPTS`` times.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    pki = None
    if tls:
        from modelserve.cli.tls_material import ensure_local_pki

        pki = ensure_local_pki(data_dir, SERVICES)
    tokens: dict[str, Path] = {}
    auth_env: dict[str, str] = {}
    if auth:
        tokens = write_local_tokens(data_dir)
        auth_env = {
            "MODELSERVE_AUTH": "1",
            "MODELSERVE_AUTH_KEYS_FILE": str(tokens["keys_file"]),
            "MODELSERVE_SERVICE_TOKEN_FILE": str(tokens["service"]),
        }
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **auth_env, **(extra_env or {})}
    names = [
        "registry",
        "featurestore",
        *[f"worker{i}" if i else "worker" for i in range(workers)],
        "router",
        "gateway",
    ]
    for attempt in range(PORT_RACE_ATTEMPTS):
        suite = Suite(data_dir, pki=pki)
        suite.tokens = tokens
        try:
            _launch(suite, names, dict(ports or {}), env, extra_args or {}, http_port, timeout)
            return suite
        except _PickedPortTaken:
            if attempt == PORT_RACE_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _launch(
    suite: Suite,
    names: Sequence[str],
    ports: dict[str, int],
    env: dict[str, str],
    extra_args: Mapping[str, Sequence[str]],
    http_port: int,
    timeout: float,
) -> None:
    """Spawn ``names`` in order into ``suite``; everything stopped again on a failure."""
    data_dir = suite.data_dir
    addr: dict[str, str] = {}
    # The router's and gateway's ports are chosen before the registry starts, so the
    # registry (started first) knows them: it asks routers which versions are READY, and
    # canaries read both (the gateway counts the requests it rejects per version).
    picked: set[str] = set()  # ports chosen here: their metrics port is any free one
    for later in ("router", "gateway"):  # the registry starts first and must know them
        if not ports.get(later):
            ports[later] = free_port()
            picked.add(later)
        addr[later] = f"127.0.0.1:{ports[later]}"
    try:
        for name in names:
            service = _service_of(name)
            args = _args(service, name, data_dir, ports.get(name, 0), addr, suite)
            if name in picked:  # port+1 (the default) may be anyone's: let the OS choose
                args += ["--metrics-port", "0"]
            args += _tls_args(service, suite.pki)
            if service == "gateway":
                args += ["--http-port", str(http_port)]
            args += list(extra_args.get(name, ()))
            log_path = data_dir / f"{name}.log"
            command = [sys.executable, "-m", service, *args]
            proc, info = _spawn(name, command, env, data_dir, timeout)
            suite.processes[name] = ServiceProcess(
                name, proc, info["port"], info.get("metrics_port"), log_path, command, env
            )
            suite.processes[name].http_port = info.get("http_port")
            addr[name] = f"127.0.0.1:{info['port']}"
    except BaseException as exc:
        suite.stop(timeout=5)
        if isinstance(exc, RuntimeError) and _lost_a_picked_port(data_dir, picked):
            raise _PickedPortTaken(str(exc)) from exc
        raise


def _lost_a_picked_port(data_dir: Path, picked: set[str]) -> bool:
    """Whether a process whose port was picked here failed to bind it (its log says so)."""
    for name in picked:
        log_path = data_dir / f"{name}.log"
        try:
            if "Failed to bind to address" in log_path.read_text(errors="replace"):
                return True
        except OSError:
            continue
    return False


def free_port() -> int:
    """A loopback port free now (the OS does not hand it out again at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _spawn(
    name: str, command: list[str], env: Mapping[str, str], data_dir: Path, timeout: float
) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    port_file = data_dir / f"{name}.port.json"
    port_file.unlink(missing_ok=True)
    with (data_dir / f"{name}.log").open("ab") as log_file:
        proc = subprocess.Popen(
            [*command, "--port-file", str(port_file)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=data_dir,
        )
    return proc, _wait_port_file(port_file, proc, name, timeout)


class Supervisor:
    """Restarts a suite's processes that die, on the port they had, with backoff.

    The others keep serving meanwhile (a router rides out a lost worker; a restarted worker is
    routed to again once it reports its versions READY). Backoff doubles from 0.5 s to 30 s
    and resets once a process has stayed up for a minute.
    """

    BACKOFF_START_S = 0.5
    BACKOFF_MAX_S = 30.0
    STABLE_S = 60.0

    def __init__(self, suite: Suite, *, say: Callable[[str], None] = log.warning) -> None:
        self._suite = suite
        self._say = say
        self._due: dict[str, float] = {}
        self._backoff: dict[str, float] = {}

    def check(self, now: float | None = None) -> list[str]:
        """Restart what is dead and due; returns the names restarted now."""
        now = time.monotonic() if now is None else now
        restarted = []
        for name, proc in self._suite.processes.items():
            if proc.process.poll() is None:
                if now - proc.started_at > self.STABLE_S:
                    self._backoff.pop(name, None)
                continue
            if name not in self._due:
                delay = self._backoff.get(name, self.BACKOFF_START_S)
                self._backoff[name] = min(delay * 2, self.BACKOFF_MAX_S)
                self._due[name] = now + delay
                self._say(
                    f"{name} exited with code {proc.process.returncode}; restarting in "
                    f"{delay:.1f}s (see {proc.log_path})"
                )
                continue
            if now >= self._due[name]:
                del self._due[name]
                if self._restart(proc):
                    restarted.append(name)
        return restarted

    def _restart(self, proc: ServiceProcess) -> bool:
        command = _with_port(proc.command, proc.port, proc.http_port)
        try:
            process, info = _spawn(proc.name, command, proc.env, self._suite.data_dir, 60.0)
        except (RuntimeError, TimeoutError) as exc:
            self._say(f"{proc.name} failed to restart: {exc}")
            return False
        proc.process, proc.restarts, proc.started_at = process, proc.restarts + 1, time.monotonic()
        proc.metrics_port = info.get("metrics_port", proc.metrics_port)
        proc.http_port = info.get("http_port", proc.http_port)
        self._say(f"{proc.name} restarted on {proc.address} (restart {proc.restarts})")
        return True


def _with_port(command: list[str], port: int, http_port: int | None = None) -> list[str]:
    """``command`` with ``--port`` set to ``port`` (and ``--http-port`` to ``http_port``): a
    restarted service keeps its addresses."""
    out = list(command)
    out[out.index("--port") + 1] = str(port)
    if http_port and "--http-port" in out:
        out[out.index("--http-port") + 1] = str(http_port)
    return out


def _tls_args(service: str, pki: LocalPKI | None) -> list[str]:
    """The ``tls_*`` settings of one service of a TLS suite (nothing without TLS)."""
    if pki is None:
        return []
    pair = pki.pair(service)
    args = [
        "--tls-cert-file",
        str(pair.cert),
        "--tls-key-file",
        str(pair.key),
        "--tls-ca-file",
        str(pki.ca),
        # The public edge takes any TLS client; every internal listener wants a certificate
        # issued by the suite's CA (the other services' or the operator's).
        "--tls-require-client-cert",
        "false" if service == "gateway" else "true",
    ]
    if service == "gateway":
        return args  # it asks no client certificate, so it has no peer names to check
    # With auth on, the other services' certificates are service identities (hops need no
    # token) and only the operator's certificate (client.pem) reaches the admin plane.
    return [
        *args,
        "--tls-service-sans",
        ",".join(SERVICES),
        "--tls-admin-sans",
        CLIENT_CERT,
    ]


def _args(
    service: str, name: str, data_dir: Path, port: int, addr: Mapping[str, str], suite: Suite
) -> list[str]:
    args = ["--port", str(port), "--instance-id", f"{name}-{os.getpid()}"]
    workers = ",".join(p.address for n, p in suite.processes.items() if n.startswith("worker"))
    if service in ("registry", "featurestore", "worker"):
        args += ["--data-dir", str(data_dir / name)]
    if service in ("worker", "router", "gateway"):
        args += ["--registry-addr", addr["registry"]]
    if service == "registry":
        args += ["--router-addrs", addr["router"], "--gateway-addrs", addr["gateway"]]
    if service == "router":
        args += ["--worker-addrs", workers, "--featurestore-addr", addr["featurestore"]]
    if service == "gateway":  # the workers too: its direct lane (gateway/direct.py)
        args += ["--router-addr", addr["router"], "--worker-addrs", workers]
    return args
