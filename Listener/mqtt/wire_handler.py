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
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from .amqtt_boundary import AmqttHandler, incoming_message
from .delivery_queue import DeliveryQueue
from .packets import (FAILURE, PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL, MalformedPacket, OversizePayload, PublicationRefused,
                      PublishHead, parse_ack, parse_publish_head, puback_packet, pubcomp_packet, publish_packet, pubrel_packet,
                      split_packet)
from .qos2_receipts import Receipt

__all__ = ["WireHandler"]

logger = logging.getLogger("Listener.transport")

#: Bytes asked of the socket per read: the packets in them are handled without letting other tasks run.
_CHUNK = 64 * 1024
#: Bytes waiting in the socket's buffer above which a direct publication waits for it to drain.
_DRAIN_ABOVE = 64 * 1024
#: Packet ids of the listener's own publications: one fixed block, so that the QoS 2 publications a previous
#: connection (or a process killed meanwhile) left in the broker's session are known without being remembered.
#: amqtt's own packets (SUBSCRIBE) count up from 1 and never reach it.
OWN_PACKET_IDS = range(64_512, 65_536)


class _Skipping:
    """A PUBLISH whose payload is over the size limit, being discarded as its bytes arrive."""

    __slots__ = ("head", "left", "size")

    def __init__(self, head: PublishHead, size: int) -> None:
        self.head = head
        self.size = size
        self.left = size


class WireHandler:
    """PUBLISH and its acknowledgements read and written directly, beside amqtt's handler ``link``.

    ``label`` names the broker in log lines (``host:port``, never credentials).
    """

    def __init__(self, link: AmqttHandler, *, max_payload: Optional[int] = None,
                 label: str = "the MQTT broker") -> None:
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
        self._leftovers_released = False
        #: On a kept session of a broker not yet known to take QoS 2: the first QoS 2 publication (id, bytes),
        #: until the broker answers it; the QoS 2 publications made meanwhile wait in ``_gated``.
        self._first_qos2: Optional[Tuple[int, bytes]] = None
        self._qos2_learned = False
        self._gated: List[Tuple[str, bytes, bool, "asyncio.Future[None]"]] = []
        self._last_id = OWN_PACKET_IDS[-1]
        self._downgrade_reported = False
        self._handling: Set["asyncio.Task[Any]"] = set()
        self._waiting: Set["asyncio.Future[None]"] = set()

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
        acked: asyncio.Future[None] = self._event_loop.create_future()
        if qos == 2 and self._first_qos2 is not None:
            self._gated.append((topic, payload, retain, acked))
        else:
            self._start_publication(topic, payload, qos, retain, acked)
        return acked

    def _start_publication(self, topic: str, payload: bytes, qos: int, retain: bool,
                           acked: "asyncio.Future[None]") -> None:
        packet_id = self._free_packet_id()
        waiting = self._acks if qos == 1 else self._exactly_once
        waiting[packet_id] = acked
        self._released_out.discard(packet_id)
        acked.add_done_callback(lambda done: self._forget(waiting, packet_id, done))
        packet = publish_packet(topic, payload, qos, retain, packet_id)
        if qos == 2 and not self._qos2_learned and self.session_present:
            self._first_qos2 = (packet_id, packet)  # see _learned_qos2
        self.write(packet)

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
        """The connection ends: cancel the publications awaiting their acknowledgement (amqtt cancels its own)."""
        for acked in [*self._acks.values(), *self._exactly_once.values(), *(gated[3] for gated in self._gated)]:
            acked.cancel()

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

    # -- reading ---------------------------------------------------------------------------------

    def reads_itself(self) -> bool:
        """Whether this connection's packets are read here: its session delivers into the listener's queue."""
        return isinstance(self.link.delivery_queue(), DeliveryQueue)

    async def read_until_closed(self, stream: asyncio.StreamReader) -> None:
        """Read and handle packets until the connection ends, or breaks (amqtt's handler then closes it)."""
        queue = self.link.delivery_queue()
        if not isinstance(queue, DeliveryQueue):
            return
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
            pass  # the connection broke: the same as its end
        except Exception as exc:  # amqtt's reader ends the same way on anything unexpected
            logger.warning("Unexpected error reading from the broker, closing the connection: %r", exc)
        for pending in [*self._handling, *self._waiting]:
            pending.cancel()

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
                if kind == PUBLISH:
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
                elif kind == PUBACK:
                    self._acknowledged(*parse_ack(buffer, body_start, body_end))
                elif kind == PUBREC:
                    self._received(queue, *parse_ack(buffer, body_start, body_end))
                elif kind == PUBREL:
                    self._released(queue, parse_ack(buffer, body_start, body_end)[0])
                elif kind == PUBCOMP:
                    self._completed(parse_ack(buffer, body_start, body_end)[0])
                else:
                    self._hand_to_amqtt(bytes(buffer[start:body_end]))
                start = body_end
        finally:
            del buffer[:start]

    def _receive(self, queue: DeliveryQueue, head: PublishHead, payload: bytes) -> None:
        message = incoming_message(head.packet_id, head.topic, head.qos, payload, head.retain)
        packet_id = head.packet_id
        if packet_id is None:
            if head.dup:
                logger.warning("A QoS 0 message with the DUP flag set was ignored (MQTT-3.3.1-2), topic %r", head.topic)
                return
            queue.put_nowait(message)
            return
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
        elif not acked.done():
            if reason >= FAILURE:
                acked.set_exception(PublicationRefused(reason, "PUBACK"))
            else:
                acked.set_result(None)

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
            if refused is not None and not refused.done():
                refused.set_exception(PublicationRefused(reason, "PUBREC"))
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
        if acked is not None and not acked.done():
            acked.set_result(None)

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
