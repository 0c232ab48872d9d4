"""What a production deployment's switches cost on the hot path, in one sitting (issue 14):
token auth, tracing with a parent-based 1 % sampler exporting OTLP to a local receiver, and
the V2 REST face, each beside the suite as ``modelserve up`` runs it.

Three suites run at once (plain, ``auth=True``, traced), with perfref's ``tabular`` and
``wide`` pushed into each; perf_analyzer (batch 1, sync) drives them in turn, point by point
and round by round: plain gRPC, auth gRPC (an infer token in ``authorization: Bearer``),
traced gRPC, plain REST (``-i http`` on :8000's port). Medians, the ratio of each to plain
gRPC, CPU us per request of each suite's processes, and the load average are printed. Issue
14's bars: auth and metrics <= 3 % each, tracing at 1 % <= 5 %, REST >= 0.8x of gRPC.
(Metrics are on in every variant; ``reference.py --suite-env MODELSERVE_RPC_METRICS=false``
measures them off.)

    .venv/bin/python bench/production_costs.py [--rounds 2] [--seconds 3] [--concurrency 1,64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "services"))
sys.path.insert(0, str(BENCH))

import grpc  # noqa: E402
from opentelemetry.proto.collector.trace.v1 import (  # noqa: E402
    trace_service_pb2,
    trace_service_pb2_grpc,
)
from perf_analyzer import locate, run_point  # noqa: E402
from reference import PERFREF, cpu_of, push_models  # noqa: E402

from modelserve.cli.suite import Suite, start_suite, wait_serving  # noqa: E402

HOPS = ("gateway", "router", "worker")


class OtlpSink(trace_service_pb2_grpc.TraceServiceServicer):
    """A local OTLP/gRPC trace receiver that counts what it is sent (the 'local receiver')."""

    def __init__(self) -> None:
        self.spans = 0

    async def Export(self, request: Any, context: Any) -> Any:
        self.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def start_sink() -> tuple[OtlpSink, int]:
    sink, bound = OtlpSink(), [0]
    ready = threading.Event()

    async def serve() -> None:
        server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
        bound[0] = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        ready.set()
        await server.wait_for_termination()

    threading.Thread(target=lambda: asyncio.run(serve()), daemon=True).start()
    ready.wait(10)
    return sink, bound[0]


async def push(suite: Suite, models: Path) -> None:
    await push_models(
        suite.address("registry"),
        suite.address("gateway"),
        models,
        admin_token=suite.token("admin") or "",
        infer_token=suite.token("infer") or "",
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--concurrency", default="1,64")
    p.add_argument("--models", default="tabular")
    args = p.parse_args()
    tool = locate()
    if tool.problem:
        print(f"perf_analyzer not runnable: {tool.problem}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="modelserve-costs-"))
    models = work / "models"
    subprocess.run(
        [sys.executable, str(PERFREF / "make_models.py")],
        check=True,
        cwd=PERFREF,
        env={**os.environ, "PERFREF_MODELS": str(models)},
        capture_output=True,
    )
    sink, sink_port = start_sink()
    traced_env = {
        "MODELSERVE_TRACE_EXPORTER": "otlp",
        # http:// makes the OTLP/gRPC exporter use a plaintext channel, as the sink serves.
        "MODELSERVE_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.01",
    }
    suites: dict[str, Suite] = {}
    try:
        suites["plain"] = start_suite(work / "plain", workers=1)
        suites["auth"] = start_suite(work / "auth", workers=1, auth=True)
        suites["traced"] = start_suite(work / "traced", workers=1, extra_env=traced_env)
        for suite in suites.values():
            asyncio.run(wait_serving(suite.address("gateway"), timeout=60, tls=None))
            asyncio.run(push(suite, models))
        # perf_analyzer also reads ModelStatistics (role read): the admin token holds every role.
        infer = suites["auth"].token("admin")
        variants: dict[str, tuple[Suite, str, str, list[str]]] = {
            "grpc": (suites["plain"], suites["plain"].address("gateway"), "grpc", []),
            "grpc+auth": (
                suites["auth"],
                suites["auth"].address("gateway"),
                "grpc",
                ["-H", f"authorization: Bearer {infer}"],
            ),
            "grpc+tracing 1%": (suites["traced"], suites["traced"].address("gateway"), "grpc", []),
            "rest": (suites["plain"], suites["plain"].http_address("gateway"), "http", []),
        }
        levels = [int(c) for c in args.concurrency.split(",")]
        results: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
        load_start = os.getloadavg()
        for _ in range(args.rounds):
            for model in args.models.split(","):
                for c in levels:
                    for name, (suite, address, protocol, extra) in variants.items():
                        pids = [suite.processes[h].process.pid for h in HOPS]
                        before = cpu_of(pids)
                        point = run_point(
                            tool, model, address, c, args.seconds, work / "p.csv", protocol, extra
                        )
                        point["cpu_s"] = cpu_of(pids) - before
                        results.setdefault((model, name, c), []).append(point)
        load_end = os.getloadavg()
        print(
            f"production switches vs plain gRPC, {args.rounds} round(s) of {args.seconds:g} s, "
            f"load {load_start[0]:.2f} -> {load_end[0]:.2f}; spans received {sink.spans}"
        )
        print("model      c  variant            inf/s   ratio  p50 ms  p99 ms  status")
        for model in args.models.split(","):
            for c in levels:
                base = _median(results[(model, "grpc", c)], "infer_per_s")
                for name in variants:
                    points = results[(model, name, c)]
                    rate = _median(points, "infer_per_s")
                    ratio = rate / base if rate and base else None
                    print(
                        f"{model:9s} {c:3d}  {name:16s} {_f(rate, 0):>7s}  {_f(ratio, 2):>5s}  "
                        f"{_f(_median(points, 'p50_ms'), 2):>6s}  "
                        f"{_f(_median(points, 'p99_ms'), 2):>6s}  "
                        f"{','.join(sorted({str(pt.get('status')) for pt in points}))}"
                    )
                    for pt in points:
                        if pt.get("status") != "ok":
                            print(f"    {name}: {pt.get('reason', '')[:300]}")
    finally:
        for suite in suites.values():
            suite.stop(timeout=5)
    return 0


def _median(points: list[dict[str, Any]], key: str) -> float | None:
    values = [pt[key] for pt in points if pt.get(key) is not None]
    return statistics.median(values) if values else None


def _f(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


if __name__ == "__main__":
    raise SystemExit(main())
