"""An in-memory MQTT broker and client for :mod:`Listener.testing`: no sockets, a broker's routing rules.

:class:`MemoryClient` has the methods :class:`~Listener.EventListener` calls on a client it did not
create (``connect``, ``subscribe``, ``publish``, ``deliver_message``, ``disconnect``), so assigning one
to ``listener.client`` runs the listener's real pipeline without a network. :class:`MemoryBroker`
routes like Mosquitto 2: every subscription whose filter matches gets its own copy, at the lower of
the publication's and the subscription's QoS, and retained messages go to new subscriptions. A shared
subscription (``$share/<group>/<filter>``) gets one copy per group, taken by its clients in turn.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..core.topics import topic_matches, topic_name_error

__all__ = ["MemoryBroker", "MemoryClient", "MemoryMessage"]


@dataclass(frozen=True)
class MemoryMessage:
    """One message as a subscriber receives it (amqtt's ``ApplicationMessage`` has the same fields)."""

    topic: str
    data: bytes
    qos: int
    retain: bool


class MemoryBroker:
    """Routes publications between :class:`MemoryClient` objects of one test.

    Args:
        on_publish: called with ``(client, message)`` for every publication a client makes, before it
            is routed (``message.retain`` is the flag the publisher set).
    """

    def __init__(self, on_publish: Optional[Callable[["MemoryClient", MemoryMessage], None]] = None) -> None:
        self._clients: List[MemoryClient] = []
        self._on_publish = on_publish
        self.retained: Dict[str, MemoryMessage] = {}
        self._turns: Dict[str, int] = {}  # shared subscription -> deliveries so far (whose turn it is)

    def attach(self, client: "MemoryClient") -> None:
        """A client connected."""
        if client not in self._clients:
            self._clients.append(client)

    def detach(self, client: "MemoryClient") -> None:
        """A client disconnected: it receives nothing more."""
        if client in self._clients:
            self._clients.remove(client)

    def route(self, sender: "MemoryClient", message: MemoryMessage, wrap: Callable[[bytes], bytes] = bytes) -> int:
        """Deliver ``message`` to every matching subscription; returns how many copies were delivered.

        ``wrap`` makes each copy's payload (the test harness tags copies with it).
        """
        if self._on_publish is not None:
            self._on_publish(sender, message)
        if message.retain:
            if message.data:
                self.retained[message.topic] = message
            else:
                self.retained.pop(message.topic, None)
        copies = 0
        shared: Dict[str, List[Tuple[MemoryClient, int]]] = {}
        for client in list(self._clients):
            for topic_filter, granted in client.subscriptions:
                if not topic_matches(topic_filter, message.topic):
                    continue
                if topic_filter.startswith("$share/"):
                    shared.setdefault(topic_filter, []).append((client, granted))
                    continue
                client.receive(MemoryMessage(message.topic, wrap(message.data), min(message.qos, granted), False))
                copies += 1
        for topic_filter, members in shared.items():
            turn = self._turns.get(topic_filter, 0)
            self._turns[topic_filter] = turn + 1
            client, granted = members[turn % len(members)]
            client.receive(MemoryMessage(message.topic, wrap(message.data), min(message.qos, granted), False))
            copies += 1
        return copies


class MemoryClient:
    """An MQTT client connected to a :class:`MemoryBroker` (the subset of amqtt's ``MQTTClient`` the listener uses)."""

    def __init__(self, broker: MemoryBroker, client_id: str = "memory-client") -> None:
        self.broker = broker
        self.client_id = client_id
        self.subscriptions: List[Tuple[str, int]] = []
        self._connected = False
        self._inbox: "asyncio.Queue[Optional[MemoryMessage]]" = asyncio.Queue()

    def is_connected(self) -> bool:
        """True between :meth:`connect` and :meth:`disconnect`."""
        return self._connected

    async def connect(self, uri: str = "mqtt://memory", cleansession: bool = True, **options: Any) -> int:
        """Connect (always succeeds); returns 0, MQTT's "accepted"."""
        self._connected = True
        if cleansession:
            self.subscriptions = []
        self.broker.attach(self)
        return 0

    async def subscribe(self, filters: Sequence[Tuple[str, int]]) -> List[int]:
        """Subscribe to ``[(filter, qos), ...]``; returns the granted QoS of each, and sends retained matches."""
        self._require_connection()
        granted = []
        for topic_filter, qos in filters:
            self.subscriptions = [(f, q) for f, q in self.subscriptions if f != topic_filter] + [(topic_filter, qos)]
            granted.append(qos)
            for retained in list(self.broker.retained.values()):
                if topic_matches(topic_filter, retained.topic):
                    self.receive(MemoryMessage(retained.topic, retained.data, min(retained.qos, qos), True))
        return granted

    async def publish(self, topic: str, message: bytes, qos: int = 0, retain: bool = False) -> MemoryMessage:
        """Publish ``message`` on ``topic`` (a topic name: no wildcards)."""
        self._require_connection()
        problem = topic_name_error(topic)
        if problem:
            raise ValueError(f"Cannot publish to {topic!r}: it {problem}")
        sent = MemoryMessage(topic, bytes(message), int(qos), bool(retain))
        self.broker.route(self, sent)
        return sent

    async def deliver_message(self, timeout_duration: Optional[float] = None) -> Optional[MemoryMessage]:
        """The next message for this client; None once disconnected (like amqtt when its connection is gone)."""
        if not self._connected and self._inbox.empty():
            return None
        if timeout_duration is None:
            return await self._inbox.get()
        return await asyncio.wait_for(self._inbox.get(), timeout_duration)

    async def disconnect(self) -> None:
        """Disconnect: no more deliveries; a pending :meth:`deliver_message` returns None."""
        if self._connected:
            self._connected = False
            self.broker.detach(self)
            self._inbox.put_nowait(None)

    def receive(self, message: MemoryMessage) -> None:
        """Queue ``message`` for :meth:`deliver_message` (called by the broker)."""
        self._inbox.put_nowait(message)

    def _require_connection(self) -> None:
        if not self._connected:
            raise ConnectionError(f"{self.client_id} is not connected")
