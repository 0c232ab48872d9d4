"""The benchmark's load generator: one process, C asyncio tasks (uvloop), one shared channel.

Run by ``bench/run.py`` as a child process so that its CPU is its own and several can run side
by side. Protocol on stdin/stdout, one line each:

1. argv[1] is a JSON config: address, model, input name, row shape, concurrency, timeout.
2. The child connects, sends one request, checks the reply and prints ``READY``.
3. The parent writes ``T0 T1`` (wall-clock seconds). Every task starts looping ModelInfer at
   once (warmup); completions inside [T0, T1] are measured; all tasks stop at T1.
4. The child prints one JSON line: latencies (µs), errors by status code, its own CPU seconds
   inside the window.

The request is serialized once and sent as bytes, and replies stay bytes (the first one is
decoded and checked): the client's per-request work is the gRPC call itself, nothing else.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any

import grpc
import numpy as np
import uvloop

from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.tensors import encode_inputs

METHOD = "/inference.GRPCInferenceService/ModelInfer"
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


def build_request(model: str, input_name: str, row_shape: list[int], seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((1, *row_shape)).astype(np.float32)
    request = pb.ModelInferRequest(model_name=model)
    encode_inputs(request, {input_name: data})
    return request.SerializeToString()


async def _measure(cfg: dict[str, Any]) -> dict[str, Any]:
    payload = build_request(cfg["model"], cfg["input"], cfg["row_shape"], cfg.get("seed", 0))
    timeout = float(cfg.get("timeout", 10.0))
    async with grpc.aio.insecure_channel(cfg["address"], options=CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary(METHOD)  # bytes in, bytes out
        first = pb.ModelInferResponse.FromString(await call(payload, timeout=timeout))
        if not first.outputs or not first.raw_output_contents:
            raise RuntimeError(f"{cfg['model']}: reply without outputs: {first}")
        print("READY", flush=True)
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        wall0, wall1 = (float(x) for x in line.split())
        offset = time.perf_counter() - time.time()
        t0, t1 = wall0 + offset, wall1 + offset
        latencies: list[int] = []
        errors: Counter[str] = Counter()
        cpu: dict[str, float] = {}

        async def loop() -> None:
            perf = time.perf_counter
            while True:
                start = perf()
                if start >= t1:
                    return
                try:
                    await call(payload, timeout=timeout)
                except grpc.aio.AioRpcError as exc:
                    if t0 <= perf() <= t1:
                        errors[exc.code().name] += 1
                    continue
                end = perf()
                if t0 <= end <= t1:
                    latencies.append(int((end - start) * 1e6))

        async def clock() -> None:
            await asyncio.sleep(max(t0 - time.perf_counter(), 0))
            cpu["start"] = time.process_time()
            await asyncio.sleep(max(t1 - time.perf_counter(), 0))
            cpu["end"] = time.process_time()

        await asyncio.gather(clock(), *(loop() for _ in range(int(cfg["concurrency"]))))
    return {
        "latencies_us": latencies,
        "errors": dict(errors),
        "cpu_seconds": cpu["end"] - cpu["start"],
        "window_seconds": wall1 - wall0,
    }


def main() -> int:
    cfg = json.loads(sys.argv[1])
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(_measure(cfg))
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
