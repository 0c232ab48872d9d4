"""The suite with TLS on every listener and mTLS between the services (``start_suite(tls=True)``,
what ``modelserve up --secure`` runs), as real processes on loopback: V2 clients with the CA
infer through gateway -> router -> worker, plaintext is refused everywhere, internal listeners
want a client certificate while the public gateway does not, and a gateway certificate replaced
on disk is served to new connections without a restart."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc
from suitesupport import dump_logs, ready_suite

from modelserve.cli import connect
from modelserve.cli.suite import SERVICES, Suite, start_suite
from modelserve.cli.tls_material import issue, load_ca
from modelserve.cli.up import banner
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.tensors import decode_outputs, encode_inputs
from modelserve.tls import ClientTLS

SERVING = health_pb2.HealthCheckResponse.SERVING
CLIENTS = Path(__file__).parent / "clients"
MODELSERVE = [sys.executable, "-m", "modelserve"]
ROW = "transaction=[[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8]]"


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    running = start_suite(tmp_path_factory.mktemp("secure"), workers=1, tls=True)
    try:
        asyncio.run(ready_suite(running))
    except BaseException:
        print(dump_logs(running))
        running.stop(timeout=10)
        raise
    yield running
    codes = running.stop()
    assert all(code == 0 for code in codes.values()), (
        f"unclean exits: {codes}\n{dump_logs(running)}"
    )


def _triton(suite: Suite, ca: str | None) -> dict[str, Any]:
    """tritonclient (its own process) against the gateway: with the CA, or plaintext."""
    proc = subprocess.run(
        [sys.executable, str(CLIENTS / "triton_tls.py"), suite.address("gateway"), ca or "plain"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    seen: dict[str, Any] = json.loads(proc.stdout)
    return seen


async def _infer(channel: grpc.aio.Channel) -> np.ndarray:
    request = pb.ModelInferRequest(model_name="fraud")
    encode_inputs(request, {"transaction": np.full((1, 8), 0.5, np.float32)})
    reply = await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    return decode_outputs(reply)["fraud_probability"]


async def _health(address: str, tls: ClientTLS | None) -> int:
    async with connect.channel(address, tls) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    return reply.status


def test_tritonclient_with_the_ca_infers_through_the_secure_suite(secure: Suite) -> None:
    """Gateway (TLS) -> router -> worker (mTLS): an answer proves every hop's handshake; the
    metadata goes gateway -> registry (mTLS)."""
    assert secure.pki is not None
    seen = _triton(secure, str(secure.pki.ca))
    assert "error" not in seen, seen
    assert seen["ready"] is True and seen["model"] == "fraud"
    out = np.asarray(seen["output"])
    assert out.shape == (2, 1) and np.all((out >= 0) & (out <= 1))


async def test_plaintext_clients_are_refused_by_every_listener(secure: Suite) -> None:
    for name in SERVICES:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _health(secure.address(name), None)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, name
    seen = _triton(secure, None)
    assert seen.get("error") == "StatusCode.UNAVAILABLE", seen


async def test_internal_listeners_want_a_client_certificate_the_gateway_does_not(
    secure: Suite,
) -> None:
    assert secure.pki is not None
    ca_only = ClientTLS(ca_file=str(secure.pki.ca))
    assert await _health(secure.address("gateway"), ca_only) == SERVING
    for name in ("router", "worker", "registry", "featurestore"):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _health(secure.address(name), ca_only)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, name
        assert await _health(secure.address(name), secure.client_tls) == SERVING, name


def test_the_cli_talks_tls_with_the_ca_from_flags_or_environment(secure: Suite) -> None:
    tls = secure.client_tls
    assert tls is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSERVE_TLS_")}
    flags = ["--tls-ca", tls.ca_file, "--tls-cert", tls.cert_file, "--tls-key", tls.key_file]
    models = subprocess.run(
        [*MODELSERVE, *flags, "models", "--registry", secure.address("registry"), "list"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert models.returncode == 0, models.stderr
    assert "fraud" in models.stdout
    infer = subprocess.run(
        [*MODELSERVE, "infer", "fraud", "--gateway", secure.address("gateway"), "--input", ROW],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "MODELSERVE_TLS_CA": tls.ca_file},
    )
    assert infer.returncode == 0, infer.stderr
    assert "fraud_probability" in infer.stdout
    refused = subprocess.run(
        [*MODELSERVE, "models", "--registry", secure.address("registry"), "list"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "MODELSERVE_TLS_CA": tls.ca_file},  # no client certificate
    )
    assert refused.returncode == 1
    assert "UNAVAILABLE" in refused.stderr


def _served_serial(address: str) -> int:
    host, port = address.rsplit(":", 1)
    pem = ssl.get_server_certificate((host, int(port)))
    return x509.load_pem_x509_certificate(pem.encode()).serial_number


async def test_a_replaced_gateway_certificate_is_served_without_restart(
    secure: Suite,
) -> None:
    assert secure.pki is not None
    gateway = secure.processes["gateway"]
    pid = gateway.process.pid
    pair = secure.pki.pair("gateway")
    old = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    assert await asyncio.to_thread(_served_serial, gateway.address) == old.serial_number
    ca_only = ClientTLS(ca_file=str(secure.pki.ca))
    async with connect.channel(gateway.address, ca_only) as kept:
        await _infer(kept)  # a connection made with the old certificate

        ca_cert, ca_key = load_ca(secure.pki.dir)
        new = issue(ca_cert, ca_key, "gateway", pair.cert, pair.key)
        assert new.serial_number != old.serial_number

        assert await asyncio.to_thread(_served_serial, gateway.address) == new.serial_number
        async with connect.channel(gateway.address, ca_only) as fresh:
            await _infer(fresh)  # a new connection, the new certificate
        await _infer(kept)  # the open one carries on
    assert gateway.process.poll() is None and gateway.process.pid == pid
    log = await asyncio.to_thread(Path(gateway.log_path).read_text, errors="replace")
    assert "TLS certificate reloaded" in log


def test_the_secure_banner_commands_work_as_printed(secure: Suite) -> None:
    """`up --secure` prints grpcurl and tritonclient with tls/ca.pem; run what it printed."""
    assert secure.pki is not None
    text = banner(secure, ["fraud"])
    ca = str(secure.pki.ca)
    assert ca.endswith("tls/ca.pem") and "TLS off" not in text
    assert f"ssl=True, root_certificates='{ca}'" in text
    grpcurls = [line.strip() for line in text.splitlines() if line.strip().startswith("grpcurl")]
    assert len(grpcurls) == 2
    found = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    for line in grpcurls:
        proc = subprocess.run(
            [found, *shlex.split(line)[1:]], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, (line, proc.stderr)
    assert (
        "inference.GRPCInferenceService"
        in subprocess.run(
            [found, *shlex.split(grpcurls[0])[1:]], capture_output=True, text=True, timeout=60
        ).stdout
    )
    plain = replace(secure, pki=None)
    assert "TLS off" in banner(plain, ["fraud"])


def test_metrics_ports_serve_https_with_the_suites_ca(secure: Suite) -> None:
    assert secure.pki is not None
    context = ssl.create_default_context(cafile=str(secure.pki.ca))
    for name in SERVICES:
        port = secure.processes[name].metrics_port
        url = f"https://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=5, context=context) as response:
            assert b"modelserve_ready 1.0" in response.read(), name
