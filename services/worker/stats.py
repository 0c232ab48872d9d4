"""Per-version inference statistics in V2's ModelStatistics shape (cumulative counts and ns).

Triton's semantics: per request, success/fail and the queue and compute durations (a request
counts the whole duration of the batch it ran in), ``inference_count`` += its rows; per model
run, ``execution_count`` += 1 and ``batch_stats`` by the run's rows. With batching,
``execution_count < inference_count``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.v2.statistics import EXECUTION_DURATIONS


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class VersionStats:
    model: str
    version: int
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, tuple[Duration, Duration, Duration]] = field(default_factory=dict)

    def record_request(
        self,
        *,
        rows: int,
        total_ns: int,
        queue_ns: int,
        input_ns: int,
        infer_ns: int,
        output_ns: int,
        requests: int = 1,
    ) -> None:
        """One successful request: ``total_ns`` end to end in the worker, the rest as Triton
        counts them (compute_* are the durations of the model run the request was part of).

        ``requests`` > 1 when the gateway merged that many client requests into this one:
        each counts, with the durations they shared, so statistics speak of client requests.
        """
        self.last_inference_ms = int(time.time() * 1000)
        self.inference_count += rows
        self.success.add(total_ns * requests, requests)
        self.queue.add(queue_ns * requests, requests)
        self.compute_input.add(input_ns * requests, requests)
        self.compute_infer.add(infer_ns * requests, requests)
        self.compute_output.add(output_ns * requests, requests)

    def record_execution(self, *, rows: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One model run of ``rows`` rows (a batch of one or more requests)."""
        self.execution_count += 1
        per_batch = self.batches.setdefault(rows, (Duration(), Duration(), Duration()))
        per_batch[0].add(input_ns)
        per_batch[1].add(infer_ns)
        per_batch[2].add(output_ns)

    def record_failure(self, total_ns: int, requests: int = 1) -> None:
        self.fail.add(total_ns * requests, requests)

    def to_proto(self) -> pb.ModelStatistics:
        out = pb.ModelStatistics(
            name=self.model,
            version=str(self.version),
            last_inference=self.last_inference_ms,
            inference_count=self.inference_count,
            execution_count=self.execution_count,
        )
        s = out.inference_stats
        for name in EXECUTION_DURATIONS:
            d: Duration = getattr(self, name)
            getattr(s, name).count = d.count
            getattr(s, name).ns = d.ns
        for size in sorted(self.batches):
            ci, cf, co = self.batches[size]
            b = out.batch_stats.add(batch_size=size)
            b.compute_input.count, b.compute_input.ns = ci.count, ci.ns
            b.compute_infer.count, b.compute_infer.ns = cf.count, cf.ns
            b.compute_output.count, b.compute_output.ns = co.count, co.ns
        return out
