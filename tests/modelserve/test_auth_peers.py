"""The peer-certificate rules of auth/peers.py on gRPC's auth-context shape (what a TLS
listener hands a handler once it verified the certificate); the real handshakes are in
tests/e2e/test_e2e_tls.py."""

from __future__ import annotations

import pytest

from featurestore import FeatureStoreSettings
from modelserve.auth.identity import ADMIN, SERVICE, Identity
from modelserve.auth.peers import PeerPolicy, certificate_names, parse_names
from modelserve.settings import SettingsError, load_settings


class Peer:
    def __init__(self, cn: str = "", sans: tuple[str, ...] = (), tls: bool = True) -> None:
        self._auth: dict[str, list[bytes]] = {
            "transport_security_type": [b"ssl" if tls else b"insecure"]
        }
        if cn:
            self._auth["x509_common_name"] = [cn.encode()]
        if sans:
            self._auth["x509_subject_alternative_name"] = [s.encode() for s in sans]

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth


def test_names_are_the_sans_and_the_cn_only_without_them() -> None:
    assert certificate_names(Peer("client", ("ops-1.example", "127.0.0.1"))) == (
        "ops-1.example",
        "127.0.0.1",
    )
    assert certificate_names(Peer("router")) == ("router",)
    assert certificate_names(Peer("router", tls=False)) == ()
    assert certificate_names(object()) == ()  # the REST face's context: nobody
    assert parse_names(" a, b ,,*.ops ") == ("a", "b", "*.ops")


def test_a_service_san_is_a_service_identity_and_a_cn_beside_sans_is_not() -> None:
    policy = PeerPolicy(service_sans=("worker", "router"))
    identity = policy.service_identity(Peer("x", ("worker", "localhost")))
    assert identity is not None and identity.is_service and identity.source == "mtls"
    assert identity.id == "mtls:worker"
    assert policy.service_identity(Peer("worker", ("localhost",))) is None
    assert policy.service_identity(Peer("x", ("intruder",))) is None
    assert PeerPolicy().service_identity(Peer("x", ("worker",))) is None


def test_the_admin_plane_wants_an_allowed_san_and_exempts_services() -> None:
    policy = PeerPolicy(admin_sans=("*.ops.example",))
    admin = Identity("alice", frozenset({ADMIN}))
    assert policy.admin_refusal(admin, Peer("x", ("laptop.ops.example",))) is None
    refusal = policy.admin_refusal(admin, Peer("x", ("laptop.dev.example",)))
    assert refusal is not None and "laptop.dev.example" in refusal
    assert policy.admin_refusal(admin, object()) is not None
    assert policy.admin_refusal(Identity("svc", frozenset({SERVICE})), object()) is None
    assert PeerPolicy().admin_refusal(admin, object()) is None


def test_san_lists_need_tls_with_a_ca() -> None:
    with pytest.raises(SettingsError, match="tls_service_sans"):
        load_settings(FeatureStoreSettings, [], {"MODELSERVE_TLS_SERVICE_SANS": "worker"})
