"""Unit tests for Listener.mqtt.share_probe: the check, at each connection, that the broker applies ``share_group``.

A fake client stands for the listener's amqtt client and its broker: it routes each publication to the
client's own subscriptions, through the real :class:`~Listener.mqtt.delivery_queue.DeliveryQueue` (so the probe's
interception is the one the listener uses), either applying ``$share/<group>/`` as MQTT says, or taking it
as a literal filter as amqtt's broker, Aedes and RabbitMQ 3.x do, or delivering nothing at all.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, List, Tuple
from unittest.mock import AsyncMock

import pytest

from Listener import EventListenerConfig
from Listener.mqtt import share_probe
from Listener.mqtt.delivery_queue import DeliveryQueue
from Listener.mqtt.connection import AmqttAdapter, BrokerConnection, adapt
from Listener.mqtt.share_probe import SharedSubscriptionUnsupported, probe_topics, verify_share_group
from Listener.core.topics import strip_share_prefix
from Listener.mqtt.client import BrokerRefusedConnection


class _Message:
    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.qos = 0


class FakeClient:
    """A connected client whose broker applies ``$share`` (``mode="shared"``), takes it literally ("literal"),
    or delivers nothing ("silent"); ``refuse`` answers SUBSCRIBEs to ``$share/`` filters with 0x80."""

    def __init__(self, mode: str = "shared", refuse: bool = False) -> None:
        self.mode = mode
        self.refuse = refuse
        self.queue = DeliveryQueue(1, hold_acks=True)
        self.subscriptions: List[str] = []
        self.published: List[str] = []
        self.unsubscribed: List[str] = []
        self.disconnected = False
        self.on_wakeup: Any = None
        self.ended: "asyncio.Future[None]" = asyncio.get_running_loop().create_future()

    def intercept(self, topic: str) -> "asyncio.Future[Any]":
        return self.queue.intercept(topic)

    def stop_intercepting(self, topic: str) -> None:
        self.queue.stop_intercepting(topic)

    async def connect(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def subscribe(self, filters: List[Tuple[str, int]]) -> List[int]:
        self.subscriptions += [name for name, _ in filters]
        return [0x80 if self.refuse and name.startswith("$share/") else 0 for name, _ in filters]

    async def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self.published.append(topic)
        if self.mode == "silent":
            return
        for name in self.subscriptions:
            if name == topic or (self.mode == "shared" and strip_share_prefix(name) == topic):
                asyncio.get_running_loop().call_soon(self.queue.put_nowait, _Message(topic))  # as from the wire

    async def unsubscribe(self, filters: List[str]) -> None:
        self.unsubscribed += filters

    async def wait_closed(self) -> None:
        await asyncio.shield(self.ended)

    async def watch_liveness(self, period: float, label: str) -> bool:
        await self.wait_closed()
        return False

    def is_connected(self) -> bool:
        return not self.disconnected

    async def disconnect(self) -> None:
        self.disconnected = True


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Verdicts in tenths of a second instead of seconds."""
    monkeypatch.setattr(share_probe, "VERDICT_GRACE", 0.1)
    monkeypatch.setattr(share_probe, "REPUBLISH_AFTER", (0.1, 0.2))


async def test_a_broker_that_applies_shared_subscriptions_passes_at_the_first_message() -> None:
    client = FakeClient("shared")
    elapsed = await verify_share_group(client, "g", "svc-1", "h:1")  # type: ignore[arg-type]
    assert elapsed < share_probe.REPUBLISH_AFTER[0]  # no second try was needed
    shared, direct = (topic for topic in client.published)
    assert shared.startswith("mqtt-listener/share-probe/svc-1/") and shared.endswith("/shared")
    assert direct == shared[:-len("shared")] + "direct"
    assert client.subscriptions == [f"$share/g/{shared}", direct]
    assert client.unsubscribed == client.subscriptions
    assert client.queue.qsize() == 0 and client.queue.unacknowledged == 0  # the probe never reached the intake
    assert not client.queue._intercepted  # unsubscribed: nothing is intercepted any more


async def test_a_broker_taking_share_literally_is_refused_with_a_clear_error(quick: None) -> None:
    client = FakeClient("literal")
    started = time.monotonic()
    with pytest.raises(SharedSubscriptionUnsupported) as raised:
        await verify_share_group(client, "pool", "svc", "broker.example:1883")  # type: ignore[arg-type]
    assert time.monotonic() - started < 2.0
    message = str(raised.value)
    assert "shared subscription" in message and "broker.example:1883" in message and "'pool'" in message
    assert "Mosquitto 2" in message and "remove share_group" in message and "ACL" in message
    assert isinstance(raised.value, BrokerRefusedConnection) and isinstance(raised.value, ConnectionError)
    assert client.queue.qsize() == 0  # the direct probe message was caught too


async def test_a_broker_delivering_nothing_is_a_retryable_connection_error_not_a_verdict(quick: None) -> None:
    client = FakeClient("silent")
    started = time.monotonic()
    with pytest.raises(ConnectionError) as raised:
        await verify_share_group(client, "g", "svc", "h:1", timeout=0.3)  # type: ignore[arg-type]
    assert 0.3 <= time.monotonic() - started < 2.0
    assert not isinstance(raised.value, BrokerRefusedConnection)  # the run loop retries it
    assert "delivered neither share_group probe message within 0.3 s" in str(raised.value)
    assert "ACL" in str(raised.value) and "overloaded" in str(raised.value)
    assert len(client.published) == 6  # both messages, published again at 0.1 and 0.2 s


async def test_a_refused_probe_subscription_names_both_causes() -> None:
    client = FakeClient("shared", refuse=True)
    with pytest.raises(SharedSubscriptionUnsupported, match="refused the subscription to \\$share/g/") as raised:
        await verify_share_group(client, "g", "svc", "h:1")  # type: ignore[arg-type]
    assert "shared subscriptions" in str(raised.value) and "ACL" in str(raised.value)
    assert not client.published


async def test_a_connection_lost_during_the_probe_is_a_connection_error() -> None:
    client = FakeClient("silent")
    asyncio.get_running_loop().call_later(0.05, client.ended.set_result, None)
    with pytest.raises(ConnectionError, match="lost during the share_group probe") as raised:
        await asyncio.wait_for(verify_share_group(client, "g", "svc", "h:1"), 2.0)  # type: ignore[arg-type]
    assert not isinstance(raised.value, BrokerRefusedConnection)


def test_probe_topics_are_private_to_each_connection() -> None:
    first, second = probe_topics("svc-1"), probe_topics("svc-1")
    assert first != second and first[0].startswith("mqtt-listener/share-probe/svc-1/")
    assert probe_topics("a/b", "ff") == ("mqtt-listener/share-probe/client/ff/shared",
                                         "mqtt-listener/share-probe/client/ff/direct")
    assert probe_topics("x+y", "ff")[0] == "mqtt-listener/share-probe/client/ff/shared"


async def test_the_listeners_own_client_is_probed_and_a_client_assigned_to_it_is_not() -> None:
    config = EventListenerConfig(topic="jobs", share_group="g")
    filters = [("$share/g/jobs", 0)]
    own = FakeClient("literal")
    with pytest.raises(SharedSubscriptionUnsupported):
        await BrokerConnection(AmqttAdapter(own), config, "h:1", filters).open()  # type: ignore[arg-type]
    assert own.published and own.disconnected  # probed; then disconnected, so a retry starts afresh

    mock = AsyncMock()
    mock.subscribe.return_value = [0]
    async with BrokerConnection(adapt(mock), config, "h:1", filters):
        mock.subscribe.assert_awaited_once_with(filters)  # the job filters only: no probe subscription
    mock.publish.assert_not_called()
    mock.unsubscribe.assert_not_called()
