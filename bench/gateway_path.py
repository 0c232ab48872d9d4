"""CPU per request of the gateway's own Python path, in one process, without the network.

The gateway's main thread spends more CPU per request than perfref's (issue 14; gRPC's own
threads cost the same in both), so this drives the real V2 servicer over the real
``GatewayDataPlane`` — wrapped by the real interceptors, with a catalog holding perfref's
``tabular`` signature — with an in-process stand-in for the router that answers at once, and
reports thread CPU per request at concurrency 1 (every request alone) and 64 (merged). Beside
it, perfref's gateway handler on the same stand-in: the floor of a handler that still
decodes, coalesces and answers. Thread CPU, not wall time: a busy shared box barely moves it.

    .venv/bin/python bench/gateway_path.py [--requests 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import collections
import os
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "services"))

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from gateway import dataplane  # noqa: E402
from gateway.dataplane import GatewayDataPlane  # noqa: E402
from modelserve.admission import AdmissionInterceptor  # noqa: E402
from modelserve.catalog.replica import Catalog  # noqa: E402
from modelserve.channels import EndpointSet  # noqa: E402
from modelserve.deadlines import EdgeDeadlines  # noqa: E402
from modelserve.discovery.static import StaticDiscovery  # noqa: E402
from modelserve.interceptors import ErrorInterceptor  # noqa: E402
from modelserve.metrics import RpcMetricsInterceptor  # noqa: E402
from modelserve.proto.inference import grpc_service_pb2 as pb  # noqa: E402
from modelserve.proto.modelserve.v1 import common_pb2, registry_pb2  # noqa: E402
from modelserve.v2.servicer import V2Servicer  # noqa: E402

FEATURES, OUTPUTS = 32, 1  # perfref's tabular
PERFREF = Path(os.environ.get("PERFREF_DIR", str(ROOT.parent / "shared" / "perfref")))
METHOD = "/inference.GRPCInferenceService/ModelInfer"


class Context:
    """What the servicer reads of a grpc.aio context on the success path."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        return None

    def code(self) -> Any:
        return None

    async def abort(self, code: grpc.StatusCode, details: str = "", **_: Any) -> None:
        raise RuntimeError(f"aborted {code}: {details}")


def answer(request: pb.ModelInferRequest) -> pb.ModelInferResponse:
    rows = request.inputs[0].shape[0]
    response = pb.ModelInferResponse(model_name=request.model_name, model_version="1")
    response.outputs.add(name="OUTPUT0", datatype="FP32", shape=[rows, OUTPUTS])
    response.raw_output_contents.append(bytes(4 * rows * OUTPUTS))
    return response


async def router_stand_in(
    request: pb.ModelInferRequest, *_: Any, **__: Any
) -> pb.ModelInferResponse:
    await asyncio.sleep(0)  # one loop turn, as an awaited RPC takes at least
    return answer(request)


class StandInStub:
    """The router's stub as Hop.unary calls it: ModelInfer(request, timeout=, metadata=)."""

    def __init__(self, _channel: Any) -> None:
        self.ModelInfer = router_stand_in


def catalog() -> Catalog:
    found = Catalog(StaticDiscovery({}))
    version = registry_pb2.ModelVersion(
        model="tabular",
        version=1,
        sha256="0" * 64,
        inputs=[common_pb2.TensorSpec(name="INPUT0", datatype="FP32", shape=[-1, FEATURES])],
        outputs=[common_pb2.TensorSpec(name="OUTPUT0", datatype="FP32", shape=[-1, OUTPUTS])],
        config=registry_pb2.ServingConfig(max_batch_size=64),
    )
    model = registry_pb2.Model(name="tabular", versions=[version], labels={"production": 1})
    found.apply(registry_pb2.WatchEvent(snapshot=True, models=[model], revision=1))
    return found


async def suite_handler() -> Any:
    """The gateway's ModelInfer as start_runtime serves it, down to Hop.unary (endpoint pick,
    outstanding counts, metadata, error translation); only the router's stub stands in."""
    routers = EndpointSet()
    await routers.update(["127.0.0.1:9"])  # never dialled: the stub stands in
    dataplane.pb_grpc = types.SimpleNamespace(GRPCInferenceServiceStub=StandInStub)  # type: ignore[assignment]
    plane = GatewayDataPlane(
        catalog=catalog(),
        composites=None,
        routers=routers,
        edge=EdgeDeadlines(default_s=30.0, min_s=0.001, max_s=300.0),
        merge_max_in_flight=1,
    )
    fn: Any = V2Servicer(plane).ModelInfer
    # The same order as start_runtime: metrics outermost, then admission, then errors.
    for interceptor in (
        ErrorInterceptor(),
        AdmissionInterceptor(max_unary=1 << 20, max_streams=1 << 20),
        RpcMetricsInterceptor("gateway"),
    ):
        fn = interceptor.wrap(METHOD, fn, False)
    return fn


def perfref_handler() -> Any:
    """perfref's gateway ModelInfer (coalesce mode, one batch in flight) on the stand-in."""
    # Only its Coalescer: perfref's common.py imports tritonclient's protos, which clash with
    # ours in one descriptor pool.
    source = (PERFREF / "common.py").read_text()
    tree = ast.parse(source)
    found = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Coalescer"]
    scope: dict[str, Any] = {"asyncio": asyncio, "collections": collections, "time": time}
    exec(compile(ast.Module(body=found, type_ignores=[]), "perfref/common.py", "exec"), scope)
    coalescer_class = scope["Coalescer"]

    out_tensor = pb.ModelInferResponse.InferOutputTensor
    in_tensor = pb.ModelInferRequest.InferInputTensor

    async def run_batch(items: list[tuple[bytes, int]]) -> list[bytes]:
        n = sum(r for _, r in items)
        data = items[0][0] if len(items) == 1 else b"".join(d for d, _ in items)
        request = pb.ModelInferRequest(
            model_name="tabular",
            inputs=[in_tensor(name="INPUT0", datatype="FP32", shape=[n, FEATURES])],
            raw_input_contents=[data],
        )
        raw = (await router_stand_in(request)).raw_output_contents[0]
        view, outs, offset = memoryview(raw), [], 0
        for _, rows in items:
            outs.append(bytes(view[offset : offset + rows * 4 * OUTPUTS]))
            offset += rows * 4 * OUTPUTS
        return outs

    coalescer = coalescer_class(run_batch, 64, 0.0, 1, False)

    async def model_infer(request: pb.ModelInferRequest, _context: Any) -> pb.ModelInferResponse:
        rows = request.inputs[0].shape[0]
        out = await coalescer.submit(request.raw_input_contents[0], rows)
        return pb.ModelInferResponse(
            model_name="tabular",
            model_version="1",
            id=request.id,
            outputs=[out_tensor(name="OUTPUT0", datatype="FP32", shape=[rows, OUTPUTS])],
            raw_output_contents=[out],
        )

    return model_infer


def request() -> pb.ModelInferRequest:
    """What perf_analyzer sends: one raw FP32 tensor, its empty-final-response parameter."""
    built = pb.ModelInferRequest(model_name="tabular")
    built.inputs.add(name="INPUT0", datatype="FP32", shape=[1, FEATURES])
    built.raw_input_contents.append(np.zeros((1, FEATURES), np.float32).tobytes())
    built.parameters["triton_enable_empty_final_response"].bool_param = False
    return built


async def drive(handler: Any, requests: int, concurrency: int) -> float:
    """Thread CPU microseconds per request for ``requests`` requests at ``concurrency``."""
    payload = request().SerializeToString()
    context = Context((("user-agent", "grpc-c++/1.67"),))

    async def client(n: int) -> None:
        for _ in range(n):
            # Parsed per call, as gRPC's deserializer does before the handler runs.
            await handler(pb.ModelInferRequest.FromString(payload), context)

    started = time.thread_time()
    await asyncio.gather(*(client(requests // concurrency) for _ in range(concurrency)))
    return (time.thread_time() - started) / requests * 1e6


async def measure(requests: int, rounds: int) -> dict[tuple[str, int], list[float]]:
    handlers = {"suite": await suite_handler(), "perfref": perfref_handler()}
    results: dict[tuple[str, int], list[float]] = {}
    await drive(handlers["suite"], 1000, 64)  # warm: label children, lanes, caches
    for _ in range(rounds):
        for concurrency in (1, 64):
            for name, handler in handlers.items():  # alternating, round by round
                value = await drive(handler, requests, concurrency)
                results.setdefault((name, concurrency), []).append(value)
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    results = asyncio.run(measure(args.requests, args.rounds))
    load = os.getloadavg()[0]
    print(f"gateway Python path, thread CPU us/request (median of {args.rounds}), load {load:.1f}")
    for concurrency in (1, 64):
        suite = statistics.median(results[("suite", concurrency)])
        ref = statistics.median(results[("perfref", concurrency)])
        print(
            f"  c={concurrency:<3} suite {suite:6.1f}  perfref {ref:6.1f}  extra {suite - ref:6.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
