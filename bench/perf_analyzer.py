"""NVIDIA's perf_analyzer (from the tritonclient==2.41.0 wheel) driving the gateway over gRPC.

The binary sits in the venv's bin/ beside python. It links two libraries the wheel does not
ship: ``libb64.so.0d`` (Debian's libb64-0d, system-wide: ``apt-get install libb64-0d``) and
``libcudart.so.12`` (PyPI's nvidia-cuda-runtime-cu12; no GPU is needed for gRPC). The CUDA
runtime goes into ``bench/.tools/cudart`` (gitignored), never into the project's
dependencies; ``bench/setup_perf_analyzer.sh`` installs both. When something is missing,
``locate`` says exactly what and how to fix it, and the report carries that reason.

This module only runs the binary; it never imports tritonclient (whose protobuf package
``inference`` would collide with modelserve's generated code in one process).
"""

from __future__ import annotations

import csv
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
TOOLS = BENCH / ".tools"
CUDART_TARGET = TOOLS / "cudart"
CUDART_PACKAGE = "nvidia-cuda-runtime-cu12"
SETUP = "bash bench/setup_perf_analyzer.sh"


@dataclass
class Tool:
    path: Path | None
    env: dict[str, str]
    problem: str | None  # None: ready to run


def _cudart_dirs() -> list[Path]:
    dirs = [CUDART_TARGET / "nvidia" / "cuda_runtime" / "lib"]
    for entry in sys.path:  # a venv that has the wheel installed anyway
        if entry:
            dirs.append(Path(entry) / "nvidia" / "cuda_runtime" / "lib")
    return [d for d in dirs if (d / "libcudart.so.12").exists()]


def _missing_libs(binary: Path, env: dict[str, str]) -> list[str]:
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=env, check=False)
    return re.findall(r"^\s*(\S+) => not found", out.stdout, re.MULTILINE)


def install_cudart() -> str | None:
    """pip-install the CUDA runtime into bench/.tools/cudart; returns an error or None."""
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--target", str(CUDART_TARGET)]
    done = subprocess.run([*cmd, CUDART_PACKAGE], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return f"pip install {CUDART_PACKAGE} failed: {done.stderr.strip()[-300:]}"
    return None


def locate(install: bool = True) -> Tool:
    """Find perf_analyzer and the libraries it needs; install the CUDA runtime if allowed."""
    binary = Path(sys.executable).parent / "perf_analyzer"
    env = dict(os.environ)
    if not binary.exists():
        return Tool(None, env, f"{binary} not found: tritonclient[grpc]==2.41.0 is not installed")
    missing = _missing_libs(binary, env)
    # libb64 needs root (apt); without it there is no point fetching the CUDA runtime.
    needs_cudart = "libcudart.so.12" in missing and "libb64.so.0d" not in missing
    if needs_cudart and not _cudart_dirs() and install:
        error = install_cudart()
        if error:
            return Tool(binary, env, f"libcudart.so.12 missing and {error}")
    extra = [str(d) for d in _cudart_dirs()]
    if extra:
        env["LD_LIBRARY_PATH"] = os.pathsep.join([*extra, env.get("LD_LIBRARY_PATH", "")]).rstrip(
            os.pathsep
        )
    missing = _missing_libs(binary, env)
    if missing:
        fixes = []
        if "libb64.so.0d" in missing:
            fixes.append("apt-get install libb64-0d")
        if "libcudart.so.12" in missing:
            fixes.append(f"pip install --target {CUDART_TARGET} {CUDART_PACKAGE}")
        fix = "; ".join(fixes) or "see ldd"
        return Tool(binary, env, f"missing {', '.join(missing)} (fix: {fix}, or run {SETUP})")
    return Tool(binary, env, None)


def run_point(
    tool: Tool,
    model: str,
    address: str,
    concurrency: int,
    seconds: float,
    out_csv: Path,
    protocol: str = "grpc",
    extra_args: Sequence[str] = (),
) -> dict[str, Any]:
    """One perf_analyzer run at one concurrency, batch 1 (``protocol`` grpc, or http for the
    REST face); its CSV and stdout parsed."""
    assert tool.path is not None
    interval_ms = max(int(seconds * 1000), 500)
    cmd = [
        str(tool.path),
        "-m",
        model,
        "-u",
        address,
        "-i",
        protocol,
        "-b",
        "1",
        "--concurrency-range",
        f"{concurrency}:{concurrency}",
        "--measurement-interval",
        str(interval_ms),
        # A shared 2-core box is noisy: accept windows within 50% of each other, at most 6.
        "--stability-percentage",
        "50",
        "--max-trials",
        "6",
        "-f",
        str(out_csv),
        *extra_args,
    ]
    shown = " ".join(["perf_analyzer", *cmd[1:]])
    started, usage = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, env=tool.env, timeout=interval_ms * 8 / 1000 + 30
        )
    except subprocess.TimeoutExpired:
        return {
            "concurrency": concurrency,
            "status": "failed",
            "command": shown,
            "reason": "timeout",
        }
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
    result: dict[str, Any] = {
        "concurrency": concurrency,
        "command": shown,
        "rc": done.returncode,
        "client_cpu_cores": cpu / wall,  # perf_analyzer's own CPU over its whole run
    }
    if done.returncode != 0 or not out_csv.exists():
        tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
        result.update(status="failed", reason=" | ".join(tail) or f"exit {done.returncode}")
        return result
    with out_csv.open() as f:
        row = next(csv.DictReader(f))
    result.update(
        status="ok",
        infer_per_s=float(row["Inferences/Second"]),
        p50_ms=float(row["p50 latency"]) / 1e3,
        p90_ms=float(row["p90 latency"]) / 1e3,
        p99_ms=float(row["p99 latency"]) / 1e3,
    )
    for key, pattern in (
        ("avg_ms", r"Avg latency: (\d+) usec"),
        ("server_inference_count", r"Inference count: (\d+)"),
        ("server_execution_count", r"Execution count: (\d+)"),
        ("server_request_count", r"Successful request count: (\d+)"),
    ):
        found = re.search(pattern, done.stdout)
        if found:
            value = int(found.group(1))
            result[key] = value / 1e3 if key == "avg_ms" else value
    return result
