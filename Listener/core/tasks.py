"""Tasks that can say whether a cancellation was asked of them, on every Python the listener supports.

A processor may await a future that somebody else cancels: the ``CancelledError`` it then raises is its own
failure, not the listener's cancellation. Python 3.11+ tells the two apart with ``Task.cancelling()`` (how
many cancellations were asked of the task and not withdrawn). Python 3.10 has no such count, so the tasks in
which the listener runs processors are started with :func:`start_task`, which there makes a
:class:`CountingTask`: the same count, kept by ``cancel()``.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, Coroutine, Optional, TypeVar

__all__ = ["CountingTask", "start_task"]

T = TypeVar("T")


class CountingTask(asyncio.Task[Any]):
    """A task whose ``cancelling()`` counts the cancellations asked of it while it was not done (as on 3.11+)."""

    _cancel_requests = 0

    def cancel(self, msg: Any = None) -> bool:
        if not self.done():
            self._cancel_requests += 1
        return super().cancel(msg)

    def cancelling(self) -> int:
        return self._cancel_requests


if sys.version_info >= (3, 11):
    start_task = asyncio.create_task
else:  # pragma: no cover - exercised on Python 3.10 only
    def start_task(coro: Coroutine[Any, Any, T], *, name: Optional[str] = None) -> "asyncio.Task[T]":
        """``asyncio.create_task``, as a :class:`CountingTask`."""
        return CountingTask(coro, name=name)
