"""RED metrics at every hop, scraped from the running suite: every service's /metrics passes
``promtool check metrics``; a request the gateway rejects shows in its error series (per RPC
and per model version); the router, the worker and the canary counters carry the call."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from testsupport import eventually

from modelserve.cli.suite import Suite
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.tensors import encode_inputs

PROMTOOL = shutil.which("promtool") or str(Path(sys.executable).parent / "promtool")


def scrape(suite: Suite, name: str) -> str:
    port = suite.processes[name].metrics_port
    assert port, f"{name} serves no metrics port"
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.rindex("}")]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_rejections_and_answers_appear_in_every_hops_series(
    suite: Suite, gateway: pb_grpc.GRPCInferenceServiceStub
) -> None:
    good = pb.ModelInferRequest(model_name="fraud")
    encode_inputs(good, {"transaction": np.zeros((1, 8), np.float32)})
    bad = pb.ModelInferRequest(model_name="fraud")
    encode_inputs(bad, {"transaction": np.zeros((1, 8), np.float64)})  # FP64 for FP32
    before = value(
        scrape(suite, "gateway"),
        "modelserve_rpc_requests_total",
        service="gateway",
        method="ModelInfer",
        code="INVALID_ARGUMENT",
    )
    answer = await gateway.ModelInfer(good, timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.ModelInfer(bad, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    version = answer.model_version

    def counted() -> None:
        text = scrape(suite, "gateway")
        rejected = value(
            text,
            "modelserve_rpc_requests_total",
            service="gateway",
            method="ModelInfer",
            code="INVALID_ARGUMENT",
        )
        assert rejected >= before + 1
        labels = {"service": "gateway", "model": "fraud", "version": version}
        assert value(text, "modelserve_model_requests_total", **labels, code="OK") >= 1
        assert value(text, "modelserve_model_requests_total", **labels, code="INVALID_ARGUMENT")
        assert value(text, "modelserve_canary_version_calls_total", outcome="error") >= 1
        router = scrape(suite, "router")
        assert value(router, "modelserve_model_requests_total", service="router", code="OK")
        assert value(router, "modelserve_rpc_requests_total", method="ModelInfer", code="OK")
        worker = scrape(suite, "worker")
        assert "modelserve_queue_depth{" in worker and "modelserve_queue_capacity{" in worker
        assert value(worker, "modelserve_model_loads_total", model="fraud", outcome="ready")

    async def check() -> None:
        counted()

    await eventually(check, timeout=10)


def test_a_worker_without_a_gpu_exports_no_gpu_series_and_says_so_once(suite: Suite) -> None:
    """No GPU here (with or without nvidia-ml-py installed): the series are absent, the scrape
    works, and the worker's log has one INFO line saying why, no error (fake NVML with the
    series: tests/worker/test_worker_gpu_metrics.py)."""
    text = scrape(suite, "worker")
    assert "modelserve_queue_depth" in text or "modelserve_rpc_requests_total" in text
    assert "modelserve_gpu_" not in text
    log = suite.processes["worker"].log_path.read_text(errors="replace")
    said = [line for line in log.splitlines() if "no GPU metrics" in line]
    assert len(said) == 1 and "INFO" in said[0] and "ERROR" not in said[0], said


@pytest.mark.skipif(not Path(PROMTOOL).exists(), reason="promtool not installed (./dev does)")
@pytest.mark.parametrize("name", ["gateway", "router", "worker", "registry", "featurestore"])
def test_every_services_metrics_pass_promtool(suite: Suite, name: str) -> None:
    text = scrape(suite, name)
    assert "modelserve_rpc_requests_total" in text or name in ("featurestore",)
    linted = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr


async def test_model_statistics_at_the_gateway_cover_the_whole_path(
    suite: Suite, gateway: pb_grpc.GRPCInferenceServiceStub
) -> None:
    """success/fail at the gateway are the gateway's own (what a caller sees); the worker's
    are its part. So the gateway's mean success time is at least the worker's."""
    request = pb.ModelInferRequest(model_name="fraud")
    encode_inputs(request, {"transaction": np.zeros((1, 8), np.float32)})
    for _ in range(20):
        version = (await gateway.ModelInfer(request, timeout=10)).model_version
    at_edge = await gateway.ModelStatistics(
        pb.ModelStatisticsRequest(name="fraud", version=version), timeout=10
    )
    async with grpc.aio.insecure_channel(suite.address("worker")) as channel:
        worker = pb_grpc.GRPCInferenceServiceStub(channel)
        inside = await worker.ModelStatistics(
            pb.ModelStatisticsRequest(name="fraud", version=version), timeout=10
        )
    (edge,), (work,) = at_edge.model_stats, inside.model_stats
    assert edge.inference_stats.success.count >= 20
    edge_mean = edge.inference_stats.success.ns / edge.inference_stats.success.count
    work_mean = work.inference_stats.success.ns / work.inference_stats.success.count
    assert edge_mean > work_mean, (edge_mean, work_mean)
    # queue and compute are the workers' own, passed through
    assert edge.inference_stats.compute_infer.count == work.inference_stats.compute_infer.count
