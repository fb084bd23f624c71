"""Waiting for a condition in a test without blocking the event loop, always with a bound."""

from __future__ import annotations

import asyncio
import time
from typing import Callable

__all__ = ["eventually"]


async def eventually(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait (without blocking the loop) until ``predicate()`` holds; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.02)
