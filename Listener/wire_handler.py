"""amqtt's client protocol handler, with the packets every message crosses handled in place.

amqtt reads each packet with several awaits and a timer, builds packet objects, and runs it in a task
of its own; each PUBACK it sends takes a write lock and drains the socket. At QoS 1 that made up most of
the listener's CPU per message. :class:`WireHandler` keeps amqtt's handler for everything else and
changes three things on a plain or TLS socket (websockets keep amqtt's way):

- **Reading**: one read per chunk of bytes; the PUBLISH (QoS 0 and 1) and PUBACK packets in it are
  handled right there, without a task. Other packets (SUBACK, PINGRESP, QoS 2 flows...) are decoded
  by amqtt and handled by it, in a task each as before.
- **Acknowledging**: a QoS 1 message goes into the delivery queue with :meth:`DeliveryQueue.offer`,
  which calls back when its PUBACK may go out; the PUBACK is only written if the connection the
  message came on is still the open one (the broker redelivers the others).
- **Writing**: PUBLISH and PUBACK bytes written in one turn of the event loop leave in one socket
  write, at the end of that turn; amqtt's own packets first flush what is waiting, so order is kept.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Dict, List, Optional, Set

from amqtt.adapters import BufferReader
from amqtt.mqtt import packet_class
from amqtt.mqtt.packet import MQTTFixedHeader
from amqtt.mqtt.protocol.client_handler import ClientProtocolHandler
from amqtt.mqtt.puback import PubackPacket
from amqtt.session import IncomingApplicationMessage

from .delivery import DeliveryQueue
from .packets import (
    PUBACK, PUBLISH, MalformedPacket, OversizePayload, PublishHead, parse_publish_head, puback_packet, publish_packet,
    split_packet,
)

__all__ = ["WireHandler"]

logger = logging.getLogger("Listener.transport")

#: Bytes asked of the socket per read: the packets in them are handled without letting other tasks run.
_CHUNK = 64 * 1024
#: amqtt's handler method for each packet type it keeps (by MQTT packet type number).
_AMQTT_HANDLERS = {
    2: "handle_connack", 3: "handle_publish", 4: "handle_puback", 5: "handle_pubrec", 6: "handle_pubrel",
    7: "handle_pubcomp", 9: "handle_suback", 11: "handle_unsuback", 13: "handle_pingresp", 14: "handle_disconnect",
}


class _Skipping:
    """A PUBLISH whose payload is over the size limit, being discarded as its bytes arrive."""

    __slots__ = ("head", "left", "size")

    def __init__(self, head: PublishHead, size: int) -> None:
        self.head = head
        self.size = size
        self.left = size


class WireHandler(ClientProtocolHandler):  # type: ignore[misc]
    """amqtt's ``ClientProtocolHandler`` with QoS 0/1 PUBLISH and PUBACK read and written directly."""

    def __init__(self, *args: Any, max_payload: Optional[int] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Payloads larger than this are discarded as they arrive; the message is delivered with an
        #: :class:`OversizePayload` in their place, which the listener rejects for its size.
        self.max_payload = max_payload
        self._skipping: Optional[_Skipping] = None
        self._unread = bytearray()
        self._outgoing: List[bytes] = []
        self._outgoing_size = 0
        self._flush_scheduled = False
        self._acks: Dict[int, "asyncio.Future[None]"] = {}
        self._handling: Set["asyncio.Task[Any]"] = set()
        self._waiting: Set["asyncio.Future[None]"] = set()

    # -- writing ---------------------------------------------------------------------------------

    @property
    def stream(self) -> Optional[asyncio.StreamWriter]:
        """The connection's open asyncio stream, or None (websockets, or no open connection)."""
        stream = getattr(self.writer, "_writer", None)
        if not isinstance(stream, asyncio.StreamWriter) or getattr(self.writer, "is_closed", True):
            return None
        if stream.transport.is_closing():
            return None
        return stream

    def write(self, data: bytes) -> None:
        """Send ``data`` at the end of this turn of the event loop, with whatever else is written in it."""
        self._outgoing.append(data)
        self._outgoing_size += len(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Hand what :meth:`write` collected to the socket now (dropped if the connection is gone)."""
        self._flush_scheduled = False
        if not self._outgoing:
            return
        data = self._outgoing[0] if len(self._outgoing) == 1 else b"".join(self._outgoing)
        self._outgoing.clear()
        self._outgoing_size = 0
        stream = self.stream
        if stream is not None:
            stream.write(data)

    def buffered(self) -> int:
        """Bytes written but not yet sent: collected by :meth:`write` or in the socket's buffer."""
        stream = self.stream
        waiting = stream.transport.get_write_buffer_size() if stream is not None else 0
        return waiting + self._outgoing_size

    async def _send_packet(self, packet: Any) -> None:
        self.flush()  # what was written before goes first
        await super()._send_packet(packet)

    def send_publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> "Optional[asyncio.Future[None]]":
        """Write a QoS 0 or 1 PUBLISH; for QoS 1, the future of its PUBACK (cancelled if the connection ends)."""
        if not qos:
            self.write(publish_packet(topic, payload, 0, retain))
            return None
        packet_id = self._free_packet_id()
        acked: asyncio.Future[None] = self._loop.create_future()
        self._acks[packet_id] = acked
        acked.add_done_callback(lambda done: self._forget(packet_id, done))
        self.write(publish_packet(topic, payload, 1, retain, packet_id))
        return acked

    def _forget(self, packet_id: int, acked: "asyncio.Future[None]") -> None:
        if self._acks.get(packet_id) is acked:  # not a later publication that got the id since
            del self._acks[packet_id]

    def _free_packet_id(self) -> int:
        session = self.session
        if session is None:
            raise ConnectionError("Not connected")
        for _ in range(65_535):
            packet_id: int = session.next_packet_id
            if packet_id not in self._acks:
                return packet_id
        raise RuntimeError("No free MQTT packet id: 65,535 publications await their PUBACK")

    def _stop_waiters(self) -> None:
        super()._stop_waiters()
        for acked in list(self._acks.values()):
            acked.cancel()

    async def stop(self) -> None:
        self.flush()
        await super().stop()

    # -- reading ---------------------------------------------------------------------------------

    async def _reader_loop(self) -> None:
        stream = getattr(self.reader, "_reader", None)
        queue = getattr(self.session, "delivered_message_queue", None)
        if not isinstance(stream, asyncio.StreamReader) or not isinstance(queue, DeliveryQueue):
            await super()._reader_loop()
            return
        if self._reader_ready is not None:
            self._reader_ready.set()
        try:
            while True:
                chunk = await stream.read(_CHUNK)
                if not chunk:
                    break  # the broker closed the connection
                self._unread += chunk
                self._handle_packets(queue)
        except asyncio.CancelledError:
            pass
        except MalformedPacket as exc:
            logger.warning("The broker sent a malformed packet (%s): closing the connection", exc)
        except (OSError, EOFError):
            pass  # the connection broke: handled below like its end
        except Exception as exc:  # amqtt's reader ends the same way on anything unexpected
            logger.warning("Unexpected error reading from the broker, closing the connection: %r", exc)
        for pending in [*self._handling, *self._waiting]:
            pending.cancel()
        await self.handle_connection_closed()
        self._reader_stopped.set()
        await self.stop()

    @property
    def unread(self) -> int:
        """Bytes received but not handled yet (the start of a packet still arriving)."""
        return len(self._unread)

    def _handle_packets(self, queue: DeliveryQueue) -> None:
        buffer = self._unread
        start = 0
        try:
            while True:
                skipping = self._skipping
                if skipping is not None:
                    discarded = min(skipping.left, len(buffer) - start)
                    skipping.left -= discarded
                    start += discarded
                    if skipping.left:
                        break
                    self._skipping = None
                    self._receive(queue, skipping.head, OversizePayload(skipping.size))
                    continue
                where = split_packet(buffer, start) if len(buffer) - start >= 2 else None
                if where is None:
                    break
                body_start, body_end = where
                first = buffer[start]
                kind = first >> 4
                if kind == PUBLISH and first & 0x06 != 0x04:  # QoS 0 or 1 (QoS 2: amqtt's flow)
                    head = parse_publish_head(first & 0x0F, buffer, body_start, body_end)
                    if head is None:
                        break
                    size = body_end - head.payload_start
                    if self.max_payload is not None and size > self.max_payload:
                        # Rejected for its size anyway: never hold it (the broker may allow up to 256 MiB).
                        self._skipping = _Skipping(head, size)
                        start = head.payload_start
                        continue
                    if body_end > len(buffer):
                        break
                    self._receive(queue, head, bytes(buffer[head.payload_start:body_end]))
                elif body_end > len(buffer):
                    break
                elif kind == PUBACK and body_end - body_start == 2:
                    self._acknowledged((buffer[body_start] << 8) | buffer[body_start + 1])
                else:
                    self._hand_to_amqtt(bytes(buffer[start:body_end]))
                start = body_end
        finally:
            del buffer[:start]

    def _receive(self, queue: DeliveryQueue, head: PublishHead, payload: bytes) -> None:
        message = IncomingApplicationMessage(head.packet_id, head.topic, head.qos, payload, head.retain)
        if head.packet_id is None:
            if head.dup:
                logger.warning("A QoS 0 message with the DUP flag set was ignored (MQTT-3.3.1-2), topic %r", head.topic)
                return
            queue.put_nowait(message)
            return
        turn = queue.offer(message, self._acknowledge_later(head.packet_id))
        if turn is not None:  # no room yet: it waits for its turn, unless the connection ends first
            self._waiting.add(turn)
            turn.add_done_callback(self._waiting.discard)

    def _acknowledge_later(self, packet_id: int) -> Callable[[], None]:
        # Written by this handler, so only ever on the connection the message came on (a later one has
        # its own packet ids): once this one has closed, the PUBACK is dropped and the broker redelivers.
        return lambda: self.write(puback_packet(packet_id))

    def _acknowledged(self, packet_id: int) -> None:
        acked = self._acks.pop(packet_id, None)
        if acked is not None:
            if not acked.done():
                acked.set_result(None)
            return
        waiter = self._puback_waiters.get(packet_id)  # a publication amqtt sent (QoS 2 paths, websockets)
        if waiter is not None and not waiter.done():
            waiter.set_result(PubackPacket.build(packet_id))
        elif waiter is None:
            logger.debug("PUBACK for packet id %d, which no publication awaits", packet_id)

    def _hand_to_amqtt(self, packet: bytes) -> None:
        self._start(self._amqtt_handles(packet))

    async def _amqtt_handles(self, raw: bytes) -> None:
        reader = BufferReader(raw)
        fixed_header = await MQTTFixedHeader.from_stream(reader)
        packet = await packet_class(fixed_header).from_stream(reader, fixed_header=fixed_header)
        name = _AMQTT_HANDLERS.get(fixed_header.packet_type)
        if name is None:
            logger.warning("Ignored a packet of type %d, which a broker does not send to a client",
                           fixed_header.packet_type)
            return
        await getattr(self, name)(packet)

    def _start(self, work: Any) -> None:
        task = self._loop.create_task(work)
        self._handling.add(task)
        task.add_done_callback(self._handled)

    def _handled(self, task: "asyncio.Task[Any]") -> None:
        self._handling.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.debug("Handling a packet from the broker failed: %r", task.exception())
