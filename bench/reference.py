"""The suite beside ``../shared/perfref`` (the minimal 3-process V2 chain), in one sitting.

Starts perfref (its ``start.sh``) and the suite (``start_suite``, as ``modelserve up`` runs
it, without the demo models), pushes perfref's two model files into the suite under the same
names, then drives both endpoints with perf_analyzer (batch 1, sync, fixed concurrency),
alternating suite and reference point by point and round by round, and prints medians, the
suite/reference ratio, the verdict against issue 14's targets and the load average (a busy
box shifts even same-sitting ratios: measure alone). It also prints how many client requests
each worker call carried in both chains (the suite's gateway and worker counters; perfref's
gateway STATS line on SIGUSR1): merging is where the chains differ most at load.

    .venv/bin/python bench/reference.py [--rounds 2] [--seconds 3] [--concurrency 1,16,64]
    .venv/bin/python bench/reference.py --smoke     # CI: 1 s points, asserts nothing on speed
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "services"))
sys.path.insert(0, str(BENCH))

import grpc  # noqa: E402
from perf_analyzer import locate, run_point  # noqa: E402

from modelserve.auth.client import bearer  # noqa: E402
from modelserve.cli.registry_client import push_version  # noqa: E402
from modelserve.cli.suite import start_suite, wait_serving  # noqa: E402
from modelserve.proto.inference import grpc_service_pb2 as pb  # noqa: E402
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc  # noqa: E402
from modelserve.proto.modelserve.v1 import registry_pb2_grpc  # noqa: E402

PERFREF = Path(os.environ.get("PERFREF_DIR", ROOT.parent / "shared" / "perfref"))
REFERENCE = "127.0.0.1:9101"
# Targets (issue 14): c=64 throughput >= 1.0x perfref; c=1 p50 <= 1.1x perfref.
THROUGHPUT_TARGET, LATENCY_TARGET = 1.0, 1.1
TAIL_TARGET = 1.2  # c=16 p99 <= 1.2x perfref
HOPS = ("gateway", "router", "worker")  # perfref's start.sh prints its PIDs in this order


def start_reference(models: Path, logs: Path | None = None) -> list[int]:
    env = {**os.environ, "PY": sys.executable, "PERFREF_MODELS": str(models)}
    if logs is not None:
        logs.mkdir(parents=True, exist_ok=True)
        env["PERFREF_LOGS"] = str(logs)
    done = subprocess.run(
        ["bash", str(PERFREF / "start.sh")], capture_output=True, text=True, env=env, timeout=300
    )
    if done.returncode != 0:
        raise RuntimeError(f"perfref did not start: {done.stderr.strip()[-500:]}")
    return [int(p) for p in done.stdout.split()]


async def push_models(
    registry: str, gateway: str, models: Path, *, admin_token: str = "", infer_token: str = ""
) -> None:
    """Push perfref's two models (tokens for a suite with auth on) and wait until READY."""
    interceptors = bearer(lambda: admin_token) if admin_token else None
    async with grpc.aio.insecure_channel(registry, interceptors=interceptors) as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        for name in ("tabular", "wide"):
            # The suite's defaults (dynamic batching, merging): what `modelserve up` serves.
            await push_version(stub, name, models / f"{name}.onnx", labels=["production"])
    metadata = (("authorization", f"Bearer {infer_token}"),) if infer_token else None
    async with grpc.aio.insecure_channel(gateway) as channel:
        v2 = pb_grpc.GRPCInferenceServiceStub(channel)
        deadline = time.monotonic() + 180
        for name in ("tabular", "wide"):
            while True:
                try:
                    request = pb.ModelReadyRequest(name=name)
                    if (await v2.ModelReady(request, timeout=2, metadata=metadata)).ready:
                        break
                except grpc.aio.AioRpcError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} not READY in the suite")
                await asyncio.sleep(0.2)


def metric_sum(port: int | None, name: str, model: str) -> float | None:
    """The sum of ``name``'s samples for ``model`` on a suite process's metrics port."""
    if port is None:
        return None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    label = f'model="{model}"'
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and label in line
    )


_STATS = re.compile(r"STATS gateway (\w+) batches=(\d+) items=(\d+)")


def perfref_merge_counts(gateway_pid: int, log: Path, model: str) -> tuple[int, int] | None:
    """(calls, requests) perfref's gateway has sent for ``model`` so far: SIGUSR1 makes it
    print a STATS line per model (perfref/gateway.py)."""
    try:
        before = log.read_text().count("STATS gateway")
        os.kill(gateway_pid, signal.SIGUSR1)
    except OSError:
        return None
    for _ in range(50):
        text = log.read_text()
        if text.count("STATS gateway") >= before + 2:  # one line per model
            found = [m for m in _STATS.finditer(text) if m.group(1) == model]
            return (int(found[-1].group(2)), int(found[-1].group(3))) if found else None
        time.sleep(0.02)
    return None


def cpu_of(pids: list[int]) -> float:
    """User+system CPU seconds of ``pids`` so far (/proc)."""
    total = 0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / tick


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--concurrency", default="1,16,64")
    p.add_argument("--models", default="tabular,wide")
    p.add_argument("--smoke", action="store_true", help="1 s points, one round, tabular, c=1")
    p.add_argument("--json", default="", help="write the results here too")
    p.add_argument(
        "--suite-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment of the suite's processes (repeatable), e.g. MODELSERVE_RPC_METRICS=false",
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="also run a second suite with these settings on top of --suite-env (repeatable), "
        "measured in the same alternation: an A/B of a setting in one sitting",
    )
    args = p.parse_args()
    if args.smoke:
        args.rounds, args.seconds, args.concurrency, args.models = 1, 1.0, "1", "tabular"
    tool = locate()
    if tool.problem:
        print(f"perf_analyzer not runnable: {tool.problem}", file=sys.stderr)
        return 2
    if not (PERFREF / "start.sh").exists():
        print(f"no perfref at {PERFREF} (set PERFREF_DIR)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="modelserve-reference-"))
    models = work / "models"
    ref_logs = work / "perfref-logs"
    ref_pids = start_reference(models, ref_logs)
    suite_env = dict(item.split("=", 1) for item in args.suite_env)
    suite = start_suite(work / "suite", workers=1, extra_env=suite_env)
    variant = None
    if args.variant:
        variant_env = {**suite_env, **dict(item.split("=", 1) for item in args.variant)}
        variant = start_suite(work / "variant", workers=1, extra_env=variant_env)
    try:
        suites = {"suite": suite} if variant is None else {"suite": suite, "variant": variant}
        for each in suites.values():
            for name in ("registry", "featurestore", "worker", "router", "gateway"):
                asyncio.run(wait_serving(each.address(name), timeout=60))
            asyncio.run(push_models(each.address("registry"), each.address("gateway"), models))
        # Per hop, in chain order; the suite's registry and featurestore count in its chain total.
        targets = {
            name: (
                each.address("gateway"),
                {n: each.processes[n].process.pid for n in HOPS},
                [s.process.pid for n, s in each.processes.items() if n not in HOPS],
            )
            for name, each in suites.items()
        }
        targets["perfref"] = (REFERENCE, dict(zip(HOPS, ref_pids, strict=True)), [])

        def merge_counts(name: str, model: str) -> tuple[float, float] | None:
            """(worker calls, client requests) so far, for requests per worker call."""
            if name == "perfref":
                return perfref_merge_counts(ref_pids[0], ref_logs / "gateway.log", model)
            processes = suites[name].processes
            calls = metric_sum(
                processes["worker"].metrics_port, "modelserve_infer_requests_total", model
            )
            requests = metric_sum(
                processes["gateway"].metrics_port, "modelserve_model_requests_total", model
            )
            return None if calls is None or requests is None else (calls, requests)

        results: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
        order = list(targets)
        for round_no in range(args.rounds):
            for model in args.models.split(","):
                for c in (int(x) for x in args.concurrency.split(",")):
                    for name in order if round_no % 2 == 0 else list(reversed(order)):
                        address, hops, rest = targets[name]
                        pids = [*hops.values(), *rest]
                        hop0 = {h: cpu_of([pid]) for h, pid in hops.items()}
                        merges0 = merge_counts(name, model)
                        cpu0, wall0 = cpu_of(pids), time.perf_counter()
                        point = run_point(
                            tool, model, address, c, args.seconds, work / f"{name}-{model}-{c}.csv"
                        )
                        used, wall = cpu_of(pids) - cpu0, time.perf_counter() - wall0
                        merges1 = merge_counts(name, model)
                        if merges0 and merges1 and merges1[0] > merges0[0]:
                            point["requests_per_call"] = (merges1[1] - merges0[1]) / (
                                merges1[0] - merges0[0]
                            )
                        # perf_analyzer keeps the load on for its whole run: requests ~ rate x wall
                        count = (point.get("infer_per_s") or 0) * wall
                        point["cpu_us_per_request"] = used / count * 1e6 if count else None
                        for h, pid in hops.items():
                            hop_used = cpu_of([pid]) - hop0[h]
                            point[f"cpu_us_{h}"] = hop_used / count * 1e6 if count else None
                        results.setdefault((name, model, c), []).append(point)
        load = os.getloadavg()
    finally:
        suite.stop(timeout=20)
        if variant is not None:
            variant.stop(timeout=20)
        for pid in ref_pids:
            try:
                os.kill(pid, 15)
            except OSError:
                pass
        shutil.rmtree(work, ignore_errors=True)
    print(report(results, args, load))
    if variant is not None:
        print(f"\nvariant ({' '.join(args.variant)}), measured in the same alternation:")
        print(report(results, args, load, name="variant"))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"|".join(map(str, k)): v for k, v in results.items()}, indent=2)
        )
    return 0


def _median(points: list[dict[str, Any]], key: str) -> float | None:
    values = [p[key] for p in points if p.get(key) is not None]
    return statistics.median(values) if values else None


def report(
    results: dict[tuple[str, str, int], list[dict[str, Any]]],
    args: Any,
    load: Any,
    name: str = "suite",
) -> str:
    lines = [
        f"suite vs perfref, {args.rounds} alternating round(s) of {args.seconds:g} s points, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        f"{'model':<8} {'c':>3} {'suite inf/s':>11} {'ref inf/s':>10} {'ratio':>6} "
        f"{'suite p50':>10} {'ref p50':>8} {'ratio':>6} {'suite p99':>10} {'ref p99':>8} "
        f"{'ratio':>6} {'cpu us/req s/r':>16}  verdict",
    ]
    models = sorted({m for _, m, _ in results})
    concurrencies = sorted({c for _, _, c in results})
    for model in models:
        for c in concurrencies:
            s, r = results.get((name, model, c), []), results.get(("perfref", model, c), [])
            s_tp, r_tp = _median(s, "infer_per_s"), _median(r, "infer_per_s")
            s_p50, r_p50 = _median(s, "p50_ms"), _median(r, "p50_ms")
            s_p99, r_p99 = _median(s, "p99_ms"), _median(r, "p99_ms")
            tail = s_p99 / r_p99 if s_p99 and r_p99 else None
            s_cpu, r_cpu = _median(s, "cpu_us_per_request"), _median(r, "cpu_us_per_request")
            tp = s_tp / r_tp if s_tp and r_tp else None
            lat = s_p50 / r_p50 if s_p50 and r_p50 else None
            if c == 1:
                verdict = "-" if lat is None else ("met" if lat <= LATENCY_TARGET else "missed")
            else:
                verdict = "-" if tp is None else ("met" if tp >= THROUGHPUT_TARGET else "missed")
            if c == 16 and tail is not None:  # and the tail bar
                verdict += "; p99 " + ("met" if tail <= TAIL_TARGET else "missed")
            lines.append(
                f"{model:<8} {c:>3} {_f(s_tp, 0):>11} {_f(r_tp, 0):>10} {_f(tp, 2):>6} "
                f"{_f(s_p50, 2):>10} {_f(r_p50, 2):>8} {_f(lat, 2):>6} "
                f"{_f(s_p99, 2):>10} {_f(r_p99, 2):>8} {_f(tail, 2):>6} "
                f"{_f(s_cpu, 0):>7}/{_f(r_cpu, 0):<8}  {verdict}"
            )
    lines.append(
        "targets: c>1 throughput >= 1.0x perfref, c=1 p50 <= 1.1x perfref, c=16 p99 <= 1.2x "
        "perfref (issue 14); cpu is all processes of each chain together"
    )
    lines.append("CPU us per request by hop, suite/perfref (medians):")
    for model in models:
        for c in concurrencies:
            s, r = results.get((name, model, c), []), results.get(("perfref", model, c), [])
            cells = [
                f"{hop} {_f(_median(s, f'cpu_us_{hop}'), 0)}/{_f(_median(r, f'cpu_us_{hop}'), 0)}"
                for hop in HOPS
            ]
            lines.append(f"  {model:<8} {c:>3}  " + "  ".join(cells))
    lines.append("client requests per worker call, suite/perfref (medians):")
    for model in models:
        cells = []
        for c in concurrencies:
            s, r = results.get((name, model, c), []), results.get(("perfref", model, c), [])
            s_m, r_m = _median(s, "requests_per_call"), _median(r, "requests_per_call")
            cells.append(f"c={c} {_f(s_m, 1)}/{_f(r_m, 1)}")
        lines.append(f"  {model:<8} " + "  ".join(cells))
    return "\n".join(lines)


def _f(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


if __name__ == "__main__":
    sys.exit(main())
