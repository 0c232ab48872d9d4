"""Fixtures: registries started on tmp_path and stopped after each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from registry_testkit import Registry


@pytest.fixture
async def start_registry(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Registry]]]:
    """Start a registry on ``tmp_path / "data"`` (or another dir); all are stopped after."""
    running: list[Registry] = []

    async def start(
        data_dir: Path | None = None,
        *,
        max_artifact_bytes: int = 64 << 20,
        hub_queue_size: int = 64,
    ) -> Registry:
        registry = Registry(data_dir or tmp_path / "data", max_artifact_bytes, hub_queue_size)
        await registry.start()
        running.append(registry)
        return registry

    yield start
    for registry in running:
        await registry.stop()


@pytest.fixture
async def registry(start_registry: Callable[..., Awaitable[Registry]]) -> Registry:
    return await start_registry()
