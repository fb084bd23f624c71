"""Waiting with a time limit, the two ways the listener needs it."""

from __future__ import annotations

import asyncio
import sys
from typing import Any, Awaitable, Callable, Coroutine, Optional, TypeVar

from .tasks import start_task

__all__ = ["bounded", "settle_within"]

T = TypeVar("T")

if sys.version_info >= (3, 11):
    async def bounded(awaitable: Awaitable[T], timeout: float) -> T:
        """Await with a time limit (``asyncio.timeout``: no extra task per call)."""
        async with asyncio.timeout(timeout):
            return await awaitable
else:  # pragma: no cover - exercised on Python 3.10 only
    async def bounded(awaitable: Awaitable[T], timeout: float) -> T:
        """Await with a time limit."""
        return await asyncio.wait_for(awaitable, timeout)


async def settle_within(awaitable: Coroutine[Any, Any, Any], timeout: Optional[float],
                        cancel: "Optional[Callable[[asyncio.Future[Any]], Any]]" = None) -> "Optional[asyncio.Future[Any]]":
    """Run ``awaitable`` as a task and return it once it is done (result, error or cancelled);
    None when ``timeout`` seconds passed first, after cancelling it (with ``cancel``, else
    ``task.cancel()``) and waiting for it to end.

    Unlike ``wait_for``, what the awaitable raised is never confused with the timeout.
    """
    task = start_task(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    finally:
        if not task.done():
            if cancel is not None:
                cancel(task)
            else:
                task.cancel()
            await asyncio.wait({task})
    return task if done else None
