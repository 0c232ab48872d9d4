"""``modelserve up``: the whole suite on one machine until Ctrl-C.

Starts the five services on their default ports with static discovery, registers the demo
models (only those whose exact artifact is not registered yet, so a restart keeps history),
waits until the gateway answers for each, prints how to reach it, restarts any process that dies
(with backoff, on its port, the others serving on), and on Ctrl-C/SIGTERM stops every process,
edge first.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import signal
import sys
import threading
from pathlib import Path

import grpc

from modelserve.cli import connect
from modelserve.cli.console import Console
from modelserve.cli.demo_models import write_demo_models
from modelserve.cli.registry_client import push_version
from modelserve.cli.suite import (
    DEFAULT_HTTP_PORT,
    DEFAULT_PORTS,
    SERVICES,
    Suite,
    Supervisor,
    start_suite,
    wait_serving,
)
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import registry_pb2, registry_pb2_grpc
from modelserve.tls import ClientTLS


async def register_demo_models(
    registry: str, data_dir: Path, tls: ClientTLS | None = None, token: str | None = None
) -> list[str]:
    """Push each demo model unless a version with the same sha256 exists; returns names.
    ``token``: an admin token when auth is on."""
    async with connect.channel(registry, tls, token=token) as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        existing = await stub.ListModels(registry_pb2.ListModelsRequest(), timeout=10)
        have = {(m.name, v.sha256) for m in existing.models for v in m.versions}
        names: list[str] = []
        for demo, path in write_demo_models(data_dir / "demo-models"):
            sha = hashlib.sha256(path.read_bytes()).hexdigest()
            if (demo.name, sha) not in have:
                await push_version(
                    stub, demo.name, path, labels=demo.labels, description=demo.description
                )
            if demo.name not in names:
                names.append(demo.name)
        return names


async def wait_models_ready(
    gateway: str,
    names: list[str],
    timeout: float,
    tls: ClientTLS | None = None,
    token: str | None = None,
) -> None:
    async with connect.channel(gateway, tls, token=token) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        for name in names:
            while True:
                try:
                    reply = await stub.ModelReady(pb.ModelReadyRequest(name=name), timeout=2)
                    if reply.ready:
                        break
                except grpc.RpcError:
                    pass
                if loop.time() > end:
                    raise TimeoutError(f"model {name} not ready within {timeout:.0f}s")
                await asyncio.sleep(0.1)


async def prepare(suite: Suite, demo: bool) -> list[str]:
    tls = suite.client_tls
    for name in SERVICES:
        await wait_serving(suite.address(name), timeout=60, tls=tls)
    admin = suite.token("admin")
    names = (
        await register_demo_models(suite.address("registry"), suite.data_dir, tls, admin)
        if demo
        else []
    )
    await wait_models_ready(suite.address("gateway"), names, timeout=120, tls=tls, token=admin)
    return names


# Absolute paths: the banner's commands must work in a new shell, where the virtual
# environment is not active (its python has numpy and tritonclient; its bin has modelserve).
VENV = Path(sys.prefix)
PYTHON = sys.executable
MODELSERVE = str(Path(sys.executable).parent / "modelserve")
# grpcurl from PATH, else the one the dev extra installs beside modelserve.
GRPCURL = shutil.which("grpcurl") or (
    str(Path(sys.executable).parent / "grpcurl")
    if (Path(sys.executable).parent / "grpcurl").exists()
    else "grpcurl"
)


DEFAULT_CONSOLE_PORT = 8080


def _start_console(suite: Suite, port: int) -> Console | None:
    """The read-only web console on ``port`` (-1: none); a port in use is said, not fatal."""
    if port < 0:
        return None
    try:
        return Console(
            "127.0.0.1",
            port,
            suite.address("registry"),
            [suite.address("router")],
            token=suite.token("admin"),
        )
    except OSError as exc:
        print(f"console not started on :{port}: {exc}", file=sys.stderr, flush=True)
        return None


CURL_INFER = (
    '{"inputs":[{"name":"transaction","datatype":"FP32","shape":[1,8],'
    '"data":[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8]}]}'
)


def banner(suite: Suite, names: list[str]) -> str:
    if suite.pki is not None:
        return secure_banner(suite, names)
    gw = suite.address("gateway")
    lines = ["", "modelserve is up (TLS off: plaintext on loopback; `up --secure` for TLS):"]
    for name in SERVICES:
        p = suite.processes[name]
        http = f"  http :{p.http_port}" if p.http_port else ""
        lines.append(
            f"  {name:<13} grpc {p.address:<16} metrics :{p.metrics_port}{http}  log {p.log_path}"
        )
    curls = []
    if suite.processes["gateway"].http_port:
        http = suite.http_address()
        curls = [
            f"curl -s http://{http}/v2/health/ready -o /dev/null -w '%{{http_code}}\\n'",
            f"curl -s http://{http}/v2/models/fraud",
            f"curl -s -X POST http://{http}/v2/models/fraud/infer -d '{CURL_INFER}'",
        ]
    lines += [
        f"  models: {', '.join(names) or '(none)'}",
        _auth_line(suite),
        "",
        "Try it (every line below pastes as is into a new shell):",
        *curls,
        f"{GRPCURL} -plaintext {gw} list",
        f'{GRPCURL} -plaintext -d \'{{"name":"fraud"}}\' {gw} inference.GRPCInferenceService/ModelMetadata',
        f'{GRPCURL} -plaintext -d \'{{"model_name":"fraud","inputs":[{{"name":"transaction",'
        '"datatype":"FP32","shape":[1,8],"contents":{"fp32_contents":[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8]}}]}\' '
        f"{gw} inference.GRPCInferenceService/ModelInfer",
        f"{PYTHON} - <<'PY'",
        "import numpy as np, tritonclient.grpc as tc",
        f"c = tc.InferenceServerClient('{gw}')",
        "x = tc.InferInput('transaction', [1, 8], 'FP32'); x.set_data_from_numpy(np.ones((1, 8), np.float32))",
        "print(c.infer('fraud', [x]).as_numpy('fraud_probability'))",
        "PY",
        f"{MODELSERVE} infer fraud --gateway {gw} "
        "--input 'transaction=[[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8]]'",
        f"{MODELSERVE} models --registry {suite.address('registry')} list",
        f"(or `source {VENV}/bin/activate` once, then plain `modelserve ...`)",
        "",
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)


def _auth_line(suite: Suite) -> str:
    if not suite.tokens:
        return "  auth: off (any local process may call every RPC; README 'Security')"
    tokens = suite.data_dir / "tokens"
    return (
        f"  auth: on; tokens in {tokens} (admin, infer, service): send "
        f'-H "authorization: Bearer $(cat {tokens}/infer)" to grpcurl, '
        f"MODELSERVE_TOKEN=$(cat {tokens}/admin) to modelserve"
    )


def secure_banner(suite: Suite, names: list[str]) -> str:
    """The banner of ``up --secure``: where the certificates are and how clients use them."""
    assert suite.pki is not None
    gw = suite.address("gateway")
    pki = suite.pki
    ca, client = pki.ca, pki.pair("client")
    lines = ["", "modelserve is up with TLS (mTLS between services):"]
    for name in SERVICES:
        p = suite.processes[name]
        need = "TLS" if name == "gateway" else "mTLS"
        lines.append(
            f"  {name:<13} grpc {p.address:<16} {need:<4} metrics https :{p.metrics_port}  "
            f"log {p.log_path}"
        )
    lines += [
        f"  models: {', '.join(names) or '(none)'}",
        f"  certificates: {pki.dir} (CA {ca}; operator client cert {client.cert})",
        "",
        "Try it (every line below pastes as is into a new shell):",
        f"grpcurl -cacert {ca} {gw} list",
        f"grpcurl -cacert {ca} -cert {client.cert} -key {client.key} "
        f"{suite.address('registry')} modelserve.v1.Registry/ListModels",
        f"{PYTHON} - <<'PY'",
        "import numpy as np, tritonclient.grpc as tc",
        f"c = tc.InferenceServerClient('{gw}', ssl=True, root_certificates='{ca}')",
        "x = tc.InferInput('transaction', [1, 8], 'FP32'); x.set_data_from_numpy(np.ones((1, 8), np.float32))",
        "print(c.infer('fraud', [x]).as_numpy('fraud_probability'))",
        "PY",
        f"export MODELSERVE_TLS_CA={ca} MODELSERVE_TLS_CERT={client.cert} "
        f"MODELSERVE_TLS_KEY={client.key}",
        f"{MODELSERVE} infer fraud --input 'transaction=[[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8]]'",
        _auth_line(suite),
        "",
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)


def run_up(
    data_dir: Path,
    *,
    demo: bool = True,
    workers: int = 1,
    secure: bool = False,
    auth: bool = False,
    console_port: int = DEFAULT_CONSOLE_PORT,
) -> int:
    data_dir = data_dir.resolve()
    print(f"starting modelserve in {data_dir}{' with TLS' if secure else ''} ...", flush=True)
    suite = start_suite(
        data_dir,
        ports=DEFAULT_PORTS,
        workers=workers,
        tls=secure,
        auth=auth,
        http_port=DEFAULT_HTTP_PORT,
    )
    console: Console | None = None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        names = asyncio.run(prepare(suite, demo))
        console = _start_console(suite, console_port)
        print(banner(suite, names), flush=True)
        if console is not None:
            print(f"Console (read-only): http://127.0.0.1:{console.port}/", flush=True)
        supervisor = Supervisor(suite, say=lambda line: print(line, file=sys.stderr, flush=True))
        while not stop.wait(0.5):
            supervisor.check()
    finally:
        print("stopping ...", flush=True)
        if console is not None:
            console.stop()
        codes = suite.stop()
        print("stopped: " + ", ".join(f"{n}={c}" for n, c in codes.items()), flush=True)
    return 0
