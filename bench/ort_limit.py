"""The limit: the same ONNX model run by ONNX Runtime in this process, no gRPC, no hops.

Batch 1 gives the latency floor and the one-at-a-time throughput; the best batch (1..64 rows)
gives the rows/s ceiling a server batching perfectly could approach on this machine.
Throughputs are taken from the median run time (rows / p50), so that a few runs preempted by
other work on a shared machine do not lower the limit; the mean-based figures are kept too.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

BATCHES = (1, 2, 4, 8, 16, 32, 64)


def _session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _run_for(
    session: ort.InferenceSession, feed: dict[str, np.ndarray], seconds: float
) -> list[float]:
    times: list[float] = []
    perf = time.perf_counter
    end = perf() + seconds
    while True:
        start = perf()
        if start >= end and len(times) >= 20:
            return times
        session.run(None, feed)
        times.append(perf() - start)


def measure(
    model: onnx.ModelProto, input_name: str, row_shape: list[int], seconds: float, threads: int = 2
) -> dict[str, Any]:
    """Batch-1 latency/throughput and the best batch's rows/s, ``seconds`` per measurement."""
    session = _session(model, threads)
    rng = np.random.default_rng(0)
    data = rng.standard_normal((max(BATCHES), *row_shape)).astype(np.float32)
    _run_for(session, {input_name: data[:1]}, min(seconds, 0.5))  # warm the arena
    b1 = np.array(_run_for(session, {input_name: data[:1]}, seconds))
    batches = []
    for batch in BATCHES:
        feed = {input_name: data[:batch]}
        _run_for(session, feed, min(seconds / 4, 0.2))
        times = _run_for(session, feed, seconds / 2)
        p50 = float(np.percentile(times, 50))
        batches.append(
            {
                "batch": batch,
                "rows_per_s": batch / p50,
                "rows_per_s_mean": batch * len(times) / sum(times),
                "p50_ms": p50 * 1e3,
            }
        )
    best = max(batches, key=lambda b: b["rows_per_s"])
    return {
        "intra_op_threads": threads,
        "batch1": {
            "runs": len(b1),
            "infer_per_s": 1 / float(np.percentile(b1, 50)),
            "infer_per_s_mean": len(b1) / float(b1.sum()),
            "p50_ms": float(np.percentile(b1, 50) * 1e3),
            "p99_ms": float(np.percentile(b1, 99) * 1e3),
        },
        "batches": batches,
        "best": {"batch": best["batch"], "rows_per_s": best["rows_per_s"]},
    }
