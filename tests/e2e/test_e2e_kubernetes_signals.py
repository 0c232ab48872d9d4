"""What deploy/k8s relies on, against running services rather than declarations:

- the series the prometheus-adapter rules turn into the HPAs' pod metrics are on the live
  /metrics of the services those HPAs scale (gateway and router: in-flight; worker: queue depth);
- the secure overlay's exec probe (a TLS grpc.health.v1 check with the pod's own certificate)
  says SERVING for every service of a suite running with mTLS, and fails without the CA.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from suitesupport import dump_logs

from modelserve.cli.suite import SERVICES, Suite, start_suite
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.tensors import encode_inputs

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


def scrape(suite: Suite, name: str) -> str:
    port = suite.processes[name].metrics_port
    assert port, f"{name} serves no metrics port"
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def hpa_signals() -> dict[str, str]:
    """Deployment -> the series its HPA's pod metric comes from (through the adapter rules)."""
    adapter = yaml.safe_load((K8S / "base" / "prometheus-adapter.yaml").read_text())
    rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    series = {r["name"]["as"]: re.findall(r"^\w+", r["seriesQuery"])[0] for r in rules}
    out = {}
    for hpa in yaml.safe_load_all((K8S / "base" / "autoscaling.yaml").read_text()):
        pods = next(m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods")
        out[hpa["spec"]["scaleTargetRef"]["name"]] = series[pods["metric"]["name"]]
    return out


async def test_hpa_signals_are_on_the_live_metrics_of_the_pods_they_scale(
    suite: Suite, gateway: pb_grpc.GRPCInferenceServiceStub
) -> None:
    request = pb.ModelInferRequest(model_name="fraud")
    encode_inputs(request, {"transaction": np.zeros((1, 8), np.float32)})
    await gateway.ModelInfer(request, timeout=10)
    signals = hpa_signals()
    assert set(signals) == {"gateway", "router", "worker"}
    for deployment, series in signals.items():
        text = scrape(suite, deployment)
        samples = [line for line in text.splitlines() if line.startswith(series + "{")]
        assert samples, f"{deployment} exports no {series}"
        if series == "modelserve_model_in_flight":
            assert all(f'service="{deployment}"' in line for line in samples), samples


def secure_probe(service: str) -> list[str]:
    """The readiness command of the secure overlay's patch for ``service``."""
    patch: list[dict[str, Any]] = yaml.safe_load(
        (K8S / "overlays" / "secure" / f"{service}-tls.yaml").read_text()
    )
    probe = next(p for p in patch if p["path"].endswith("/readinessProbe"))
    command: list[str] = probe["value"]["exec"]["command"]
    return command


@pytest.fixture(scope="module")
def tls_suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    running = start_suite(tmp_path_factory.mktemp("tls-suite"), tls=True)
    try:
        yield running
    finally:
        logs = dump_logs(running)
        running.stop(timeout=10)
        print(logs)


def run_probe(suite: Suite, service: str, ca: str) -> subprocess.CompletedProcess[str]:
    assert suite.pki is not None
    command = secure_probe(service)
    assert command[0] == "python" and command[-1].isdigit()
    pair = suite.pki.pair(service)
    env = {
        **os.environ,
        "MODELSERVE_TLS_CERT_FILE": str(pair.cert),
        "MODELSERVE_TLS_KEY_FILE": str(pair.key),
        "MODELSERVE_TLS_CA_FILE": ca,
        "MODELSERVE_TLS_SERVER_NAME": "localhost",  # the local PKI's SAN
    }
    # The suite listens on its own ports, not the manifests' defaults: only the port differs.
    argv = [sys.executable, *command[1:-1], str(suite.processes[service].port)]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("service", SERVICES)
async def test_secure_exec_probe_checks_health_over_mtls(tls_suite: Suite, service: str) -> None:
    from modelserve.cli.suite import wait_serving

    await wait_serving(tls_suite.address(service), timeout=60, tls=tls_suite.client_tls)
    assert tls_suite.pki is not None
    ok = run_probe(tls_suite, service, str(tls_suite.pki.ca))
    assert ok.returncode == 0, ok.stderr
    # Trusting another certificate than the suite's CA fails it: the probe verifies the peer.
    wrong = run_probe(tls_suite, service, str(tls_suite.pki.pair("client").cert))
    assert wrong.returncode != 0
