"""How long a worker takes to fetch one artifact, by path: an uploaded version through the
registry's FetchArtifact, a version by reference read straight from HTTP or S3, and the same
relayed by the registry (the fallback). Sources alternate round by round; medians printed.

    PYTHONPATH=services .venv/bin/python bench/artifact_fetch_bench.py [--mib 64] [--rounds 5]

The registry and the stores run in this process on loopback (http.server, moto's S3 server),
so the figures compare the paths' overheads, not a network; S3 needs the dev extras.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import http.server
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import numpy as np
from grpc import aio
from onnx import TensorProto, helper, numpy_helper

from modelserve.artifact_uris import FetchOptions
from modelserve.interceptors import ErrorInterceptor
from modelserve.proto.modelserve.v1 import registry_pb2, registry_pb2_grpc
from registry.registry_servicer import RegistryServicer
from registry.store import RegistryStore
from registry.watch import WatchHub
from worker.artifacts import ArtifactCache


def big_model(mib: int) -> bytes:
    """y = x + w[0:1] over a weight of ``mib`` MiB: a real ONNX file the registry accepts."""
    n = mib * (1 << 20) // 4
    weight = numpy_helper.from_array(np.random.default_rng(0).random(n, np.float32), "w")
    start = numpy_helper.from_array(np.array([0], np.int64), "s")
    end = numpy_helper.from_array(np.array([1], np.int64), "e")
    graph = helper.make_graph(
        [
            helper.make_node("Slice", ["w", "s", "e"], ["w1"]),
            helper.make_node("Add", ["x", "w1"], ["y"]),
        ],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [weight, start, end],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def serve_http(directory: Path) -> tuple[str, Callable[[], None]]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(Quiet, directory=str(directory))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server.shutdown


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="artifact-bench-"))
    data = big_model(args.mib)
    sha = hashlib.sha256(data).hexdigest()
    (tmp / "www").mkdir()
    (tmp / "www" / "m.onnx").write_bytes(data)
    http_url, stop_http = serve_http(tmp / "www")

    s3_endpoint = ""
    try:
        import boto3
        from moto.server import ThreadedMotoServer

        for k, v in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}.items():
            os.environ.setdefault(k, v)
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        host, port = moto.get_host_and_port()
        s3_endpoint = f"http://{host}:{port}"
        s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket="models")
        s3.put_object(Bucket="models", Key="m.onnx", Body=data)
    except ImportError:
        print("(no boto3/moto: S3 rows skipped)", file=sys.stderr)

    options = FetchOptions(timeout_s=60, s3_endpoint_url=s3_endpoint)
    hub = WatchHub()
    store = RegistryStore(tmp / "registry")
    servicer = RegistryServicer(
        store=store,
        hub=hub,
        artifact_uri_prefixes=[http_url + "/", "s3://models/"],
        artifact_fetch=options,
    )
    server = aio.server(
        interceptors=[ErrorInterceptor()], options=[("grpc.max_receive_message_length", 8 << 20)]
    )
    registry_pb2_grpc.add_RegistryServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    stub = registry_pb2_grpc.RegistryStub(channel)

    async def push(model: str, uri: str = "") -> int:
        header = registry_pb2.PushVersionRequest.Header(model=model, sha256=sha, artifact_uri=uri)

        async def stream():  # type: ignore[no-untyped-def]
            yield registry_pb2.PushVersionRequest(header=header)
            if not uri:
                for i in range(0, len(data), 1 << 20):
                    yield registry_pb2.PushVersionRequest(chunk=data[i : i + (1 << 20)])

        started = time.perf_counter()
        await stub.PushVersion(stream(), timeout=300)
        print(f"push {model:<10} {time.perf_counter() - started:7.3f} s", file=sys.stderr)
        return 1

    await push("uploaded")
    await push("by_http", f"{http_url}/m.onnx")
    if s3_endpoint:
        await push("by_s3", "s3://models/m.onnx")

    cases: dict[str, Callable[[Path], Awaitable[Path]]] = {
        "uploaded, FetchArtifact": lambda d: ArtifactCache(d).fetch(stub, "uploaded", 1, sha),
        "http, direct": lambda d: ArtifactCache(d, fetch_options=options).fetch(
            stub, "by_http", 1, sha, artifact_uri=f"{http_url}/m.onnx"
        ),
        "http, registry relay": lambda d: ArtifactCache(d, direct_fetch=False).fetch(
            stub, "by_http", 1, sha, artifact_uri=f"{http_url}/m.onnx"
        ),
    }
    if s3_endpoint:
        cases["s3, direct"] = lambda d: ArtifactCache(d, fetch_options=options).fetch(
            stub, "by_s3", 1, sha, artifact_uri="s3://models/m.onnx"
        )
        cases["s3, registry relay"] = lambda d: ArtifactCache(d, direct_fetch=False).fetch(
            stub, "by_s3", 1, sha, artifact_uri="s3://models/m.onnx"
        )
    times: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(args.rounds):
        for name, fetch in cases.items():
            directory = tmp / f"cache-{r}-{len(times[name])}-{abs(hash(name))}"
            started = time.perf_counter()
            path = await fetch(directory)
            times[name].append(time.perf_counter() - started)
            path.unlink()
    size_mib = len(data) / (1 << 20)
    print(f"artifact {size_mib:.0f} MiB, {args.rounds} rounds, load {os.getloadavg()[0]:.1f}")
    print(f"{'path':<26} {'median s':>9} {'MiB/s':>8}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<26} {median:9.3f} {len(data) / (1 << 20) / median:8.0f}")
    await channel.close()
    await server.stop(None)
    servicer.close()
    store.close()
    stop_http()


if __name__ == "__main__":
    asyncio.run(main())
