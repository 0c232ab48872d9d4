"""V2 statistics (Triton's ModelStatistics): the duration fields, and summing the answers of
several servers into one (a router asks every worker)."""

from __future__ import annotations

from collections.abc import Iterable

from modelserve.proto.inference import grpc_service_pb2 as pb

# InferStatistics fields: what a model run records, then the prediction cache's two.
EXECUTION_DURATIONS = (
    "success",
    "fail",
    "queue",
    "compute_input",
    "compute_infer",
    "compute_output",
)
INFER_DURATIONS = (*EXECUTION_DURATIONS, "cache_hit", "cache_miss")
BATCH_DURATIONS = ("compute_input", "compute_infer", "compute_output")  # InferBatchStatistics


def merge_statistics(responses: Iterable[pb.ModelStatisticsResponse]) -> pb.ModelStatisticsResponse:
    merged: dict[tuple[str, str], pb.ModelStatistics] = {}
    batches: dict[tuple[str, str, int], pb.InferBatchStatistics] = {}
    for response in responses:
        for stats in response.model_stats:
            key = (stats.name, stats.version)
            into = merged.get(key)
            if into is None:
                into = merged[key] = pb.ModelStatistics(name=stats.name, version=stats.version)
            into.last_inference = max(into.last_inference, stats.last_inference)
            into.inference_count += stats.inference_count
            into.execution_count += stats.execution_count
            for name in INFER_DURATIONS:
                src, dst = getattr(stats.inference_stats, name), getattr(into.inference_stats, name)
                dst.count += src.count
                dst.ns += src.ns
            for b in stats.batch_stats:
                bkey = (stats.name, stats.version, b.batch_size)
                target = batches.get(bkey)
                if target is None:
                    target = batches[bkey] = into.batch_stats.add(batch_size=b.batch_size)
                for name in BATCH_DURATIONS:
                    getattr(target, name).count += getattr(b, name).count
                    getattr(target, name).ns += getattr(b, name).ns
    return pb.ModelStatisticsResponse(
        model_stats=[merged[k] for k in sorted(merged, key=lambda k: (k[0], int(k[1] or 0)))]
    )
