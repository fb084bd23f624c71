"""What a broker (or anything in the middle) sends never grows the listener's memory beyond a bound, and one bad
packet never undoes the handling of another: against a hostile loopback "broker" (``tests/support/hostile_broker.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, AsyncIterator, Dict, List

import pytest

from Listener import EventListener, EventListenerConfig
from Listener.mqtt.amqtt_boundary import PINGRESPS_KEPT
from Listener.mqtt.client import AmqttClient, create_client
from Listener.mqtt.packets import puback_packet, publish_packet
from Listener.mqtt.wire_handler import HOLD_BYTES, WireHandler
from Listener.ops.http_endpoints import metric_families
from tests.support.hostile_broker import HostileBroker, remaining_length
from tests.support.listeners import run_until_ready, stop_listeners
from tests.support.waiting import eventually

pytestmark = pytest.mark.unit

WAIT = 5.0
MALFORMED = b"\x30\xff\xff\xff\xff\x01"  # a remaining length longer than four bytes


@pytest.fixture
async def broker() -> AsyncIterator[HostileBroker]:
    async with HostileBroker() as hostile:
        yield hostile


@contextlib.asynccontextmanager
async def connected(broker: HostileBroker, **options: Any) -> AsyncIterator[AmqttClient]:
    client = create_client(EventListenerConfig(host="127.0.0.1", port=broker.port, keep_alive=60, **options))
    await client.connect(f"mqtt://127.0.0.1:{broker.port}")
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), WAIT)


def wire_of(client: AmqttClient) -> WireHandler:
    wire = client.wire
    assert wire is not None
    return wire


async def take(client: AmqttClient, count: int) -> List[Any]:
    taken: List[Any] = []

    def more() -> bool:
        message = client.take_message()
        if message is not None:
            taken.append(message)
        return len(taken) >= count
    await eventually(more, WAIT * 4, f"{count} messages")
    return taken


async def test_a_flood_of_pingresps_is_never_kept(broker: HostileBroker) -> None:
    """amqtt put each PINGRESP in a queue only its pings drain (500,000 of them: 35 -> 267 MB for good), each in
    a task of its own. Now at most a few unclaimed ones are kept, and none takes a task."""
    async with connected(broker) as client:
        wire = wire_of(client)
        await broker.send(b"\xd0\x00" * 100_000 + publish_packet("jobs", b"after", 0, False))
        [after] = await take(client, 1)
        await eventually(lambda: not wire._handling, WAIT, "packet handlers done")
        assert bytes(after.data) == b"after"
        assert wire.link._pingresp_queue.qsize() <= PINGRESPS_KEPT
        await asyncio.wait_for(client.ping_broker(), WAIT)  # pings still answered
        assert client.is_connected()


async def test_a_pingresp_declaring_250_mb_closes_the_connection_before_its_body(
        broker: HostileBroker, caplog: pytest.LogCaptureFixture) -> None:
    """A PINGRESP has no body: one declaring 250 MB was read whole into memory, waiting for the rest."""
    async with connected(broker) as client:
        wire = wire_of(client)
        with caplog.at_level(logging.WARNING, "Listener.transport"):
            await broker.send(b"\xd0" + remaining_length(250_000_000) + b"x" * 10_000)
            await asyncio.wait_for(client.wait_closed(), WAIT)
        assert "a PINGRESP declaring 250000000 bytes, more than the 0 it may have" in caplog.text
        assert f"127.0.0.1:{broker.port}" in caplog.text
        assert wire.unread < 20_000


async def test_a_malformed_packet_read_with_a_suback_does_not_cancel_the_subscription(
        broker: HostileBroker, caplog: pytest.LogCaptureFixture) -> None:
    """The SUBACK's handler was cancelled when the malformed packet after it ended the reader: the subscription
    waited 10 s and the connection attempt failed ("Connecting failed")."""
    broker.after_suback = MALFORMED
    async with connected(broker) as client:
        with caplog.at_level(logging.WARNING, "Listener.transport"):
            granted = await asyncio.wait_for(client.subscribe([("jobs/#", 1)]), WAIT)
            await asyncio.wait_for(client.wait_closed(), WAIT)
        assert granted == [1]
        assert "malformed packet" in caplog.text


async def test_a_subscription_whose_connection_ends_before_its_suback_fails_at_once(broker: HostileBroker) -> None:
    """A malformed packet before the SUBACK: amqtt left the subscription waiting for good, and the listener gave up
    after 10 s ("Connecting failed"). It fails as soon as the connection ends."""
    broker.answers_subscribe = False
    async with connected(broker) as client:
        subscribing = asyncio.create_task(client.subscribe([("jobs/#", 1)]))
        await eventually(lambda: bool(broker.received), WAIT, "the SUBSCRIBE")
        await broker.send(MALFORMED)
        with pytest.raises(ConnectionError, match="ended before the broker answered"):
            await asyncio.wait_for(subscribing, WAIT)


async def test_a_dup_qos0_message_is_dropped_counted_and_reported_in_the_metrics(broker: HostileBroker) -> None:
    done: List[str] = []
    listener = EventListener(EventListenerConfig(host="127.0.0.1", port=broker.port, topic="jobs", keep_alive=60,
                                                 reconnect_retries=0))
    task = await run_until_ready(listener, lambda data, job_id: done.append(job_id))
    try:
        duplicate = bytearray(publish_packet("jobs", b'job_id = "dup"', 0, False))
        duplicate[0] |= 0x08  # MQTT-3.3.1-2: DUP must be 0 at QoS 0
        await broker.send(bytes(duplicate) + publish_packet("jobs", b'job_id = "fine"', 0, False))
        await eventually(lambda: done == ["fine"], WAIT, "the job after the DUP one")
        snapshot = listener.metrics()
        assert snapshot["messages_dropped"] == 1
        assert snapshot["messages_dropped_by_reason"] == {"dup_qos0": 1}
        pytest.importorskip("prometheus_client")
        samples: Dict[str, float] = {f"{s.name}{sorted(s.labels.items())}": s.value
                                     for family in metric_families(snapshot) for s in family.samples}
        assert samples["mqtt_listener_messages_dropped_by_reason_total[('reason', 'dup_qos0')]"] == 1
        assert samples["mqtt_listener_messages_dropped_total[]"] == 1
    finally:
        await stop_listeners([(listener, task)], WAIT)


PAYLOAD = 100 * 1024
FLOOD = 60  # 6 MB: more than HOLD_BYTES
PENDING = 5


def flood() -> bytes:
    return b"".join(publish_packet("jobs", b"%05d" % i + b"x" * (PAYLOAD - 5), 0, False) for i in range(FLOOD))


async def test_messages_without_room_are_held_as_bytes_then_reading_pauses_and_none_is_lost(
        broker: HostileBroker) -> None:
    """Past ``max_pending_messages`` the reader read on, dropping QoS 0 messages (and holding QoS 1/2 ones whole).
    Now it holds them in their wire form up to ``HOLD_BYTES``, stops reading (the rest waits in the sockets), and
    every message comes, in order, as room frees."""
    async with connected(broker, max_pending_messages=PENDING) as client:
        wire = wire_of(client)
        sending = asyncio.create_task(broker.send(flood()))
        try:
            await eventually(lambda: wire.paused, WAIT, "reading paused")
            assert HOLD_BYTES <= wire.held_bytes < HOLD_BYTES + 2 * PAYLOAD  # at most a read and a message past it
            assert client.held_bytes < PENDING * (PAYLOAD + 100) + HOLD_BYTES + 4 * PAYLOAD
            messages = await take(client, FLOOD)
            assert [bytes(m.data[:5]) for m in messages] == [b"%05d" % i for i in range(FLOOD)]
            await asyncio.wait_for(sending, WAIT)
        finally:
            sending.cancel()
        queue = client.deliveries
        assert queue is not None and queue.dropped == 0 and wire.held_bytes == 0


async def test_the_reader_reads_on_for_an_awaited_puback_and_drops_qos0_past_the_held_bytes(
        broker: HostileBroker) -> None:
    """A result's PUBACK behind unread bytes: a paused reader would never see it, and the job waiting for it would
    never free room. So while a publication awaits its acknowledgement the reader reads on; a QoS 0 message that
    finds the held bytes full is dropped and counted (a sustained overload)."""
    async with connected(broker, max_pending_messages=PENDING) as client:
        wire = wire_of(client)
        dropped: List[Any] = []
        client.on_drop = lambda *reason: dropped.append(reason)
        publishing = asyncio.create_task(client.publish("results", b"result", qos=1))
        await eventually(lambda: len(broker.received) == 1, WAIT, "the result's PUBLISH")
        packet_id = int.from_bytes(broker.received[0][-8:-6], "big")
        await broker.send(flood() + puback_packet(packet_id))
        await asyncio.wait_for(publishing, WAIT)
        assert wire.held_bytes < HOLD_BYTES + 2 * PAYLOAD
        assert dropped and set(dropped) == {()}  # no room: counted as max_pending_messages drops
        queue = client.deliveries
        assert queue is not None and queue.dropped == len(dropped)
        held = await take(client, FLOOD - len(dropped))
        assert len(held) == FLOOD - len(dropped) and client.take_message() is None


async def test_a_reader_paused_for_room_is_not_taken_for_a_dead_connection(broker: HostileBroker) -> None:
    """The liveness watch drops a connection from which nothing arrived for 2 x its period: bytes waiting unread
    (the listener paused, not the broker) count as traffic, and pings go on."""
    async with connected(broker, max_pending_messages=PENDING) as client:
        wire = wire_of(client)
        sending = asyncio.create_task(broker.send(flood()))
        try:
            await eventually(lambda: wire.paused, WAIT, "reading paused")
            watching = asyncio.create_task(client.watch_liveness(0.2, "the hostile broker"))
            await eventually(lambda: broker.pings >= 6, WAIT, "six pings (over 2 x the period)")
            assert wire.paused and not watching.done() and client.is_connected()
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
            assert len(await take(client, FLOOD)) == FLOOD
        finally:
            sending.cancel()


async def test_a_payload_over_the_limit_waiting_for_room_keeps_its_place_without_its_bytes(
        broker: HostileBroker) -> None:
    async with connected(broker, ack_policy="on_receipt", max_payload_bytes=1000) as client:  # room: 1 queued
        wire = wire_of(client)
        await broker.send(b"".join(publish_packet("jobs", payload, 1, False, packet_id) for packet_id, payload in
                                   ((1, b"a"), (2, b"b"), (3, b"c" * 3000), (4, b"d"))))
        await eventually(lambda: wire.held == 3, WAIT, "three messages held")
        assert wire.held_bytes < 1000  # the oversize payload was discarded as it came
        messages = await take(client, 4)
        assert [(bytes(m.data), len(m.data)) for m in messages] == [(b"a", 1), (b"b", 1), (b"", 3000), (b"d", 1)]
