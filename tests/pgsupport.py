"""PostgreSQL for tests: a fresh database per test module on the local server (127.0.0.1:5432,
user postgres, trust auth), dropped afterwards. Tests that need it skip, saying why, only when
the server is unreachable (or psycopg is not installed)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

SERVER = "postgresql://postgres@127.0.0.1:5432"


def _admin() -> object:
    try:
        import psycopg
    except ImportError:
        pytest.skip("psycopg is not installed (pip install -e '.[postgres]')")
    try:
        return psycopg.connect(f"{SERVER}/postgres", autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL is not reachable at 127.0.0.1:5432: {exc}".strip())


@contextmanager
def fresh_database() -> Iterator[str]:
    """``CREATE DATABASE modelserve_test_<random>``; its URL; dropped (forcibly) after."""
    name = f"modelserve_test_{secrets.token_hex(6)}"
    admin = _admin()
    with admin:  # type: ignore[attr-defined]
        admin.execute(f"CREATE DATABASE {name}")  # type: ignore[attr-defined]
        try:
            yield f"{SERVER}/{name}"
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[attr-defined]


def reset_database(url: str) -> None:
    """Every table gone: the next store starts from an empty database, as on a new tmp_path."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
