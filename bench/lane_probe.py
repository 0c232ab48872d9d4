"""What one internal call costs grpc.aio: a unary RPC against a message pair on an open
bidirectional stream, CPU of both processes per call and the round trip, with ``--lanes``
callers each keeping one call in flight (the gateway's merge lanes keep one each).

The evidence behind the stream lane (gateway/stream_lane.py, worker/lane.py). The server
answers a fixed ModelInferResponse; the request is a 4-row tabular ModelInferRequest; both
sides run uvloop, as the services do. Server CPU per call includes its warm-up run.

    .venv/bin/python bench/lane_probe.py [--calls 5000] [--lanes 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "services"))

import grpc  # noqa: E402

from modelserve.proto.inference import grpc_service_pb2 as pb  # noqa: E402

UNARY, STREAM = "/probe.Probe/Unary", "/probe.Probe/Stream"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def serve(port: int) -> None:
    answer = pb.ModelInferResponse(model_name="tabular", model_version="1")
    answer.outputs.add(name="OUTPUT0", datatype="FP32", shape=[4, 1])
    answer.raw_output_contents.append(b"\0" * 16)

    async def unary(_request: pb.ModelInferRequest, _context: Any) -> pb.ModelInferResponse:
        return answer

    async def stream(requests: Any, _context: Any) -> Any:
        async for _ in requests:
            yield answer

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(
            unary, pb.ModelInferRequest.FromString, pb.ModelInferResponse.SerializeToString
        ),
        "Stream": grpc.stream_stream_rpc_method_handler(
            stream, pb.ModelInferRequest.FromString, pb.ModelInferResponse.SerializeToString
        ),
    }
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("probe.Probe", handlers),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("READY", flush=True)
    await server.wait_for_termination()


async def drive(port: int, mode: str, calls: int, lanes: int) -> None:
    request = pb.ModelInferRequest(model_name="tabular", model_version="1")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[4, 32])
    request.raw_input_contents.append(b"\0" * 512)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    unary = channel.unary_unary(
        UNARY, pb.ModelInferRequest.SerializeToString, pb.ModelInferResponse.FromString
    )
    stream = channel.stream_stream(
        STREAM, pb.ModelInferRequest.SerializeToString, pb.ModelInferResponse.FromString
    )

    async def by_unary() -> None:
        for _ in range(calls):
            await unary(request, timeout=30, metadata=())

    async def by_stream() -> None:
        call = stream()
        for _ in range(calls):
            await call.write(request)
            await call.read()
        await call.done_writing()

    lane = by_unary if mode == "unary" else by_stream
    await asyncio.gather(*(lane() for _ in range(lanes)))  # warm-up
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(lanes)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"{cpu / (calls * lanes) * 1e6:.1f} {wall / calls * 1e6:.1f}", flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=5000)
    p.add_argument("--lanes", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--role", choices=["main", "server", "client"], default="main")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--mode", default="unary")
    args = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if args.role == "server":
        asyncio.run(serve(args.port))
        return 0
    if args.role == "client":
        asyncio.run(drive(args.port, args.mode, args.calls, args.lanes))
        return 0
    print(f"per call, {args.calls} calls x {args.lanes} lane(s), load {os.getloadavg()[0]:.1f}")
    for round_no in range(args.rounds):
        for mode in ("unary", "stream"):
            port = free_port()
            me = [sys.executable, __file__, "--port", str(port)]
            server = subprocess.Popen([*me, "--role", "server"], stdout=subprocess.PIPE, text=True)
            assert server.stdout is not None
            server.stdout.readline()
            before = cpu_seconds(server.pid)
            client = subprocess.run(
                [*me, "--role", "client", "--mode", mode, "--calls", str(args.calls),
                 "--lanes", str(args.lanes)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            server_cpu = (cpu_seconds(server.pid) - before) / (2 * args.calls * args.lanes)
            server.kill()
            client_cpu, round_trip = client.stdout.split()
            print(
                f"  round {round_no} {mode:<6} client CPU {client_cpu} us  server CPU "
                f"{server_cpu * 1e6:.1f} us  round trip {round_trip} us"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
