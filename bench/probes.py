"""What the benchmark reads beside its own clock: machine facts, CPU time per process and for
the whole machine (/proc), and the server's V2 ModelStatistics through the gateway."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc

CLK_TCK = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("grpcio", "protobuf", "onnxruntime", "numpy", "uvloop", "onnx", "tritonclient")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def machine_facts() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "mem_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "versions": versions,
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        # Ties a run made on a dirty tree to the exact code: a hash of the uncommitted diff.
        "git_diff_sha256": hashlib.sha256(
            _git("diff", "HEAD", "--", "services").encode()
        ).hexdigest()[:12],
        "loadavg_start": list(os.getloadavg()),
    }


def process_cpu(pid: int) -> tuple[float, float, int]:
    """(user seconds, system seconds, context switches) of a process, all its threads."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0, 0
    switches = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            for line in Path(f"/proc/{pid}/task/{task}/status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    switches += int(line.split()[1])
    except OSError:  # a thread that ended while being read
        pass
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK, switches


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return total - idle, total


@dataclass
class Snapshot:
    at: float
    processes: dict[str, tuple[float, float, int]]
    machine: tuple[float, float]
    stats: dict[str, int]


class Prober:
    """Snapshots of CPU and server statistics at the edges of a measurement window."""

    def __init__(
        self, gateway: str | None, pids: dict[str, int], worker_metrics_port: int | None = None
    ) -> None:
        """``gateway`` None: CPU only (no server statistics to read)."""
        self._channel = grpc.insecure_channel(gateway) if gateway else None
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel) if self._channel else None
        self._pids = pids
        self._worker_metrics = (
            f"http://127.0.0.1:{worker_metrics_port}/metrics" if worker_metrics_port else None
        )

    def worker_calls(self, model: str) -> int | None:
        """ModelInfer calls the worker answered for ``model`` (its Prometheus counter): with
        gateway merging, one call carries several client requests."""
        if self._worker_metrics is None:
            return None
        try:
            with urllib.request.urlopen(self._worker_metrics, timeout=5) as reply:
                text = reply.read().decode()
        except OSError:
            return None
        total = 0.0
        for line in text.splitlines():
            if (
                line.startswith("modelserve_infer_requests_total{")
                and f'model="{model}"' in line
                and 'outcome="ok"' in line
            ):
                total += float(line.rsplit(" ", 1)[1])
        return int(total)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()

    def model_stats(self, model: str) -> dict[str, int]:
        if self._stub is None:
            return {}
        reply = self._stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=5)
        out = dict.fromkeys(
            (
                "inference_count",
                "execution_count",
                "success_count",
                "fail_count",
                "queue_ns",
                "infer_ns",
                "infer_count",
            ),
            0,
        )
        for m in reply.model_stats:
            s = m.inference_stats
            out["inference_count"] += m.inference_count
            out["execution_count"] += m.execution_count
            out["success_count"] += s.success.count
            out["fail_count"] += s.fail.count
            out["queue_ns"] += s.queue.ns
            out["infer_ns"] += s.compute_infer.ns
            out["infer_count"] += s.compute_infer.count
        return out

    def snapshot(self, model: str) -> Snapshot:
        processes = {name: process_cpu(pid) for name, pid in self._pids.items()}
        machine = machine_cpu()
        at = time.time()
        try:
            stats = self.model_stats(model)
        except grpc.RpcError:
            stats = {}
        calls = self.worker_calls(model)
        if stats and calls is not None:
            stats["worker_calls"] = calls
        return Snapshot(at, processes, machine, stats)


def window(before: Snapshot, after: Snapshot, requests: int) -> dict[str, Any]:
    """CPU per service (cores and µs per client request) and server statistics over a window."""
    seconds = max(after.at - before.at, 1e-9)
    cpu = {}
    for name, (user0, sys0, switches0) in before.processes.items():
        user1, sys1, switches1 = after.processes[name]
        used = user1 + sys1 - user0 - sys0
        cpu[name] = {
            "cores": used / seconds,
            "sys_share": (sys1 - sys0) / used if used > 0 else None,
            "us_per_request": used / requests * 1e6 if requests else None,
            "switches_per_request": (switches1 - switches0) / requests if requests else None,
        }
    busy = after.machine[0] - before.machine[0]
    total = after.machine[1] - before.machine[1]
    server: dict[str, Any] = {}
    if before.stats and after.stats:
        d = {k: after.stats[k] - before.stats[k] for k in after.stats}
        server = {
            "rows": d["inference_count"],
            "executions": d["execution_count"],
            "requests": d["success_count"],  # client requests, as the worker counts them
            "worker_calls": d.get("worker_calls"),
            "requests_per_worker_call": d["success_count"] / d["worker_calls"]
            if d.get("worker_calls")
            else None,
            "failures": d["fail_count"],
            "avg_batch": d["inference_count"] / d["execution_count"]
            if d["execution_count"]
            else None,
            "queue_us": d["queue_ns"] / d["success_count"] / 1e3 if d["success_count"] else None,
            "infer_us": d["infer_ns"] / d["infer_count"] / 1e3 if d["infer_count"] else None,
        }
    return {
        "cpu": cpu,
        "machine_busy": busy / total if total else None,
        "server": server,
    }
