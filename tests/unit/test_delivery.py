"""Unit tests for Listener.delivery: the bounded queue between the client and the listener."""

from __future__ import annotations

import asyncio
from typing import List

from Listener.delivery import DeliveryQueue


async def test_delivery_queue_holds_acknowledged_messages_at_the_window() -> None:
    arrivals: List[int] = []
    queue = DeliveryQueue(2, on_arrival=lambda: arrivals.append(1))
    await queue.put("a")
    await queue.put("b")
    third = asyncio.ensure_future(queue.put("c"))
    await asyncio.sleep(0)
    assert not third.done() and queue.qsize() == 2
    queue.put_nowait("qos0")  # never held back
    assert queue.qsize() == 3
    assert queue.take() == "a"
    assert queue.take() == "b"
    await asyncio.wait_for(third, 1)
    assert [queue.take(), queue.take(), queue.take()] == ["qos0", "c", None]
    assert len(arrivals) == 4


async def test_closed_delivery_queue_takes_no_more_acknowledged_messages() -> None:
    queue = DeliveryQueue(5)
    await queue.put("kept")
    queue.close()
    blocked = asyncio.ensure_future(queue.put("stays with the broker"))
    await asyncio.sleep(0.01)
    assert queue.take() == "kept" and queue.take() is None
    assert not blocked.done()
    blocked.cancel()


async def test_delivery_queue_waiters_never_overtake() -> None:
    queue = DeliveryQueue(1)
    await queue.put("a")
    b = asyncio.ensure_future(queue.put("b"))
    await asyncio.sleep(0)
    assert queue.take() == "a"  # frees the place: reserved for b, which has not run yet
    c = asyncio.ensure_future(queue.put("c"))
    await asyncio.sleep(0)
    await asyncio.wait_for(b, 1)
    assert not c.done()
    assert queue.take() == "b"
    await asyncio.wait_for(c, 1)
    assert queue.take() == "c"
