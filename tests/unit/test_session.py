"""Unit tests for Listener.mqtt.connection: a BrokerConnection's lifetime, the client slot and the client adapters."""

from __future__ import annotations

import asyncio
from typing import Any, List
from unittest.mock import AsyncMock, MagicMock

import pytest

from Listener import EventListenerConfig
from Listener.core.run_state import RunState
from Listener.mqtt.connection import AmqttAdapter, BrokerConnection, ClientSlot, ForeignClientAdapter, adapt
from tests.support.mocked_listeners import wait_forever


async def test_a_connection_connects_subscribes_and_disconnects_and_is_not_reentrant() -> None:
    client = AsyncMock()
    client.subscribe.return_value = [1]
    connection = BrokerConnection(adapt(client), EventListenerConfig(topic="a/#", qos=1), "h:1", [("a/#", 1)])
    async with connection as entered:
        assert entered is connection
        client.connect.assert_awaited_once()
        client.subscribe.assert_awaited_once_with([("a/#", 1)])
        with pytest.raises(RuntimeError, match="opened once"):
            await connection.__aenter__()
    client.disconnect.assert_awaited_once()


async def test_a_refused_subscription_ends_opening_with_a_connection_error() -> None:
    client = AsyncMock()
    client.subscribe.return_value = [0x80]
    with pytest.raises(ConnectionError, match="refused the subscription to t"):
        async with BrokerConnection(adapt(client), EventListenerConfig(topic="t"), "h:1", [("t", 0)]):
            pass  # pragma: no cover - never entered


def test_only_the_listeners_own_client_gets_the_amqtt_adapter() -> None:
    slot = ClientSlot(EventListenerConfig(), RunState())
    assert isinstance(slot.adapter, AmqttAdapter) and slot.owned
    assert slot.adapter is slot.adapter  # wrapped once
    mock = MagicMock()
    slot.client = mock
    assert isinstance(slot.adapter, ForeignClientAdapter) and slot.adapter.client is mock and not slot.owned
    assert slot.is_connected()  # a client the user assigned is taken as connected
    slot.client = None
    assert slot.current is None and slot.owned


async def test_a_foreign_clients_delivery_is_cancelled_when_the_intake_closes() -> None:
    client = AsyncMock()
    client.deliver_message.side_effect = wait_forever
    adapter = ForeignClientAdapter(client)
    waiting = asyncio.ensure_future(adapter.next_message())
    await asyncio.sleep(0.01)
    adapter.close_intake()
    assert await asyncio.wait_for(waiting, 2) is None
    assert await adapter.next_message() is None  # closed: nothing more is asked of the client
    assert client.deliver_message.await_count == 1


async def test_a_foreign_client_that_fails_to_deliver_ends_its_connection() -> None:
    client = AsyncMock()
    client.deliver_message.side_effect = RuntimeError("Session is not initialized.")
    assert await ForeignClientAdapter(client).next_message() is None


async def test_the_amqtt_adapter_hands_out_queued_messages_then_ends_with_the_connection() -> None:
    slot = ClientSlot(EventListenerConfig(), RunState())
    adapter = slot.adapter
    assert isinstance(adapter, AmqttAdapter)
    assert adapter.closed and await adapter.next_message() is None  # never connected
    assert adapter.queued == 0 and adapter.drop_queued() == []


class IdleClient:
    """What the amqtt adapter uses of its client: a delivery queue and the end of the connection."""

    def __init__(self) -> None:
        self.on_wakeup: Any = None
        self.connection_closed = False
        self.messages: List[str] = []
        self.watches = 0
        self.ended: "asyncio.Future[None]" = asyncio.get_running_loop().create_future()

    def take_message(self) -> Any:
        return self.messages.pop(0) if self.messages else None

    def arrive(self, message: str) -> None:
        self.messages.append(message)
        self.on_wakeup()

    def close_intake(self) -> None:
        pass

    async def wait_closed(self) -> None:
        self.watches += 1
        await self.ended


async def test_an_arriving_message_wakes_the_waiting_consumer_in_one_loop_pass() -> None:
    # The wait between two messages of a slow stream is paid once per message: one future, one wake-up.
    client = IdleClient()
    adapter = AmqttAdapter(client)  # type: ignore[arg-type]
    for message in ("first", "second", "third"):
        taking = asyncio.ensure_future(adapter.next_message())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not taking.done()  # idle: waiting for a message
        client.arrive(message)
        await asyncio.sleep(0)
        assert taking.done() and taking.result() == message
    assert client.watches == 1  # the end of the connection is watched once, not once per wait
    adapter.release()


async def test_the_waiting_consumer_wakes_when_the_connection_ends_or_the_intake_closes() -> None:
    client = IdleClient()
    adapter = AmqttAdapter(client)  # type: ignore[arg-type]
    taking = asyncio.ensure_future(adapter.next_message())
    await asyncio.sleep(0)
    client.connection_closed = True
    client.ended.set_result(None)
    assert await asyncio.wait_for(taking, 1.0) is None

    client = IdleClient()
    adapter = AmqttAdapter(client)  # type: ignore[arg-type]
    taking = asyncio.ensure_future(adapter.next_message())
    await asyncio.sleep(0)
    adapter.close_intake()
    assert await asyncio.wait_for(taking, 1.0) is None
    adapter.release()
