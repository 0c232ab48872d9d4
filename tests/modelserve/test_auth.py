"""Credentials, roles and limits in the floor (modelserve/auth), without a server."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from modelserve.auth import files
from modelserve.auth.authenticator import MISSING, Authenticator, AuthFailed, bearer_token
from modelserve.auth.identity import ADMIN, INFER, READ, SERVICE, Identity
from modelserve.auth.jwts import JwtVerifier
from modelserve.auth.keys import KeyStore, hash_token, new_key, parse_keys, write_local_tokens
from modelserve.auth.limits import IdentityLimits, LimitExceeded

SECRET = "s" * 40


def _keys_file(tmp_path: Path, *entries: dict[str, object]) -> Path:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": list(entries)}))
    return path


def test_roles_imply_what_they_should() -> None:
    admin = Identity("a", frozenset({ADMIN}))
    service = Identity("s", frozenset({SERVICE}))
    infer = Identity("i", frozenset({INFER}), ("fraud*",))
    assert admin.has(READ) and admin.has(INFER) and not admin.has(SERVICE)
    assert service.has(INFER) and service.has(READ) and not service.has(ADMIN)
    assert not infer.has(READ) and not infer.has(ADMIN)
    assert infer.may_infer("fraud") and infer.may_infer("fraud_v2")
    assert not infer.may_infer("tabular")
    assert Identity("x", frozenset({INFER})).may_infer("anything")


def test_the_keys_file_is_looked_at_once_per_recheck_interval_not_per_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Auth reads the keys on every RPC at every hop: one stat a call was a syscall per
    request per hop (issue 14). Within RECHECK_S the last value is used without a stat."""
    token, entry = new_key("a", [INFER])
    store = KeyStore(_keys_file(tmp_path, entry))
    assert store.lookup(token) is not None
    stats = []
    real_stat = os.stat
    monkeypatch.setattr(files.os, "stat", lambda p, *a, **k: stats.append(p) or real_stat(p))
    for _ in range(100):
        assert store.lookup(token) is not None
    assert stats == []
    monkeypatch.setattr(files, "RECHECK_S", 0.0)
    store._file._next_check = 0.0  # the interval has passed
    store.lookup(token)
    assert len(stats) == 1


def test_api_keys_are_stored_hashed_and_looked_up_by_hash(tmp_path: Path) -> None:
    token, entry = new_key("alice", [INFER], ["fraud*"])
    assert token not in json.dumps(entry)
    assert entry["hash"] == hash_token(token)
    store = KeyStore(_keys_file(tmp_path, entry))
    found = store.lookup(token)
    assert found is not None and found.id == "alice" and found.models == ("fraud*",)
    assert store.lookup(token + "x") is None


def test_a_changed_keys_file_is_used_without_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "RECHECK_S", 0.0)  # look at the file on every call
    token_a, a = new_key("a", [INFER])
    token_b, b = new_key("b", [ADMIN])
    path = _keys_file(tmp_path, a)
    store = KeyStore(path)
    assert store.lookup(token_a) is not None and store.lookup(token_b) is None
    _keys_file(tmp_path, b)
    assert store.lookup(token_a) is None and store.lookup(token_b) is not None
    path.write_text("{not json")  # a half-edited file keeps the last good keys
    assert store.lookup(token_b) is not None


def test_bad_entries_are_refused_with_their_id() -> None:
    with pytest.raises(ValueError, match="bob"):
        parse_keys(json.dumps({"keys": [{"id": "bob", "hash": "sha256:00", "roles": ["root"]}]}))
    with pytest.raises(ValueError):
        new_key("x", ["superuser"])


def test_bearer_token_parsing() -> None:
    assert bearer_token([("authorization", "Bearer abc")]) == "abc"
    assert bearer_token([("authorization", "bearer  abc ")]) == "abc"
    assert bearer_token([("authorization", "Basic abc")]) == ""
    assert bearer_token([("x-other", "1")]) is None


def test_authenticator_never_echoes_the_token(tmp_path: Path) -> None:
    token, entry = new_key("alice", [INFER])
    auth = Authenticator(KeyStore(_keys_file(tmp_path, entry)))
    assert auth.authenticate([("authorization", f"Bearer {token}")]).id == "alice"
    with pytest.raises(AuthFailed) as missing:
        auth.authenticate([])
    assert missing.value.reason == MISSING
    with pytest.raises(AuthFailed) as bad:
        auth.authenticate([("authorization", "Bearer msk_wrong-secret-value")])
    assert "wrong-secret" not in bad.value.reason


def test_write_local_tokens_makes_and_keeps_three_tokens(tmp_path: Path) -> None:
    paths = write_local_tokens(tmp_path)
    assert set(paths) == {"admin", "infer", "service", "keys_file"}
    store = KeyStore(paths["keys_file"])
    for role in ("admin", "infer", "service"):
        assert oct(os.stat(paths[role]).st_mode & 0o777) == "0o600"
        identity = store.lookup(paths[role].read_text().strip())
        assert identity is not None and identity.roles == frozenset({role})
    before = paths["admin"].read_text()
    assert write_local_tokens(tmp_path)["admin"].read_text() == before  # a restart keeps them


def _claims(**extra: object) -> dict[str, object]:
    return {"sub": "svc-a", "roles": ["read"], "exp": int(time.time()) + 60, **extra}


def test_hs256_jwt_with_issuer_and_audience(tmp_path: Path) -> None:
    key = tmp_path / "secret"
    key.write_text(SECRET)
    verifier = JwtVerifier(key_file=str(key), issuer="iss-1", audience="modelserve")
    good = jwt.encode(_claims(iss="iss-1", aud="modelserve"), SECRET, "HS256")
    identity, _ = verifier.verify(good)
    assert identity.id == "svc-a" and identity.roles == frozenset({READ})
    auth = Authenticator(jwts=verifier)
    for bad, why in (
        (jwt.encode(_claims(iss="iss-1", aud="modelserve", exp=1), SECRET, "HS256"), "expired"),
        (jwt.encode(_claims(iss="iss-1", aud="modelserve"), "t" * 40, "HS256"), "signature"),
        (jwt.encode(_claims(iss="other", aud="modelserve"), SECRET, "HS256"), "issuer"),
        (jwt.encode(_claims(iss="iss-1", aud="else"), SECRET, "HS256"), "audience"),
    ):
        with pytest.raises(AuthFailed, match=why):
            auth.authenticate([("authorization", f"Bearer {bad}")])


def test_rs256_and_es256_from_pem_and_jwks(tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "rsa.pem"
    pem.write_bytes(
        rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    verifier = JwtVerifier(key_file=str(pem))
    assert verifier.verify(jwt.encode(_claims(), rsa_key, "RS256"))[0].id == "svc-a"
    # A PEM key never verifies an HS256 token signed with the PEM text (algorithm confusion).
    forged = jwt.encode(_claims(), "x" * 40, "HS256")
    with pytest.raises(Exception, match=r"signature|invalid"):
        verifier.verify(forged)
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "ES256"}]}))
    es = JwtVerifier(jwks_file=str(jwks))
    token = jwt.encode(
        _claims(roles=None, scope="infer admin other"), ec_key, "ES256", headers={"kid": "k1"}
    )
    identity, _ = es.verify(token)
    assert identity.roles == frozenset({INFER, ADMIN}) and identity.source == "jwt"


def test_token_bucket_and_stream_limits() -> None:
    now = [0.0]
    limits = IdentityLimits(max_streams=2, rate_per_s=2.0, burst=2, clock=lambda: now[0])
    limits.start_unary("a")
    limits.start_unary("a")
    with pytest.raises(LimitExceeded) as exc:
        limits.start_unary("a")
    assert exc.value.pushback_ms == 500
    limits.start_unary("b")  # another identity has its own bucket
    now[0] = 0.5
    limits.start_unary("a")
    limits.open_stream("a")
    limits.open_stream("a")
    with pytest.raises(LimitExceeded):
        limits.open_stream("a")
    limits.close_stream("a")
    limits.open_stream("a")


def test_auth_on_without_a_way_to_check_credentials_fails_fast() -> None:
    from modelserve.settings import CommonSettings, SettingsError, load_settings

    with pytest.raises(SettingsError, match="auth_keys_file"):
        load_settings(CommonSettings, [], {"MODELSERVE_AUTH": "1"})
    on = load_settings(CommonSettings, ["--auth", "true", "--auth-keys-file", "k.json"], {})
    assert on.auth and not load_settings(CommonSettings, [], {}).auth  # off by default


def test_cli_new_key_prints_the_token_once_and_adds_its_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from modelserve.cli.main import main

    keys = tmp_path / "keys.json"
    args = ["auth", "new-key", "--id", "alice", "--role", "infer", "--models", "fraud*"]
    assert main([*args, "--keys-file", str(keys)]) == 0
    token = capsys.readouterr().out.split("token: ", 1)[1].split()[0]
    assert token not in keys.read_text()
    found = KeyStore(keys).lookup(token)
    assert found is not None and found.id == "alice" and found.models == ("fraud*",)
    assert main([*args, "--keys-file", str(keys)]) == 2  # the same id twice is refused


@pytest.mark.parametrize(
    "argv",
    [
        ["models", "list", "--token", "T"],
        ["--token=T", "models", "list"],
        ["models", "--token", "T", "list"],
    ],
)
def test_token_flag_is_taken_anywhere_on_the_command_line(argv: list[str]) -> None:
    from modelserve.cli import connect
    from modelserve.cli.main import main

    connect.set_token(None)
    try:  # nothing listens on port 1: the command fails, after taking the token
        assert main([*argv, "--registry", "127.0.0.1:1"]) == 1
        assert connect.token() == "T"
    finally:
        connect.set_token(None)


def test_a_service_with_auth_on_and_an_unreadable_keys_file_does_not_start(
    tmp_path: Path,
) -> None:
    from modelserve.server import auth_interceptor
    from modelserve.settings import CommonSettings, SettingsError, load_settings

    keys = tmp_path / "keys.json"
    settings = load_settings(CommonSettings, ["--auth", "true", "--auth-keys-file", str(keys)], {})
    with pytest.raises(SettingsError, match="cannot be loaded"):
        auth_interceptor(settings)
    keys.write_text('{"keys": []}')
    assert auth_interceptor(settings) is not None
