"""The packets every message crosses, read and written by the listener itself on a plain or TLS socket.

amqtt reads each packet with several awaits and a timer, builds packet objects, and runs it in a task
of its own; each acknowledgement it sends takes a write lock and drains the socket; and it answers a
QoS 2 PUBLISH with PUBREC on arrival, so the broker hands the message over before its job ran.
:class:`WireHandler` is the :class:`~Listener.mqtt.amqtt_boundary.PacketHooks` of each connection's amqtt handler
(:class:`~Listener.mqtt.amqtt_boundary.AmqttHandler`), which keeps amqtt's way for everything else (CONNECT,
SUBSCRIBE, pings). It changes four things on a plain or TLS socket (websockets keep amqtt's way):

- **Reading**: one read per chunk of bytes; PUBLISH (QoS 0, 1 and 2) and the acknowledgements PUBACK,
  PUBREC, PUBREL and PUBCOMP in it are handled right there, without a task. Other packets (SUBACK,
  PINGRESP...) are decoded by amqtt and handled by it, in a task each as before.
- **Acknowledging**: a QoS 1 or 2 message goes into the delivery queue with :meth:`DeliveryQueue.offer`,
  which calls back when its PUBACK (QoS 1) or PUBREC (QoS 2) may go out; it is only written if the
  connection the message came on is still the open one (the broker redelivers the others). A QoS 2
  message resent before its PUBREC reached the broker is never queued twice (:mod:`Listener.mqtt.qos2_receipts`).
  A PUBREL is answered with PUBCOMP at once, for any packet id: also one the broker resends after a
  reconnect, for a message a previous connection (or process) released.
- **Publishing**: :meth:`WireHandler.publish` writes the PUBLISH bytes amqtt would. A QoS 1 publication
  is through at its PUBACK; a QoS 2 one at its PUBCOMP, after the PUBREC is answered with PUBREL. An
  acknowledgement with a failure reason code (0x80 or more: brokers speaking MQTT 5 send them to 3.1.1
  clients too) fails it with :class:`PublicationRefused`: the broker did not take it. A PUBACK answering a
  QoS 2 publication is the broker's downgrade to QoS 1 (RabbitMQ's MQTT plugin does this): the publication
  is through, and one WARNING per connection says so.
- **Writing**: packets written in one turn of the event loop leave in one socket write, at the end of
  that turn; amqtt's own packets first flush what is waiting, so order is kept.

**Memory is bounded in bytes, whatever the broker sends.** A PUBLISH the delivery queue has no room for
(:meth:`DeliveryQueue.has_room`: ``max_pending_messages`` messages queued, or ``max_bytes`` of them) is held
as the bytes it came in, in arrival order with every later PUBLISH and PUBREL, and queued as room frees
(``DeliveryQueue.on_room``). Once :data:`HOLD_BYTES` are held, the reader stops reading the socket: asyncio
then stops reading it too, TCP's window closes, and the broker keeps the rest within its own limits
(Mosquitto keeps a QoS 0 stream to a connected client, and QoS 1/2 messages beyond its in-flight window).
Except while the listener must read on to make progress: a publication of its own awaits its PUBACK,
PUBREC or PUBCOMP, or amqtt awaits a SUBACK or UNSUBACK, which the broker sent behind the messages not
read yet (a job waiting for its result's PUBACK would otherwise never finish and never free room). Then
the reader reads on, handling the acknowledgements at once, and a QoS 0 PUBLISH that finds the held bytes
full is dropped and counted (``messages_dropped``, reason ``max_pending_messages``): the one QoS 0 drop
left, a sustained overload. QoS 1/2 ones are held even so, until :data:`HOLD_BYTES_HARD`: past that, reading
pauses anyway (the broker then limits its in-flight messages, or the publication times out and the
connection is replaced: nothing acknowledged is lost). A pause is never taken for a dead connection: the
liveness watch counts bytes waiting unread as traffic.

Every other packet type has a size bound (:data:`~Listener.mqtt.packets.MAX_BODY`), checked on its fixed
header, before its body is read: a PINGRESP declaring 250 MB closes the connection at once. A PINGRESP
is handled right here; amqtt keeps at most a few unclaimed ones (``AmqttHandler.pingresp_arrived``).
A QoS 0 PUBLISH with DUP set (MQTT-3.3.1-2 forbids it) is dropped and counted (reason ``dup_qos0``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Set, Tuple, Union

from ..core.eager import EagerFuture
from .amqtt_boundary import AmqttHandler, incoming_message
from .delivery_queue import DeliveryQueue
from .packets import (FAILURE, PINGRESP, PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL, ConnectionEnded, MalformedPacket,
                      OversizePayload, PublicationRefused, PublishHead, body_bound_error, parse_ack, parse_publish_head,
                      puback_packet, pubcomp_packet, publish_packet, pubrel_packet, split_packet)
from .qos2_receipts import Receipt

__all__ = ["DUP_QOS0", "HOLD_BYTES", "HOLD_BYTES_HARD", "WireHandler"]

#: The acknowledgements a broker sends a client, each answering one packet id.
_ACKNOWLEDGEMENTS = frozenset((PUBACK, PUBREC, PUBREL, PUBCOMP))

logger = logging.getLogger("Listener.transport")

#: Bytes asked of the socket per read: the packets in them are handled without letting other tasks run.
_CHUNK = 64 * 1024
#: Bytes waiting in the socket's buffer above which a direct publication waits for it to drain.
_DRAIN_ABOVE = 64 * 1024
#: Packet ids of the listener's own publications: one fixed block, so that the QoS 2 publications a previous
#: connection (or a process killed meanwhile) left in the broker's session are known without being remembered.
#: amqtt's own packets (SUBSCRIBE) count up from 1 and never reach it.
OWN_PACKET_IDS = range(64_512, 65_536)
#: Seconds the packets read before the connection ended get to be handled (amqtt's handlers take no time).
_HANDLERS_FINISH = 1.0
#: Bytes of messages held in their wire form (no room in the delivery queue yet) at which reading pauses.
HOLD_BYTES = 4 * 1024 * 1024
#: Held bytes at which reading pauses even while the listener must read on (see the module's docstring).
HOLD_BYTES_HARD = 4 * HOLD_BYTES
#: What each held packet costs beyond its bytes (the bytes object and its place in the deque), counted in.
_ENTRY_COST = 48
#: The reason a QoS 0 PUBLISH with the DUP flag set is dropped (``on_drop``).
DUP_QOS0 = "dup_qos0"


class _Skipping:
    """A PUBLISH whose payload is over the size limit, being discarded as its bytes arrive."""

    __slots__ = ("head", "left", "size")

    def __init__(self, head: PublishHead, size: int) -> None:
        self.head = head
        self.size = size
        self.left = size


#: A packet held for room: its bytes, or a PUBLISH whose oversize payload was discarded as it arrived.
_Held = Union[bytes, _Skipping]


class _Awaited(EagerFuture):
    """A QoS 1/2 publication's acknowledgement (see :meth:`WireHandler.send_publish`). Answered, it was taken out of
    its table of publications awaiting an answer by whoever read the answer. Ended otherwise (cancelled: given up on;
    failed: the connection ended), it takes itself out, before its followers run: its packet id is free again."""

    #: Where it awaits its answer, once it went out: the handler, the table (QoS 1 or 2) and its packet id.
    entry: "Optional[Tuple[WireHandler, Dict[int, asyncio.Future[None]], int]]" = None

    def cancel(self, msg: Any = None) -> bool:
        self._leave()
        return super().cancel(msg)

    def set_exception(self, exception: Any) -> None:
        self._leave()
        super().set_exception(exception)

    def _leave(self) -> None:
        entry = self.entry
        if entry is not None and not self.done():
            handler, waiting, packet_id = entry
            handler._forget(waiting, packet_id, self)


class WireHandler:
    """PUBLISH and its acknowledgements read and written directly, beside amqtt's handler ``link``.

    ``label`` names the broker in log lines (``host:port``, never credentials). ``on_drop`` is called with
    the reason of each message dropped here for what it is (:data:`DUP_QOS0`), not for want of room.
    """

    def __init__(self, link: AmqttHandler, *, max_payload: Optional[int] = None,
                 label: str = "the MQTT broker", on_drop: Optional[Callable[[str], None]] = None) -> None:
        #: amqtt's handler of the connection: the socket, the session, and the packets it keeps handling.
        self.link = link
        self._event_loop = link.loop
        #: Payloads larger than this are discarded as they arrive; the message is delivered with an
        #: :class:`OversizePayload` in their place, which the listener rejects for its size.
        self.max_payload = max_payload
        self.label = label
        #: What the CONNACK said: whether the broker kept this client's session (None before it came).
        self.session_present: Optional[bool] = None
        self._skipping: Optional[_Skipping] = None
        self._unread = bytearray()
        self._outgoing: List[bytes] = []
        self._outgoing_size = 0
        self._flush_scheduled = False
        self._acks: Dict[int, "asyncio.Future[None]"] = {}  # QoS 1 publications awaiting their PUBACK
        self._exactly_once: Dict[int, "asyncio.Future[None]"] = {}  # QoS 2 ones awaiting PUBREC, then PUBCOMP
        self._released_out: Set[int] = set()  # QoS 2 ones released (PUBREL sent): awaiting PUBCOMP
        #: The broker's answers read from one chunk (see :meth:`_answer`), given once the chunk is handled.
        self._answers: List[Tuple["asyncio.Future[None]", Optional[BaseException]]] = []
        self._leftovers_released = False
        #: On a kept session of a broker not yet known to take QoS 2: the first QoS 2 publication (id, bytes),
        #: until the broker answers it; the QoS 2 publications made meanwhile wait in ``_gated``.
        self._first_qos2: Optional[Tuple[int, bytes]] = None
        self._qos2_learned = False
        self._gated: List[Tuple[str, bytes, bool, _Awaited]] = []
        self._last_id = OWN_PACKET_IDS[-1]
        self._downgrade_reported = False
        self._handling: Set["asyncio.Task[Any]"] = set()
        self._waiting: Set["asyncio.Future[None]"] = set()
        self.on_drop = on_drop
        #: PUBLISH and PUBREL packets waiting for room in the delivery queue, in arrival order.
        self._held: Deque[_Held] = deque()
        self._held_bytes = 0
        self._queue: Optional[DeliveryQueue] = None
        self._admitting = False
        self._resume: "Optional[asyncio.Future[None]]" = None
        #: Times reading paused because the held bytes were full (a pause lasts until room frees).
        self.pauses = 0
        #: What :meth:`start_publish` answers for a QoS 0 publication written: a future done already.
        self._written: asyncio.Future[None] = self._event_loop.create_future()
        self._written.set_result(None)

    # -- writing ---------------------------------------------------------------------------------

    @property
    def stream(self) -> Optional[asyncio.StreamWriter]:
        """The connection's open asyncio stream, or None (websockets, or no open connection)."""
        return self.link.socket_writer()

    def write(self, data: bytes) -> None:
        """Send ``data`` at the end of this turn of the event loop, with whatever else is written in it."""
        self._outgoing.append(data)
        self._outgoing_size += len(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._event_loop.call_soon(self.flush)

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

    def send_publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> "Optional[asyncio.Future[None]]":
        """Write a PUBLISH; for QoS 1 and 2, the future that is done when the broker took it (PUBACK, or
        PUBCOMP), fails with :class:`PublicationRefused`, or is cancelled when the connection ends."""
        if not qos:
            self.write(publish_packet(topic, payload, 0, retain))
            return None
        # Eager: the publication's end (and the job's, which follows it) comes in the turn its answer is read.
        acked = _Awaited(loop=self._event_loop)
        if qos == 2 and self._first_qos2 is not None:
            self._gated.append((topic, payload, retain, acked))
        else:
            self._start_publication(topic, payload, qos, retain, acked)
        return acked

    def _start_publication(self, topic: str, payload: bytes, qos: int, retain: bool, acked: _Awaited) -> None:
        packet_id = self._free_packet_id()
        waiting = self._acks if qos == 1 else self._exactly_once
        waiting[packet_id] = acked
        self._released_out.discard(packet_id)
        acked.entry = (self, waiting, packet_id)
        packet = publish_packet(topic, payload, qos, retain, packet_id)
        if qos == 2 and not self._qos2_learned and self.session_present:
            self._first_qos2 = (packet_id, packet)  # see _learned_qos2
        self.write(packet)
        if self._resume is not None:  # paused: its acknowledgement may be behind what is not read yet
            self._wake_reader()

    def _forget(self, waiting: Dict[int, "asyncio.Future[None]"], packet_id: int, acked: "asyncio.Future[None]") -> None:
        if waiting.get(packet_id) is acked:  # not a later publication that got the id since
            del waiting[packet_id]
            self._released_out.discard(packet_id)

    def _free_packet_id(self) -> int:
        """The next id of :data:`OWN_PACKET_IDS` no publication awaits, round the block."""
        if not self.link.attached:
            raise ConnectionError("Not connected")
        first, last = OWN_PACKET_IDS[0], OWN_PACKET_IDS[-1]
        packet_id = self._last_id
        for _ in OWN_PACKET_IDS:
            packet_id = packet_id + 1 if packet_id < last else first
            if packet_id not in self._acks and packet_id not in self._exactly_once:
                self._last_id = packet_id
                return packet_id
        raise RuntimeError(f"No free MQTT packet id: {len(OWN_PACKET_IDS)} publications await their acknowledgement")

    def stop_waiters(self) -> None:
        """The connection ends: fail the publications awaiting their acknowledgement with :class:`ConnectionEnded`
        (amqtt cancels its own waiters, which Python 3.10 cannot tell from a cancellation of the caller)."""
        for acked in [*self._acks.values(), *self._exactly_once.values(), *(gated[3] for gated in self._gated)]:
            if not acked.done():
                acked.set_exception(ConnectionEnded(f"the connection to {self.label} ended before the broker "
                                                    "acknowledged the publication"))

    def connack(self, session_present: bool, return_code: Optional[int]) -> None:
        """The CONNACK arrived: keep what it says of the session.

        When the broker kept no session, packet ids start afresh: a QoS 2 message held from an earlier
        connection is no longer the one a PUBLISH with its packet id brings.
        """
        self.session_present = session_present
        queue = self.link.delivery_queue()
        if not self.session_present and isinstance(queue, DeliveryQueue):
            queue.receipts.forget_all()
        if self.session_present and return_code == 0 and isinstance(queue, DeliveryQueue):
            if queue.broker_takes_qos2:
                self._qos2_learned = True
                self._release_leftovers()

    def _release_leftovers(self) -> None:
        """PUBREL every own packet id no publication of this connection awaits (once per connection).

        The broker holds each QoS 2 publication it received until its PUBREL, and counts it against the
        client's quota of QoS 2 messages in flight (Mosquitto: 20) for as long as the session lasts. A
        connection that ended, or a process killed, between a PUBLISH and its PUBREL leaves such messages
        behind; unreleased, they fill the quota and every later QoS 2 result is refused. MQTT-4.4.0-1 asks
        the client to send those PUBRELs again; no process remembers which they were, but they can only
        have come from :data:`OWN_PACKET_IDS`. A PUBREL for an id the broker does not hold is answered
        with PUBCOMP and changes nothing. Releasing delivers what was left: at least once, never lost.

        Only on a kept session of a broker known to take QoS 2 publications (it answered one with PUBREC,
        on this connection or an earlier one): RabbitMQ's MQTT plugin, which downgrades QoS 2, stops
        answering a connection that sends it a PUBREL. Until that is known, the first QoS 2 publication of
        the connection goes out alone (see :meth:`_learned_qos2`).
        """
        if self._leftovers_released or not self.session_present:
            return
        self._leftovers_released = True
        logger.debug("%s kept this client's session: releasing the QoS 2 publications it may hold", self.label)
        self.write(b"".join(pubrel_packet(packet_id) for packet_id in OWN_PACKET_IDS
                            if packet_id not in self._exactly_once))

    async def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Write a PUBLISH with whatever else this turn of the event loop writes; a QoS 1/2 publication then
        waits until the broker took it, which the caller bounds in time.

        The socket is drained only when its buffer fills up.

        Raises:
            PublicationRefused: the broker's acknowledgement refused it.
        """
        acked = self.send_publish(topic, payload, qos, retain)
        try:
            if self.buffered() > _DRAIN_ABOVE:
                stream = self.stream
                self.flush()
                if stream is not None:
                    await stream.drain()
            if acked is not None:
                await acked
        finally:
            if acked is not None and not acked.done():
                acked.cancel()  # given up on (timed out, or the drain failed): stop tracking its packet id

    def start_publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> "Optional[asyncio.Future[None]]":
        """Write a PUBLISH with whatever else this turn writes, and return the future of its acknowledgement (as
        :meth:`send_publish`; at QoS 0, one that is done already); None, writing nothing, when the socket's buffer
        is full: then :meth:`publish`, which drains it first."""
        if self.buffered() > _DRAIN_ABOVE:
            return None
        acked = self.send_publish(topic, payload, qos, retain)
        return self._written if acked is None else acked

    # -- reading ---------------------------------------------------------------------------------

    def reads_itself(self) -> bool:
        """Whether this connection's packets are read here: its session delivers into the listener's queue."""
        return isinstance(self.link.delivery_queue(), DeliveryQueue)

    async def read_until_closed(self, stream: asyncio.StreamReader) -> None:
        """Read and handle packets until the connection ends, or breaks (amqtt's handler then closes it).

        The packets already read are handled to the end: a SUBACK read with a malformed packet after it
        still completes its subscription (its handler is never cancelled)."""
        queue = self.link.delivery_queue()
        if not isinstance(queue, DeliveryQueue):
            return
        self._queue = queue
        queue.on_room = self._room_freed
        try:
            while True:
                if self._must_pause():
                    await self._until_resumed()
                    continue
                chunk = await stream.read(_CHUNK)
                if not chunk:
                    break  # the broker closed the connection
                self._unread += chunk
                self._handle_packets(queue)
        except asyncio.CancelledError:
            pass
        except MalformedPacket as exc:
            logger.warning("%s sent a malformed packet (%s): closing the connection", self.label, exc)
        except (OSError, EOFError):
            pass  # the connection broke: the same as its end
        except Exception as exc:  # amqtt's reader ends the same way on anything unexpected
            logger.warning("Unexpected error reading from the broker, closing the connection: %r", exc)
        if queue.on_room == self._room_freed:
            queue.on_room = None
        self._abandon_held(queue)
        for pending in self._waiting:
            pending.cancel()
        if self._handling:  # before amqtt fails what awaits an answer: a SUBACK read is an answer
            await asyncio.wait(set(self._handling), timeout=_HANDLERS_FINISH)

    @property
    def unread(self) -> int:
        """Bytes received but not handled yet (the start of a packet still arriving)."""
        return len(self._unread)

    @property
    def held_bytes(self) -> int:
        """Bytes of the messages held for room in the delivery queue (see the module's docstring)."""
        return self._held_bytes

    @property
    def held(self) -> int:
        """Packets held for room in the delivery queue."""
        return len(self._held)

    @property
    def paused(self) -> bool:
        """True while reading is paused: the held bytes are full, and nothing must be read."""
        return self._resume is not None

    def must_read(self) -> bool:
        """Whether an answer the listener awaits may be behind the bytes not read yet: a publication's
        acknowledgement, or a SUBACK or UNSUBACK amqtt awaits."""
        return bool(self._acks or self._exactly_once) or self.link.awaits_answer()

    def _must_pause(self, margin: int = 0) -> bool:
        held = self._held_bytes + margin
        if held >= HOLD_BYTES_HARD:
            return True
        return held >= HOLD_BYTES and not self.must_read()

    async def _until_resumed(self) -> None:
        self.pauses += 1
        logger.debug("Reading from %s paused: %d bytes of messages wait for room", self.label, self._held_bytes)
        self._resume = resume = self._event_loop.create_future()
        try:
            await resume
        finally:
            self._resume = None

    def _wake_reader(self) -> None:
        resume = self._resume
        # Resumed once a whole read fits again: not for every message that frees room.
        if resume is not None and not resume.done() and not self._must_pause(_CHUNK):
            resume.set_result(None)

    def answer_awaited(self) -> None:
        """amqtt sent a packet whose answer it awaits: the paused reader looks again (once amqtt registered it)."""
        if self._resume is not None:
            self._event_loop.call_soon(self._wake_reader)

    def _room_freed(self) -> None:
        """The delivery queue may have room: queue what is held, in order, as far as it goes."""
        queue = self._queue
        if self._admitting or queue is None:
            return
        if self._held:
            self._admit_held(queue)
        if self._resume is not None:
            self._wake_reader()

    def _hold(self, entry: _Held) -> None:
        self._held.append(entry)
        self._held_bytes += (len(entry) if isinstance(entry, bytes) else 0) + _ENTRY_COST

    def _admit_held(self, queue: DeliveryQueue) -> None:
        held = self._held
        self._admitting = True
        try:
            while held:
                entry = held[0]
                if isinstance(entry, _Skipping):
                    if not self._admissible(queue, entry.head):
                        break
                    held.popleft()
                    self._held_bytes -= _ENTRY_COST
                    self._receive(queue, entry.head, OversizePayload(entry.size))
                    continue
                packet = bytearray(entry)
                where = split_packet(packet, 0)
                if where is None:  # pragma: no cover - only whole packets are held
                    raise MalformedPacket("a held packet cut short")
                body_start, body_end = where
                if packet[0] >> 4 == PUBREL:
                    self._released(queue, parse_ack(packet, body_start, body_end)[0])
                else:
                    head = parse_publish_head(packet[0] & 0x0F, packet, body_start, body_end)
                    if head is None or not self._admissible(queue, head):
                        break
                    self._receive(queue, head, entry[head.payload_start:body_end])
                held.popleft()
                self._held_bytes -= len(entry) + _ENTRY_COST
        finally:
            self._admitting = False

    def _abandon_held(self, queue: DeliveryQueue) -> None:
        """The connection ended: a held QoS 0 message is queued where there is room, else dropped and counted; a
        held QoS 1/2 one was never acknowledged (the broker sends it again on the next connection)."""
        held, self._held, self._held_bytes = self._held, deque(), 0
        for entry in held:
            if isinstance(entry, _Skipping):
                if entry.head.packet_id is not None:
                    continue
                if queue.has_room(0):
                    self._receive(queue, entry.head, OversizePayload(entry.size))
                else:
                    queue.drop()
                continue
            if entry[0] >> 4 != PUBLISH or (entry[0] >> 1) & 0x03:
                continue
            if not queue.has_room(0):
                queue.drop()
                continue
            packet = bytearray(entry)
            where = split_packet(packet, 0)
            head = parse_publish_head(packet[0] & 0x0F, packet, *where) if where is not None else None
            if head is not None and where is not None:
                self._receive(queue, head, entry[head.payload_start:where[1]])

    @staticmethod
    def _admissible(queue: DeliveryQueue, head: PublishHead) -> bool:
        if head.qos == 2 and head.packet_id in queue.receipts:
            return True  # a resend of a message held already: no second job, no room needed
        return queue.has_room(head.qos)

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
                    dropped = skipping.head.dup and skipping.head.packet_id is None  # only counted: no room needed
                    if not dropped and (self._held or not self._admissible(queue, skipping.head)):
                        self._hold(skipping)
                    else:
                        self._receive(queue, skipping.head, OversizePayload(skipping.size))
                    continue
                left = len(buffer) - start
                kind = buffer[start] >> 4 if left >= 4 and buffer[start + 1] == 2 else PUBLISH
                if kind in _ACKNOWLEDGEMENTS:
                    # The common acknowledgement, a packet id and nothing more: no length to decode, no bound to check.
                    self._acknowledgement(queue, kind, (buffer[start + 2] << 8) | buffer[start + 3], 0, start, start + 4)
                    start += 4
                    continue
                where = split_packet(buffer, start) if left >= 2 else None
                if where is None:
                    break
                body_start, body_end = where
                first = buffer[start]
                kind = first >> 4
                if kind == PUBLISH:
                    head = parse_publish_head(first & 0x0F, buffer, body_start, body_end)
                    if head is None:
                        break
                    size = body_end - head.payload_start
                    if head.dup and head.packet_id is None:
                        self._skipping = _Skipping(head, size)  # never kept, whatever its size
                        start = head.payload_start
                        continue
                    if self.max_payload is not None and size > self.max_payload:
                        # Rejected for its size anyway: never hold it (the broker may allow up to 256 MiB).
                        self._skipping = _Skipping(head, size)
                        start = head.payload_start
                        continue
                    if body_end > len(buffer):
                        break
                    if self._held or not self._admissible(queue, head):
                        self._hold_or_drop(queue, head, bytes(buffer[start:body_end]))
                    else:
                        self._receive(queue, head, bytes(buffer[head.payload_start:body_end]))
                    start = body_end
                    continue
                bound_error = body_bound_error(kind, body_end - body_start)
                if bound_error is not None:  # refused on its fixed header: its body is never read
                    raise MalformedPacket(bound_error)
                if body_end > len(buffer):
                    break
                if kind in _ACKNOWLEDGEMENTS:
                    self._acknowledgement(queue, kind, *parse_ack(buffer, body_start, body_end), start, body_end)
                elif kind == PINGRESP:
                    self.link.pingresp_arrived()
                else:
                    self._hand_to_amqtt(bytes(buffer[start:body_end]))
                start = body_end
        finally:
            del buffer[:start]
            if self._answers:
                self._give_answers()

    def _acknowledgement(self, queue: DeliveryQueue, kind: int, packet_id: int, reason: int, start: int,
                         end: int) -> None:
        """A PUBACK, PUBREC, PUBREL or PUBCOMP (``kind``) read whole, at ``self._unread[start:end]``."""
        if kind == PUBACK:
            self._acknowledged(packet_id, reason)
        elif kind == PUBREC:
            self._received(queue, packet_id, reason)
        elif kind == PUBREL:
            if self._held:  # after the messages held before it, as it came
                self._hold(bytes(self._unread[start:end]))
            else:
                self._released(queue, packet_id)
        else:
            self._completed(packet_id)

    def _answer(self, acked: "asyncio.Future[None]", error: Optional[BaseException]) -> None:
        """Answer a publication once the chunk read is handled: its followers run eagerly, after the packets that
        came with its answer (as they would a turn later), never in the middle of reading them."""
        self._answers.append((acked, error))

    def _give_answers(self) -> None:
        answers, self._answers = self._answers, []
        for acked, error in answers:
            if acked.done():
                continue
            if error is None:
                acked.set_result(None)
            else:
                acked.set_exception(error)

    def _hold_or_drop(self, queue: DeliveryQueue, head: PublishHead, packet: bytes) -> None:
        """Hold a PUBLISH there is no room for yet; drop a QoS 0 one once the held bytes are full while the reader
        must read on (see the module's docstring). What was read before the reader could pause is held: at most
        a read's worth past :data:`HOLD_BYTES`."""
        if head.qos == 0 and self._held_bytes >= HOLD_BYTES and not queue.closed and self.must_read():
            queue.drop()
        else:
            self._hold(packet)

    def _receive(self, queue: DeliveryQueue, head: PublishHead, payload: bytes) -> None:
        packet_id = head.packet_id
        if packet_id is None:
            if head.dup:
                # MQTT-3.3.1-2: a broker (or a proxy) at fault; a QoS 0 message is never resent, so this may be a copy.
                logger.debug("A QoS 0 message with the DUP flag set was dropped (MQTT-3.3.1-2), topic %r", head.topic)
                if self.on_drop is not None:
                    self.on_drop(DUP_QOS0)
                return
            queue.put_nowait(incoming_message(None, head.topic, 0, payload, head.retain))
            return
        if queue.closed and (head.qos == 1 or packet_id not in queue.receipts):
            return  # stopping: never acknowledged, so the broker sends it again on the next connection
        message = incoming_message(packet_id, head.topic, head.qos, payload, head.retain)
        receipt: Optional[Receipt] = None
        if head.qos == 1:
            acknowledge = self._acknowledge_later(packet_id)
        else:
            receipt = queue.receipts.arrived(packet_id, self.write)
            if receipt is None:
                return  # the broker resent a message held already: never a second job
            acknowledge = receipt.release
        turn = queue.offer(message, acknowledge)
        if turn is not None:  # no room yet: it waits for its turn, unless the connection ends first
            self._waiting.add(turn)
            turn.add_done_callback(self._waiting.discard)
            if receipt is not None:
                turn.add_done_callback(lambda waited: self._not_queued(queue, receipt, waited))

    @staticmethod
    def _not_queued(queue: DeliveryQueue, receipt: Receipt, turn: "asyncio.Future[None]") -> None:
        if turn.cancelled():  # its connection ended first: the resend will be a first arrival
            queue.receipts.abandon(receipt)

    def _acknowledge_later(self, packet_id: int) -> Callable[[], None]:
        # Written by this handler, so only ever on the connection the message came on (a later one has
        # its own packet ids): once this one has closed, the PUBACK is dropped and the broker redelivers.
        return lambda: self.write(puback_packet(packet_id))

    def _released(self, queue: DeliveryQueue, packet_id: int) -> None:
        """The broker's PUBREL: the QoS 2 flow of a message received is over (whichever connection it came on)."""
        queue.receipts.completed(packet_id)
        self.write(pubcomp_packet(packet_id))

    def _acknowledged(self, packet_id: int, reason: int) -> None:
        acked = self._acks.pop(packet_id, None)
        if acked is None:
            acked = self._exactly_once.pop(packet_id, None)
            if acked is not None and reason < FAILURE:
                self._downgraded()
            if self._first_qos2 is not None and self._first_qos2[0] == packet_id:
                self._learned_qos2(None, None)
        if acked is None:
            logger.debug("PUBACK for packet id %d, which no publication awaits", packet_id)
        else:
            self._answer(acked, PublicationRefused(reason, "PUBACK") if reason >= FAILURE else None)

    def _received(self, queue: DeliveryQueue, packet_id: int, reason: int) -> None:
        """The broker's PUBREC: it has the QoS 2 publication (answered with PUBREL), or refused it."""
        queue.broker_takes_qos2 = True
        first = self._first_qos2
        if first is not None and first[0] == packet_id:
            resend = reason < FAILURE and packet_id in self._exactly_once
            self._learned_qos2(queue, first[1] if resend else None)
            if resend:
                return  # its PUBREL follows the PUBREC of the copy
        if reason >= FAILURE:
            refused = self._exactly_once.pop(packet_id, None)
            if refused is not None:
                self._answer(refused, PublicationRefused(reason, "PUBREC"))
            return
        # Also for a publication given up on meanwhile: the broker would keep it in flight for good.
        if packet_id in self._exactly_once:
            self._released_out.add(packet_id)
        self.write(pubrel_packet(packet_id))

    def _learned_qos2(self, queue: Optional[DeliveryQueue], resend: Optional[bytes]) -> None:
        """The broker answered the first QoS 2 publication of a kept session: with PUBREC (``queue`` given: it
        takes QoS 2, so the leftovers of earlier connections are released) or with PUBACK (a downgrade).

        Leftovers fill the broker's quota, and Mosquitto drops a QoS 2 publication over its quota while
        answering a 3.1.1 client with an ordinary PUBREC: the first publication may have been dropped. So once
        the leftovers are released, it is sent again (``resend``) with its packet id and DUP set: a broker
        that kept it takes the copy as the same message (MQTT-4.3.3-2), one that dropped it has room for it
        now. Then the publications that waited go out.
        """
        self._first_qos2 = None
        self._qos2_learned = True
        if queue is not None:
            self._release_leftovers()
        if resend is not None:
            self.write(bytes((resend[0] | 0x08,)) + resend[1:])
        gated, self._gated = self._gated, []
        for topic, payload, retain, acked in gated:
            if not acked.done():
                self._start_publication(topic, payload, 2, retain, acked)

    def _completed(self, packet_id: int) -> None:
        """The broker's PUBCOMP: a QoS 2 publication released by this connection is through.

        A PUBCOMP for an id not released here (answering :meth:`_release_leftovers`, while a new
        publication already has the id) says nothing of the new one."""
        if packet_id not in self._released_out:
            return
        self._released_out.discard(packet_id)
        acked = self._exactly_once.pop(packet_id, None)
        if acked is not None:
            self._answer(acked, None)

    def _downgraded(self) -> None:
        if not self._downgrade_reported:
            self._downgrade_reported = True
            logger.warning("%s answered a QoS 2 publication with PUBACK: it takes QoS 2 publications at QoS 1 "
                           "(RabbitMQ's MQTT plugin does), so a subscriber may get a result twice. They are "
                           "taken as delivered; said once per connection.", self.label)

    def _hand_to_amqtt(self, packet: bytes) -> None:
        self._start(self._amqtt_handles(packet))

    async def _amqtt_handles(self, raw: bytes) -> None:
        if not await self.link.dispatch(raw):
            logger.warning("Ignored a packet of type %d, which a broker does not send to a client", raw[0] >> 4)

    def _start(self, work: Any) -> None:
        task = self._event_loop.create_task(work)
        self._handling.add(task)
        task.add_done_callback(self._handled)

    def _handled(self, task: "asyncio.Task[Any]") -> None:
        self._handling.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("Handling a packet from %s failed: %r", self.label, task.exception())
