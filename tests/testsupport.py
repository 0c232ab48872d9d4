"""Helpers every test may import (tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    check: Callable[[], Awaitable[T]], *, timeout: float = 20.0, interval: float = 0.05
) -> T:
    """Await ``check`` until it returns without raising; re-raise its last error at timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await check()
        except (AssertionError, Exception):
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(interval)
