"""Fixtures: registries started on tmp_path and stopped after each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import pytest
import registry_testkit
from pgsupport import fresh_database, reset_database
from registry_testkit import Registry

from modelserve.artifact_uris import FetchOptions


@pytest.fixture
async def start_registry(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Registry]]]:
    """Start a registry on ``tmp_path / "data"`` (or another dir); all are stopped after."""
    running: list[Registry] = []

    async def start(
        data_dir: Path | None = None,
        *,
        max_artifact_bytes: int = 64 << 20,
        hub_queue_size: int = 64,
        artifact_uri_prefixes: Sequence[str] = (),
        artifact_fetch: FetchOptions | None = None,
    ) -> Registry:
        registry = Registry(
            data_dir or tmp_path / "data",
            max_artifact_bytes,
            hub_queue_size,
            artifact_uri_prefixes,
            artifact_fetch,
        )
        await registry.start()
        running.append(registry)
        return registry

    yield start
    for registry in running:
        await registry.stop()


@pytest.fixture
async def registry(start_registry: Callable[..., Awaitable[Registry]]) -> Registry:
    return await start_registry()


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The backend a test's stores use (registry_testkit.database_url): SQLite in tmp_path,
    or the module's PostgreSQL database emptied before each test. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("database_url")``; then every store they open
    through the test kit (``open_store``, ``Registry``) is on that backend."""
    url = ""
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_database")
        reset_database(url)
    registry_testkit.DATABASE_URL = url
    try:
        yield url
    finally:
        registry_testkit.DATABASE_URL = ""
