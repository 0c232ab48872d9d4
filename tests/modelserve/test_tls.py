"""TLS on the shared server bootstrap and the channel factory (issue 11), in process: local
certificate material for ``up --secure``, settings checks, mTLS between a real listener and
``internal_channel``, the caller's identity for handlers, and Consul checks over TLS against
the stand-in agent (its gRPC checks really run)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from fakes.consul_agent import FakeConsulAgent
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from testsupport import eventually

import registry
from modelserve.channels import internal_channel
from modelserve.cli.tls_material import LocalPKI, ensure_local_pki, issue, load_ca
from modelserve.server import Runtime, start_runtime
from modelserve.settings import SettingsError, load_settings
from modelserve.tls import (
    ClientTLS,
    PeerIdentity,
    TLSConfig,
    client_tls,
    configure_client_tls,
    peer_identity,
)

SERVING = health_pb2.HealthCheckResponse.SERVING


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LocalPKI:
    return ensure_local_pki(tmp_path_factory.mktemp("pki"), ["router", "gateway"])


# --- up --secure: the material in the data dir ------------------------------------------


def test_local_pki_writes_a_ca_and_one_server_client_cert_per_service(tmp_path: Path) -> None:
    made = ensure_local_pki(tmp_path, ["registry", "router"])
    assert made.ca == tmp_path / "tls" / "ca.pem"
    assert sorted(made.pairs) == ["client", "registry", "router"]
    ca = _cert(made.ca)
    for name, pair in made.pairs.items():
        assert pair.cert == tmp_path / "tls" / f"{name}.pem"
        assert pair.key == tmp_path / "tls" / f"{name}-key.pem"
        cert = _cert(pair.cert)
        cert.verify_directly_issued_by(ca)
        assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == name
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [name, "localhost"]
        assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert {u.dotted_string for u in usage} == {
            x509.ExtendedKeyUsageOID.SERVER_AUTH.dotted_string,
            x509.ExtendedKeyUsageOID.CLIENT_AUTH.dotted_string,
        }
        assert stat.S_IMODE(os.stat(pair.key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(made.dir / "ca-key.pem").st_mode) == 0o600


def test_local_pki_is_reused_while_valid_and_reissued_when_expiring(tmp_path: Path) -> None:
    first = ensure_local_pki(tmp_path, ["router"])
    serials = {n: _cert(p.cert).serial_number for n, p in first.pairs.items()}
    ca_serial = _cert(first.ca).serial_number
    again = ensure_local_pki(tmp_path, ["router"])
    assert {n: _cert(p.cert).serial_number for n, p in again.pairs.items()} == serials
    assert _cert(again.ca).serial_number == ca_serial
    # A certificate about to expire is issued again by the same CA; the others stay.
    ca_cert, ca_key = load_ca(first.dir)
    router = first.pair("router")
    issue(ca_cert, ca_key, "router", router.cert, router.key, days=0)
    third = ensure_local_pki(tmp_path, ["router"])
    renewed = _cert(third.pair("router").cert)
    assert renewed.serial_number != serials["router"]
    assert renewed.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=300)
    assert _cert(third.pair("client").cert).serial_number == serials["client"]
    assert _cert(third.ca).serial_number == ca_serial


def test_local_pki_reissues_certs_of_another_ca(tmp_path: Path) -> None:
    first = ensure_local_pki(tmp_path, ["router"])
    old = _cert(first.pair("router").cert).serial_number
    (first.dir / "ca.pem").unlink()  # a new CA: every certificate must chain to it
    second = ensure_local_pki(tmp_path, ["router"])
    cert = _cert(second.pair("router").cert)
    assert cert.serial_number != old
    cert.verify_directly_issued_by(_cert(second.ca))


# --- settings ----------------------------------------------------------------------------


def test_tls_settings_default_to_plaintext_and_refuse_half_configurations(pki: LocalPKI) -> None:
    plain = load_settings(registry.RegistrySettings, [], env={})
    assert not TLSConfig.from_settings(plain).enabled
    pair = pki.pair("router")
    with pytest.raises(SettingsError, match="tls_cert_file needs tls_key_file"):
        load_settings(registry.RegistrySettings, ["--tls-cert-file", str(pair.cert)], env={})
    with pytest.raises(SettingsError, match="tls_require_client_cert needs tls_ca_file"):
        load_settings(
            registry.RegistrySettings,
            ["--tls-cert-file", str(pair.cert), "--tls-key-file", str(pair.key)],
            env={},
        )
    with pytest.raises(SettingsError, match="not a readable file"):
        load_settings(
            registry.RegistrySettings,
            [],
            env={
                "MODELSERVE_TLS_CERT_FILE": str(pair.cert),
                "MODELSERVE_TLS_KEY_FILE": "/nonexistent/key.pem",
                "MODELSERVE_TLS_REQUIRE_CLIENT_CERT": "false",
            },
        )
    on = load_settings(
        registry.RegistrySettings,
        [],
        env={
            "MODELSERVE_TLS_CERT_FILE": str(pair.cert),
            "MODELSERVE_TLS_KEY_FILE": str(pair.key),
            "MODELSERVE_TLS_CA_FILE": str(pki.ca),
        },
    )
    tls = TLSConfig.from_settings(on)
    assert tls.enabled and tls.require_client_cert  # mTLS inside unless told otherwise


def test_the_gateway_requires_no_client_certificate_by_default() -> None:
    import gateway

    assert gateway.SPEC.settings_cls().tls_require_client_cert is False
    assert registry.SPEC.settings_cls().tls_require_client_cert is True


# --- a real listener with TLS, and the one channel factory -------------------------------


class _Identity(health_pb2_grpc.HealthServicer):
    """A handler that records who called, through the one helper handlers use."""

    def __init__(self) -> None:
        self.seen: list[PeerIdentity | None] = []

    async def Check(self, request: Any, context: Any) -> health_pb2.HealthCheckResponse:
        self.seen.append(peer_identity(context))
        return health_pb2.HealthCheckResponse(status=SERVING)


async def _check(channel: aio.Channel) -> Any:
    stub = health_pb2_grpc.HealthStub(channel)
    return await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)


async def test_peer_identity_is_the_verified_client_certificate(pki: LocalPKI) -> None:
    from modelserve.tls import server_credentials

    servicer = _Identity()
    server = aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    router = pki.pair("router")
    creds, _ = server_credentials(
        TLSConfig(str(router.cert), str(router.key), str(pki.ca), require_client_cert=True)
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    plain = aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, plain)
    plain_port = plain.add_insecure_port("127.0.0.1:0")
    await server.start()
    await plain.start()
    try:
        gw = pki.pair("gateway")
        tls = ClientTLS(str(pki.ca), str(gw.cert), str(gw.key))
        async with internal_channel(f"127.0.0.1:{port}", tls=tls) as channel:
            await _check(channel)
        async with aio.insecure_channel(f"127.0.0.1:{plain_port}") as channel:
            await _check(channel)
    finally:
        await server.stop(None)
        await plain.stop(None)
    assert servicer.seen == [PeerIdentity("gateway", ("gateway", "localhost", "127.0.0.1")), None]
    assert servicer.seen[0] is not None and servicer.seen[0].names[0] == "gateway"


def _registry_settings(tmp_path: Path, pki: LocalPKI, **extra: Any) -> registry.RegistrySettings:
    pair = pki.pair("router")  # any certificate of the CA
    return registry.RegistrySettings(
        port=0,
        metrics_port=-2,
        data_dir=str(tmp_path / "data"),
        drain_seconds=0,
        shutdown_grace_seconds=1,
        tls_cert_file=str(pair.cert),
        tls_key_file=str(pair.key),
        tls_ca_file=str(pki.ca),
        **extra,
    )


@pytest.fixture
async def tls_runtime(tmp_path: Path, pki: LocalPKI) -> AsyncIterator[Runtime]:
    runtime = await start_runtime(registry.SPEC, _registry_settings(tmp_path, pki))
    try:
        yield runtime
    finally:
        await runtime.shutdown()
        configure_client_tls(None)  # the process-wide default other tests expect


async def test_a_tls_runtime_refuses_plaintext_and_callers_without_a_certificate(
    tls_runtime: Runtime, pki: LocalPKI
) -> None:
    address = f"127.0.0.1:{tls_runtime.port}"
    with pytest.raises(aio.AioRpcError) as plain:
        async with aio.insecure_channel(address) as channel:
            await _check(channel)
    assert plain.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(aio.AioRpcError) as anonymous:
        async with internal_channel(address, tls=ClientTLS(ca_file=str(pki.ca))) as channel:
            await _check(channel)
    assert anonymous.value.code() == grpc.StatusCode.UNAVAILABLE
    # The process default the bootstrap set: the service's own certificate as client cert.
    assert client_tls() == ClientTLS(
        str(pki.ca), str(pki.pair("router").cert), str(pki.pair("router").key)
    )
    async with internal_channel(address) as channel:
        assert (await _check(channel)).status == SERVING


async def test_a_changed_certificate_is_served_to_new_connections_without_restart(
    tls_runtime: Runtime, pki: LocalPKI, tmp_path: Path
) -> None:
    """Hot reload, in process (the e2e test does it to the gateway of a running suite)."""
    import ssl

    address = ("127.0.0.1", tls_runtime.port)
    before = await asyncio.to_thread(ssl.get_server_certificate, address)
    assert tls_runtime.certificates is not None and tls_runtime.certificates.reloads == 0
    ca_cert, ca_key = load_ca(pki.dir)
    router = pki.pair("router")
    new = issue(ca_cert, ca_key, "router", router.cert, router.key)
    after = await asyncio.to_thread(ssl.get_server_certificate, address)
    assert after != before
    assert x509.load_pem_x509_certificate(after.encode()).serial_number == new.serial_number
    assert tls_runtime.certificates.reloads == 1
    async with internal_channel(f"127.0.0.1:{tls_runtime.port}") as channel:
        assert (await _check(channel)).status == SERVING


# --- Consul: checks over TLS ------------------------------------------------------------


@pytest.fixture
async def tls_agent(pki: LocalPKI) -> AsyncIterator[FakeConsulAgent]:
    client = pki.pair("client")
    fake = FakeConsulAgent(
        min_check_interval_s=0,
        min_deregister_after_s=0,
        reap_interval_s=0.1,
        tls_ca_file=str(pki.ca),
        tls_cert_file=str(client.cert),
        tls_key_file=str(client.key),
    )
    await fake.start()
    yield fake
    await fake.close()


def _registered_check(agent: FakeConsulAgent) -> dict[str, Any]:
    bodies = [r.body for r in agent.requests if r.path == "/v1/agent/service/register"]
    check: dict[str, Any] = bodies[-1]["Check"]
    return check


async def test_consul_checks_a_tls_listener_over_tls(
    tmp_path: Path, pki: LocalPKI, tls_agent: FakeConsulAgent
) -> None:
    settings = _registry_settings(
        tmp_path, pki, discovery="consul", consul_addr=tls_agent.addr, instance_id="reg-tls"
    )
    runtime = await start_runtime(registry.SPEC, settings)
    try:
        check = _registered_check(tls_agent)
        assert check["GRPCUseTLS"] is True
        assert check["TLSSkipVerify"] is False
        assert check["TLSServerName"] == "127.0.0.1"

        async def passing() -> None:
            assert tls_agent.check_status("reg-tls") == "passing"

        await eventually(passing)
    finally:
        await runtime.shutdown()
        configure_client_tls(None)


async def test_consul_checks_a_plaintext_listener_without_tls(
    tmp_path: Path, tls_agent: FakeConsulAgent
) -> None:
    settings = registry.RegistrySettings(
        port=0,
        metrics_port=-2,
        data_dir=str(tmp_path / "data"),
        drain_seconds=0,
        shutdown_grace_seconds=1,
        discovery="consul",
        consul_addr=tls_agent.addr,
        instance_id="reg-plain",
    )
    runtime = await start_runtime(registry.SPEC, settings)
    try:
        check = _registered_check(tls_agent)
        assert check["GRPCUseTLS"] is False
        assert "TLSServerName" not in check

        async def passing() -> None:
            assert tls_agent.check_status("reg-plain") == "passing"

        await eventually(passing)
    finally:
        await runtime.shutdown()


async def test_consul_marks_an_mtls_listener_critical_for_an_agent_without_a_client_cert(
    tmp_path: Path, pki: LocalPKI
) -> None:
    """The check really uses TLS: an agent that has the CA but shows no certificate to a
    listener requiring one fails its check (what an unconfigured agent would see)."""
    agent = FakeConsulAgent(
        min_check_interval_s=0,
        min_deregister_after_s=0,
        reap_interval_s=0.1,
        tls_ca_file=str(pki.ca),
    )
    await agent.start()
    settings = _registry_settings(
        tmp_path, pki, discovery="consul", consul_addr=agent.addr, instance_id="reg-mtls"
    )
    runtime = await start_runtime(registry.SPEC, settings)
    try:
        await asyncio.sleep(0.5)  # many check intervals
        assert agent.check_status("reg-mtls") == "critical"
    finally:
        await runtime.shutdown()
        configure_client_tls(None)
        await agent.close()


def test_cli_tls_comes_from_flags_over_environment(pki: LocalPKI) -> None:
    from modelserve.cli import connect

    assert connect.tls_from(env={}) is None
    env = {"MODELSERVE_TLS_CA": str(pki.ca)}
    assert connect.tls_from(env=env) == ClientTLS(ca_file=str(pki.ca))
    client = pki.pair("client")
    assert connect.tls_from("other-ca.pem", str(client.cert), str(client.key), env=env) == (
        ClientTLS("other-ca.pem", str(client.cert), str(client.key))
    )
    with pytest.raises(ValueError, match="needs its key"):
        connect.tls_from(cert=str(client.cert), env={})


def _https_get(url: str, ca: Path) -> str:
    import ssl
    import urllib.request

    context = ssl.create_default_context(cafile=str(ca))
    with urllib.request.urlopen(url, timeout=5, context=context) as response:
        text: str = response.read().decode()
    return text


async def test_the_metrics_port_serves_https_with_the_reloaded_certificate(
    tmp_path: Path, pki: LocalPKI
) -> None:
    import ssl
    import urllib.error
    import urllib.request

    settings = _registry_settings(tmp_path, pki)
    settings.metrics_port = 0
    runtime = await start_runtime(registry.SPEC, settings)
    try:
        port = runtime.metrics_port
        assert port
        url = f"https://127.0.0.1:{port}/metrics"
        text = await asyncio.to_thread(_https_get, url, pki.ca)
        assert "modelserve_ready" in text
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            await asyncio.to_thread(
                urllib.request.urlopen, f"http://127.0.0.1:{port}/metrics", timeout=5
            )
        ca_cert, ca_key = load_ca(pki.dir)
        router = pki.pair("router")
        new = issue(ca_cert, ca_key, "router", router.cert, router.key)
        served = await asyncio.to_thread(ssl.get_server_certificate, ("127.0.0.1", port))
        assert x509.load_pem_x509_certificate(served.encode()).serial_number == new.serial_number
        assert "modelserve_ready" in await asyncio.to_thread(_https_get, url, pki.ca)
    finally:
        await runtime.shutdown()
        configure_client_tls(None)


def test_a_half_written_rotation_keeps_the_old_pair_until_the_key_matches(
    tmp_path: Path, pki: LocalPKI
) -> None:
    """The fetcher gRPC calls per handshake: None (keep what you have) while nothing changed
    or while the new certificate's key is not written yet; the new pair once it matches."""
    import shutil

    from modelserve.tls import ReloadingCertificate

    cert, key = tmp_path / "svc.pem", tmp_path / "svc-key.pem"
    shutil.copy(pki.pair("router").cert, cert)
    shutil.copy(pki.pair("router").key, key)
    fetch = ReloadingCertificate(TLSConfig(str(cert), str(key), str(pki.ca)))
    assert fetch() is None and fetch.reloads == 0
    ca_cert, ca_key = load_ca(pki.dir)
    issue(ca_cert, ca_key, "svc", tmp_path / "next.pem", tmp_path / "next-key.pem")
    os.replace(tmp_path / "next.pem", cert)  # the certificate first ...
    assert fetch() is None and fetch.reloads == 0  # ... its key is not there yet
    os.replace(tmp_path / "next-key.pem", key)  # ... then the key
    assert fetch() is not None and fetch.reloads == 1
    assert fetch() is None  # nothing changed since
    key.write_text("not a key")
    assert fetch() is None and fetch.reloads == 1  # a broken file: keep serving the old pair


def test_a_certificate_without_its_service_name_san_is_issued_again(tmp_path: Path) -> None:
    """Certificates of an older `up --secure` named only localhost; tls_service_sans needs
    the service's name, so they are replaced (by the same CA)."""
    first = ensure_local_pki(tmp_path, ["router"])
    ca_cert, ca_key = load_ca(first.dir)
    router = first.pair("router")
    old = issue(ca_cert, ca_key, "router", router.cert, router.key, sans=["localhost"])
    again = _cert(ensure_local_pki(tmp_path, ["router"]).pair("router").cert)
    assert again.serial_number != old.serial_number
    san = again.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "router" in san.get_values_for_type(x509.DNSName)
