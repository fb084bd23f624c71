"""The delivery queue's bound in bytes and the room it tells the reader about (``Listener.mqtt.delivery_queue``)."""

from __future__ import annotations

from typing import List

import pytest

from Listener.mqtt.amqtt_boundary import incoming_message
from Listener.mqtt.delivery_queue import DeliveryQueue
from Listener.mqtt.packets import OversizePayload

pytestmark = pytest.mark.unit


async def test_queued_bytes_count_payloads_and_topics_and_bound_the_queue() -> None:
    queue = DeliveryQueue(1, max_pending=100, max_bytes=1000)
    rooms: List[int] = []
    queue.on_room = lambda: rooms.append(queue.qsize())
    assert queue.has_room(0) and queue.has_room(1)
    queue.put_nowait(incoming_message(None, "jobs", 0, b"x" * 996, False))
    assert queue.queued_bytes == 1000
    assert not queue.has_room(0) and not queue.has_room(1)  # the bytes, not the count, are full
    queue.put_nowait(incoming_message(None, "jobs", 0, OversizePayload(10**8), False))  # never held: counts 0
    assert queue.queued_bytes == 1004
    queue.take()
    assert queue.queued_bytes == 4 and queue.has_room(0) and rooms == [1]
    queue.take()
    assert queue.queued_bytes == 0 and rooms == [1, 0]


async def test_an_empty_queue_takes_one_message_whatever_its_size() -> None:
    queue = DeliveryQueue(1, max_bytes=10)
    assert queue.has_room(0)
    queue.put_nowait(incoming_message(None, "t", 0, b"y" * 100, False))
    assert not queue.has_room(0)


async def test_a_closed_queue_has_room_for_anything_and_says_so() -> None:
    queue = DeliveryQueue(1, max_pending=1)
    queue.put_nowait(incoming_message(None, "t", 0, b"a", False))
    rooms: List[bool] = []
    queue.on_room = lambda: rooms.append(True)
    assert not queue.has_room(0)
    queue.close()
    assert rooms == [True] and queue.has_room(0) and queue.has_room(2)
