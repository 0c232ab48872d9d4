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
import signal
import sys
import threading
from pathlib import Path

import grpc

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


async def register_demo_models(registry: str, data_dir: Path) -> list[str]:
    """Push each demo model unless a version with the same sha256 exists; returns names."""
    async with grpc.aio.insecure_channel(registry) as channel:
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


async def wait_models_ready(gateway: str, names: list[str], timeout: float) -> None:
    async with grpc.aio.insecure_channel(gateway) as channel:
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
    for name in SERVICES:
        await wait_serving(suite.address(name), timeout=60)
    names = await register_demo_models(suite.address("registry"), suite.data_dir) if demo else []
    await wait_models_ready(suite.address("gateway"), names, timeout=120)
    return names


CURL_INFER = (
    '{"inputs":[{"name":"transaction","datatype":"FP32","shape":[1,8],'
    '"data":[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8]}]}'
)


def banner(suite: Suite, names: list[str]) -> str:
    gw = suite.address("gateway")
    lines = ["", "modelserve is up:"]
    for name in SERVICES:
        p = suite.processes[name]
        http = f"  http :{p.http_port}" if p.http_port else ""
        lines.append(
            f"  {name:<13} grpc {p.address:<16} metrics :{p.metrics_port}{http}  log {p.log_path}"
        )
    lines += [f"  models: {', '.join(names) or '(none)'}", "", "Try it:"]
    if suite.processes["gateway"].http_port:
        http = suite.http_address()
        lines += [
            f"  curl -s http://{http}/v2/health/ready -o /dev/null -w '%{{http_code}}\\n'",
            f"  curl -s http://{http}/v2/models/fraud",
            f"  curl -s -X POST http://{http}/v2/models/fraud/infer -d '{CURL_INFER}'",
        ]
    lines += [
        f"  grpcurl -plaintext {gw} list",
        f'  grpcurl -plaintext -d \'{{"name":"fraud"}}\' {gw} inference.GRPCInferenceService/ModelMetadata',
        '  grpcurl -plaintext -d \'{"model_name":"fraud","inputs":[{"name":"transaction",'
        '"datatype":"FP32","shape":[1,8],"contents":{"fp32_contents":[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8]}}]}\' '
        f"{gw} inference.GRPCInferenceService/ModelInfer",
        "  python - <<'PY'",
        "  import numpy as np, tritonclient.grpc as tc",
        f"  c = tc.InferenceServerClient('{gw}')",
        "  x = tc.InferInput('transaction', [1, 8], 'FP32'); x.set_data_from_numpy(np.ones((1, 8), np.float32))",
        "  print(c.infer('fraud', [x]).as_numpy('fraud_probability'))",
        "  PY",
        "  modelserve infer fraud --input 'transaction=[[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8]]'",
        "",
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)


def run_up(data_dir: Path, *, demo: bool = True, workers: int = 1) -> int:
    data_dir = data_dir.resolve()
    print(f"starting modelserve in {data_dir} ...", flush=True)
    suite = start_suite(data_dir, ports=DEFAULT_PORTS, workers=workers, http_port=DEFAULT_HTTP_PORT)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        names = asyncio.run(prepare(suite, demo))
        print(banner(suite, names), flush=True)
        supervisor = Supervisor(suite, say=lambda line: print(line, file=sys.stderr, flush=True))
        while not stop.wait(0.5):
            supervisor.check()
    finally:
        print("stopping ...", flush=True)
        codes = suite.stop()
        print("stopped: " + ", ".join(f"{n}={c}" for n, c in codes.items()), flush=True)
    return 0
