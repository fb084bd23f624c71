"""The bounded queue between the socket and the consumer, which holds back acknowledgements.

Every incoming message goes into the session's delivery queue: a QoS 0 one with ``put_nowait()``; a
QoS 1 or 2 one with ``offer()`` by the listener's own reader (:mod:`Listener.mqtt.wire_handler`), which sends
the PUBACK (QoS 1) or PUBREC (QoS 2) when ``offer()`` calls back; over websockets, where amqtt reads
the packets, a QoS 1/2 one with ``await put()``, amqtt sending the PUBACK/PUBCOMP once ``put()`` returns.
amqtt's own queue is unbounded and its ``put()`` returns at once. ``DeliveryQueue`` takes its place in every
session of the listener's client, with one of these acknowledgement policies (``offer()`` calls back when
``put()`` would return):

- ``on_receipt``: ``put()`` waits while ``window`` messages are queued, then returns: a message is
  acknowledged when it enters the queue, so at most ``window`` acknowledged-but-unprocessed messages
  exist (the listener's behaviour before ``ack_policy`` existed).
- ``after_processing`` (``hold_acks=True``): ``put()`` queues the message at once and then waits until
  the message is *settled* (its job finished, see :class:`Ticket`) and every message that arrived
  before it was released too: acknowledgements go out strictly in arrival order (MQTT 3.1.1 §4.6),
  for a prefix of settled messages only. At most ``max_pending`` messages are queued or awaiting their
  acknowledgement; past that, ``put()`` waits before queueing (the broker's in-flight limit then stops it
  sending more). A ``put()`` cancelled while waiting (the connection ended) releases nothing: the broker
  redelivers that message on the next connection, and the copy already queued is processed anyway
  (the job store treats the redelivery as a duplicate).
- ``after_recording`` (``hold_acks=True`` too): the same ledger, but the consumer settles a message's
  ticket as soon as its job is admitted into a durable job store (and ``barrier`` passed, below), not
  when the job finishes; a hung job then holds back no later acknowledgement.

With a durable job store, ``barrier`` (the store's ``durable()``) is awaited before a run of settled
messages is released: a message the broker will not redeliver has its job's outcome on disk. One
commit covers every message settled meanwhile, and a failing barrier is retried (the store reports the
failure) while those messages stay unacknowledged.

QoS 0 messages carry no acknowledgement and are never held back. :meth:`has_room` tells the listener's
reader whether a message may be queued now: a QoS 0 one while fewer than ``max_pending`` messages are
queued, any one only while the queued messages' bytes (``queued_bytes``: payloads and topics) are under
``max_bytes``. The reader holds the rest in their compact wire form, and stops reading the socket when
that is full (see :mod:`Listener.mqtt.wire_handler`); ``on_room`` is called whenever room may have
freed. A QoS 0 message ``put_nowait()`` gets when ``max_pending`` messages are queued is dropped and
``on_drop`` is called for it (amqtt's own reader, over websockets, queues that way), as is one the
reader must drop itself (:meth:`drop`). ``close()`` stops accepting acknowledged messages for good
(used when stopping: what is queued gets processed, what is not yet queued stays with the broker).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from typing import Any, Awaitable, Callable, Deque, Dict, List, Optional

from ..core.eager import add_follower
from .packets import OversizePayload
from .qos2_receipts import QoS2Receipts

__all__ = ["DeliveryQueue", "Ticket"]

logger = logging.getLogger("Listener.delivery")

#: Seconds between tries of a failing ``barrier`` (doubling up to the last).
BARRIER_RETRY = (0.05, 2.0)
#: Bytes of queued messages (payloads and topics) past which no further message is queued (``max_bytes``).
MAX_QUEUED_BYTES = 64 * 1024 * 1024


def message_size(item: Any) -> int:
    """Bytes a received message holds: its payload and topic (an oversize payload was never kept: 0)."""
    data: Any = getattr(item, "data", None)
    kind = type(data)  # what the wire handler makes, checked first: this runs twice per message
    if kind is bytes or kind is bytearray:
        size = len(data)
    else:
        size = len(data) if isinstance(data, (bytes, bytearray)) and not isinstance(data, OversizePayload) else 0
    topic = getattr(item, "topic", None)
    return size + (len(topic) if isinstance(topic, str) else 0)


class _Entry:
    """One held acknowledgement in the ledger: released once settled and first in line."""

    __slots__ = ("on_release", "settled")

    def __init__(self, on_release: Callable[[], None]) -> None:
        self.settled = False
        self.on_release = on_release


class Ticket:
    """The acknowledgement of one message taken from a ``hold_acks`` queue: settle it when its job is done.

    :meth:`settle` is idempotent. :meth:`defer` hands settling over to a future (a job whose QoS 1/2
    result awaits the broker's acknowledgement): the ticket then settles when that future completes,
    and never if it is cancelled; a later :meth:`settle` does nothing. Once settled (``ack_policy =
    "after_recording"`` settles when the job is admitted), :meth:`defer` and :meth:`withhold` change nothing.
    """

    __slots__ = ("_deferred", "_entry", "_queue")

    def __init__(self, queue: "DeliveryQueue", entry: _Entry) -> None:
        self._queue = queue
        self._entry = entry
        self._deferred = False

    def defer(self, until: "asyncio.Future[Any]") -> None:
        """Settle when ``until`` is done, unless it was cancelled (then the message stays unacknowledged)."""
        if self._entry.settled:
            return
        self._deferred = True
        add_follower(until, self._on_done)

    def _on_done(self, until: "asyncio.Future[Any]") -> None:
        if not until.cancelled():
            self._queue._settle(self._entry)

    def settle(self) -> None:
        """The message's job is finished (or recorded): its acknowledgement may go out once those before it went."""
        if not self._deferred and not self._entry.settled:
            self._queue._settle(self._entry)

    def withhold(self) -> None:
        """Never acknowledge this message (its job was cut short): the broker redelivers it to a later session."""
        self._deferred = True

    @property
    def settled(self) -> bool:
        """True once settled (released, or waiting for an earlier message)."""
        return self._entry.settled


class DeliveryQueue(asyncio.Queue):  # type: ignore[type-arg]
    """amqtt's delivery queue with held-back acknowledgements, a bound, and an arrival callback."""

    def __init__(self, window: int, on_arrival: Optional[Callable[[], None]] = None, *, hold_acks: bool = False,
                 max_pending: int = 10_000, on_drop: Optional[Callable[[], None]] = None,
                 max_bytes: int = MAX_QUEUED_BYTES) -> None:
        super().__init__()
        self.window = max(1, window)
        self.hold_acks = hold_acks
        self.max_pending = max(1, max_pending)
        self.max_bytes = max(1, max_bytes)
        #: Bytes of the messages queued and not taken yet (see :func:`message_size`).
        self.queued_bytes = 0
        #: Called whenever room may have freed (a message taken, an acknowledgement released, the queue closed).
        self.on_room: Optional[Callable[[], None]] = None
        self.closed = False
        self.on_arrival = on_arrival
        self.on_drop = on_drop
        self.dropped = 0
        self.after_close = 0  # QoS 0 messages that arrived once the queue was closed, not taken
        self._ack_waiters: Deque["asyncio.Future[None]"] = deque()
        self._reserved = 0
        self._ledger: Deque[_Entry] = deque()
        self._tickets: Dict[int, _Entry] = {}
        #: Awaited before settled messages are released (a durable job store's ``durable()``), or None.
        self.barrier: Optional[Callable[[], Awaitable[None]]] = None
        self._recording: Deque[_Entry] = deque()  # settled, released once the barrier passed
        self._releaser: Optional["asyncio.Task[None]"] = None
        #: The QoS 2 messages received whose flow is not over: kept with the queue, across reconnects.
        self.receipts = QoS2Receipts()
        #: Set once the broker answered one of the listener's QoS 2 publications with PUBREC (RabbitMQ never
        #: does): a session it kept may then hold QoS 2 publications worth releasing (see Listener.mqtt.wire_handler).
        self.broker_takes_qos2 = False
        self._intercepted: Dict[str, "asyncio.Future[Any]"] = {}  # topic -> its first QoS 0 message

    # -- QoS 0 -----------------------------------------------------------------------------------

    def put_nowait(self, item: Any) -> None:
        """Queue a QoS 0 message, or drop it when ``max_pending`` messages are queued already, or when the
        queue is closed (stopping: otherwise a steady QoS 0 stream would keep the drain busy until the
        grace period ran out, and the job then running would be cut short). A message on an intercepted
        topic is never queued (see :meth:`intercept`)."""
        if self._intercepted and self._caught(item):
            return
        if self.closed:
            self.after_close += 1
            return
        if self.qsize() >= self.max_pending:
            self.drop()
            return
        self._enqueue(item)

    def drop(self) -> None:
        """Count a QoS 0 message dropped for want of room, and call ``on_drop``."""
        self.dropped += 1
        if self.on_drop is not None:
            self.on_drop()

    def has_room(self, qos: int) -> bool:
        """Whether a message of ``qos`` arriving now is queued at once (QoS 0: ``put_nowait()``; QoS 1/2: ``offer()``
        returns None): fewer than ``max_pending`` messages queued (QoS 0) or room in the acknowledgement window
        (QoS 1/2), and the queued bytes under ``max_bytes`` (one message is always taken into an empty queue).
        True once closed: nothing more is queued then, whatever waits."""
        if self.closed:
            return True
        if self.queued_bytes >= self.max_bytes and not self.empty():
            return False
        if qos == 0:
            return self.qsize() < self.max_pending
        return not self._ack_waiters and self._has_room()

    def _room_freed(self) -> None:
        if self.on_room is not None:
            self.on_room()

    def _enqueue(self, item: Any) -> None:
        super().put_nowait(item)
        self.queued_bytes += message_size(item)
        if self.on_arrival is not None:
            self.on_arrival()

    def intercept(self, topic: str) -> "asyncio.Future[Any]":
        """Keep every QoS 0 message on ``topic`` out of the queue until :meth:`stop_intercepting`; the
        future returned gets the first one. For the listener's own probes: they never become jobs, and
        being QoS 0 they never enter the acknowledgement ledger."""
        caught: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._intercepted[topic] = caught
        return caught

    def stop_intercepting(self, topic: str) -> None:
        """Queue messages on ``topic`` again (its probe is over and unsubscribed)."""
        self._intercepted.pop(topic, None)

    def _caught(self, item: Any) -> bool:
        caught = self._intercepted.get(getattr(item, "topic", ""))
        if caught is None:
            return False
        if not caught.done():
            caught.set_result(item)
        return True

    # -- QoS 1/2 ---------------------------------------------------------------------------------

    def offer(self, item: Any, acknowledge: Callable[[], None]) -> "Optional[asyncio.Future[None]]":
        """Queue an acknowledged message without waiting: ``acknowledge`` is called when its
        acknowledgement may go out (at once without ``hold_acks``, else when it is released).

        When there is no room yet (or earlier messages wait for it), the message's turn is reserved now,
        so it keeps its arrival order, and the future returned is done once the message is queued.
        Cancel that future (the connection ended) and the message is neither queued nor acknowledged.
        None when the message was queued at once.
        """
        if self.closed or self._ack_waiters or not self._has_room():
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._ack_waiters.append(turn)
            turn.add_done_callback(lambda _: self._take_turn(turn, item, acknowledge))
            return turn
        self._admit(item, acknowledge)
        return None

    def _take_turn(self, turn: "asyncio.Future[None]", item: Any, acknowledge: Callable[[], None]) -> None:
        if turn.cancelled():
            return  # never given its place (``_wake_putters`` skips it)
        self._reserved -= 1
        self._admit(item, acknowledge)

    def _admit(self, item: Any, acknowledge: Callable[[], None]) -> None:
        if not self.hold_acks:
            self._enqueue(item)
            acknowledge()
            return
        entry = _Entry(acknowledge)
        self._ledger.append(entry)
        self._tickets[id(item)] = entry
        self._enqueue(item)

    async def put(self, item: Any) -> None:
        """Queue an acknowledged message once there is room; with ``hold_acks``, return only once its
        acknowledgement is released. The caller (amqtt) acknowledges it when this returns.

        Waiters are served strictly first come, first served, so messages keep their arrival order.
        Cancelled (the connection ended), nothing is released for this message; its entry stays in the
        ledger until its job settles it, so later messages are still released in order.
        """
        released: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def release() -> None:
            if not released.done():
                released.set_result(None)

        turn = self.offer(item, release)
        if turn is not None:
            await turn  # cancelled with this task: nothing is queued (unless its turn had come: then it is)
        await released

    def _has_room(self) -> bool:
        if self.hold_acks:
            return len(self._ledger) + len(self._recording) + self._reserved < self.max_pending
        return self.qsize() + self._reserved < self.window

    def _wake_putters(self) -> None:
        # One waiter per free place, each with the place reserved for it (no thundering herd, no overtaking).
        while self._ack_waiters and not self.closed and self._has_room():
            waiter = self._ack_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._reserved += 1
        self._room_freed()

    def _settle(self, entry: _Entry) -> None:
        entry.settled = True
        ledger = self._ledger
        released = False
        while ledger and ledger[0].settled:
            head = ledger.popleft()
            released = True
            if self.barrier is not None:
                self._recording.append(head)
            else:
                head.on_release()
        if not released:
            return
        if self._recording and self._releaser is None:
            self._releaser = asyncio.get_running_loop().create_task(self._release_recorded(self.barrier))
        self._wake_putters()

    async def _release_recorded(self, barrier: Optional[Callable[[], Awaitable[None]]]) -> None:
        """Release the settled messages in order, each run once ``barrier`` passed after it settled."""
        try:
            while self._recording:
                covered = len(self._recording)  # settled before the barrier was asked: covered by it
                delay = BARRIER_RETRY[0]
                while barrier is not None:
                    try:
                        await barrier()
                        break
                    except Exception as exc:  # the store reports it; keep the acknowledgements until it recovers
                        if self.closed:  # stopping (or stopped): these stay unacknowledged, the broker redelivers them
                            logger.debug("Acknowledgements withheld at stop: the job store did not record them (%s)", exc)
                            return
                        logger.debug("Acknowledgements held: the job store is not recorded yet (%s)", exc)
                        await asyncio.sleep(delay)
                        delay = min(2 * delay, BARRIER_RETRY[1])
                for _ in range(covered):
                    self._recording.popleft().on_release()
                self._wake_putters()
        finally:
            self._releaser = None

    async def released(self) -> None:
        """Return once the settled messages waiting for the barrier are released."""
        releaser = self._releaser
        if releaser is not None:
            await asyncio.shield(releaser)

    @property
    def unacknowledged(self) -> int:
        """Messages queued or processed whose acknowledgement is still held back (``hold_acks``)."""
        return len(self._ledger) + len(self._recording)

    # -- taking ----------------------------------------------------------------------------------

    def get_nowait(self) -> Any:
        item = super().get_nowait()
        self.queued_bytes -= message_size(item)
        if not self.hold_acks:
            self._wake_putters()
        else:
            self._room_freed()
        return item

    def take(self) -> Any:
        """The next message, or None when the queue is empty."""
        if self.empty():
            return None
        return self.get_nowait()

    def peek(self, count: int) -> List[Any]:
        """The next ``count`` queued messages at most, oldest first, left in the queue."""
        return list(itertools.islice(self._queue, max(0, count)))  # type: ignore[attr-defined]

    def ticket(self, message: Any) -> Optional[Ticket]:
        """The acknowledgement of a message just taken (None when nothing is held back for it)."""
        entry = self._tickets.pop(id(message), None)
        return None if entry is None else Ticket(self, entry)

    def drain(self) -> List[Any]:
        """Take every queued message (stopping): they stay unacknowledged."""
        taken: List[Any] = []
        while not self.empty():
            message = self.get_nowait()
            self._tickets.pop(id(message), None)
            taken.append(message)
        return taken

    def close(self) -> None:
        """Accept no more acknowledged messages (they stay unacknowledged, with the broker)."""
        self.closed = True
        self._room_freed()
