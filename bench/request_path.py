"""Which first-party modules and functions one ModelInfer visits, gateway -> router -> worker.

Starts registry, worker, router and gateway in this process (the same Runtime/build code the
service processes run), pushes the `fraud` demo model, warms the path up, then records every
call into services/ (generated code excluded) during one unmerged ModelInfer, on the event
loop and in executor threads. Prints the modules and functions by service, and the totals.

    .venv/bin/python bench/request_path.py [--json]

Runs against older checkouts too (it finds the demo-model and registry-client modules where
they were), so a layout change can be compared with the code before it:
    PYTHONPATH=/path/to/old/services .venv/bin/python bench/request_path.py
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
import tempfile
import threading
from collections import defaultdict
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
import numpy as np

import gateway
import registry
import router
import worker
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import registry_pb2_grpc
from modelserve.server import start_runtime
from modelserve.tensors import encode_inputs


def _first(*names: str) -> Any:
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError(names)


demo_models = _first("modelserve.cli.demo_models", "modelserve.demo_models")
registry_client = _first("modelserve.cli.registry_client", "modelserve.registry_client")
FAST = {"port": 0, "metrics_port": -2, "drain_seconds": 0.0, "shutdown_grace_seconds": 1.0}


class Recorder:
    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.calls: set[tuple[str, str]] = set()
        self.on = False

    def __call__(self, frame: FrameType, event: str, arg: object) -> None:
        if not self.on or event != "call":
            return
        path = frame.f_code.co_filename
        if not path.startswith(self.root) or "/proto/" in path:
            return
        module = path[len(self.root) + 1 :].removesuffix(".py").replace("/", ".")
        self.calls.add((module, frame.f_code.co_qualname))


async def measure(services: Path) -> dict[str, Any]:
    recorder = Recorder(services)
    data = Path(tempfile.mkdtemp(prefix="request-path-"))
    demo_models.write_demo_models(data)
    reg = await start_runtime(
        registry.SPEC, registry.RegistrySettings(**FAST, data_dir=str(data / "registry"))
    )
    reg_addr = f"127.0.0.1:{reg.port}"
    wrk = await start_runtime(
        worker.SPEC,
        worker.WorkerSettings(**FAST, registry_addr=reg_addr, data_dir=str(data / "worker")),
    )
    rtr = await start_runtime(
        router.SPEC,
        router.RouterSettings(**FAST, registry_addr=reg_addr, worker_addrs=f"127.0.0.1:{wrk.port}"),
    )
    gw = await start_runtime(
        gateway.SPEC,
        gateway.GatewaySettings(
            **FAST, registry_addr=reg_addr, router_addr=f"127.0.0.1:{rtr.port}"
        ),
    )
    try:
        async with grpc.aio.insecure_channel(reg_addr) as channel:
            await registry_client.push_version(
                registry_pb2_grpc.RegistryStub(channel),
                "fraud",
                data / "fraud_v1.onnx",
                labels=["production"],
            )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            request = pb.ModelInferRequest(model_name="fraud", id="path")
            encode_inputs(request, {"transaction": np.ones((1, 8), np.float32)})
            for _ in range(200):
                try:
                    await stub.ModelInfer(request, timeout=5)
                    break
                except grpc.RpcError:
                    await asyncio.sleep(0.1)
            for _ in range(20):  # warm: first-call caches (signatures, plans, stubs) filled
                await stub.ModelInfer(request, timeout=5)
            sys.setprofile(recorder)
            threading.setprofile(recorder)
            recorder.on = True
            await stub.ModelInfer(request, timeout=5)
            recorder.on = False
            sys.setprofile(None)
            threading.setprofile(None)  # type: ignore[arg-type]
    finally:
        for runtime in (gw, rtr, wrk, reg):
            await runtime.shutdown()
    by_service: dict[str, list[str]] = defaultdict(list)
    for module, function in sorted(recorder.calls):
        by_service[module.split(".")[0]].append(f"{module}:{function}")
    modules = sorted({m for m, _ in recorder.calls})
    return {
        "modules": len(modules),
        "functions": len(recorder.calls),
        "module_list": modules,
        "by_service": dict(by_service),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    services = Path(gateway.__file__).resolve().parents[1]
    result = asyncio.run(measure(services))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for service, functions in result["by_service"].items():
        print(f"## {service} ({len(functions)} functions)")
        for name in functions:
            print(f"  {name}")
    print(f"\n{result['modules']} modules, {result['functions']} functions ({services})")


if __name__ == "__main__":
    main()
