"""Outgoing publications: bounded in flight, bounded in time, kept across a lost connection.

amqtt 0.12 loses track of PUBACKs when thousands of QoS 1/2 publications are outstanding, hangs a
publish made after its connection closed, and fails one made while the connection drops. So every
publication here waits for a slot (at most ``max_in_flight`` QoS 1/2 ones at a time), is bounded by
``timeout`` (QoS 0 ones on a watched connection excepted: the liveness watchdog bounds them), and one
that fails because the connection is down is kept (up to ``outbox_limit``) and sent again by
:meth:`Publisher.flush` after the listener reconnects.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Callable, Deque, Optional, Tuple

from .deadlines import bounded
from .metrics import ListenerMetrics
from .processing import describe_exception

__all__ = ["NotConnected", "Publication", "Publisher"]

#: (topic, payload, qos, retain), as ``client.publish`` takes them.
Publication = Tuple[str, bytes, int, bool]


class NotConnected(ConnectionError):
    """A publication was attempted while the listener has no connection."""


class Publisher:
    """Sends publications through the listener's current client."""

    def __init__(self, client: Callable[[], Any], connected: Callable[[], bool], metrics: ListenerMetrics,
                 describe_endpoint: Callable[[], str], timeout: float = 10.0, max_in_flight: int = 64,
                 outbox_limit: int = 10_000, watched: Callable[[], bool] = lambda: False) -> None:
        self._client = client
        self._watched = watched
        self._connected = connected
        self._metrics = metrics
        self._endpoint = describe_endpoint
        self.timeout = timeout
        self.outbox_limit = outbox_limit
        self._slots = asyncio.Semaphore(max_in_flight)
        self._outbox: Deque[Publication] = deque()

    @property
    def pending(self) -> int:
        """Publications kept for after the connection returns."""
        return len(self._outbox)

    async def publish(self, topic: str, payload: bytes, qos: int, retain: bool, *, slot_held: bool = False) -> None:
        """Publish now (``slot_held``: the caller already holds one of the QoS 1/2 slots).

        Raises:
            NotConnected: there is no connection.
            asyncio.TimeoutError: the broker did not take it within ``timeout`` seconds.
            Exception: whatever the client raised.
        """
        if not self._connected():
            raise NotConnected(f"Not connected to MQTT broker at {self._endpoint()}")
        client = self._client()
        if qos and slot_held:
            await bounded(client.publish(topic, payload, qos, retain), self.timeout)
        elif qos:
            async with self._slots:
                await bounded(client.publish(topic, payload, qos, retain), self.timeout)
        elif self._watched():
            # QoS 0 only waits for the socket buffer; when a liveness watchdog guards the connection
            # it aborts a dead one, which ends that wait, so a timer per message would buy nothing.
            await client.publish(topic, payload, qos, retain)
        else:
            await bounded(client.publish(topic, payload, qos, retain), self.timeout)
        self._metrics.publishes += 1

    async def deliver_in_background(self, publication: Publication) -> "asyncio.Future[Optional[str]]":
        """Wait for a free QoS 1/2 slot, then :meth:`deliver` without waiting for the acknowledgement.

        The returned future gives :meth:`deliver`'s answer. Publications started one after another go
        out in that order; only the waits for their acknowledgements overlap.
        """
        await self._slots.acquire()
        return asyncio.ensure_future(self._deliver_holding_slot(publication))

    async def _deliver_holding_slot(self, publication: Publication) -> Optional[str]:
        try:
            return await self.deliver(publication, slot_held=True)
        finally:
            self._slots.release()

    async def deliver(self, publication: Publication, *, slot_held: bool = False) -> Optional[str]:
        """Publish, or keep the publication for after a reconnect when the connection is down.

        Returns None when it was sent or kept, else why it is lost (also counted as a publish error).
        """
        try:
            await self.publish(*publication, slot_held=slot_held)
            return None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self._connected():
                if len(self._outbox) < self.outbox_limit:
                    self._outbox.append(publication)
                    return None
                reason = f"not connected, and {self.outbox_limit} publications are already waiting"
            else:
                reason = describe_exception(exc) if not isinstance(exc, asyncio.TimeoutError) else "timed out"
        self._metrics.publish_errors += 1
        return reason

    async def flush(self) -> int:
        """Send the kept publications in order; stop at the first failure. Returns how many were sent."""
        sent = 0
        while self._outbox:
            try:
                await self.publish(*self._outbox[0])
            except asyncio.CancelledError:
                raise
            except Exception:
                break
            self._outbox.popleft()
            self._metrics.publishes_retried += 1
            sent += 1
        return sent

    def discard(self) -> int:
        """Give up on every kept publication (the listener is stopping); returns how many were lost."""
        lost = len(self._outbox)
        self._outbox.clear()
        self._metrics.publish_errors += lost
        return lost
