"""Waiting for a condition in a test without blocking the event loop, always with a bound."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

__all__ = ["eventually", "until"]


async def eventually(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait (without blocking the loop) until ``predicate()`` holds; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.02)


async def until(check: Callable[[], Awaitable[Any]], what: str = "the condition", timeout: float = 20.0,
                interval: float = 0.02) -> Any:
    """Await ``check()`` every ``interval`` s until it gives something true, and return that; AssertionError
    naming ``what`` after ``timeout`` s (a bound on a failing run, not how long a passing one takes)."""
    deadline = time.monotonic() + timeout
    while not (value := await check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(interval)
    return value
