"""Outgoing publications: checked, bounded in flight, bounded in time, kept across a lost connection.

amqtt 0.12 loses track of PUBACKs when thousands of QoS 1/2 publications are outstanding, hangs a
publish made after its connection closed, and fails one made while the connection drops. So every
publication here waits for a slot (at most ``max_in_flight`` QoS 1/2 ones at a time), is bounded by
``timeout`` (QoS 0 ones on a watched connection excepted: the liveness watchdog bounds them), and one
that fails because the connection is down is kept (up to ``outbox_limit``) and sent again by
:meth:`Publisher.flush` after the listener reconnects.

A broker may also refuse a QoS 1/2 publication in its acknowledgement (a reason code of 0x80 or more,
:class:`~Listener.mqtt.packets.PublicationRefused`): never counted as delivered. A refusal that passes with
time (0x97 quota exceeded: too many QoS 2 messages in flight from this client; 0x91 packet identifier in
use) is tried again after a short back-off, within ``timeout``; any other is reported at once.

Brokers answer some publications by dropping the connection. Those whose topic is the reason are
refused before sending (:func:`~Listener.core.topics.topic_name_error`); for the rest (a packet above the
broker's size limit, an ACL that disconnects) a kept publication whose sending was cut short by a lost
connection ``MAX_STRIKES`` times is dropped and reported, so it can never cause a reconnect loop.

A QoS 1/2 publication the broker has not acknowledged within ``timeout`` on a connection that is still
open (a broker shutting down stops answering before it closes) can only be sent again on a new
connection (MQTT 3.1.1, 4.4): where the connection's ``drop_stalled`` drops it, it is kept like one cut short
by a lost connection, instead of being reported lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Deque, Dict, List, NamedTuple, Optional, Protocol

from ..core.backoff import backoff_delay
from ..core.deadlines import bounded
from ..core.eager import EagerFuture, add_follower
from ..core.serialization import event_json_bytes
from ..core.topics import PublishOptions, topic_name_error
from ..errors import ListenerError
from ..ops.metrics import ListenerMetrics
from ..processing.processors import describe_exception
from .amqtt_boundary import AmqttClientBase
from .packets import ConnectionEnded, PublicationRefused

__all__ = ["ConnectionLost", "Dropped", "Flushed", "MAX_STRIKES", "NotConnected", "Publication", "Publisher",
           "PublishingConnection", "RefusedTopic"]

logger = logging.getLogger("Listener.event_listener")


@dataclass(frozen=True, slots=True)
class Publication:
    """One message the listener publishes, as ``client.publish(topic, payload, qos, retain)`` takes it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


class Dropped(NamedTuple):
    """A kept publication given up on: whose result it was (None for an event) and why."""

    publication: Publication
    job_id: Optional[str]
    reason: str


class Flushed(NamedTuple):
    """What :meth:`Publisher.flush` did: how many kept publications went out, and those given up on."""

    sent: int
    dropped: List[Dropped]


class PublishingConnection(Protocol):
    """What the publisher needs of the listener's connection (:class:`~Listener.mqtt.connection.ClientSlot`)."""

    @property
    def client(self) -> Any:
        """The client to publish with."""

    def is_connected(self) -> bool:
        """Whether publishing can work now."""

    def watched(self) -> bool:
        """Whether a liveness watchdog guards the connection (then QoS 0 publications need no timer)."""

    def drop_stalled(self, waited: float) -> bool:
        """Drop a connection a QoS 1/2 publication got no acknowledgement on for ``waited`` seconds, so that
        it goes out again on the next one; False when this connection is not one the listener drops."""


#: Attempts cut short by a lost connection after which a kept publication is dropped and reported.
MAX_STRIKES = 2
#: Reason codes of a refusal that passes with time: quota exceeded, packet identifier in use.
PASSING_REFUSALS = frozenset((0x97, 0x91))
#: First and longest wait (seconds) before a publication refused for a passing reason is tried again.
REFUSAL_BACKOFF = (0.05, 1.0)


class NotConnected(ListenerError, ConnectionError):
    """A publication was attempted while the listener has no connection (nothing was sent)."""


class ConnectionLost(ListenerError, ConnectionError):
    """The connection ended while a publication was being sent or awaited its acknowledgement."""


class RefusedTopic(ListenerError, ValueError):
    """The topic is one brokers disconnect for (see ``topic_name_error``): the publication is never sent."""


class _FirstAttempt(NamedTuple):
    """A publication's first attempt, made directly: what it failed with, and what its handling needs."""

    error: Optional[BaseException]
    #: ``connection_losses`` when it was sent (a higher count now: it went out on an earlier connection).
    losses: int
    #: The loop's time at which a refusal is no longer tried again (``timeout`` after it was sent).
    give_up: float


class _DirectSend(EagerFuture):
    """A QoS 1/2 publication written directly, followed by callbacks; this future is its answer, what
    :meth:`Publisher.deliver` would return. Its acknowledgement is awaited at most ``timeout`` seconds (then
    ``timed_out``), and no longer once the caller cancels this future (without a callback on every answer that is
    not a cancellation). Eager: the job's end follows the answer in the same turn of the loop."""

    __slots__ = ("publisher", "publication", "job_id", "acked", "first", "timed_out", "_deadlines")

    def __init__(self, publisher: Publisher, publication: Publication, job_id: Optional[str],
                 acked: "asyncio.Future[None]", first: _FirstAttempt, deadlines: "_Deadlines") -> None:
        super().__init__(loop=deadlines.loop)
        self.publisher = publisher
        self.publication = publication
        self.job_id = job_id
        self.acked = acked
        self.first = first
        self.timed_out = False
        self._deadlines = deadlines
        deadlines.add(self)
        add_follower(acked, self._ended)

    def time_out(self) -> None:
        """No acknowledgement within ``timeout``: stop waiting for it."""
        self.timed_out = True
        self.acked.cancel()

    def cancel(self, msg: Any = None) -> bool:
        if not super().cancel(msg):
            return False
        self.acked.cancel()
        return True

    def _ended(self, acked: "asyncio.Future[None]") -> None:
        self._deadlines.ended()
        if not acked.cancelled():
            acked.exception()  # retrieved, also when nobody waits for the answer any more
        self.publisher._direct_ended(self)


class _Deadlines:
    """The direct publications of one event loop awaiting their acknowledgement, oldest first, and one timer: that
    of the oldest. They all wait ``timeout`` from when they were sent, so their deadlines come in the order they
    were sent (a timer each would cost a heap entry per publication). Were ``timeout`` lowered meanwhile, a
    publication sent after it would time out no earlier than those sent before it."""

    __slots__ = ("loop", "_waiting", "_timer")

    #: Seconds a deadline may be taken for due early (the loop may run a timer a little before its time).
    EARLY = 0.001

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._waiting: Deque[_DirectSend] = deque()
        self._timer: Optional[asyncio.TimerHandle] = None

    def add(self, send: _DirectSend) -> None:
        self._waiting.append(send)
        if self._timer is None:
            self._timer = self.loop.call_at(send.first.give_up, self._due)

    def ended(self) -> None:
        """A publication's wait ended: forget the oldest ones that are over."""
        waiting = self._waiting
        while waiting and waiting[0].acked.done():
            waiting.popleft()

    def _due(self) -> None:
        self._timer = None
        now = self.loop.time() + self.EARLY
        waiting = self._waiting
        while waiting:
            oldest = waiting[0]
            if not oldest.acked.done():
                if oldest.first.give_up > now:
                    break
                oldest.time_out()
            waiting.popleft()
        if waiting:
            self._timer = self.loop.call_at(waiting[0].first.give_up, self._due)


def _chain(source: "asyncio.Future[Optional[str]]", target: "asyncio.Future[Optional[str]]") -> None:
    """``target`` gets ``source``'s outcome; cancelling ``target`` cancels ``source``."""

    def copy(done: "asyncio.Future[Optional[str]]") -> None:
        if target.done():
            return
        if done.cancelled():
            target.cancel()
        elif done.exception() is not None:
            target.set_exception(done.exception())  # type: ignore[arg-type]
        else:
            target.set_result(done.result())

    source.add_done_callback(copy)
    target.add_done_callback(lambda done: source.cancel() if done.cancelled() else None)


class _Kept:
    """A publication waiting for the connection to return."""

    __slots__ = ("publication", "job_id", "strikes")

    def __init__(self, publication: Publication, job_id: Optional[str], strikes: int) -> None:
        self.publication = publication
        self.job_id = job_id
        self.strikes = strikes


def _cancelled_by_caller() -> bool:
    """Whether the running task was asked to stop (vs. a CancelledError leaking out of amqtt).

    amqtt cancels its PUBACK/PUBCOMP waiters when the connection ends; that CancelledError reaches
    the publisher although nobody cancelled it. Python 3.10 cannot tell them apart: assume the caller.
    """
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return cancelling is None or cancelling() > 0


class Publisher:
    """Sends publications through the listener's current client (``connection.client``).

    ``endpoint`` names the broker in errors; ``options`` gives an event's QoS and retain flag by topic.
    """

    def __init__(self, connection: PublishingConnection, metrics: ListenerMetrics, endpoint: str,
                 options: PublishOptions, timeout: float = 10.0, max_in_flight: int = 20,
                 outbox_limit: int = 10_000) -> None:
        self._connection = connection
        self._metrics = metrics
        self._endpoint = endpoint
        self._options = options
        self.timeout = timeout
        self.outbox_limit = outbox_limit
        self._slots = asyncio.Semaphore(max_in_flight)
        self._outbox: Deque[_Kept] = deque()
        self._deadlines: Optional[_Deadlines] = None

    @property
    def pending(self) -> int:
        """Publications kept for after the connection returns."""
        return len(self._outbox)

    def keep(self, publication: Publication, job_id: Optional[str] = None) -> None:
        """Keep ``publication`` for :meth:`flush` (no limit is applied: for the listener's own use and tests)."""
        self._outbox.append(_Kept(publication, job_id, 0))

    async def publish(self, topic: str, payload: bytes, qos: int, retain: bool, *, slot_held: bool = False,
                      first: Optional[_FirstAttempt] = None) -> None:
        """Publish now (``slot_held``: the caller already holds one of the QoS 1/2 slots; ``first``: a first
        attempt went out directly and failed, so this takes over from that failure).

        Raises:
            RefusedTopic: the topic is not one brokers accept; nothing was sent.
            NotConnected: there is no connection; nothing was sent.
            ConnectionLost: the connection ended before the publication was through.
            asyncio.TimeoutError: the broker did not take it within ``timeout`` seconds (at QoS 1/2, when
                ``drop_stalled`` did not drop the connection; else ConnectionLost).
            PublicationRefused: the broker refused it (for a passing reason: still, after ``timeout`` seconds).
            Exception: whatever the client raised.
        """
        if first is None:
            problem = topic_name_error(topic)
            if problem:
                raise RefusedTopic(f"Topic {topic!r} {problem}")
            if not self._connection.is_connected():
                raise NotConnected(f"Not connected to MQTT broker at {self._endpoint}")
        losses = self._metrics.connection_losses if first is None else first.losses
        try:
            if first is not None and first.error is not None and not isinstance(first.error, PublicationRefused):
                raise first.error
            if qos:
                await self._send_until_taken(topic, payload, qos, retain, slot_held, first)
            else:
                await self._send(self._connection.client, topic, payload, qos, retain, slot_held)
        except asyncio.CancelledError:
            if _cancelled_by_caller():
                raise
            raise ConnectionLost(f"Connection to {self._endpoint} lost before the broker took it") from None
        except ConnectionEnded:
            raise ConnectionLost(f"Connection to {self._endpoint} lost before the broker took it") from None
        except PublicationRefused:
            raise
        except Exception as exc:
            # Connected again by now, but on another connection than the one it went out on: amqtt then fails
            # the old wait in its own way (a PUBACK timeout, an AttributeError of its torn-down session).
            if self._connection.is_connected() and self._metrics.connection_losses == losses:
                if not (qos and isinstance(exc, asyncio.TimeoutError) and self._connection.drop_stalled(self.timeout)):
                    raise
                raise ConnectionLost(f"No acknowledgement from {self._endpoint} within {self.timeout:g} s: "
                                     "connection dropped, to send it again on the next one") from None
            raise ConnectionLost(
                f"Connection to {self._endpoint} lost before the broker took it ({describe_exception(exc)})") from None
        self._metrics.publishes += 1

    async def _send_until_taken(self, topic: str, payload: bytes, qos: int, retain: bool, slot_held: bool,
                                first: Optional[_FirstAttempt]) -> None:
        """Send a QoS 1/2 publication again while the broker refuses it for a passing reason, within ``timeout``
        (from the ``first`` attempt's start, when it was refused)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.timeout if first is None else first.give_up
        refused = first.error if first is not None and isinstance(first.error, PublicationRefused) else None
        refusals = 0
        while True:
            if refused is None:
                try:
                    await self._send(self._connection.client, topic, payload, qos, retain, slot_held)
                    return
                except PublicationRefused as exc:
                    refused = exc
            refusals += 1
            delay = backoff_delay(refusals, REFUSAL_BACKOFF[1], base=REFUSAL_BACKOFF[0])
            if refused.reason_code not in PASSING_REFUSALS or loop.time() + delay > give_up:
                raise refused
            self._metrics.publishes_refused += 1
            refused = None
            await asyncio.sleep(delay)
            if not self._connection.is_connected():
                raise NotConnected(f"Not connected to MQTT broker at {self._endpoint}")

    async def _send(self, client: Any, topic: str, payload: bytes, qos: int, retain: bool, slot_held: bool) -> None:
        if qos and slot_held:
            await bounded(client.publish(topic, payload, qos, retain), self.timeout)
        elif qos:
            async with self._slots:
                await bounded(client.publish(topic, payload, qos, retain), self.timeout)
        elif self._connection.watched():
            # QoS 0 only waits for the socket buffer; when a liveness watchdog guards the connection
            # it aborts a dead one, which ends that wait, so a timer per message would buy nothing.
            await client.publish(topic, payload, qos, retain)
        else:
            await bounded(client.publish(topic, payload, qos, retain), self.timeout)

    async def deliver_in_background(self, publication: Publication,
                                    job_id: Optional[str] = None) -> "asyncio.Future[Optional[str]]":
        """Wait for a free QoS 1/2 slot, then :meth:`deliver` without waiting for the acknowledgement.

        The returned future gives :meth:`deliver`'s answer. Publications started one after another go
        out in that order; only the waits for their acknowledgements overlap.
        """
        await self._slots.acquire()
        try:
            direct = self._start_direct(publication, job_id)
        except BaseException:
            self._slots.release()
            raise
        if direct is not None:
            return direct
        return self._deliver_holding_slot(publication, job_id, None)

    def start_in_background_now(self, publication: Publication,
                                job_id: Optional[str] = None) -> "Optional[asyncio.Future[Optional[str]]]":
        """:meth:`deliver_in_background` without awaiting, where it needs no await: a slot free (and nobody waiting
        for one) and the publication written directly. None when it cannot: nothing was done (await that)."""
        slots = self._slots
        # locked(), without its generator over the waiters: a slot is free and nobody waits for one (a waiter that
        # was cancelled counts here, where locked() would not: then the slot is taken with an await, as it is).
        if slots._value <= 0 or slots._waiters:
            return None
        direct = self._start_direct(publication, job_id)
        if direct is not None:
            slots._value -= 1  # what acquire() does, without its await, when the semaphore is not locked
        return direct

    def _start_direct(self, publication: Publication, job_id: Optional[str]) -> "Optional[asyncio.Future[Optional[str]]]":
        """Write a QoS 1/2 publication now, holding a slot, and follow it with callbacks rather than a task (the
        common case); a failure is then handled by :meth:`deliver`, in a task. None where it cannot be written so
        (another client, no connection, a refused topic, a full socket buffer): :meth:`deliver` does it all. (The
        client writes nothing without a connection: ``start_publish`` answers None then.)"""
        if not publication.qos or topic_name_error(publication.topic):
            return None
        loop = asyncio.get_running_loop()
        started = loop.time()
        losses = self._metrics.connection_losses
        acked = self._write_now(publication)
        if acked is None:
            return None
        deadlines = self._deadlines
        if deadlines is None or deadlines.loop is not loop:
            deadlines = self._deadlines = _Deadlines(loop)
        return _DirectSend(self, publication, job_id, acked, _FirstAttempt(None, losses, started + self.timeout),
                           deadlines)

    def send_now(self, publication: Publication) -> bool:
        """Write a QoS 0 publication at once where nothing needs awaiting: the listener's own watched connection
        (its liveness watchdog bounds a dead one), on a plain or TLS socket whose buffer is not full. True when it
        was sent (and counted); False when nothing was done: :meth:`deliver` it."""
        if (publication.qos or not self._connection.watched() or topic_name_error(publication.topic)
                or self._write_now(publication) is None):
            return False
        self._metrics.publishes += 1
        return True

    def hand_to_socket(self) -> None:
        """Hand what this turn of the event loop wrote directly to the socket now, not at the turn's end (what the
        kernel holds goes out even if the process is killed next)."""
        client = self._connection.client
        if isinstance(client, AmqttClientBase):
            client.flush_writes()

    def _write_now(self, publication: Publication) -> "Optional[asyncio.Future[None]]":
        """Write ``publication`` at once through the listener's own client (``start_publish``, which answers None when
        it cannot: no connection, websockets, a full socket buffer); its acknowledgement's future, or None when
        nothing was written (then :meth:`deliver` sends it the ordinary way and reports what fails there)."""
        client = self._connection.client
        if not isinstance(client, AmqttClientBase):
            return None
        try:
            return client.start_publish(publication.topic, publication.payload, publication.qos, publication.retain)
        except Exception:  # noqa: S110 - deliver() sends it again the ordinary way and reports what fails there
            return None

    def _direct_ended(self, send: "_DirectSend") -> None:
        """A direct publication's acknowledgement came, failed, or was given up on (see :class:`_DirectSend`)."""
        acked = send.acked
        if send.done():  # the caller gave up on it (stopping ran out of grace)
            self._slots.release()
            return
        if not acked.cancelled() and acked.exception() is None:
            self._slots.release()
            self._metrics.publishes += 1
            send.set_result(None)
            return
        if acked.cancelled():
            error: BaseException = asyncio.TimeoutError() if send.timed_out else ConnectionLost(
                f"Connection to {self._endpoint} lost before the broker took it")
        else:
            error = acked.exception()  # type: ignore[assignment]
        first = send.first._replace(error=error)
        _chain(self._deliver_holding_slot(send.publication, send.job_id, first), send)

    def _deliver_holding_slot(self, publication: Publication, job_id: Optional[str],
                              first: Optional[_FirstAttempt]) -> "asyncio.Future[Optional[str]]":
        """:meth:`deliver` in a task of its own, which frees the slot the caller holds when it ends (also when it
        is cancelled before it started)."""
        task = asyncio.ensure_future(self.deliver(publication, slot_held=True, job_id=job_id, first=first))
        task.add_done_callback(lambda _: self._slots.release())
        return task

    async def deliver(self, publication: Publication, *, slot_held: bool = False,
                      job_id: Optional[str] = None, first: Optional[_FirstAttempt] = None) -> Optional[str]:
        """Publish, or keep the publication for after a reconnect when the connection is (or went) down.

        Returns None when it was sent or kept, else why it is lost (also counted as a publish error).
        A publication whose topic is refused is never sent nor kept.
        """
        try:
            await self.publish(publication.topic, publication.payload, publication.qos, publication.retain,
                               slot_held=slot_held, first=first)
            return None
        except asyncio.CancelledError:
            raise
        except RefusedTopic as exc:
            reason = str(exc)
        except Exception as exc:
            if isinstance(exc, (NotConnected, ConnectionLost)) or not self._connection.is_connected():
                if len(self._outbox) < self.outbox_limit:
                    self._outbox.append(_Kept(publication, job_id, int(isinstance(exc, ConnectionLost))))
                    return None
                reason = f"not connected, and {self.outbox_limit} publications are already waiting"
            else:
                reason = describe_exception(exc) if not isinstance(exc, asyncio.TimeoutError) else "timed out"
        self._metrics.publish_errors += 1
        return reason

    async def send_event(self, topic: str, body: Dict[str, Any]) -> None:
        """Publish an event body (kept during an outage; a failure is only logged at DEBUG)."""
        qos, retain = self._options(topic)
        problem = await self.deliver(Publication(topic, event_json_bytes(body), qos, retain))
        if problem is not None:
            logger.debug("Could not publish %s event to %s: %s", body.get("event", "error"), topic, problem)

    async def flush(self) -> Flushed:
        """Send the kept publications in order; returns how many were sent, and those given up on.

        Stops when the connection is down or goes down. A publication whose attempts failed
        ``MAX_STRIKES`` times (each cut short by a lost connection, or refused while connected) is
        dropped and counted as a publish error (the caller reports it): it cannot be retried forever.
        """
        sent = 0
        dropped: List[Dropped] = []
        while self._outbox:
            kept = self._outbox[0]
            try:
                publication = kept.publication
                await self.publish(publication.topic, publication.payload, publication.qos, publication.retain)
            except asyncio.CancelledError:
                raise
            except NotConnected:
                break
            except Exception as exc:
                kept.strikes += 1
                if kept.strikes < MAX_STRIKES:
                    break
                self._outbox.popleft()
                self._metrics.publish_errors += 1
                dropped.append(Dropped(kept.publication, kept.job_id,
                                       f"given up after {kept.strikes} attempts, each failed or followed by a lost "
                                       f"connection (last: {_failure(exc)})"))
                continue
            self._outbox.popleft()
            self._metrics.publishes_retried += 1
            sent += 1
        return Flushed(sent, dropped)

    def discard(self) -> int:
        """Give up on every kept publication (the listener is stopping); returns how many were lost."""
        lost = len(self._outbox)
        self._outbox.clear()
        self._metrics.publish_errors += lost
        return lost


def _failure(exc: BaseException) -> str:
    if isinstance(exc, ConnectionLost):
        return "connection lost before the broker acknowledged it"
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return describe_exception(exc)
