"""Listeners whose MQTT client is an ``AsyncMock``: build one, feed it messages, read what it published.

``listener.client.publish`` records each publication as ``(topic, payload, qos, retain)`` positional arguments.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Dict, List, Tuple, Union
from unittest.mock import AsyncMock, MagicMock

from Listener import EventListener, EventListenerConfig

__all__ = ["TOPIC", "feed", "mocked_listener", "publications", "published_json", "wait_forever"]

#: The subscription of a mocked listener, and the topic :func:`feed` delivers on.
TOPIC = "test/topic"

Publication = Tuple[str, bytes, int, bool]


def mocked_listener(**overrides: Any) -> EventListener:
    """A listener on ``test/topic`` whose ``client`` is an AsyncMock; a subscription is granted QoS 0."""
    options: Dict[str, Any] = {"host": "test-host", "topic": TOPIC, "client_id": "test-client"}
    options.update(overrides)
    listener = EventListener(EventListenerConfig(**options))
    listener.client = AsyncMock()
    listener.client.subscribe.return_value = [0]
    return listener


async def wait_forever() -> Any:
    """A ``deliver_message`` (or ``connect``) that never returns until cancelled."""
    await asyncio.Event().wait()


def feed(listener: EventListener, *payloads: Union[str, bytes]) -> "asyncio.Queue[Any]":
    """Make the mocked client deliver ``payloads`` on ``test/topic``, then wait forever (put more on the queue)."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for payload in payloads:
        data = payload.encode() if isinstance(payload, str) else payload
        queue.put_nowait(MagicMock(topic=TOPIC, data=bytearray(data)))
    listener.client.deliver_message.side_effect = queue.get
    listener.client.subscribe.return_value = [0]
    return queue


def publications(listener: EventListener) -> List[Publication]:
    """Every ``(topic, payload, qos, retain)`` the listener published, in order."""
    return [tuple(call.args) for call in listener.client.publish.call_args_list]


def published_json(listener: EventListener, topic: str) -> List[Dict[str, Any]]:
    """The JSON payload of every publication on ``topic``, in order."""
    return [json.loads(payload) for published_topic, payload, _, _ in publications(listener) if published_topic == topic]
