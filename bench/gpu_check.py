"""The prepared GPU check, for a session that is lent a GPU machine (the device tool).

Run there as: python bench/gpu_check.py --out $OUT (needs onnxruntime-gpu installed). Prints
and writes JSON: whether the CUDA execution provider really loads (not the silent CPU
fallback), the worker's ModelSession on CUDA with IO binding against a plain CPU session
(largest output difference), and rows/s for the `wide` model at batch 1..64 on CUDA with and
without IO binding, plus two models sharing one GPU under a per-version memory limit, and
the worker's GPU series (worker/gpu_metrics.py, needs nvidia-ml-py) as scraped after the runs.
Nothing here runs in CI: there is no GPU there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from prometheus_client import CollectorRegistry, generate_latest

from modelserve.cli.demo_models import tabular, wide
from worker import gpu_metrics
from worker.sessions import ModelSession


async def rows_per_second(session: ModelSession, name: str, width: int, batch: int) -> float:
    x = np.random.default_rng(0).standard_normal((batch, width)).astype(np.float32)
    for _ in range(5):
        await session.run({name: x})
    times = []
    for _ in range(30):
        start = time.perf_counter()
        await session.run({name: x})
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


async def main() -> dict[str, Any]:
    report: dict[str, Any] = {"available_providers": ort.get_available_providers()}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, model in (("wide", wide()), ("tabular", tabular())):
            paths[name] = Path(tmp) / f"{name}.onnx"
            paths[name].write_bytes(model.SerializeToString())
        cuda = await ModelSession.load(
            paths["wide"], model="wide", version=1, execution_provider="cuda", gpu_mem_limit=2 << 30
        )
        plain = await ModelSession.load(
            paths["wide"], model="wide", version=1, execution_provider="cuda", io_binding="off"
        )
        cpu = await ModelSession.load(
            paths["wide"], model="wide", version=1, execution_provider="cpu"
        )
        other = await ModelSession.load(
            paths["tabular"],
            model="tabular",
            version=1,
            execution_provider="cuda",
            gpu_mem_limit=256 << 20,
        )
        report["provider"] = cuda.execution_provider
        report["io_binding"] = cuda.io_binding
        x = np.random.default_rng(1).standard_normal((64, 512)).astype(np.float32)
        diff = np.abs(
            (await cuda.run({"INPUT0": x}))["OUTPUT0"] - (await cpu.run({"INPUT0": x}))["OUTPUT0"]
        ).max()
        report["max_abs_diff_cuda_vs_cpu"] = float(diff)
        report["rows_per_s"] = {
            label: {b: await rows_per_second(s, "INPUT0", 512, b) for b in (1, 8, 32, 64)}
            for label, s in (("cuda_iobinding", cuda), ("cuda_plain", plain), ("cpu", cpu))
        }
        tab = np.ones((8, 32), np.float32)
        report["second_model_on_same_gpu"] = (await other.run({"INPUT0": tab}))["OUTPUT0"].shape
        report["gpu_series"] = gpu_series()  # while the sessions still hold their memory
        for s in (cuda, plain, cpu, other):
            s.close()
    return report


def gpu_series() -> list[str]:
    """The worker's GPU series as a scrape shows them (empty: NVML absent or no GPU)."""
    registry = CollectorRegistry()
    if not gpu_metrics.install(registry):
        return []
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if line.startswith("modelserve_gpu_")]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    out_dir = parser.parse_args().out
    result = json.dumps(asyncio.run(main()), indent=2, default=str)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu_check.json").write_text(result)
    print(result)
