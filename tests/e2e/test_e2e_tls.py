"""The suite with TLS on every listener and mTLS between the services (``start_suite(tls=True)``,
what ``modelserve up --secure`` runs), as real processes on loopback: V2 clients with the CA
infer through gateway -> router -> worker, plaintext is refused everywhere, internal listeners
want a client certificate while the public gateway does not, and a gateway certificate replaced
on disk is served to new connections without a restart.

T38's matrix: client certificates from another CA or expired are refused at the handshake
(UNAVAILABLE) by every listener that asks for one; with auth on, a verified peer certificate
is the service identity (hops need no token) and the admin plane wants the operator's
certificate (``tls_service_sans`` / ``tls_admin_sans``, modelserve/auth/peers.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
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
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from suitesupport import dump_logs, ready_suite

from modelserve.auth.client import bearer_interceptors
from modelserve.cli import connect
from modelserve.cli.suite import SERVICES, Suite, _spawn, _with_port, start_suite, wait_serving
from modelserve.cli.tls_material import _new_ca, issue, load_ca
from modelserve.cli.up import banner
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import registry_pb2, registry_pb2_grpc
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


# --- T38: the client-certificate matrix ---------------------------------------------------


def _foreign_pair(dir: Path) -> ClientTLS:
    """A certificate named like a service ("worker") but issued by a CA the suite never saw."""
    dir.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _new_ca(dir)
    issue(ca_cert, ca_key, "worker", dir / "worker.pem", dir / "worker-key.pem")
    return ClientTLS(cert_file=str(dir / "worker.pem"), key_file=str(dir / "worker-key.pem"))


def _expired_pair(suite: Suite, dir: Path) -> ClientTLS:
    """A certificate from the suite's own CA, named "worker", that expired yesterday."""
    assert suite.pki is not None
    dir.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = load_ca(suite.pki.dir)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "worker")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now - dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("worker"), x509.DNSName("localhost")]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (dir / "expired.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (dir / "expired-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ClientTLS(cert_file=str(dir / "expired.pem"), key_file=str(dir / "expired-key.pem"))


async def test_client_certificates_from_another_ca_or_expired_are_refused_at_the_handshake(
    secure: Suite, tmp_path: Path
) -> None:
    """Gateway (started here with client certificates required), router, worker, registry and
    featurestore: only the suite CA's valid certificate gets a health answer; the others see
    UNAVAILABLE, i.e. no RPC ran (health needs no credential, so only TLS can refuse it)."""
    assert secure.pki is not None
    ca = str(secure.pki.ca)
    foreign = replace(_foreign_pair(tmp_path / "foreign"), ca_file=ca)
    expired = replace(_expired_pair(secure, tmp_path / "expired"), ca_file=ca)
    gw = secure.processes["gateway"]
    command = _with_port(gw.command, 0)
    command[command.index("--tls-require-client-cert") + 1] = "true"
    process, info = await asyncio.to_thread(
        _spawn, "gateway-mtls", command, gw.env, secure.data_dir, 60.0
    )
    try:
        mtls_gateway = f"127.0.0.1:{info['port']}"
        await wait_serving(mtls_gateway, timeout=60, tls=secure.client_tls)
        targets = {
            "gateway (mTLS)": mtls_gateway,
            **{name: secure.address(name) for name in SERVICES if name != "gateway"},
        }
        for name, address in targets.items():
            for label, tls in (("another CA", foreign), ("expired", expired)):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await _health(address, tls)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, (name, label)
            assert await _health(address, secure.client_tls) == SERVING, name
        # The correct certificate infers through the mTLS gateway (and router -> worker).
        async with connect.channel(mtls_gateway, secure.client_tls) as channel:
            assert (await _infer(channel)).shape == (1, 1)
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 30)


# --- T38: the peer certificate is the service identity; the admin plane's SAN allow-list ----


@pytest.fixture(scope="module")
def secure_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    """TLS + auth, and no service token anywhere: every hop between services is admitted on
    its certificate alone (tls_service_sans), the operator's client.pem is the admin SAN."""
    running = start_suite(
        tmp_path_factory.mktemp("secure-auth"),
        workers=1,
        tls=True,
        auth=True,
        extra_env={"MODELSERVE_SERVICE_TOKEN_FILE": ""},
    )
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


def _pair(suite: Suite, name: str) -> ClientTLS:
    """A certificate of the suite's CA for ``name`` (SAN ``name``), made now if missing."""
    assert suite.pki is not None
    cert, key = suite.pki.dir / f"{name}.pem", suite.pki.dir / f"{name}-key.pem"
    if not cert.exists():
        ca_cert, ca_key = load_ca(suite.pki.dir)
        issue(ca_cert, ca_key, name, cert, key)
    return ClientTLS(ca_file=str(suite.pki.ca), cert_file=str(cert), key_file=str(key))


def _auth_channel(address: str, tls: ClientTLS, token: str | None) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(
        address, tls.credentials(), interceptors=bearer_interceptors(token)
    )


async def _code(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_hops_between_services_need_no_token_with_mtls(secure_auth: Suite) -> None:
    """No service has a service token: the answer went gateway -> router -> worker, and the
    model got READY through the registry's watch, on the certificates alone."""
    infer = secure_auth.token("infer")
    ca_only = ClientTLS(ca_file=str(secure_auth.pki.ca if secure_auth.pki else ""))
    async with _auth_channel(secure_auth.address("gateway"), ca_only, infer) as channel:
        assert (await _infer(channel)).shape == (1, 1)
    # A token is still needed at the edge: the gateway sees no certificate.
    async with _auth_channel(secure_auth.address("gateway"), ca_only, None) as channel:
        request = pb.ModelInferRequest(model_name="fraud")
        encode_inputs(request, {"transaction": np.full((1, 8), 0.5, np.float32)})
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        code = await _code(stub.ModelInfer(request, timeout=10))
    assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_a_service_certificate_is_a_service_identity_and_others_are_not(
    secure_auth: Suite,
) -> None:
    registry = secure_auth.address("registry")
    cases = {
        # (certificate, token): (ListModels, DeleteLabel)
        ("worker", None): (grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED),
        ("intruder", None): (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAUTHENTICATED),
        ("client", None): (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAUTHENTICATED),
    }
    for (cert, token), expected in cases.items():
        async with _auth_channel(registry, _pair(secure_auth, cert), token) as channel:
            stub = registry_pb2_grpc.RegistryStub(channel)
            seen = (
                await _code(stub.ListModels(registry_pb2.ListModelsRequest(), timeout=10)),
                await _code(
                    stub.DeleteLabel(
                        registry_pb2.DeleteLabelRequest(model="fraud", label="nope"), timeout=10
                    )
                ),
            )
        assert seen == expected, (cert, token, seen)


async def test_the_admin_plane_wants_the_operators_certificate_whatever_the_token(
    secure_auth: Suite,
) -> None:
    registry = secure_auth.address("registry")
    admin = secure_auth.token("admin")
    request = registry_pb2.DeleteLabelRequest(model="fraud", label="nope")
    for cert in ("intruder", "worker"):
        async with _auth_channel(registry, _pair(secure_auth, cert), admin) as channel:
            stub = registry_pb2_grpc.RegistryStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.DeleteLabel(request, timeout=10)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, cert
            assert "tls_admin_sans" in (refused.value.details() or ""), cert
            # Reads are not the admin plane: the same admin token reads from anywhere.
            await stub.ListModels(registry_pb2.ListModelsRequest(), timeout=10)
    async with _auth_channel(registry, _pair(secure_auth, "client"), admin) as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        code = await _code(stub.DeleteLabel(request, timeout=10))
    assert code not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
