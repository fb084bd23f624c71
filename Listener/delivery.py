"""A delivery queue that holds back acknowledgements: the listener's bounded intake.

amqtt acknowledges an incoming QoS 1 message (PUBACK) or completes a QoS 2 one (PUBCOMP) right
after putting it into the session's delivery queue, and that queue is unbounded: under load it
fills with messages the broker already considers delivered, all lost if the process dies.

``DeliveryQueue`` replaces it. Acknowledged flows call ``await put()``, which waits while
``window`` messages are already queued, so the acknowledgement waits too and the broker stops
sending once its in-flight window is full: at most ``window`` acknowledged-but-unprocessed
messages exist. QoS 0 messages (amqtt calls ``put_nowait``) carry no acknowledgement and are
never held back. ``close()`` stops accepting acknowledged messages for good (used when stopping:
what is queued gets processed, what is not yet acknowledged stays with the broker).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any, Callable, Deque, Optional

__all__ = ["DeliveryQueue"]


class DeliveryQueue(asyncio.Queue):  # type: ignore[type-arg]
    """amqtt's delivery queue with a window on acknowledged messages and an arrival callback."""

    def __init__(self, window: int, on_arrival: Optional[Callable[[], None]] = None) -> None:
        super().__init__()
        self.window = max(1, window)
        self.closed = False
        self.on_arrival = on_arrival
        self._ack_waiters: Deque["asyncio.Future[None]"] = deque()
        self._reserved = 0

    def put_nowait(self, item: Any) -> None:
        super().put_nowait(item)
        if self.on_arrival is not None:
            self.on_arrival()

    async def put(self, item: Any) -> None:
        """Queue an acknowledged message once there is room (the caller acknowledges it afterwards).

        Waiters are served strictly first come, first served, so messages keep their arrival order.
        """
        if self.closed or self._ack_waiters or self.qsize() + self._reserved >= self.window:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._ack_waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._reserved -= 1
                    self._wake_putters()  # it was this one's turn: pass it on
                else:
                    with contextlib.suppress(ValueError):
                        self._ack_waiters.remove(waiter)
                raise
            self._reserved -= 1
        self.put_nowait(item)

    def get_nowait(self) -> Any:
        item = super().get_nowait()
        self._wake_putters()
        return item

    def _wake_putters(self) -> None:
        # One waiter per free place, each with the place reserved for it (no thundering herd, no overtaking).
        while self._ack_waiters and not self.closed and self.qsize() + self._reserved < self.window:
            waiter = self._ack_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._reserved += 1

    def take(self) -> Any:
        """The next message, or None when the queue is empty."""
        if self.empty():
            return None
        return self.get_nowait()

    def close(self) -> None:
        """Accept no more acknowledged messages (they stay unacknowledged, with the broker)."""
        self.closed = True
