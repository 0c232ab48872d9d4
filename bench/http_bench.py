"""The REST face's HTTP stacks side by side, with the gRPC figure, through the real suite.

Starts the suite (``start_suite``) whose gateway serves REST with the ``asyncio`` server
(httptools parser), plus one more gateway per other candidate (``--http-server aiohttp``)
on the same router, so every candidate answers through the same router and worker and the
runs can alternate without restarts. Then for each round, for each concurrency, for each
target in an order that rotates every round: C keep-alive connections (or C tasks on one
gRPC channel) send a JSON ``fraud`` infer ([1, 8] FP32, the same body every time) for
``--seconds`` after a warmup; completions, req/s, p50/p99 latency and the serving gateway
process's CPU time per answer (/proc, the figure other load moves least) are recorded. The
report gives the median over rounds of each figure and the 1-minute load average before and
after, because on a shared 2-core box the figures move with whatever else runs.

    PYTHONPATH=services python bench/http_bench.py [--rounds 3] [--seconds 4] [--json out.json]

The client is one Python process (uvloop): HTTP requests are prebuilt bytes over raw asyncio
streams (the client's per-request work is a write and a Content-Length read), gRPC requests
are prebuilt bytes on grpc.aio (as bench/loadgen.py). Both clients share the cores with the
suite, so absolute figures are lower than with a separate load machine; the comparison is
the point.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "services"))

from modelserve.cli.suite import Suite, start_suite  # noqa: E402
from modelserve.cli.up import prepare  # noqa: E402
from modelserve.proto.inference import grpc_service_pb2 as pb  # noqa: E402
from modelserve.tensors import encode_inputs  # noqa: E402

ROW = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
BODY = json.dumps(
    {"inputs": [{"name": "transaction", "datatype": "FP32", "shape": [1, 8], "data": [ROW]}]}
).encode()
METHOD = "/inference.GRPCInferenceService/ModelInfer"


def http_request(host: str) -> bytes:
    head = (
        f"POST /v2/models/fraud/infer HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
    )
    return head.encode() + BODY


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


class Driven(list[int]):
    """Latencies (ns) inside the window; ``total``: every answer, warmup included."""

    total = 0


async def drive_http(address: str, concurrency: int, warmup: float, seconds: float) -> Driven:
    host, port = address.rsplit(":", 1)
    payload = http_request(address)
    latencies = Driven()
    errors = 0
    loop = asyncio.get_running_loop()
    start = loop.time()
    t0, t1 = start + warmup, start + warmup + seconds

    async def one() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while True:
                sent = time.perf_counter_ns()
                writer.write(payload)
                status = await _read_response(reader)
                latencies.total += 1
                now = loop.time()
                if now >= t1:
                    return
                if now >= t0:
                    if status == 200:
                        latencies.append(time.perf_counter_ns() - sent)
                    else:
                        errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(one() for _ in range(concurrency)))
    if errors:
        raise RuntimeError(f"{address}: {errors} non-200 answers")
    return latencies


async def drive_grpc(address: str, concurrency: int, warmup: float, seconds: float) -> Driven:
    request = pb.ModelInferRequest(model_name="fraud")
    encode_inputs(request, {"transaction": np.asarray([ROW], np.float32)})
    payload = request.SerializeToString()
    latencies = Driven()
    loop = asyncio.get_running_loop()
    start = loop.time()
    t0, t1 = start + warmup, start + warmup + seconds
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(METHOD)

        async def one() -> None:
            while True:
                sent = time.perf_counter_ns()
                await call(payload, timeout=10)
                latencies.total += 1
                now = loop.time()
                if now >= t1:
                    return
                if now >= t0:
                    latencies.append(time.perf_counter_ns() - sent)

        await asyncio.gather(*(one() for _ in range(concurrency)))
    return latencies


def start_extra_gateway(suite: Suite, server: str) -> tuple[subprocess.Popen[bytes], int]:
    """Another gateway on the suite's router, serving REST with ``server``."""
    base = suite.processes["gateway"].command
    command = list(base)
    command[command.index("--port") + 1] = "0"
    command[command.index("--http-port") + 1] = "-1"
    command[command.index("--instance-id") + 1] = f"gateway-{server}-{os.getpid()}"
    port_file = suite.data_dir / f"gateway-{server}.port.json"
    command += ["--http-server", server, "--metrics-port", "-2", "--port-file", str(port_file)]
    log = (suite.data_dir / f"gateway-{server}.log").open("ab")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=suite.data_dir)
    end = time.monotonic() + 60
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > end:
            raise RuntimeError(f"gateway with {server} did not start (see its log)")
        time.sleep(0.05)
    info = json.loads(port_file.read_text())
    return proc, int(info["http_port"])


async def wait_http_ready(address: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            await drive_http(address, 1, 0.0, 0.05)
            return
        except (OSError, RuntimeError, asyncio.IncompleteReadError):
            if time.monotonic() > end:
                raise
            await asyncio.sleep(0.2)


TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` so far (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


def summary(latencies: Driven, seconds: float, cpu_s: float) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "rps": len(ordered) / seconds,
        "p50_ms": ordered[len(ordered) // 2] / 1e6,
        "p99_ms": ordered[int(len(ordered) * 0.99)] / 1e6,
        # The gateway's own CPU per answer: what the HTTP stack costs, and the figure least
        # moved by other work on the box (it counts only that process's time).
        "gateway_cpu_us": cpu_s / max(latencies.total, 1) * 1e6,
    }


async def measure(
    targets: dict[str, tuple[str, str, int]], rounds: int, seconds: float, warmup: float
) -> dict[str, Any]:
    runs: dict[str, dict[int, list[dict[str, float]]]] = {t: {1: [], 16: []} for t in targets}
    names = list(targets)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate who goes first
        for concurrency in (1, 16):
            for name in order:
                kind, address, pid = targets[name]
                drive = drive_grpc if kind == "grpc" else drive_http
                cpu0 = cpu_seconds(pid)
                latencies = await drive(address, concurrency, warmup, seconds)
                point = summary(latencies, seconds, cpu_seconds(pid) - cpu0)
                runs[name][concurrency].append(point)
                print(
                    f"round {r + 1} c={concurrency:<2} {name:<14} {point['rps']:8.0f} req/s "
                    f"p50 {point['p50_ms']:.2f} ms p99 {point['p99_ms']:.2f} ms "
                    f"gateway {point['gateway_cpu_us']:.0f} us CPU/req",
                    flush=True,
                )
    medians = {
        name: {
            c: {k: statistics.median(p[k] for p in points) for k in points[0]}
            for c, points in by_c.items()
        }
        for name, by_c in runs.items()
    }
    return {"runs": runs, "medians": medians}


def run_perf_analyzer(
    targets: dict[str, tuple[str, str, int]], rounds: int, seconds: float
) -> dict[str, Any]:
    """NVIDIA's client on the same targets: no Python client cost in the figure."""
    sys.path.insert(0, str(ROOT / "bench"))
    import perf_analyzer  # bench/perf_analyzer.py

    tool = perf_analyzer.locate(install=False)
    if tool.problem:
        print(f"perf_analyzer skipped: {tool.problem}")
        return {"status": "off", "reason": tool.problem}
    points: dict[str, dict[int, list[dict[str, Any]]]] = {t: {1: [], 16: []} for t in targets}
    names = list(targets)
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for concurrency in (1, 16):
                for name in order:
                    kind, address, pid = targets[name]
                    cpu0 = cpu_seconds(pid)
                    point = perf_analyzer.run_point(
                        tool, "fraud", address, concurrency, seconds,
                        Path(tmp) / f"{name}-{concurrency}-{r}.csv", protocol=kind,
                    )  # fmt: skip
                    point["gateway_cpu_s"] = cpu_seconds(pid) - cpu0
                    points[name][concurrency].append(point)
                    print(
                        f"perf_analyzer round {r + 1} c={concurrency:<2} {name:<14} "
                        f"{point.get('infer_per_s', 0):8.0f} infer/s "
                        f"p50 {point.get('p50_ms', 0):.2f} ms {point.get('status')}",
                        flush=True,
                    )
    medians = {
        name: {
            c: {
                k: statistics.median(p[k] for p in pts if p.get("status") == "ok")
                for k in ("infer_per_s", "p50_ms", "p99_ms")
                if any(p.get("status") == "ok" for p in pts)
            }
            for c, pts in by_c.items()
        }
        for name, by_c in points.items()
    }
    print("\nperf_analyzer medians:")
    print("| target | c=1 infer/s | c=1 p50 ms | c=16 infer/s | c=16 p50 ms | c=16 p99 ms |")
    print("|---|---|---|---|---|---|")
    for name, by_c in medians.items():
        one, many = by_c[1], by_c[16]
        print(
            f"| {name} | {one.get('infer_per_s', 0):.0f} | {one.get('p50_ms', 0):.2f} "
            f"| {many.get('infer_per_s', 0):.0f} | {many.get('p50_ms', 0):.2f} "
            f"| {many.get('p99_ms', 0):.2f} |"
        )
    return {"status": "ok", "points": points, "medians": medians}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--candidates", default="aiohttp", help="other http_server values")
    parser.add_argument("--json", default="", help="also write the figures here")
    parser.add_argument(
        "--perf-analyzer",
        action="store_true",
        help="also drive each target with perf_analyzer -i grpc|http (C++ client, binary "
        "tensors) at c=1 and 16, rounds alternating like ours",
    )
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="http-bench-"))
    suite = start_suite(data_dir)
    extra: list[subprocess.Popen[bytes]] = []
    try:
        uvloop.run(prepare(suite, demo=True))
        gateway_pid = suite.processes["gateway"].process.pid
        targets: dict[str, tuple[str, str, int]] = {
            "grpc": ("grpc", suite.address("gateway"), gateway_pid),
            "http-asyncio": ("http", suite.http_address(), gateway_pid),
        }
        for server in filter(None, args.candidates.split(",")):
            proc, port = start_extra_gateway(suite, server)
            extra.append(proc)
            targets[f"http-{server}"] = ("http", f"127.0.0.1:{port}", proc.pid)
        for _, address, _ in (t for t in targets.values() if t[0] == "http"):
            uvloop.run(wait_http_ready(address))
        load_before = os.getloadavg()[0]
        result = uvloop.run(measure(targets, args.rounds, args.seconds, args.warmup))
        result["load_average_1m"] = {"before": load_before, "after": os.getloadavg()[0]}
        result["cpus"] = os.cpu_count()
        print(f"\nmedians of {args.rounds} alternating rounds, {args.seconds:g} s each "
              f"(load average {load_before:.2f} -> {result['load_average_1m']['after']:.2f}, "
              f"{os.cpu_count()} CPUs):")  # fmt: skip
        print(
            "| target | c=1 req/s | c=1 p50 ms | c=1 gw CPU us/req | c=16 req/s | c=16 p50 ms "
            "| c=16 p99 ms | c=16 gw CPU us/req |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for name, by_c in result["medians"].items():
            one, many = by_c[1], by_c[16]
            print(
                f"| {name} | {one['rps']:.0f} | {one['p50_ms']:.2f} | {one['gateway_cpu_us']:.0f} "
                f"| {many['rps']:.0f} | {many['p50_ms']:.2f} | {many['p99_ms']:.2f} "
                f"| {many['gateway_cpu_us']:.0f} |"
            )
        if args.perf_analyzer:
            result["perf_analyzer"] = run_perf_analyzer(targets, args.rounds, args.seconds)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
    finally:
        for proc in extra:
            proc.terminate()
        for proc in extra:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        suite.stop()


if __name__ == "__main__":
    main()
