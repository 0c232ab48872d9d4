"""modelserve benchmark: one command, the whole suite, our V2 client and perf_analyzer.

    ./dev bench                                  # tabular + wide, c = 1, 4, 16, 64, 5 s each
    ./dev bench --smoke --perf-analyzer off      # CI: 1 s per point, c = 1 and 16, tabular
    ./dev bench --repeat 3 --gateway-args="--merge-enabled false"

For each model: ONNX Runtime in this process is the limit (batch 1 and the best batch); then
the suite starts (five processes on loopback) and ``bench/loadgen.py`` drives the gateway at
each concurrency (warmup, then a measured window), while the CPU of every service and the
server's ModelStatistics are read at the edges of the window; then perf_analyzer drives the
same points. The report (markdown and JSON) goes to ``--out``; the markdown is also printed.
Exit status: 0, or 1 when a point saw errors or perf_analyzer (if asked for) failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import ort_limit  # noqa: E402
import perf_analyzer  # noqa: E402
import probes  # noqa: E402
import report  # noqa: E402

from modelserve.cli import demo_models  # noqa: E402
from modelserve.cli.suite import Suite, start_suite  # noqa: E402
from modelserve.cli.up import prepare  # noqa: E402

# Saturation: one generator process busier than this (cores) is rerun as two processes.
CLIENT_SATURATED = 0.85


@dataclass(frozen=True)
class ModelSpec:
    name: str
    onnx: onnx.ModelProto
    input: str
    row_shape: list[int]


BUILDERS = {"tabular": demo_models.tabular, "wide": demo_models.wide}


def model_spec(name: str) -> ModelSpec:
    if name not in BUILDERS:
        raise SystemExit(f"unknown model {name!r}; bundled benchmark models: {', '.join(BUILDERS)}")
    model = BUILDERS[name]()
    first = model.graph.input[0]
    dims = [d.dim_value for d in first.type.tensor_type.shape.dim][1:]
    return ModelSpec(name, model, first.name, dims)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="tabular,wide", help="comma-separated (tabular, wide)")
    p.add_argument("--concurrency", default="1,4,16,64", help="comma-separated client tasks")
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=1.0, help="warmup seconds before each point")
    p.add_argument("--repeat", type=int, default=1, help="runs per point; medians reported")
    p.add_argument(
        "--client-procs",
        default="auto",
        help="generator processes: N, or auto (1; rerun as 2 when one process saturates)",
    )
    p.add_argument("--out", default=str(BENCH / "results"), help="report folder")
    p.add_argument("--smoke", action="store_true", help="CI: 1 s points, c=1,16, tabular only")
    p.add_argument("--perf-analyzer", choices=("auto", "off", "on"), default="auto")
    p.add_argument("--gateway-args", default="", help="extra gateway flags (one quoted string)")
    p.add_argument("--worker-args", default="", help="extra worker flags (one quoted string)")
    p.add_argument(
        "--floor",
        choices=("on", "off"),
        default="on",
        help="also drive a do-nothing grpc.aio server (bench/echo_server.py): the transport floor",
    )
    p.add_argument("--keep", action="store_true", help="keep the suite's data dir and logs")
    args = p.parse_args(argv)
    if args.smoke:
        args.models, args.concurrency, args.seconds, args.warmup = "tabular", "1,16", 1.0, 0.5
        args.repeat, args.floor = 1, "off"
    args.model_list = [m.strip() for m in args.models.split(",") if m.strip()]
    args.concurrency_list = [int(c) for c in args.concurrency.split(",") if c.strip()]
    return args


# --- our client ----------------------------------------------------------------------------


def _spawn_generators(
    address: str, spec: ModelSpec, concurrency: int, procs: int, model_name: str | None = None
) -> list[subprocess.Popen[str]]:
    shares = [concurrency // procs + (i < concurrency % procs) for i in range(procs)]
    gens = []
    for i, share in enumerate(s for s in shares if s):
        cfg = {
            "address": address,
            "model": model_name or spec.name,
            "input": spec.input,
            "row_shape": spec.row_shape,
            "concurrency": share,
            "seed": i,
        }
        gens.append(
            subprocess.Popen(
                [sys.executable, str(BENCH / "loadgen.py"), json.dumps(cfg)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    for gen in gens:
        assert gen.stdout is not None
        line = gen.stdout.readline().strip()
        if line != "READY":
            for g in gens:
                g.kill()
            raise RuntimeError(f"load generator failed to start (said {line!r}); see stderr")
    return gens


def _sleep_until(wall: float) -> None:
    time.sleep(max(wall - time.time(), 0))


def run_point(
    prober: probes.Prober,
    address: str,
    spec: ModelSpec,
    concurrency: int,
    procs: int,
    warmup: float,
    seconds: float,
    model_name: str | None = None,
) -> dict[str, Any]:
    gens = _spawn_generators(address, spec, concurrency, procs, model_name)
    t0 = time.time() + warmup
    t1 = t0 + seconds
    for gen in gens:
        assert gen.stdin is not None
        gen.stdin.write(f"{t0} {t1}\n")
        gen.stdin.flush()
    _sleep_until(t0)
    before = prober.snapshot(spec.name)
    _sleep_until(t1)
    after = prober.snapshot(spec.name)
    latencies: list[int] = []
    errors: dict[str, int] = {}
    client_cpu = 0.0
    for gen in gens:
        out, _ = gen.communicate(timeout=seconds + 60)
        result = json.loads(out.strip().splitlines()[-1])
        latencies += result["latencies_us"]
        client_cpu += result["cpu_seconds"]
        for code, n in result["errors"].items():
            errors[code] = errors.get(code, 0) + n
    lat = np.array(latencies or [0], dtype=np.float64) / 1e3
    return {
        "concurrency": concurrency,
        "client_procs": len(gens),
        "requests": len(latencies),
        "errors": errors,
        "infer_per_s": len(latencies) / seconds,
        "p50_ms": float(np.percentile(lat, 50)),
        "p90_ms": float(np.percentile(lat, 90)),
        "p99_ms": float(np.percentile(lat, 99)),
        "mean_ms": float(lat.mean()),
        "client_cpu_cores": client_cpu / seconds,
        **probes.window(before, after, len(latencies)),
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repeats (the first run's detail kept; every run's headline figures too)."""
    if len(runs) == 1:
        return {**runs[0], "runs": 1}
    out = dict(runs[0])
    for key in ("infer_per_s", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "client_cpu_cores"):
        out[key] = statistics.median(r[key] for r in runs)
    out["requests"] = sum(r["requests"] for r in runs)
    out["errors"] = {}
    for r in runs:
        for code, n in r["errors"].items():
            out["errors"][code] = out["errors"].get(code, 0) + n
    out["runs"] = len(runs)
    out["runs_infer_per_s"] = [r["infer_per_s"] for r in runs]
    out["runs_p50_ms"] = [r["p50_ms"] for r in runs]
    return out


def bench_model(
    args: argparse.Namespace, prober: probes.Prober, address: str, spec: ModelSpec
) -> list[dict[str, Any]]:
    auto = args.client_procs == "auto"
    points = []

    def measure(concurrency: int, procs: int) -> dict[str, Any]:
        runs = [
            run_point(prober, address, spec, concurrency, procs, args.warmup, args.seconds)
            for _ in range(args.repeat)
        ]
        point = summarize(runs)
        points.append(point)
        print(report.point_line(spec.name, point), flush=True)
        return point

    for c in args.concurrency_list:
        point = measure(c, 1 if auto else int(args.client_procs))
        # A generator using most of a core may be what limits the point: measure it again
        # with the tasks split over two processes (both rows are reported).
        if auto and c >= 2 and point["client_cpu_cores"] >= CLIENT_SATURATED:
            measure(c, 2)
    return points


def bench_floor(args: argparse.Namespace, spec: ModelSpec) -> list[dict[str, Any]]:
    """The same client against bench/echo_server.py: one do-nothing grpc.aio process."""
    server = subprocess.Popen(
        [sys.executable, str(BENCH / "echo_server.py")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        address = f"127.0.0.1:{int(server.stdout.readline())}"
        prober = probes.Prober(None, {"echo": server.pid})
        points = []
        for c in args.concurrency_list:
            point = run_point(prober, address, spec, c, 1, args.warmup, args.seconds, "echo")
            points.append(point)
            print(report.point_line("floor (echo server)", point), flush=True)
        return points
    finally:
        server.terminate()
        server.wait(10)


# --- perf_analyzer -------------------------------------------------------------------------


def bench_perf_analyzer(
    args: argparse.Namespace,
    prober: probes.Prober,
    address: str,
    spec: ModelSpec,
    tool: perf_analyzer.Tool,
    tmp: Path,
) -> dict[str, Any]:
    if tool.problem:
        return {"status": "unavailable", "reason": tool.problem, "points": []}
    points = []
    for c in args.concurrency_list:
        before = prober.snapshot(spec.name)
        point = perf_analyzer.run_point(
            tool, spec.name, address, c, args.seconds, tmp / f"pa-{spec.name}-{c}.csv"
        )
        # Over its whole run (all its windows): did the gateway merge its requests?
        server = probes.window(before, prober.snapshot(spec.name), 0)["server"]
        point["server"] = server
        points.append(point)
        print(report.pa_line(spec.name, point), flush=True)
    failed = [p for p in points if p["status"] != "ok"]
    status = "ok" if not failed else "failed"
    reason = "; ".join(f"c={p['concurrency']}: {p.get('reason')}" for p in failed) or None
    return {"status": status, "reason": reason, "points": points}


# --- the run -------------------------------------------------------------------------------


def _suite_args(args: argparse.Namespace) -> dict[str, list[str]]:
    return {
        "gateway": shlex.split(args.gateway_args),
        "worker": shlex.split(args.worker_args),
    }


def run(args: argparse.Namespace) -> int:
    specs = [model_spec(name) for name in args.model_list]
    machine = probes.machine_facts()
    print(
        f"modelserve bench: {machine['nproc']} cores, load {machine['loadavg_start'][0]:.2f}; "
        f"models {', '.join(args.model_list)}; c={args.concurrency}; {args.seconds:g}s/point",
        flush=True,
    )
    results: dict[str, Any] = {}
    for spec in specs:
        limit = ort_limit.measure(spec.onnx, spec.input, spec.row_shape, max(args.seconds / 2, 0.3))
        results[spec.name] = {"input": spec.input, "row_shape": spec.row_shape, "ort": limit}
        print(report.ort_line(spec.name, limit), flush=True)

    floor = bench_floor(args, specs[0]) if args.floor == "on" else []

    tool = (
        perf_analyzer.locate()
        if args.perf_analyzer != "off"
        else perf_analyzer.Tool(None, {}, "off (--perf-analyzer off)")
    )
    data_dir = Path(tempfile.mkdtemp(prefix="modelserve-bench-"))
    suite: Suite | None = None
    ok = False
    try:
        suite = start_suite(data_dir, extra_args=_suite_args(args))
        asyncio.run(prepare(suite, demo=True))
        address = suite.address("gateway")
        pids = {name: p.process.pid for name, p in suite.processes.items()}
        prober = probes.Prober(address, pids, suite.processes["worker"].metrics_port)
        try:
            for spec in specs:
                results[spec.name]["points"] = bench_model(args, prober, address, spec)
            for spec in specs:
                if args.perf_analyzer == "off":
                    results[spec.name]["perf_analyzer"] = {
                        "status": "off",
                        "reason": "--perf-analyzer off",
                        "points": [],
                    }
                else:
                    results[spec.name]["perf_analyzer"] = bench_perf_analyzer(
                        args, prober, address, spec, tool, data_dir
                    )
        finally:
            prober.close()
        ok = True
    finally:
        if suite is not None:
            suite.stop()
        if ok and not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            print(f"suite data and logs kept in {data_dir}", file=sys.stderr)

    machine["loadavg_end"] = list(os.getloadavg())
    config = {
        "models": args.model_list,
        "concurrency": args.concurrency_list,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "repeat": args.repeat,
        "client_procs": args.client_procs,
        "smoke": args.smoke,
        "perf_analyzer": args.perf_analyzer,
        "floor": args.floor,
        "gateway_args": args.gateway_args,
        "worker_args": args.worker_args,
        "command": " ".join(shlex.quote(a) for a in ["bench/run.py", *sys.argv[1:]]),
    }
    doc = report.build(machine, config, results, floor)
    paths = report.write(doc, Path(args.out))
    print()
    print(paths["markdown_text"])
    print(f"report: {paths['md']} and {paths['json']}")
    errors = any(p["errors"] for r in results.values() for p in r["points"])
    pa_failed = args.perf_analyzer == "on" and any(
        r["perf_analyzer"]["status"] != "ok" for r in results.values()
    )
    return 1 if errors or pa_failed else 0


def main(argv: list[str] | None = None) -> int:
    # SIGTERM unwinds like Ctrl-C, so the suite's processes are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
