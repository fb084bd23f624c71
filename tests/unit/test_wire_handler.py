"""The packets the listener reads and writes itself (``Listener.mqtt.wire_handler``), against a scripted broker on a
real loopback socket: what arrives in pieces, acknowledgements and their order, a PUBACK awaited, a connection
that ends, bytes that are not MQTT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any, AsyncIterator, Callable, List, Optional

import pytest

from Listener import EventListenerConfig
from Listener.mqtt.packets import (ConnectionEnded, PublicationRefused, pubcomp_packet, publish_packet, puback_packet,
                                   pubrec_packet, pubrel_packet)
from Listener.mqtt.client import AmqttClient, create_client
from Listener.mqtt.wire_handler import OWN_PACKET_IDS, WireHandler
from tests.support.packets import read_packet

pytestmark = pytest.mark.unit

WAIT = 5.0


class ScriptedBroker:
    """Accepts connections, answers CONNECT with CONNACK, records every later packet, sends what it is told."""

    def __init__(self) -> None:
        #: What the CONNACK says of the client's session (MQTT 3.1.1 §3.2.2.2).
        self.session_present = False
        self.received: List[bytes] = []
        #: For each packet received, the index (in ``writers``) of the connection it came on.
        self.received_on: List[int] = []
        self.arrived = asyncio.Event()
        self.writers: List[asyncio.StreamWriter] = []
        self.connected = asyncio.Event()
        self.closed = asyncio.Event()
        self.port = 0
        self._server: Optional[asyncio.AbstractServer] = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_packet(reader)  # CONNECT
        writer.write(b"\x20\x02" + bytes([int(self.session_present)]) + b"\x00")  # CONNACK, accepted
        self.writers.append(writer)
        connection = len(self.writers) - 1
        self.connected.set()
        try:
            while True:
                packet = await read_packet(reader)
                if packet == b"\xe0\x00":  # DISCONNECT: close, as a broker does
                    writer.close()
                    return
                self.received.append(packet)
                self.received_on.append(connection)
                self.arrived.set()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed.set()

    async def send(self, data: bytes, chunks: int = 1, connection: int = -1) -> None:
        writer = self.writers[connection]
        cuts = sorted(random.Random(len(data)).sample(range(1, len(data)), chunks - 1)) if chunks > 1 else []
        for start, end in zip([0, *cuts], [*cuts, len(data)]):
            writer.write(data[start:end])
            await writer.drain()
            await asyncio.sleep(0)  # let the client read what came so far

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        async def until() -> None:
            while not condition():
                self.arrived.clear()
                await self.arrived.wait()
        await asyncio.wait_for(until(), WAIT)

    async def stop(self) -> None:
        for writer in self.writers:
            writer.close()
        if self._server is not None:
            self._server.close()


@pytest.fixture
async def broker() -> AsyncIterator[ScriptedBroker]:
    scripted = ScriptedBroker()
    await scripted.start()
    yield scripted
    await scripted.stop()


async def connected_client(broker: ScriptedBroker, **options: Any) -> AmqttClient:
    client = create_client(EventListenerConfig(host="127.0.0.1", port=broker.port, keep_alive=60, **options))
    await client.connect(f"mqtt://127.0.0.1:{broker.port}")
    assert isinstance(client.wire, WireHandler)
    return client


@contextlib.asynccontextmanager
async def connected(broker: ScriptedBroker, **options: Any) -> AsyncIterator[AmqttClient]:
    """:func:`connected_client`, disconnected cleanly afterwards."""
    client = await connected_client(broker, **options)
    try:
        yield client
    finally:
        await client.disconnect()


async def take(client: AmqttClient, count: int) -> List[Any]:
    """The next ``count`` messages the client received."""
    taken: List[Any] = []

    async def until() -> None:
        while len(taken) < count:
            message = client.take_message()
            if message is None:
                await asyncio.sleep(0.005)
            else:
                taken.append(message)
    await asyncio.wait_for(until(), WAIT)
    return taken


@pytest.mark.parametrize("chunks", [1, 7, 300])
async def test_packets_arriving_in_any_pieces_are_all_received_and_acknowledged_in_order(
        broker: ScriptedBroker, chunks: int) -> None:
    async with connected(broker, ack_policy="on_receipt", max_concurrent_jobs=100) as client:
        packets = [publish_packet(f"jobs/{i}", b"x" * (i * 37 % 300), 1 if i % 3 else 0, False, i + 1)
                   for i in range(60)]
        await broker.send(b"".join(packets), chunks)
        messages = await take(client, 60)
        assert [(m.topic, bytes(m.data), m.qos) for m in messages] == [
            (f"jobs/{i}", b"x" * (i * 37 % 300), 1 if i % 3 else 0) for i in range(60)]
        acks = [puback_packet(i + 1) for i in range(60) if i % 3]
        await broker.wait_for(lambda: len(broker.received) >= len(acks))
        assert broker.received == acks


async def test_held_acknowledgements_go_out_when_settled_and_in_arrival_order(broker: ScriptedBroker) -> None:
    async with connected(broker, ack_policy="after_processing") as client:
        await broker.send(b"".join(publish_packet("jobs", b"%d" % i, 1, False, 10 + i) for i in range(3)))
        messages = await take(client, 3)
        tickets = [client.ticket(message) for message in messages]
        assert all(ticket is not None for ticket in tickets)
        tickets[1].settle()  # type: ignore[union-attr]
        tickets[2].settle()  # type: ignore[union-attr]
        await asyncio.sleep(0.05)
        assert broker.received == []  # the first message is not done: nothing may be acknowledged
        tickets[0].settle()  # type: ignore[union-attr]
        await broker.wait_for(lambda: len(broker.received) == 3)
        assert broker.received == [puback_packet(10), puback_packet(11), puback_packet(12)]


async def test_a_message_settled_after_its_connection_ended_is_not_acknowledged_on_the_next_one(
        broker: ScriptedBroker) -> None:
    """Packet ids belong to a connection: a PUBACK on the next one would acknowledge another message there."""
    first = await connected_client(broker, ack_policy="after_processing")
    await broker.send(publish_packet("jobs", b"old", 1, False, 5))
    [old] = await take(first, 1)
    ticket = first.ticket(old)
    first.drop_connection()
    await first.wait_closed()
    broker.connected.clear()
    second = create_client(EventListenerConfig(host="127.0.0.1", port=broker.port, keep_alive=60,
                                               ack_policy="after_processing"))
    second.adopt_deliveries(first)
    await second.connect(f"mqtt://127.0.0.1:{broker.port}")
    try:
        await broker.send(publish_packet("jobs", b"new", 1, False, 6))
        [new] = await take(second, 1)
        assert ticket is not None
        ticket.settle()
        second_ticket = second.ticket(new)
        assert second_ticket is not None
        second_ticket.settle()
        await broker.wait_for(lambda: len(broker.received) >= 1)
        await asyncio.sleep(0.05)
        assert broker.received == [puback_packet(6)]
    finally:
        await second.disconnect()


async def test_a_qos1_publish_returns_once_its_puback_arrives(broker: ScriptedBroker) -> None:
    async with connected(broker) as client:
        publishing = asyncio.create_task(client.publish("results/a", b"payload", qos=1))
        await broker.wait_for(lambda: len(broker.received) == 1)
        sent = broker.received[0]
        packet_id = int.from_bytes(sent[-9:-7], "big")
        assert sent == publish_packet("results/a", b"payload", 1, False, packet_id)
        await broker.send(puback_packet(packet_id ^ 0x0100))  # no publication awaits that one: ignored
        await asyncio.sleep(0.05)
        assert not publishing.done()
        await broker.send(puback_packet(packet_id))
        assert await asyncio.wait_for(publishing, WAIT) is None


async def test_a_qos1_publish_ends_when_the_connection_ends_before_its_puback(broker: ScriptedBroker) -> None:
    client = await connected_client(broker)
    publishing = asyncio.create_task(client.publish("results/a", b"payload", qos=1))
    await broker.wait_for(lambda: len(broker.received) == 1)
    broker.writers[-1].close()
    # A failure, not a cancellation: Python 3.10 cannot tell an amqtt-made CancelledError from the caller's.
    with pytest.raises(ConnectionEnded, match="ended before the broker acknowledged"):
        await asyncio.wait_for(publishing, WAIT)
    assert not publishing.cancelled()
    await asyncio.wait_for(client.wait_closed(), WAIT)
    assert not client.is_connected()


async def test_bytes_that_are_not_mqtt_close_the_connection_with_a_warning(
        broker: ScriptedBroker, caplog: pytest.LogCaptureFixture) -> None:
    client = await connected_client(broker)
    with caplog.at_level(logging.WARNING, "Listener.transport"):
        await broker.send(b"\x30\xff\xff\xff\xff\x01")
        await asyncio.wait_for(client.wait_closed(), WAIT)
    assert "malformed packet" in caplog.text and "four bytes" in caplog.text
    await asyncio.wait_for(broker.closed.wait(), WAIT)


async def test_a_packet_amqtt_fails_to_handle_is_reported_at_warning(broker: ScriptedBroker,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Not at DEBUG, where a renamed amqtt handler (no PINGRESP ever handled) went unnoticed."""
    async with connected(broker) as client:
        with caplog.at_level(logging.WARNING, "Listener.transport"):
            await broker.send(b"\x90\x01\x00" + publish_packet("jobs", b"next", 0, False))  # a SUBACK cut short
            [message] = await take(client, 1)
            for _ in range(100):
                if "Handling a packet from" in caplog.text:
                    break
                await asyncio.sleep(0.01)
        [failure] = [r for r in caplog.records if r.getMessage().startswith("Handling a packet from")]
        assert failure.levelno == logging.WARNING and f"127.0.0.1:{broker.port}" in failure.getMessage()
        assert bytes(message.data) == b"next" and client.is_connected()


async def test_a_qos0_message_with_the_dup_flag_is_dropped_and_counted(broker: ScriptedBroker) -> None:
    """MQTT-3.3.1-2 forbids DUP at QoS 0: dropped, and counted with its reason (it was counted nowhere)."""
    async with connected(broker) as client:
        dropped: List[Any] = []
        client.on_drop = lambda *reason: dropped.append(reason)
        duplicate = bytearray(publish_packet("jobs", b"dup", 0, False))
        duplicate[0] |= 0x08
        await broker.send(bytes(duplicate) + publish_packet("jobs", b"fine", 0, False))
        [message] = await take(client, 1)
        assert bytes(message.data) == b"fine" and client.take_message() is None
        assert dropped == [("dup_qos0",)]


def qos2_publish(topic: str, payload: bytes, packet_id: int, dup: bool = False) -> bytes:
    packet = bytearray(publish_packet(topic, payload, 2, False, packet_id))
    if dup:
        packet[0] |= 0x08
    return bytes(packet)


async def resends(client: AmqttClient, count: int) -> None:
    """Wait until the client has seen ``count`` resends of QoS 2 messages it holds."""
    async def until() -> None:
        while client._deliveries is None or client._deliveries.receipts.resends < count:
            await asyncio.sleep(0.005)
    await asyncio.wait_for(until(), WAIT)


async def settle(client: AmqttClient, message: Any) -> None:
    ticket = client.ticket(message)
    assert ticket is not None
    ticket.settle()


async def test_a_qos2_message_gets_its_pubrec_only_once_settled_and_a_pubrel_its_pubcomp_at_once(
        broker: ScriptedBroker) -> None:
    """The broker hands a QoS 2 message over at the PUBREC: not before the job is done (a crash would lose it)."""
    async with connected(broker, ack_policy="after_processing") as client:
        await broker.send(qos2_publish("jobs", b"two", 42))
        [message] = await take(client, 1)
        assert bytes(message.data) == b"two" and message.qos == 2
        await asyncio.sleep(0.05)
        assert broker.received == []  # no PUBREC while its job runs
        await settle(client, message)
        await broker.wait_for(lambda: len(broker.received) == 1)
        assert broker.received == [pubrec_packet(42)]
        await broker.send(pubrel_packet(42))
        await broker.wait_for(lambda: len(broker.received) == 2)
        assert broker.received[1] == pubcomp_packet(42)


async def test_on_receipt_answers_a_qos2_message_with_pubrec_when_it_is_queued(broker: ScriptedBroker) -> None:
    async with connected(broker, ack_policy="on_receipt") as client:
        await broker.send(qos2_publish("jobs", b"two", 9))
        await broker.wait_for(lambda: len(broker.received) == 1)
        assert broker.received == [pubrec_packet(9)]
        [message] = await take(client, 1)
        assert bytes(message.data) == b"two"


async def test_qos1_and_qos2_acknowledgements_go_out_in_arrival_order(broker: ScriptedBroker) -> None:
    async with connected(broker, ack_policy="after_processing", max_concurrent_jobs=3) as client:
        await broker.send(publish_packet("jobs", b"a", 1, False, 1) + qos2_publish("jobs", b"b", 2)
                          + publish_packet("jobs", b"c", 1, False, 3))
        first, second, third = await take(client, 3)
        await settle(client, third)
        await settle(client, second)
        await asyncio.sleep(0.05)
        assert broker.received == []  # the first one holds the others back
        await settle(client, first)
        await broker.wait_for(lambda: len(broker.received) == 3)
        assert broker.received == [puback_packet(1), pubrec_packet(2), puback_packet(3)]


async def test_the_same_qos2_packet_id_before_its_pubrel_is_the_same_message(broker: ScriptedBroker) -> None:
    """Until the PUBREL, a PUBLISH with the packet id is a resend (MQTT-4.3.3-2): never a second job."""
    async with connected(broker, ack_policy="after_processing") as client:
        await broker.send(qos2_publish("jobs", b"once", 7))
        [message] = await take(client, 1)
        await broker.send(qos2_publish("jobs", b"once", 7, dup=True))
        await resends(client, 1)
        await settle(client, message)
        await broker.wait_for(lambda: len(broker.received) == 1)
        assert broker.received == [pubrec_packet(7)]
        await broker.send(qos2_publish("jobs", b"once", 7, dup=True))  # PUBREC lost? answered again, not run again
        await broker.wait_for(lambda: len(broker.received) == 2)
        assert broker.received[1] == pubrec_packet(7) and client.take_message() is None
        await broker.send(pubrel_packet(7) + qos2_publish("jobs", b"next", 7))  # after the PUBREL: a new message
        [new] = await take(client, 1)
        assert bytes(new.data) == b"next"


async def reconnected(broker: ScriptedBroker, first: AmqttClient, **options: Any) -> AmqttClient:
    """A second client taking over ``first``'s deliveries after its connection was dropped (as the listener does)."""
    first.drop_connection()
    await first.wait_closed()
    second = create_client(EventListenerConfig(host="127.0.0.1", port=broker.port, keep_alive=60, **options))
    second.adopt_deliveries(first)
    await second.connect(f"mqtt://127.0.0.1:{broker.port}")
    return second


async def test_a_qos2_message_resent_after_a_reconnect_runs_once_and_is_answered_on_the_new_connection(
        broker: ScriptedBroker) -> None:
    first = await connected_client(broker, ack_policy="after_processing", cleansession=False)
    await broker.send(qos2_publish("jobs", b"held", 11))
    [message] = await take(first, 1)
    broker.session_present = True
    second = await reconnected(broker, first, ack_policy="after_processing", cleansession=False)
    try:
        await broker.send(qos2_publish("jobs", b"held", 11, dup=True))  # the broker never got a PUBREC
        await resends(second, 1)
        assert second.take_message() is None  # still the first copy's job
        await settle(first, message)
        await broker.wait_for(lambda: len(broker.received) == 1)
        assert broker.received == [pubrec_packet(11)] and broker.received_on == [1]
    finally:
        await second.disconnect()


async def test_without_a_kept_session_a_packet_id_held_before_is_a_new_message(broker: ScriptedBroker) -> None:
    first = await connected_client(broker, ack_policy="after_processing")
    await broker.send(qos2_publish("jobs", b"old", 11))
    [old] = await take(first, 1)
    second = await reconnected(broker, first, ack_policy="after_processing")  # CONNACK: no session kept
    try:
        await broker.send(qos2_publish("jobs", b"new", 11))
        [new] = await take(second, 1)
        assert bytes(new.data) == b"new"
        await settle(first, old)  # the old connection's PUBREC goes nowhere
        await settle(second, new)
        await broker.wait_for(lambda: len(broker.received) == 1)
        assert broker.received == [pubrec_packet(11)]
    finally:
        await second.disconnect()


async def test_a_pubrel_for_a_packet_id_never_seen_is_answered_with_pubcomp(broker: ScriptedBroker) -> None:
    """After a restart the broker resends PUBREL for what the dead process released: the flow must end."""
    async with connected(broker) as client:
        assert client.take_message() is None
        await broker.send(pubrel_packet(300))
        await broker.wait_for(lambda: len(broker.received) == 1)
        assert broker.received == [pubcomp_packet(300)]


async def test_a_qos2_message_waiting_for_room_when_its_connection_ends_is_new_when_resent(
        broker: ScriptedBroker) -> None:
    first = await connected_client(broker, ack_policy="after_processing", max_pending_messages=1, cleansession=False)
    await broker.send(qos2_publish("jobs", b"a", 1) + qos2_publish("jobs", b"b", 2))
    [a] = await take(first, 1)
    broker.session_present = True
    second = await reconnected(broker, first, ack_policy="after_processing", max_pending_messages=1,
                               cleansession=False)
    try:
        await settle(first, a)
        await broker.send(qos2_publish("jobs", b"b", 2, dup=True))
        [b] = await take(second, 1)
        assert bytes(b.data) == b"b"
    finally:
        await second.disconnect()


async def test_a_qos2_publication_is_released_at_its_pubrec_and_through_at_its_pubcomp(broker: ScriptedBroker) -> None:
    async with connected(broker) as client:
        publishing = asyncio.create_task(client.publish("results/a", b"payload", qos=2))
        await broker.wait_for(lambda: len(broker.received) == 1)
        sent = broker.received[0]
        packet_id = int.from_bytes(sent[-9:-7], "big")
        assert sent == publish_packet("results/a", b"payload", 2, False, packet_id)
        await broker.send(pubrec_packet(packet_id))
        await broker.wait_for(lambda: len(broker.received) == 2)
        assert broker.received[1] == pubrel_packet(packet_id)
        assert not publishing.done()
        await broker.send(pubcomp_packet(packet_id))
        assert await asyncio.wait_for(publishing, WAIT) is None


@pytest.mark.parametrize("pieces", [1, 5, 21])  # 21: every byte apart
async def test_acknowledgements_cut_anywhere_each_answer_their_own_publication(
        broker: ScriptedBroker, pieces: int) -> None:
    """The broker's PUBACK, PUBREC and PUBCOMP packets in one stream, cut at any byte: a bare acknowledgement (four
    bytes) and one with a success reason code (five) are each read whole, once, and answer the publication with
    their packet id; one not read whole yet waits for its last bytes."""
    async with connected(broker) as client:
        ones = [asyncio.create_task(client.publish(f"results/{i}", b"one", qos=1)) for i in range(3)]
        twos = [asyncio.create_task(client.publish(f"results/{i}", b"two", qos=2)) for i in range(2)]
        await broker.wait_for(lambda: len(broker.received) == 5)
        sent = {packet_id_of(packet, packet[-3:]): packet[-3:] for packet in broker.received}
        one_ids = [packet_id for packet_id, payload in sent.items() if payload == b"one"]
        two_ids = [packet_id for packet_id, payload in sent.items() if payload == b"two"]
        with_reason = b"\x40\x03" + one_ids[1].to_bytes(2, "big") + b"\x00"  # MQTT 5's success code, as sent
        stream = puback_packet(one_ids[0]) + pubrec_packet(two_ids[0]) + with_reason + pubrec_packet(two_ids[1])
        await broker.send(stream + puback_packet(one_ids[2]), pieces)
        assert await asyncio.wait_for(asyncio.gather(*ones), WAIT) == [None, None, None]
        await broker.wait_for(lambda: len(broker.received) == 7)
        assert broker.received[5:] == [pubrel_packet(two_ids[0]), pubrel_packet(two_ids[1])]
        assert not any(publishing.done() for publishing in twos)
        await broker.send(pubcomp_packet(two_ids[1]) + pubcomp_packet(two_ids[0]), min(pieces, 8))
        assert await asyncio.wait_for(asyncio.gather(*twos), WAIT) == [None, None]
        handler: Any = client.wire
        assert handler._acks == {} and handler._exactly_once == {}


@pytest.mark.parametrize(("qos", "answer"), [(2, pubrec_packet), (1, puback_packet)])
async def test_an_acknowledgement_with_a_failure_reason_code_is_not_a_delivery(
        broker: ScriptedBroker, qos: int, answer: Callable[[int], bytes]) -> None:
    """Mosquitto answers a QoS 2 publication over its quota with PUBREC 0x97, also to a 3.1.1 client."""
    async with connected(broker) as client:
        publishing = asyncio.create_task(client.publish("results/a", b"payload", qos=qos))
        await broker.wait_for(lambda: len(broker.received) == 1)
        packet_id = int.from_bytes(broker.received[0][-9:-7], "big")
        await broker.send(b"%c\x03" % answer(packet_id)[0] + packet_id.to_bytes(2, "big") + b"\x97")
        with pytest.raises(PublicationRefused, match=r"quota exceeded \(0x97\)") as refused:
            await asyncio.wait_for(publishing, WAIT)
        assert refused.value.reason_code == 0x97
        await asyncio.sleep(0.05)
        assert len(broker.received) == 1  # no PUBREL for a refused message


async def test_a_puback_answering_a_qos2_publication_is_a_downgrade_said_once_per_connection(
        broker: ScriptedBroker, caplog: pytest.LogCaptureFixture) -> None:
    """RabbitMQ's MQTT plugin takes QoS 2 publications at QoS 1."""
    async with connected(broker) as client:
        for expected in (1, 2):
            publishing = asyncio.create_task(client.publish("results/a", b"payload", qos=2))
            await broker.wait_for(lambda: len(broker.received) == expected)
            await broker.send(puback_packet(int.from_bytes(broker.received[-1][-9:-7], "big")))
            assert await asyncio.wait_for(publishing, WAIT) is None
    downgrades = [r for r in caplog.records if "answered a QoS 2 publication with PUBACK" in r.getMessage()]
    assert len(downgrades) == 1 and downgrades[0].levelno == logging.WARNING
    assert f"127.0.0.1:{broker.port}" in downgrades[0].getMessage()


async def test_a_pubrec_no_publication_awaits_is_still_released(broker: ScriptedBroker) -> None:
    """Given up on (timed out) or not, a message the broker holds must not stay in its flight window for good."""
    async with connected(broker) as client:
        assert client.take_message() is None
        await broker.send(pubrec_packet(500))
        await broker.wait_for(lambda: len(broker.received) == 1)
        assert broker.received == [pubrel_packet(500)]


async def test_what_was_written_before_an_amqtt_packet_goes_out_before_it(broker: ScriptedBroker) -> None:
    """Direct writes wait for the end of the loop's turn; amqtt's own packets (here a SUBSCRIBE) flush them first."""
    async with connected(broker) as client:
        await client.publish("results/first", b"1", qos=0)
        subscribing = asyncio.create_task(client.subscribe([("jobs/#", 1)]))
        await broker.wait_for(lambda: len(broker.received) == 2)
        assert broker.received[0] == publish_packet("results/first", b"1", 0, False)
        assert broker.received[1][0] >> 4 == 8  # SUBSCRIBE
        packet_id = broker.received[1][2:4]
        await broker.send(b"\x90\x03" + packet_id + b"\x01")  # SUBACK
        assert await asyncio.wait_for(subscribing, WAIT) == [1]


async def test_messages_beyond_the_window_wait_unacknowledged_and_keep_their_order(broker: ScriptedBroker) -> None:
    """``on_receipt`` acknowledges a message when it is queued, and queues at most ``max_concurrent_jobs``."""
    async with connected(broker, ack_policy="on_receipt", max_concurrent_jobs=1) as client:
        await broker.send(b"".join(publish_packet("jobs", b"%d" % i, 1, False, i) for i in (1, 2, 3)))
        await broker.wait_for(lambda: len(broker.received) >= 1)
        await asyncio.sleep(0.05)
        assert broker.received == [puback_packet(1)]
        taken = []
        for acknowledged in (2, 3):
            [message] = await take(client, 1)
            taken.append(bytes(message.data))
            await broker.wait_for(lambda: len(broker.received) >= acknowledged)
        taken += [bytes(m.data) for m in await take(client, 1)]
        assert taken == [b"1", b"2", b"3"]
        assert broker.received == [puback_packet(1), puback_packet(2), puback_packet(3)]


async def test_messages_waiting_for_room_when_the_connection_ends_are_neither_queued_nor_acknowledged(
        broker: ScriptedBroker) -> None:
    client = await connected_client(broker, ack_policy="on_receipt", max_concurrent_jobs=1)
    await broker.send(b"".join(publish_packet("jobs", b"%d" % i, 1, False, i) for i in (1, 2, 3)))
    await broker.wait_for(lambda: len(broker.received) >= 1)
    client.drop_connection()
    await asyncio.wait_for(client.wait_closed(), WAIT)
    [first] = await take(client, 1)
    await asyncio.sleep(0.05)
    assert bytes(first.data) == b"1" and client.take_message() is None  # 2 and 3 stay with the broker
    assert broker.received == [puback_packet(1)]


async def test_a_payload_over_the_limit_is_discarded_as_it_arrives_and_the_message_still_delivered(
        broker: ScriptedBroker) -> None:
    """The listener rejects it for its size; holding all of it first (up to 256 MiB) would let one message exhaust
    memory. The message comes with an empty payload that has the size it had, and is acknowledged as usual."""
    async with connected(broker, ack_policy="on_receipt", max_payload_bytes=1000) as client:
        handler: Any = client.wire
        big = publish_packet("jobs/big", b"b" * 3_000_000, 1, False, 77)
        held: List[int] = []
        for start in range(0, len(big), 50_000):
            broker.writers[-1].write(big[start:start + 50_000])
            await broker.writers[-1].drain()
            await asyncio.sleep(0.001)
            held.append(handler.unread)
        await broker.send(publish_packet("jobs/next", b"small", 1, False, 78))
        first, second = await take(client, 2)
        assert (first.topic, len(first.data), bytes(first.data)) == ("jobs/big", 3_000_000, b"")
        assert (second.topic, bytes(second.data)) == ("jobs/next", b"small")
        assert max(held) < 100_000  # never more than about a read's worth
        await broker.wait_for(lambda: len(broker.received) == 2)
        assert broker.received == [puback_packet(77), puback_packet(78)]


async def test_a_payload_at_the_limit_is_kept_whole(broker: ScriptedBroker) -> None:
    async with connected(broker, max_payload_bytes=1000) as client:
        await broker.send(publish_packet("t" * 5000, b"x" * 1000, 0, False), chunks=9)
        [message] = await take(client, 1)
        assert bytes(message.data) == b"x" * 1000 and message.topic == "t" * 5000


async def test_a_packet_id_given_again_at_once_keeps_its_new_publication(broker: ScriptedBroker) -> None:
    """The PUBACK's bookkeeping runs once the chunk it came in is handled; by then the id may belong to a new
    publication (one that waited for the broker's first QoS 2 answer in the same chunk, say)."""
    async with connected(broker) as client:
        handler: Any = client.wire
        first = handler.send_publish("results/a", b"1", 1, False)
        [packet_id] = list(handler._acks)
        handler._acknowledged(packet_id, 0)
        handler._last_id = packet_id - 1  # the id counter comes round to it again
        second = handler.send_publish("results/b", b"2", 1, False)
        assert not first.done()  # answered once the chunk is handled
        handler._give_answers()
        assert first.done() and handler._acks == {packet_id: second}
        await broker.send(puback_packet(packet_id))
        await asyncio.wait_for(second, WAIT)


async def test_an_answer_is_given_after_the_packets_read_with_it(broker: ScriptedBroker) -> None:
    """A publication's answer is given once the chunk it came in is handled: its eager followers (the job's end)
    run after the messages read with it are queued, as done callbacks would a turn later, never halfway through."""
    async with connected(broker) as client:
        handler: Any = client.wire
        queue = handler.link.delivery_queue()
        acked = handler.send_publish("results/a", b"1", 1, False)
        [packet_id] = list(handler._acks)
        queued_then: List[int] = []
        acked.add_eager_callback(lambda _: queued_then.append(queue.qsize()))
        await broker.send(puback_packet(packet_id) + publish_packet("jobs/after", b"x", 0, False))
        await asyncio.wait_for(acked, WAIT)
        assert queued_then == [1] and packet_id not in handler._acks
        [message] = await take(client, 1)
        assert message.topic == "jobs/after"


@pytest.mark.parametrize("qos", [1, 2])
async def test_a_publish_given_up_on_stops_tracking_its_packet_id(broker: ScriptedBroker, qos: int) -> None:
    client = await connected_client(broker)
    handler: Any = client.wire
    try:
        broker.writers[-1].transport.pause_reading()  # the broker stops reading: the client's drain waits
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(client.publish("results/a", b"x" * 20_000_000, qos=qos), 0.3)
        await asyncio.sleep(0)
        assert handler._acks == {} and handler._exactly_once == {} and not handler._released_out
    finally:
        client.drop_connection()


def packet_id_of(publish: bytes, payload: bytes) -> int:
    """The packet id of a QoS 1/2 PUBLISH carrying ``payload``."""
    return int.from_bytes(publish[-len(payload) - 2:-len(payload)], "big")


def with_dup(publish: bytes) -> bytes:
    return bytes((publish[0] | 0x08,)) + publish[1:]


async def test_a_kept_session_of_a_broker_taking_qos2_gets_a_pubrel_for_every_own_packet_id(
        broker: ScriptedBroker) -> None:
    """QoS 2 publications a killed process left unreleased fill the broker's quota for good (Mosquitto: 20), and
    Mosquitto drops one over its quota while answering a 3.1.1 client with an ordinary PUBREC.

    On a kept session, the first QoS 2 publication goes out alone. Its PUBREC shows the broker takes QoS 2:
    every other own packet id is released, the first is sent again (DUP: the same message, or one with room
    now), then the publications that waited. The next connection of the session releases them at once."""
    broker.session_present = True
    first = await connected_client(broker, cleansession=False)
    one = asyncio.create_task(first.publish("results/a", b"one", qos=2))
    await broker.wait_for(lambda: len(broker.received) == 1)
    two = asyncio.create_task(first.publish("results/b", b"two", qos=2))
    await asyncio.sleep(0.05)
    assert len(broker.received) == 1  # "two" waits for the broker's answer to "one"
    sent = broker.received[0]
    first_id = packet_id_of(sent, b"one")
    assert sent == publish_packet("results/a", b"one", 2, False, first_id)
    await broker.send(pubrec_packet(first_id))
    await broker.wait_for(lambda: len(broker.received) == len(OWN_PACKET_IDS) + 2)
    assert broker.received[1:-2] == [pubrel_packet(other) for other in OWN_PACKET_IDS if other != first_id]
    assert broker.received[-2] == with_dup(sent)
    second_id = packet_id_of(broker.received[-1], b"two")
    assert broker.received[-1] == publish_packet("results/b", b"two", 2, False, second_id)
    for packet_id, publishing in ((first_id, one), (second_id, two)):
        await broker.send(pubrec_packet(packet_id))
        await broker.wait_for(lambda: broker.received[-1] == pubrel_packet(packet_id))
        await broker.send(pubcomp_packet(packet_id))
        assert await asyncio.wait_for(publishing, WAIT) is None

    del broker.received[:], broker.received_on[:]
    second = await reconnected(broker, first, cleansession=False)
    try:
        publishing = asyncio.create_task(second.publish("results/c", b"next", qos=2))
        await broker.wait_for(lambda: len(broker.received) == len(OWN_PACKET_IDS) + 1)
        assert broker.received[:-1] == [pubrel_packet(other) for other in OWN_PACKET_IDS]
        packet_id = packet_id_of(broker.received[-1], b"next")
        assert broker.received[-1] == publish_packet("results/c", b"next", 2, False, packet_id)
        await broker.send(pubcomp_packet(packet_id))  # answers the PUBREL sent before: says nothing of the new one
        await asyncio.sleep(0.05)
        assert not publishing.done()
        publishing.cancel()
    finally:
        await second.disconnect()


async def test_a_broker_that_downgrades_qos2_is_never_sent_a_pubrel(broker: ScriptedBroker) -> None:
    """RabbitMQ 3.10 answers QoS 2 with PUBACK and stops answering a connection that sends it a PUBREL."""
    broker.session_present = True
    first = await connected_client(broker, cleansession=False)
    one = asyncio.create_task(first.publish("results/a", b"x", qos=2))
    await broker.wait_for(lambda: len(broker.received) == 1)
    two = asyncio.create_task(first.publish("results/b", b"y", qos=2))
    await broker.send(puback_packet(packet_id_of(broker.received[0], b"x")))
    assert await asyncio.wait_for(one, WAIT) is None
    await broker.wait_for(lambda: len(broker.received) == 2)  # the one that waited goes out, alone
    await broker.send(puback_packet(packet_id_of(broker.received[1], b"y")))
    assert await asyncio.wait_for(two, WAIT) is None
    second = await reconnected(broker, first, cleansession=False)
    try:
        await second.publish("results/c", b"z", qos=0)
        await broker.wait_for(lambda: len(broker.received) == 3)
        assert broker.received[2] == publish_packet("results/c", b"z", 0, False)
    finally:
        await second.disconnect()
