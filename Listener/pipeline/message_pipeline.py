"""One message end to end: decode, filter the listener's own messages, admit (duplicate policy), run the
processor, publish the result, record the outcome. Nothing here knows about connections or reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from typing import Any, Awaitable, Callable, Dict, List, NamedTuple, Optional, Sequence, Set, Tuple, Union

from ..config.checks import own_topics, subscription_filters
from ..config.parser import SafeConfigParser
from ..config.settings import MAX_RETRY_DELAY, EventListenerConfig
from ..core.backoff import backoff_delay
from ..core.run_state import RunState
from ..core.serialization import ResultEncodingError, to_json_bytes
from ..core.topics import PublishOptions, topic_name_error
from ..jobs.admission import Admission
from ..jobs.records import ACTIVE_STATUSES, JobInfo, JobStatus
from ..jobs.store import JobStoreError
from ..jobs.tracking import JobTracker
from ..mqtt.delivery_queue import Ticket
from ..mqtt.publisher import Publication, Publisher, RefusedTopic
from ..ops.events import ErrorType, EventSink
from ..ops.metrics import ListenerMetrics
from ..processing.batches import MAX_BATCH, Channel, Halt, Outcome, run_in_order
from ..processing.processors import (JobTimeoutError, Processor, call_processor, describe_exception, is_async_callable,
                                     settle_result)
from ..processing.workers import ThreadWorkers
from ..results import ReturnType
from .finishing import Finishing
from .own_messages import OwnMessages
from .payloads import Payload, RejectedMessage, decode_payload_now, decode_payload_off_loop, resolve_job_id

__all__ = ["Pipeline"]

logger = logging.getLogger("Listener.event_listener")

#: Longest wait between tries to admit a job into a store that cannot be reached.
STORE_RETRY = 5.0
#: Longest wait between tries to admit a job active in another worker (BUSY).
BUSY_RECHECK = 0.3
_COMPLETED, _FAILED, _DUPLICATE = JobStatus.COMPLETED.value, JobStatus.FAILED.value, JobStatus.DUPLICATE.value


class _Admitted(NamedTuple):
    """A job admitted into a batch, waiting for its turn."""

    job_id: str
    data: Dict[str, Any]
    topic: str
    ticket: Optional[Ticket]


class MessageObserver:
    """Hooks that follow a message through :meth:`Pipeline.process`; each does nothing here.

    ``EventListener(config, observer=...)`` passes one to the pipeline: :class:`Listener.testing.TestListener`
    uses it to tell which job, publications and failure each test message led to. The hooks run on the
    event loop, in the task handling the message, so a context variable set in :meth:`started` is seen by
    the tasks the pipeline starts for that message.
    """

    def started(self, payload: Any) -> Any:
        """A message arrived: return a token to follow it with (passed to :meth:`finished`), or None not to."""
        return None

    def admitted(self, job_id: str) -> None:
        """A job id is about to be admitted (or found a duplicate)."""

    def finished(self, token: Any, acknowledging: Set["asyncio.Future[None]"], failure: Optional[BaseException]) -> None:
        """The message followed with ``token`` is handled; ``acknowledging``: its QoS 1/2 result, still awaiting the
        broker's acknowledgement; ``failure``: what escaped the pipeline (a cancellation), else None."""


class Pipeline:
    """Handles one message at a time per call; calls may overlap (``max_concurrent_jobs`` > 1).

    ``finishing`` holds the jobs whose QoS 1/2 result awaits the broker's acknowledgement (the job
    becomes COMPLETED then). ``run_state`` tells whether ``run()`` is going on: only then does admission
    wait while the store is full, and does a job waiting to be retried give up when ``stop()`` comes.
    """

    def __init__(self, config: EventListenerConfig, parser: SafeConfigParser, tracker: JobTracker,
                 publisher: Publisher, events: EventSink, metrics: ListenerMetrics, workers: ThreadWorkers,
                 run_state: RunState, options: PublishOptions, observer: Optional[MessageObserver] = None) -> None:
        self._config = config
        self._parser = parser
        self._tracker = tracker
        self._publisher = publisher
        self._events = events
        self._metrics = metrics
        self._workers = workers
        self._own = OwnMessages(frozenset(own_topics(config)), subscription_filters(config), metrics)
        self._options = options
        self._run = run_state
        self._observer = observer
        self.finishing: Set["asyncio.Future[None]"] = set()
        #: Payloads decoded ahead of their turn (see :meth:`decode_ahead`), by ``id``: (the payload, its fields or
        #: why it was rejected).
        self._decoded: Dict[int, Tuple[Payload, Union[Dict[str, Any], RejectedMessage]]] = {}
        #: ``ack_policy = "after_recording"``: a ticket settles once its job is admitted, not when it finishes.
        self._settle_on_admission = config.ack_policy == "after_recording"
        #: A store whose records outlive the process (see :meth:`_out_before_recorded`).
        self._result_before_record = tracker.store.persistent

    # -- publishing ------------------------------------------------------------------------------

    async def send_message(self, topic: str, data: Any, qos: Optional[int] = None, retain: Optional[bool] = None,
                           *, result: bool = False) -> None:
        """Publish ``data`` (str is UTF-8 encoded, bytes sent as they are, anything else as JSON).

        Only a ``result`` is remembered as the listener's own: a message sent to a topic its
        subscription covers otherwise comes back as a job, as in the first release.
        """
        if isinstance(data, str):
            payload = data.encode("utf-8")
        elif isinstance(data, (bytes, bytearray)):
            payload = bytes(data)
        else:
            payload = to_json_bytes(data)
        if qos is None or retain is None:
            default_qos, default_retain = self._options(topic)
            qos = default_qos if qos is None else qos
            retain = default_retain if retain is None else retain
        if result:
            self._own.remember(topic, payload)
        await self._publisher.publish(topic, payload, qos, retain)

    # -- one message -----------------------------------------------------------------------------

    async def process(self, data: Union[Dict[str, Any], Payload], func: Optional[Processor], topic: Optional[str],
                      pipelined: bool = False, ticket: Optional[Ticket] = None) -> Any:
        """Process one message as a job; returns what the processor returned (None if rejected or skipped).

        ``pipelined`` (the run loop): a QoS 1/2 result's acknowledgement is awaited in the background,
        so the next job can start meanwhile; the job becomes COMPLETED once the result is acknowledged.
        ``ticket`` (the message's held-back acknowledgement) is then deferred until that happens; otherwise
        the caller settles it when this returns.
        """
        observer = self._observer
        token = observer.started(data) if observer is not None else None
        if observer is None or token is None:
            return await self._process(data, func, topic, pipelined, ticket)
        acknowledging = set(self.finishing)
        failure: Optional[BaseException] = None
        try:
            return await self._process(data, func, topic, pipelined, ticket)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            observer.finished(token, set(self.finishing) - acknowledging, failure)

    async def _process(self, data: Union[Dict[str, Any], Payload], func: Optional[Processor], topic: Optional[str],
                       pipelined: bool, ticket: Optional[Ticket]) -> Any:
        if topic is not None and self._own.is_own(None if isinstance(data, dict) else data, topic):
            return None
        self._metrics.messages_received += 1
        try:
            if isinstance(data, dict):
                fields = dict(data)
            else:
                decoded = self._decode_now(data)
                fields = decoded if decoded is not None else await decode_payload_off_loop(  # large: in a thread
                    data, self._parser, self._config.max_payload_bytes)
            job_id = resolve_job_id(fields, self._config.job_id_field, self._config.allow_job_id_generation)
        except RejectedMessage as rejection:
            await self._rejected(rejection, topic)
            return None
        if topic is not None:
            fields["_topic"] = topic
        created = job_id not in self._tracker.store.jobs and self._created_now(job_id, fields, topic, ticket)
        if not created and not await self.admit(job_id, fields, topic, ticket):
            return None
        return await self._execute(job_id, fields, func, topic, pipelined, ticket)

    def decode_ahead(self, payloads: Sequence[Payload]) -> None:
        """Decode the small ``payloads`` of messages still queued, for :meth:`process` to find at each one's turn.

        Decoding has no effect but its result, and CPython parses a run of documents in a row much faster than
        one between every two jobs (as much as 12 % of an ``async def`` job at QoS 0). What is decoded is only
        kept: a payload that fails to decode is rejected at its turn (reported then, not decoded again); one
        never taken (stopping dropped it) is forgotten with the next run of payloads."""
        decoded: Dict[int, Tuple[Payload, Union[Dict[str, Any], RejectedMessage]]] = {}
        for payload in payloads:
            try:
                fields = decode_payload_now(payload, self._parser, self._config.max_payload_bytes)
            except RejectedMessage as rejection:
                decoded[id(payload)] = (payload, rejection)
                continue
            if fields is not None:
                decoded[id(payload)] = (payload, fields)
        self._decoded = decoded

    def decoded_ahead(self, payload: Payload) -> bool:
        """Whether :meth:`decode_ahead` decoded ``payload`` (this very object) and its turn has not come yet."""
        kept = self._decoded.get(id(payload))
        return kept is not None and kept[0] is payload

    def _decode_now(self, payload: Payload) -> Optional[Dict[str, Any]]:
        """:func:`decode_payload_now`, or what :meth:`decode_ahead` found for this very payload (raised, if rejected)."""
        kept = self._decoded.pop(id(payload), None)
        if kept is None or kept[0] is not payload:
            return decode_payload_now(payload, self._parser, self._config.max_payload_bytes)
        if isinstance(kept[1], RejectedMessage):
            raise kept[1]
        return kept[1]

    async def _rejected(self, rejection: RejectedMessage, topic: Optional[str]) -> None:
        self._metrics.messages_rejected += 1
        await self._events.error(rejection.job_id, rejection.error_type, rejection.message, topic)
        await self._events.log(logging.WARNING, "payload_rejected", "Rejected message on %r: %s: %s", topic,
                               rejection.error_type, rejection.message, job_id=rejection.job_id, topic=topic)

    # -- several queued messages (see Listener.processing.batches) ------------------------------------------

    def batch_size(self, func: Optional[Processor]) -> int:
        """How many queued messages the run loop may hand to :meth:`process_batch` at once (1: none)."""
        if (func is None or self._config.max_concurrent_jobs != 1 or self._config.job_timeout is not None
                or is_async_callable(func) or getattr(func, "__listener_inline__", False)):
            return 1
        return MAX_BATCH

    async def process_batch(self, messages: Sequence[Tuple[Payload, str, Optional[Ticket]]],
                            func: Optional[Processor]) -> None:
        """Process queued messages in order, as :meth:`process` (pipelined) would one after another, but
        running the admitted jobs of a plain ``def`` processor several per hand-off to a worker thread.

        Anything but a fresh job (a rejected message, a duplicate, a full job store) first finishes the
        jobs gathered before it, so that events, duplicates and results come out as one by one.
        The caller settles the tickets once this returns (those of QoS 1/2 results are deferred).
        """
        lane: List[_Admitted] = []

        async def finish_gathered() -> None:
            if lane:
                jobs = lane[:]
                lane.clear()
                await self._run_batch(jobs, func)

        try:
            for payload, topic, ticket in messages:
                if self._own.is_own(payload, topic):
                    self._settle_early(ticket)
                    continue
                self._metrics.messages_received += 1
                try:
                    decoded = decode_payload_now(payload, self._parser, self._config.max_payload_bytes)
                    fields = decoded if decoded is not None else await decode_payload_off_loop(  # large: in a thread
                        payload, self._parser, self._config.max_payload_bytes)
                    job_id = resolve_job_id(fields, self._config.job_id_field, self._config.allow_job_id_generation)
                except RejectedMessage as rejection:
                    self._settle_early(ticket)
                    await finish_gathered()
                    await self._rejected(rejection, topic)
                    continue
                fields["_topic"] = topic
                if job_id in self._tracker.store.jobs:  # held here: a duplicate, or a job to run again: as one by one
                    await finish_gathered()
                elif self._created_now(job_id, fields, topic, ticket):
                    lane.append(_Admitted(job_id, fields, topic, ticket))
                    continue
                if await self.admit(job_id, fields, topic, ticket, finish_gathered if lane else None):
                    lane.append(_Admitted(job_id, fields, topic, ticket))
            await finish_gathered()
        except asyncio.CancelledError:  # stopping: jobs gathered but not handed over yet are cut short too
            await self._cut_short(lane)
            raise

    async def _run_batch(self, jobs: List[_Admitted], func: Optional[Processor]) -> None:
        """Run admitted jobs in order, several per hand-off; publish and record each as :meth:`_execute`
        the moment its processor returns, while the worker runs the next one.

        A job is RUNNING while its processor runs: the first job of a batch from the hand-off, each
        next one from the report of the job before it (the worker starts it right then); the jobs
        after it stay PENDING. Each outcome is recorded with the true duration the worker measured.
        A job that raised goes through :meth:`_execute`'s failure and retry path before the jobs
        after it run. If the wait is cancelled (the grace period of ``stop()`` ran out), jobs not yet
        started are not run; every job whose outcome was not recorded yet (the one running included)
        is recorded as cut short and its message left unacknowledged, to run again when redelivered.
        """
        handed = 0  # jobs[:handed] are in _execute's hands, which records their cancellation itself
        alone = func is None
        try:
            while handed < len(jobs):
                rest = jobs[handed:]
                if len(rest) == 1 or alone:
                    for job in rest:
                        handed += 1
                        await self._execute(job.job_id, job.data, func, job.topic, True, job.ticket)
                    return
                if self._tracker.start_attempt_now(rest[0].job_id) is None:
                    await self._tracker.start_attempt(rest[0].job_id)
                halt, channel = Halt(), Channel(asyncio.get_running_loop())
                work = [(contextvars.copy_context(), job.data, job.job_id) for job in rest]
                try:
                    abandon = self._workers.start(run_in_order, func, work, halt, channel)
                except Exception as exc:  # the workers are shut down: the first job fails, as it would alone
                    now = time.perf_counter()
                    handed += 1
                    await self._execute(rest[0].job_id, rest[0].data, func, rest[0].topic, True, rest[0].ticket,
                                        Outcome(None, exc, now, now), True)
                    continue
                try:
                    taking = True
                    while taking:
                        for index, outcome in await channel.take():
                            if outcome is None:  # the worker stopped without a report: the rest run one at a time
                                alone, taking = True, False
                                break
                            job = rest[index]
                            handed += 1
                            finished = self._finished_now(job, outcome)
                            if finished is not True:
                                prepared = finished if isinstance(finished, Publication) else None
                                await self._execute(job.job_id, job.data, func, job.topic, True, job.ticket, outcome,
                                                    True, prepared)
                            if outcome.error is not None or index == len(rest) - 1:
                                taking = False
                                break
                            if self._tracker.start_attempt_now(rest[index + 1].job_id) is None:  # it started on the worker
                                await self._tracker.start_attempt(rest[index + 1].job_id)
                except asyncio.CancelledError:
                    halt.set = True
                    abandon()
                    raise
        except asyncio.CancelledError:
            await self._cut_short(jobs[handed:])
            raise

    def _created_now(self, job_id: str, data: Dict[str, Any], topic: Optional[str], ticket: Optional[Ticket]) -> bool:
        """:meth:`admit` for an id the store does not hold, where the store creates the job without an await (and no
        observer follows it): True once created. False when nothing was created: then :meth:`admit` it."""
        if self._observer is not None:
            return False
        self._tracker.job_finished.clear()  # as admit() does before looking
        if self._tracker.store.admit_now(job_id, data, topic, self._config.duplicate_action) is not Admission.CREATED:
            return False  # FULL (nothing changed: admit() waits for room), or the store must be awaited
        self._settle_early(ticket)
        return True

    async def _cut_short(self, jobs: Sequence[_Admitted]) -> None:
        """Record admitted jobs that stopping cut short (run or not): unacknowledged, to run again."""
        for job in jobs:
            if job.ticket is not None:
                job.ticket.withhold()
            await self._cancelled(job.job_id, job.topic, None)

    async def admit(self, job_id: str, data: Dict[str, Any], topic: Optional[str], ticket: Optional[Ticket] = None,
                    before_waiting: Optional[Callable[[], Awaitable[None]]] = None) -> bool:
        """Create the job, or apply the duplicate policy; while the store is full of active jobs, wait
        (in the run loop) or drop the job. While the job is active in another worker whose lease is alive
        (BUSY, a shared store), wait until it settles or its owner's lease lapses, the message unacknowledged
        (until stop(): then the broker keeps it). ``before_waiting`` (jobs gathered for a batch, which could
        not finish while this waits) is awaited first, once, and the admission tried again."""
        if self._observer is not None:
            self._observer.admitted(job_id)
        tracker = self._tracker
        warned = busy = False
        while True:
            # Cleared before looking: a job finishing after this look sets it again.
            tracker.job_finished.clear()
            try:
                outcome: Optional[Admission] = tracker.store.admit_now(job_id, data, topic, self._config.duplicate_action)
                if outcome is None:
                    outcome = await tracker.store.admit(job_id, data, topic, self._config.duplicate_action)
            except JobStoreError as exc:
                if not self._run.active:
                    raise
                outcome = await self._admit_when_reachable(job_id, data, topic, exc)
            if outcome is Admission.CREATED:
                self._settle_early(ticket)
                return True
            if outcome is Admission.DUPLICATE:
                self._settle_early(ticket)
                self._acknowledge_with_held_job(job_id, ticket)
                break
            if outcome is None:  # stop() came while the store was unreachable: the broker keeps the message
                if ticket is not None:
                    ticket.withhold()
                return False
            if before_waiting is not None:
                await before_waiting()
                before_waiting = None
                continue
            if outcome is Admission.BUSY:
                if not busy:
                    busy = True
                    await self._events.log(logging.INFO, "job_busy", "Job %s is active in another worker; waiting "
                                           "until it finishes or that worker's lease lapses", job_id,
                                           job_id=job_id, topic=topic, publish=False)
                if await self._stopped_within(BUSY_RECHECK):
                    if ticket is not None:  # never acknowledged as a duplicate: that job may yet be lost
                        ticket.withhold()
                    return False
                continue
            if not self._run.active:
                await self._events.log(logging.WARNING, "job_store_full", "Job store full (%d active jobs); job %s dropped",
                                       self._config.max_jobs_in_memory, job_id, job_id=job_id, topic=topic)
                return False
            if not warned:
                warned = True
                await self._events.log(logging.WARNING, "job_store_full",
                                       "Job store full of active jobs; waiting to admit job %s", job_id,
                                       job_id=job_id, topic=topic)
            recheck = tracker.store.full_recheck_interval
            if recheck is None:
                await tracker.job_finished.wait()
            else:  # jobs of other processes free slots without telling this one: look again soon
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(tracker.job_finished.wait(), recheck)
        self._metrics.jobs_finished[_DUPLICATE] += 1
        if self._config.duplicate_action == "error":
            await self._events.error(job_id, ErrorType.DUPLICATE_JOB, f"Job {job_id} was already received", topic)
            level = logging.WARNING
        else:  # the manual: skip ignores duplicates "silently" (INFO, not mirrored at the default log_topic_level)
            level = logging.INFO
        await self._events.log(level, "duplicate_job", "Duplicate job %s not processed", job_id,
                               job_id=job_id, status=_DUPLICATE, topic=topic)
        return False

    def _acknowledge_with_held_job(self, job_id: str, ticket: Optional[Ticket]) -> None:
        """A duplicate of a job still active here (say, its message redelivered after a reconnect) is acknowledged
        only once that job finished: acknowledged now, a crash before the job ends would lose it. Cut short
        at stop, the job leaves this message unacknowledged too."""
        if ticket is None or self._settle_on_admission:
            return
        held = self._tracker.store.jobs.get(job_id)
        if held is not None and held.status in ACTIVE_STATUSES:
            ticket.defer(self._tracker.settled(job_id))

    def _settle_early(self, ticket: Optional[Ticket]) -> None:
        """With ``ack_policy = "after_recording"``, settle a message's ticket now that the store holds its job (or
        it needs none): its acknowledgement goes out once the store's ``durable()`` passed, in arrival order."""
        if ticket is not None and self._settle_on_admission:
            ticket.settle()

    async def resume(self, job: JobInfo, func: Optional[Processor]) -> Any:
        """Run a job taken over from the job store (:meth:`~Listener.jobs.store.JobStore.orphans`): admitted and
        acknowledged by an earlier run that never finished it. As :meth:`process` from the processor on: publish
        the result, record the outcome (there is no message, so no ticket)."""
        await self._events.log(logging.INFO, "job_resumed", "Job %s resumed from the job store (attempt %d)",
                               job.job_id, job.attempts + 1, job_id=job.job_id, topic=job.topic)
        data = dict(job.input_data or {})
        return await self._execute(job.job_id, data, func, job.topic, True)

    async def _admit_when_reachable(self, job_id: str, data: Dict[str, Any], topic: Optional[str],
                                    failure: JobStoreError) -> Optional[Admission]:
        """The store could not be reached (``failure``): the job waits, reported once (an error event naming
        the store), its admission retried with backoff; its message stays unacknowledged until its record
        is written. None when stop() came meanwhile; raises when the run loop ended meanwhile."""
        text = f"{failure}: job {job_id} waits until the store records it (its message stays unacknowledged)"
        await self._events.error(job_id, ErrorType.PROCESSING_ERROR, text, topic)
        await self._events.log(logging.ERROR, "job_store_error", "%s", text, job_id=job_id, topic=topic)
        failures = 1
        while True:
            if await self._stopped_within(backoff_delay(failures, STORE_RETRY, base=0.2)):
                return None
            self._tracker.job_finished.clear()
            try:
                return await self._tracker.store.admit(job_id, data, topic, self._config.duplicate_action)
            except JobStoreError:
                if not self._run.active:
                    raise
                failures += 1

    async def _execute(self, job_id: str, data: Dict[str, Any], func: Optional[Processor], topic: Optional[str],
                       pipelined: bool, ticket: Optional[Ticket] = None, first: Optional[Outcome] = None,
                       first_started: bool = False, prepared: Optional[Publication] = None) -> Any:
        """Run the processor for an admitted job, publish its result, record the outcome.

        A processor that raises or times out is run again after a backoff, up to ``max_retries`` times;
        the job stays RUNNING meanwhile. A result that cannot be published is not retried.
        ``first``: the first attempt already ran in a batch (``first_started``: and was recorded);
        ``prepared``: the publication of its result, already made (see :meth:`_finished_now`).
        """
        started = time.perf_counter() if first is None else first.started
        attempt = 0
        try:
            while True:
                attempt += 1
                ran, first = first, None
                if (ran is None or not first_started) and self._tracker.start_attempt_now(job_id) is None:
                    await self._tracker.start_attempt(job_id)
                try:
                    if ran is not None:
                        if ran.error is not None:
                            raise ran.error
                        result = ran.result
                        if result is not None and type(result) is not dict:  # else nothing to settle: no await
                            result = await settle_result(result)
                    else:
                        result = None if func is None else await call_processor(
                            func, data, job_id, workers=self._workers, timeout=self._config.job_timeout)
                    break
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:  # noqa: B036 - a processor's failure, whatever it is, fails only its job
                    if attempt > self._config.max_retries or self._run.stop_is_requested():
                        raise
                    if not await self._wait_to_retry(job_id, exc, topic, attempt):
                        await self._cancelled(job_id, topic, "stop() came while it waited to be retried")
                        if ticket is not None:
                            ticket.withhold()
                        return None
            publication = self.publication_for(result, job_id) if prepared is None else prepared
        except asyncio.CancelledError:
            await self._cancelled(job_id, topic, None)
            raise
        except BaseException as exc:  # noqa: B036 - a failure of the processor or of its result fails only its job
            await self._fail(job_id, exc, topic, time.perf_counter() - started, attempt)
            return None
        if publication is None:
            if not self._completed_now(job_id, result, started):
                await self._complete(job_id, result, topic, started, None, None)
            return result
        self._own.remember(publication.topic, publication.payload)
        in_background = bool(publication.qos) and pipelined
        try:
            if in_background:
                sending = await self._publisher.deliver_in_background(publication, job_id)
            elif self._publisher.send_now(publication):
                problem = None
            else:
                problem = await self._publisher.deliver(publication, job_id=job_id)
        except asyncio.CancelledError:  # stopping cut in before the result went out: the job runs again
            await self._cancelled(job_id, topic, None)
            raise
        if not in_background:
            self._out_before_recorded(publication)
            if problem is not None or not self._completed_now(job_id, result, started):
                await self._complete(job_id, result, topic, started, publication, problem)
            return result
        self._follow(job_id, result, topic, started, publication, sending, ticket)
        return result

    def _follow(self, job_id: str, result: Any, topic: Optional[str], started: float, publication: Publication,
                sending: "asyncio.Future[Optional[str]]", ticket: Optional[Ticket]) -> None:
        """Record the job once its result, on its way in the background, is acknowledged (see :class:`Finishing`);
        its message's acknowledgement waits for that."""
        finishing = Finishing(sending, lambda: self._completed_now(job_id, result, started),
                              lambda: self._complete(job_id, result, topic, started, publication, sending),
                              asyncio.get_running_loop())
        self.finishing.add(finishing)
        finishing.add_eager_callback(self.finishing.discard)
        if ticket is not None:
            ticket.defer(finishing)

    async def _complete(self, job_id: str, result: Any, topic: Optional[str], started: float,
                        publication: Optional[Publication],
                        sent: "Union[None, str, asyncio.Future[Optional[str]]]") -> None:
        """Report a publication problem if there was one, then mark the job COMPLETED."""
        try:
            problem = await sent if isinstance(sent, asyncio.Future) else sent
        except asyncio.CancelledError:  # stopping ran out of grace before the broker acknowledged the result
            # Not COMPLETED: the result may not have reached the broker. The message stays unacknowledged,
            # and the job runs again when it is redelivered.
            await self._cancelled(job_id, topic, None)
            raise
        if problem is not None and publication is not None:
            reason = f"Could not publish the result of job {job_id} to {publication.topic}: {problem}"
            await self._events.error(job_id, ErrorType.PUBLISH_ERROR, reason, topic)
            await self._events.log(logging.ERROR, "publish_failed", "%s", reason, job_id=job_id,
                                   status=_COMPLETED, topic=topic)
        await self._tracker.update_job_status(job_id, JobStatus.COMPLETED, result=result)
        elapsed = self._count_completed(started)
        if self._events.info_wanted():
            await self._events.log(logging.INFO, "job_completed", "Job %s completed", job_id, job_id=job_id,
                                   status=_COMPLETED, duration_ms=elapsed * 1000, topic=topic)

    def _finished_now(self, job: _Admitted, ran: Outcome) -> Union[bool, Publication]:
        """:meth:`_execute` for a batch job whose processor returned a dict or None, where nothing needs an await: its
        result written at once, and the job recorded COMPLETED (QoS 0) or followed until the broker has the result
        (QoS 1/2). True when it was finished so. Otherwise nothing was sent or recorded, and :meth:`_execute`
        finishes it: with the publication returned (made here: not made twice), or from the start (False)."""
        result = ran.result
        if ran.error is not None or (result is not None and type(result) is not dict):
            return False
        try:
            publication = self.publication_for(result, job.job_id)
        except Exception:  # noqa: BLE001 - _execute fails the job, and reports why
            return False
        # Each result is remembered once it was written: its echo can only be read in a later turn of the loop.
        if publication is not None and publication.qos:
            sending = self._publisher.start_in_background_now(publication, job.job_id)
            if sending is None:
                return publication
            self._own.remember(publication.topic, publication.payload)
            self._follow(job.job_id, result, job.topic, ran.started, publication, sending, job.ticket)
            return True
        if self._events.info_wanted() or self._tracker.store.lock.locked():
            return publication or False
        if publication is not None:
            if not self._publisher.send_now(publication):
                return publication
            self._own.remember(publication.topic, publication.payload)
        self._out_before_recorded(publication)
        self._tracker.update_job_status_now(job.job_id, JobStatus.COMPLETED, result=result)  # the lock is free
        self._count_completed(ran.started)
        return True

    def _out_before_recorded(self, publication: Optional[Publication]) -> None:
        """A QoS 0 result goes to the socket before its job is recorded COMPLETED in a store that outlives the
        process: written, it waits for the end of the loop's turn, while the store may commit at once (the SQLite
        writer thread, Redis). A kill in between would leave a job whose result never went out and whose
        redelivered message is a duplicate. (A QoS 1/2 result is recorded once the broker acknowledged it.)"""
        if self._result_before_record and publication is not None and not publication.qos:
            self._publisher.hand_to_socket()

    def _completed_now(self, job_id: str, result: Any, started: float) -> bool:
        """Record a job whose result went out COMPLETED, as :meth:`_complete` would, where that needs no await
        (no INFO event wanted, the store's lock free); False when it does (nothing was recorded)."""
        if self._events.info_wanted():
            return False
        if self._tracker.update_job_status_now(job_id, JobStatus.COMPLETED, result=result) is None:
            return False
        self._count_completed(started)
        return True

    def _count_completed(self, started: float) -> float:
        """Count a completed job in the metrics; its duration in seconds."""
        elapsed = time.perf_counter() - started
        self._metrics.jobs_finished[_COMPLETED] += 1
        self._metrics.observe_duration(elapsed)
        return elapsed

    async def _fail(self, job_id: str, exc: BaseException, topic: Optional[str], elapsed: float, attempt: int) -> None:
        """Record a job's failure (or timeout), publish the error event and the log event."""
        error_type, reason = self._reason(exc)
        await self._tracker.update_job_status(job_id, JobStatus.FAILED, error=reason)
        self._metrics.jobs_finished[_FAILED] += 1
        self._metrics.observe_duration(elapsed)
        text, fields = self._attempt_text(reason, attempt, None)
        await self._events.error(job_id, error_type, text, topic, **fields)
        await self._events.log(logging.ERROR, "job_failed", "Job %s failed: %s", job_id, text, job_id=job_id,
                               status=_FAILED, duration_ms=elapsed * 1000, topic=topic)

    async def _wait_to_retry(self, job_id: str, exc: BaseException, topic: Optional[str], attempt: int) -> bool:
        """Report a failed attempt and wait its backoff: True to run the job again, False if stop() came first."""
        delay = backoff_delay(attempt, MAX_RETRY_DELAY, base=self._config.retry_backoff)
        error_type, reason = self._reason(exc)
        text, fields = self._attempt_text(reason, attempt, delay)
        await self._events.error(job_id, error_type, text, topic, **fields)
        await self._events.log(logging.WARNING, "job_retry", "Job %s failed: %s", job_id, text, job_id=job_id,
                               status=JobStatus.RUNNING.value, topic=topic)
        if await self._stopped_within(delay):
            return False
        self._metrics.jobs_retried += 1
        return True

    async def _stopped_within(self, delay: float) -> bool:
        """Wait ``delay`` seconds; True as soon as ``stop()`` comes during ``run()`` (outside it, just wait)."""
        stopping = self._run.stopping
        if stopping is None:
            await asyncio.sleep(delay)
            return False
        try:
            await asyncio.wait_for(stopping.wait(), delay)
            return True
        except asyncio.TimeoutError:
            return False

    async def _cancelled(self, job_id: str, topic: Optional[str], why: Optional[str]) -> None:
        """Record a job ended by stop(): cancelled while it ran, or (``why``) before a retry."""
        await self._tracker.interrupt_job(job_id)
        self._metrics.jobs_finished[_FAILED] += 1
        if why is not None:
            await self._events.log(logging.WARNING, "job_failed", "Job %s cancelled: %s", job_id, why, job_id=job_id,
                                   status=_FAILED, topic=topic)

    def _reason(self, exc: BaseException) -> Tuple[ErrorType, str]:
        if isinstance(exc, JobTimeoutError):
            return ErrorType.TIMEOUT, str(exc)
        return ErrorType.PROCESSING_ERROR, self._events.redact(describe_exception(exc))

    def _attempt_text(self, reason: str, attempt: int, retry_in: Optional[float]) -> Tuple[str, Dict[str, Any]]:
        """The error message and the event's extra fields saying which attempt failed (none without retries)."""
        if not self._config.max_retries:
            return reason, {}
        of = self._config.max_retries + 1
        fields = {"attempt": attempt, "max_attempts": of, "will_retry": retry_in is not None}
        if retry_in is None:
            return f"{reason} (attempt {attempt} of {of})", fields
        return f"{reason} (attempt {attempt} of {of}; retrying in {retry_in:.2f} s)", fields

    def publication_for(self, result: Any, job_id: str) -> Optional[Publication]:
        """Where and how a processor's result is published; raises for results that cannot be."""
        if result is None:
            return None
        if isinstance(result, ReturnType):
            if result.job_id is None:
                result.job_id = job_id
            topic = result.topic or self._config.results_topic
            if result.qos not in (0, 1, 2) or isinstance(result.qos, bool):
                raise ValueError(f"ReturnType.qos must be 0, 1 or 2, got {result.qos!r}")
            qos, retain, body = int(result.qos), bool(result.retain), result.data
        else:
            topic = self._config.results_topic
            qos, retain = self._options(topic)
            body = result
        problem = topic_name_error(topic)
        if problem:  # brokers drop the connection for such a topic: fail the job instead
            raise RefusedTopic(f"Result topic {topic!r} {problem}")
        try:
            payload = to_json_bytes(body)
        except ResultEncodingError as exc:
            raise ResultEncodingError(f"Result of job {job_id} cannot be encoded as JSON: {exc}") from None
        return Publication(topic, payload, qos, retain)
