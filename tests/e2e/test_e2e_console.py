"""The read-only web console of `modelserve up` against the running suite: the page lists the
demo models with their traffic, a canary's decisions and shadow agreement appear, /api/state
is the same data as JSON, and the page renders in headless Chromium (issue 12)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from modelserve.cli.console import Console
from modelserve.cli.suite import Suite
from modelserve.proto.modelserve.v1 import registry_pb2, registry_pb2_grpc

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def console(suite: Suite) -> Iterator[Console]:
    running = Console("127.0.0.1", 0, suite.address("registry"), [suite.address("router")])
    yield running
    running.stop()


def test_the_page_and_the_api_show_the_suite(console: Console) -> None:
    page = httpx.get(f"http://127.0.0.1:{console.port}/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for name in ("fraud", "tabular", "wide"):
        assert f"<td>{name}" in page.text, name
    assert "Canaries" in page.text and "Experiments" in page.text and "Shadow" in page.text
    state = httpx.get(f"http://127.0.0.1:{console.port}/api/state", timeout=30).json()
    assert {"fraud", "tabular", "wide"} <= {m["name"] for m in state["models"]}
    assert state["errors"] == []
    assert httpx.get(f"http://127.0.0.1:{console.port}/nope", timeout=10).status_code == 404


async def test_a_policy_shows_as_the_models_traffic(suite: Suite, console: Console) -> None:
    async with grpc.aio.insecure_channel(suite.address("registry")) as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        shadow = registry_pb2.Shadow(target="1", fraction=0.5)
        await stub.SetPolicy(
            registry_pb2.SetPolicyRequest(
                model="wide", policy=registry_pb2.RoutingPolicy(shadow=shadow)
            ),
            timeout=30,
        )
        try:
            async with httpx.AsyncClient() as client:
                page = await client.get(f"http://127.0.0.1:{console.port}/", timeout=30)
            assert "shadow 1 x0.5" in page.text, page.text
        finally:
            await stub.ClearPolicy(registry_pb2.ClearPolicyRequest(model="wide"), timeout=30)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (./dev installs it where it can)")
def test_the_page_renders_in_headless_chromium(console: Console, tmp_path: Path) -> None:
    assert CHROMIUM is not None
    done = subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=3000",
            "--dump-dom", f"http://127.0.0.1:{console.port}/",
        ],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert "<title>modelserve console</title>" in dom
    for name in ("fraud", "tabular", "wide"):
        assert f"<td>{name}" in dom, name
