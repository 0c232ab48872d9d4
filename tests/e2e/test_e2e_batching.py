"""Dynamic batching through the real suite: concurrent requests to the gateway are served in
fewer model runs than requests (ModelStatistics says so), and every caller gets exactly what
ONNX Runtime answers for its own input."""

from __future__ import annotations

import asyncio

import numpy as np
import onnxruntime as ort

from modelserve.cli import demo_models
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.tensors import decode_outputs, encode_inputs

CONCURRENT = 32
# The demo's tabular version batches with max_queue_delay_us 0: batches form only from what
# queues while a run is in flight, so how much one burst coalesces depends on arrival order
# across three processes. A few bursts make "at least one batch of two" certain without
# asserting anything about time.
MAX_BURSTS = 5


async def tabular_statistics(gateway: pb_grpc.GRPCInferenceServiceStub) -> pb.ModelStatistics:
    reply = await gateway.ModelStatistics(pb.ModelStatisticsRequest(name="tabular"), timeout=10)
    (stats,) = reply.model_stats
    return stats


async def test_concurrent_requests_share_model_runs_and_get_their_own_answers(
    gateway: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    rng = np.random.default_rng(3)
    reference = ort.InferenceSession(
        demo_models.tabular().SerializeToString(), providers=["CPUExecutionProvider"]
    )
    before = await tabular_statistics(gateway)
    sent = 0
    for _ in range(MAX_BURSTS):
        feeds = [rng.standard_normal((1, 32)).astype(np.float32) for _ in range(CONCURRENT)]
        requests = []
        for x in feeds:
            request = pb.ModelInferRequest(model_name="tabular")
            encode_inputs(request, {"INPUT0": x})
            requests.append(request)
        replies = await asyncio.gather(*(gateway.ModelInfer(r, timeout=30) for r in requests))
        sent += CONCURRENT
        for x, reply in zip(feeds, replies, strict=True):
            (want,) = reference.run(["OUTPUT0"], {"INPUT0": x})
            np.testing.assert_allclose(decode_outputs(reply)["OUTPUT0"], want, rtol=1e-6)
        after = await tabular_statistics(gateway)
        executions = after.execution_count - before.execution_count
        inferences = after.inference_count - before.inference_count
        assert inferences == sent
        if executions < inferences:
            break
    print(f"{inferences} inferences in {executions} model runs")
    assert executions < inferences
    runs_by_size = {b.batch_size: b.compute_infer.count for b in after.batch_stats}
    assert any(size > 1 for size in runs_by_size), runs_by_size
    assert after.inference_stats.success.count - before.inference_stats.success.count == sent
