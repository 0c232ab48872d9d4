"""A real router process with ``--discovery dns`` finds its workers by a name.

The suite's router is pointed at ``worker.modelserve.svc.cluster.local:<port>``, which only the
test's DNS server (tests/fakes/dns_server.py, real UDP) answers. Two workers listen on that one
port on two loopback addresses (127.0.0.1 and 127.0.0.2), like two pods behind a headless
Service: the name first resolves to the first only, so requests through the gateway are routed
to it; then to both, and the router follows each with its own status stream; then to the
second only, then to nothing (NXDOMAIN, no ready pods), and the router drops them in turn.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from fakes.dns_server import DNSServer
from suitesupport import dump_logs, ready_suite
from testsupport import eventually

from modelserve.cli.suite import Suite, free_port, start_suite
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import router_pb2, router_pb2_grpc
from modelserve.tensors import decode_outputs, encode_inputs

NAME = "worker.modelserve.svc.cluster.local"


@pytest.fixture
async def dns_server() -> AsyncIterator[DNSServer]:
    server = DNSServer()
    await server.start()
    yield server
    server.close()


@pytest.fixture
def dns_suite(tmp_path: Path, dns_server: DNSServer) -> Iterator[Suite]:
    worker_port = free_port()
    dns_server.records[NAME] = ["127.0.0.1"]
    second = ["--host", "127.0.0.2", "--metrics-host", "127.0.0.2", "--port", str(worker_port)]
    router_args = [
        "--discovery", "dns",
        "--dns-server", dns_server.address,
        "--dns-refresh-seconds", "0.2",
        "--worker-addrs", f"{NAME}:{worker_port}",
    ]  # fmt: skip
    suite = start_suite(
        tmp_path / "suite",
        workers=2,
        ports={"worker": worker_port},
        extra_args={"router": router_args, "worker1": second},
    )
    try:
        yield suite
    finally:
        logs = dump_logs(suite)
        suite.stop()
        print(logs)


async def test_router_routes_to_the_workers_its_dns_name_resolves_to(
    dns_suite: Suite, dns_server: DNSServer
) -> None:
    await ready_suite(dns_suite)
    worker = dns_suite.processes["worker"]
    async with (
        grpc.aio.insecure_channel(dns_suite.address("gateway")) as gateway_channel,
        grpc.aio.insecure_channel(dns_suite.address("router")) as router_channel,
    ):
        gateway = pb_grpc.GRPCInferenceServiceStub(gateway_channel)
        request = pb.ModelInferRequest(model_name="fraud")
        encode_inputs(request, {"transaction": np.ones((1, 8), np.float32)})
        answer = await gateway.ModelInfer(request, timeout=10)
        assert decode_outputs(answer)["fraud_probability"].shape == (1, 1)

        router = router_pb2_grpc.RouterControlStub(router_channel)

        async def workers() -> list[str]:
            reply = await router.ListWorkers(router_pb2.ListWorkersRequest(), timeout=5)
            return sorted(w.address for w in reply.workers)

        first, second = f"127.0.0.1:{worker.port}", f"127.0.0.2:{worker.port}"
        assert await workers() == [first]
        assert dns_server.queries > 0

        async def expect(addresses: list[str], serving: int) -> None:
            reply = await router.ListWorkers(router_pb2.ListWorkersRequest(), timeout=5)
            assert sorted(w.address for w in reply.workers) == addresses
            assert sum(w.serving for w in reply.workers) == serving

        dns_server.records[NAME] = ["127.0.0.1", "127.0.0.2"]  # scaled out: a second pod
        await eventually(lambda: expect([first, second], serving=2), timeout=20)
        dns_server.records[NAME] = ["127.0.0.2"]  # the first pod went away
        await eventually(lambda: expect([second], serving=1), timeout=10)
        answer = await gateway.ModelInfer(request, timeout=10)  # routed to the second
        assert decode_outputs(answer)["fraud_probability"].shape == (1, 1)
        del dns_server.records[NAME]  # no ready pods behind the name any more
        await eventually(lambda: expect([], serving=0), timeout=10)
    router_log = dns_suite.processes["router"].log_path.read_text()
    assert "Traceback" not in router_log and " ERROR " not in router_log
