"""The run loop: connect (with backoff), consume with backpressure, reconnect, drain and stop.

``Runner.run()`` owns the connection lifecycle; each message goes to the :class:`~Listener.pipeline.message_pipeline.Pipeline`
with the processor ``run()`` was given. It moves the shared :class:`~Listener.core.run_state.RunState` along:
``idle → connecting → running → draining → stopped`` (``running → connecting`` again when a connection is lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Set, Tuple

from ..config.settings import EventListenerConfig
from ..core.backoff import backoff_delay
from ..core.run_state import RunState, State
from ..core.tasks import start_task
from ..jobs.records import JobInfo
from ..jobs.store import JobStoreError
from ..jobs.tracking import JobTracker
from ..mqtt.client import BrokerRefusedConnection
from ..mqtt.connection import BrokerConnection, ClientSlot
from ..mqtt.delivery_queue import Ticket
from ..mqtt.publisher import Publisher
from ..ops.drops import DropReporter
from ..ops.events import EventSink
from ..ops.metrics import ListenerMetrics
from ..processing.containment import cancel, cancelled_by_listener
from ..processing.processors import Processor
from .message_pipeline import Pipeline

__all__ = ["RepeatedFailures", "Runner", "State", "backoff_delay"]

logger = logging.getLogger("Listener.event_listener")

_MAX_CLEANUP_PERIOD = 60.0
#: Queued messages whose payloads are decoded with the one taken, when a backlog is taken one message at a time.
DECODE_AHEAD = 15
#: Seconds stopping waits for the durable job store to record what finished, before acknowledging it.
ACKS_RELEASED_TIMEOUT = 5.0
#: Seconds after which a connection failure logged at WARNING, and failing the same way since, is logged again.
FAILURE_REMINDER_INTERVAL = 300.0


class RepeatedFailures:
    """Which failed connection attempts to log at WARNING: the first one with a given reason, and then the
    same again only as a reminder, every ``remind_every`` seconds; the others at DEBUG.

    A broker that closes every CONNECT, or that is down, fails each retry the same way: one clear line
    says so, instead of one identical line per attempt.
    """

    def __init__(self, remind_every: float = FAILURE_REMINDER_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.remind_every = remind_every
        self._clock = clock
        self._warned: Dict[str, float] = {}  # reason -> when it was last logged at WARNING

    def level(self, reason: str) -> int:
        """The level to log this failure at."""
        now = self._clock()
        warned = self._warned.get(reason)
        if warned is not None and now - warned < self.remind_every:
            return logging.DEBUG
        self._warned = {reason: now}
        return logging.WARNING

    def reset(self) -> None:
        """A connection succeeded: the next failure is news again."""
        self._warned.clear()


class Runner:
    """Runs the listener's connections until stopped; see the module docstring."""

    def __init__(self, config: EventListenerConfig, endpoint: str, slot: ClientSlot, filters: Sequence[Tuple[str, int]],
                 publisher: Publisher, events: EventSink, metrics: ListenerMetrics, tracker: JobTracker,
                 pipeline: Pipeline, run_state: RunState) -> None:
        self._config = config
        self._endpoint = endpoint
        self._slot = slot
        self._filters = filters
        self._publisher = publisher
        self._events = events
        self._metrics = metrics
        self._tracker = tracker
        self._pipeline = pipeline
        self._finishing = pipeline.finishing
        self._run = run_state
        self._processor: Optional[Processor] = None
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.ready = asyncio.Event()
        #: Set when :meth:`run` returns.
        self.finished = asyncio.Event()
        self._connection: Optional[BrokerConnection] = None
        self._consumer: Optional["asyncio.Task[None]"] = None
        self._carried: Set["asyncio.Task[None]"] = set()  # consumers of lost connections finishing their job
        self._in_flight: Set["asyncio.Task[None]"] = set()
        self._inline_jobs = 0
        self._slot_freed = asyncio.Event()
        self._grace_timer: Optional[asyncio.TimerHandle] = None
        self._drops = DropReporter(metrics, events, config.max_pending_messages)
        #: ``ack_policy = "after_recording"``: jobs the store holds unfinished are resumed (see :meth:`_resume_orphans`).
        self._resumes_orphans = config.ack_policy == "after_recording"
        self._resumer: Optional["asyncio.Task[None]"] = None
        self._resume_waiting = 0  # resumed jobs waiting for a slot: the consumer takes no message meanwhile

    @property
    def state(self) -> State:
        """Where :meth:`run` is."""
        return self._run.state

    @property
    def active(self) -> bool:
        """True from :meth:`run` until it returns."""
        return self._run.active

    @property
    def in_flight(self) -> int:
        """Jobs running, plus results awaiting their acknowledgement."""
        return len(self._in_flight) + self._inline_jobs + len(self._finishing)

    # -- stopping --------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`run` to drain and return (thread-safe); before :meth:`run`, it returns at once."""
        loop = self.loop
        if not self.active or loop is None or loop.is_closed():
            self._run.stop_requested.set()  # applies to the next run
            return
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._on_stop()
        else:
            loop.call_soon_threadsafe(self._on_stop)

    def _on_stop(self) -> None:
        if self._run.stop_requested.is_set() or not self.active:
            return
        self._run.stop_requested.set()
        self._run.state = State.DRAINING
        self._slot_freed.set()
        current = self._slot.current
        if current is not None:
            current.close_intake()
        self._grace_timer = asyncio.get_running_loop().call_later(self._config.shutdown_grace_period, self.cancel_jobs)

    def stop_now(self) -> None:
        """Stop without waiting for the grace period: what runs is cancelled."""
        self.stop()
        self.cancel_jobs()

    def cancel_jobs(self) -> None:
        """Cancel what is still running (the grace period is over, or a second signal came)."""
        if self._consumer is not None and not self._consumer.done():
            cancel(self._consumer)
        for task in list(self._in_flight) + list(self._carried):
            cancel(task)

    # -- running ---------------------------------------------------------------------------------

    async def run(self, prepare: Callable[[], Awaitable[None]], processor: Optional[Processor]) -> None:
        """Run ``processor`` on each message until stopped (``prepare`` first: checks and start-up the caller
        needs inside the run).

        Raises:
            RuntimeError: already running.
            ConnectionError: see :meth:`EventListener.run`.
        """
        if self.active:
            raise RuntimeError("EventListener is already running")
        self.loop = asyncio.get_running_loop()
        self._run.state = State.CONNECTING
        stop_before_start = self._run.stop_requested.is_set()
        self._run.stop_requested, self.finished, self._slot_freed = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self._tracker.job_finished = asyncio.Event()
        if stop_before_start:
            self._run.stop_requested.set()
        self._processor = processor
        cleanup = asyncio.create_task(self._cleanup_periodically(), name=f"listener[{self._config.client_id}].cleanup")
        try:
            await prepare()
            self._note_ack_policy()
            await self._serve()
        finally:
            cleanup.cancel()
            await self._stop_resuming()
            await self._wind_down()
            if self._connection is not None:
                with contextlib.suppress(asyncio.TimeoutError):  # recorded jobs are acknowledged before the DISCONNECT
                    await asyncio.wait_for(self._connection.adapter.acks_released(), ACKS_RELEASED_TIMEOUT)
                await asyncio.sleep(0)  # acknowledgements just released go out before the DISCONNECT
                await self._connection.close()
            if self._grace_timer is not None:
                self._grace_timer.cancel()
                self._grace_timer = None
            self._run.state = State.STOPPED
            self._run.stop_requested.clear()  # a stop() between runs applies to the next one
            self.finished.set()
            logger.info("Listener stopped")

    async def _serve(self) -> None:
        """Connect, consume until the connection drops, reconnect with backoff; until stopped."""
        attempt = 0
        started = False
        failures = RepeatedFailures()
        while not self._run.stop_requested.is_set():
            adapter = self._slot.for_new_connection()
            adapter.on_drop(self._drops.record)
            if self._tracker.store.persistent:
                adapter.hold_acks_until(self._tracker.store.durable)
            connection = self._connection = BrokerConnection(adapter, self._config, self._endpoint, self._filters)
            try:
                if not await self._unless_stopped(connection.open()):
                    return
            except BrokerRefusedConnection:
                raise
            except ConnectionError as exc:
                if self._run.stop_requested.is_set():
                    return
                attempt += 1
                retries = self._config.reconnect_retries
                if not self._config.auto_reconnect or 0 <= retries < attempt:
                    if attempt > 1:
                        raise ConnectionError(f"{exc} (gave up after {attempt} attempts)") from None
                    raise
                delay = backoff_delay(attempt, float(self._config.reconnect_max_interval))
                await self._events.log(failures.level(str(exc)), "connection_retry",
                                       "Connecting failed (%s); retry %d in %.1f s", exc, attempt, delay, publish=False)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._run.stop_requested.wait(), delay)
                continue
            attempt = 0
            failures.reset()
            if not self._run.stop_requested.is_set():
                self._run.state = State.RUNNING
            self.ready.set()
            await self._flush_outbox()  # what was kept during the outage (connection_down first)
            if not started:
                started = True
                await self._events.log(logging.INFO, "listener_started", "Listener started on %s, topic %r",
                                       self._endpoint, self._config.topic)
                if self._resumes_orphans:
                    self._resumer = asyncio.create_task(self._resume_orphans(),
                                                        name=f"listener[{self._config.client_id}].resumer")
            else:
                self._metrics.reconnects += 1
                await self._events.log(logging.INFO, "connection_up", "Reconnected to %s", self._endpoint)
            try:
                await self._consume_until_disconnected(connection)
            finally:
                self.ready.clear()
            if self._run.stop_requested.is_set():
                return
            self._run.state = State.CONNECTING
            self._metrics.connection_losses += 1
            await connection.close(disconnect_client=False)
            # Published once the connection is back (kept by the publisher meanwhile).
            await self._events.log(logging.WARNING, "connection_down", "Connection to %s lost", self._endpoint)
            if not self._config.auto_reconnect:
                raise ConnectionError(f"Connection to MQTT broker at {self._endpoint} lost")

    async def _unless_stopped(self, work: Awaitable[Any]) -> bool:
        """Await ``work`` unless stop() comes first (then cancel it): True when it finished."""
        task = asyncio.ensure_future(work)
        stopping = asyncio.ensure_future(self._run.stop_requested.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
        if task.cancelled():
            return False
        task.result()
        return True

    async def _consume_until_disconnected(self, connection: BrokerConnection) -> None:
        """Consume until the connection ends; return as soon as it does, even in the middle of a job.

        A consumer still running a job then is *carried*: it finishes that job (its result is kept
        for the next connection) and takes nothing more; the next consumer waits for it, then takes
        over the same delivery queue. So the loss is counted, logged and repaired at once.
        """
        consumer = start_task(self._consume(connection, tuple(self._carried)),
                              name=f"listener[{self._config.client_id}].consumer")
        self._consumer = consumer
        lost = asyncio.ensure_future(connection.wait_closed())
        try:
            await asyncio.wait({consumer, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._consumer = None
            if not consumer.done() and lost.done():
                self._carried.add(consumer)
                consumer.add_done_callback(self._carried.discard)
            for task in (consumer, lost):
                if not task.done() and task not in self._carried:
                    cancel(task)
                    await asyncio.wait({task})
        if consumer.done() and not consumer.cancelled():
            consumer.result()

    async def _consume(self, connection: BrokerConnection, predecessors: Tuple["asyncio.Task[None]", ...] = ()) -> None:
        """Take messages and handle them until the connection ends or stop() was called.

        After stop(), messages already acknowledged (queued) are still handled; nothing more is taken.
        ``predecessors``: consumers of earlier connections still finishing a job, awaited first.
        """
        if predecessors:
            await asyncio.wait(predecessors)
        limit = self._config.max_concurrent_jobs
        batches = self._pipeline.batch_size(self._processor) > 1
        while True:
            # Backpressure: N jobs running (resumed ones too, then even with N = 1), or resumed jobs go first.
            while len(self._in_flight) >= limit or self._resume_waiting:
                self._slot_freed.clear()
                await self._slot_freed.wait()
            message = await connection.next_message()
            if message is None:
                return
            ticket = connection.ticket(message)
            if limit == 1:
                if batches and connection.adapter.queued:
                    batch = await self._take_batch(connection, (message.data, message.topic, ticket))
                    if len(batch) > 1:
                        self._inline_jobs += len(batch)
                        try:
                            await self._contained_batch(batch)
                        finally:
                            self._inline_jobs -= len(batch)
                            if self._resume_waiting:
                                self._slot_freed.set()
                        continue
                self._inline_jobs += 1
                if connection.adapter.queued and not self._pipeline.decoded_ahead(message.data):
                    # A backlog taken one at a time: this message's payload and those queued behind it decoded together.
                    self._pipeline.decode_ahead([message.data, *(queued.data for queued in connection.peek(DECODE_AHEAD))])
                try:
                    await self._contained(message.data, message.topic, ticket)
                finally:
                    self._inline_jobs -= 1
                    if self._resume_waiting:
                        self._slot_freed.set()
            else:
                task = start_task(self._contained(message.data, message.topic, ticket))
                self._in_flight.add(task)
                task.add_done_callback(self._job_done)

    async def _take_batch(self, connection: BrokerConnection,
                          first: Tuple[Any, str, Optional[Ticket]]) -> List[Tuple[Any, str, Optional[Ticket]]]:
        """``first`` and the messages already queued behind it, up to the pipeline's batch size."""
        batch = [first]
        size = self._pipeline.batch_size(self._processor)
        while len(batch) < size and connection.adapter.queued:
            message = await connection.next_message()
            if message is None:
                break
            batch.append((message.data, message.topic, connection.ticket(message)))
        return batch

    async def _contained_batch(self, batch: List[Tuple[Any, str, Optional[Ticket]]]) -> None:
        """:meth:`_contained` for several queued messages handled together (``max_concurrent_jobs = 1``)."""
        try:
            await self._pipeline.process_batch(batch, self._processor)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug of ours must cost these messages, not the listener
            logger.exception("Unexpected error while handling %d messages", len(batch))
        for _, _, ticket in batch:
            if ticket is not None:
                ticket.settle()

    def _job_done(self, task: "asyncio.Task[None]") -> None:
        self._in_flight.discard(task)
        self._slot_freed.set()

    async def _contained(self, payload: Any, topic: str, ticket: Optional[Ticket]) -> None:
        """Handle one message; settle its ticket unless cancelled (a job cut short stays unacknowledged)."""
        try:
            await self._pipeline.process(payload, self._processor, topic, pipelined=True, ticket=ticket)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug of ours must cost one message, not the listener
            logger.exception("Unexpected error while handling a message on %r", topic)
        if ticket is not None:
            ticket.settle()

    # -- jobs resumed from the job store (ack_policy = "after_recording") ------------------------

    async def _resume_orphans(self) -> None:
        """Run the jobs :meth:`~Listener.jobs.store.JobStore.orphans` hands over: once the listener is first ready,
        then every ``orphan_scan_interval`` seconds if the store has one. Each takes a slot as a message's
        job would (``max_concurrent_jobs``), ahead of the messages that wait."""
        interval = self._tracker.store.orphan_scan_interval
        failing = False
        while not self._run.stop_requested.is_set():
            try:
                found = await self._tracker.store.orphans()
                failing = False
            except JobStoreError as exc:
                found = []
                if not failing:  # once until it works again: the store reports its own failures too
                    await self._events.log(logging.ERROR, "job_store_error", "Cannot look for unfinished jobs: %s", exc)
                failing = True
            if found:
                await self._start_resumed(found)
            if interval is None:
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._run.stop_requested.wait(), interval)

    async def _start_resumed(self, jobs: List[JobInfo]) -> None:
        """Start each job as a task once a slot is free. Those not started when stopping are recorded as cut
        short (with their input): the next start resumes them."""
        limit = self._config.max_concurrent_jobs
        left = list(reversed(jobs))
        self._resume_waiting += 1
        try:
            while left and not self._run.stop_requested.is_set():
                if len(self._in_flight) + self._inline_jobs >= limit:
                    self._slot_freed.clear()
                    await self._slot_freed.wait()
                    continue
                task = start_task(self._contained_resume(left.pop()))
                self._in_flight.add(task)
                task.add_done_callback(self._job_done)
        finally:
            self._resume_waiting -= 1
            self._slot_freed.set()
            for job in left:
                await self._tracker.interrupt_job(job.job_id)

    async def _contained_resume(self, job: JobInfo) -> None:
        try:
            await self._pipeline.resume(job, self._processor)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug of ours must cost one job, not the listener
            logger.exception("Unexpected error while resuming job %s", job.job_id)

    async def _stop_resuming(self) -> None:
        resumer, self._resumer = self._resumer, None
        if resumer is not None and not resumer.done():
            cancel(resumer)
            await asyncio.wait({resumer})

    def _note_ack_policy(self) -> None:
        """Once per run: with ``after_processing``, what one slow job holds up (acknowledgements go out in order)."""
        config = self._config
        if (config.ack_policy == "after_processing" and config.max_concurrent_jobs > 1 and self._slot.owned
                and any(qos for _, qos in self._filters)):
            logger.info("ack_policy = \"after_processing\": a job that runs long holds back the acknowledgements of "
                        "every later QoS 1/2 message (they go out in arrival order), and once the broker's in-flight "
                        "window is full it sends no more; bound it with job_timeout, or use ack_policy = "
                        "\"after_recording\" with a durable job_store")

    # -- winding down ----------------------------------------------------------------------------

    async def _wind_down(self) -> None:
        """After the loop: process what was received (bounded by the grace period), report what was
        not, and send or report the publications kept during an outage."""
        connection = self._connection
        if (connection is not None and self._run.stop_requested.is_set() and connection.adapter.queued
                and connection.adapter.closed):
            # Stopped while disconnected: what the lost connection received and acknowledged is still processed.
            consumer = self._consumer = start_task(self._consume(connection, tuple(self._carried)))
            try:
                await asyncio.wait({consumer})
            finally:
                self._consumer = None
        await self._finish_in_flight()
        self._report_unprocessed()
        await self._settle_outbox()

    async def _finish_in_flight(self) -> None:
        """Wait for concurrent jobs still running and results awaiting acknowledgement (bounded)."""
        waiting: Set["asyncio.Future[Any]"] = set(self._in_flight) | set(self._finishing) | set(self._carried)
        if not waiting:
            return
        _, pending = await asyncio.wait(waiting, timeout=self._config.shutdown_grace_period)
        for task in pending:
            if not cancelled_by_listener(task):  # once is enough: a job that survives it is abandoned soon after
                cancel(task)
        if pending:
            await asyncio.wait(pending)

    def _report_unprocessed(self) -> None:
        """Log the received messages stop() dropped unprocessed (the grace period ran out), saying what
        becomes of them: lost, or redelivered by the broker."""
        current = self._slot.current
        dropped = current.drop_queued() if current is not None else []
        if not dropped:
            return
        qos0 = sum(1 for message in dropped if not getattr(message, "qos", 0))
        held = len(dropped) - qos0 if current is not None and current.holds_acks else 0
        acknowledged = len(dropped) - qos0 - held
        parts, lost = self._fate_of_dropped(qos0, held, acknowledged)
        # ERROR only for a real loss. A held message the broker redelivers is the designed hand-over of a
        # backlog at stop (the next session runs it): INFO, not an alert.
        logger.log(logging.ERROR if lost else logging.INFO, "Dropped %d received message(s) unprocessed when "
                   "the listener stopped (shutdown_grace_period %g s): %s", len(dropped),
                   self._config.shutdown_grace_period, "; ".join(parts))

    def _fate_of_dropped(self, qos0: int, held: int, acknowledged: int) -> Tuple[List[str], bool]:
        """For :meth:`_report_unprocessed`: one phrase per kind of message dropped, and whether any is lost."""
        config = self._config
        parts: List[str] = []
        lost = bool(qos0)
        if qos0:
            parts.append(f"{qos0} QoS 0, lost")
        if held and config.cleansession:
            lost = True
            parts.append(f"{held} QoS 1/2 not acknowledged, lost with the broker's session (cleansession=True)")
        elif held:
            parts.append(f"{held} QoS 1/2 not acknowledged, which the broker redelivers to the next session of "
                         f"client id {config.client_id!r}")
        # With "after_recording" a queued message is not recorded yet: its acknowledgement is held like any other.
        if acknowledged:
            lost = True
            parts.append(f"{acknowledged} QoS 1/2 acknowledged (ack_policy = {config.ack_policy!r}), lost")
        return parts, lost

    async def _flush_outbox(self) -> None:
        """Send what was kept during an outage; report each publication given up on as a publish error."""
        for dropped in (await self._publisher.flush()).dropped:
            publication = dropped.publication
            await self._events.publication_dropped(publication.topic, len(publication.payload), publication.qos,
                                                   dropped.job_id, dropped.reason)

    async def _settle_outbox(self) -> None:
        """Send what was kept during an outage if the connection is up; report what is lost."""
        if not self._publisher.pending:
            return
        if self._slot.is_connected():
            await self._flush_outbox()
        lost = self._publisher.discard()
        if lost:
            logger.error("%d result/event publication(s) could not be sent to %s before stopping", lost, self._endpoint)

    async def _cleanup_periodically(self) -> None:
        period = min(float(self._config.job_cleanup_interval), _MAX_CLEANUP_PERIOD)
        while True:
            await asyncio.sleep(period)
            await self._tracker.cleanup_old_jobs()
