"""EventListener: receive TOML messages from MQTT, track each as a job, publish results as JSON.

The data flows one way: transport (amqtt) -> intake (decode, parse, job id) -> job store ->
processor -> publisher. This module composes those pieces; none of them imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import Counter
from types import TracebackType
from typing import Any, Awaitable, Dict, Iterable, List, Optional, Set, Tuple, Type, Union

from ._version import __version__
from .config import EventListenerConfig
from .config_checks import config_warnings, file_problems, own_topics, subscription_filters
from .containment import cancel
from .echoes import RecentPublications
from .events import ErrorType, error_event, log_event
from .intake import Payload, RejectedMessage, decode_payload_off_loop, generate_job_id, resolve_job_id
from .job_tracking import JobTracker
from .jobs import InsertOutcome, JobInfo, JobStatus
from .metrics import ListenerMetrics
from .processing import JobTimeoutError, Processor, call_processor, describe_exception
from .publisher import Publication, Publisher, RefusedTopic
from .redaction import redact
from .results import ReturnType, create_error_result, create_return_type
from .safe_config_parser import SafeConfigParser
from .serialization import ResultEncodingError, event_json_bytes, to_json_bytes
from .topics import filter_covers, topic_matches, topic_name_error
from .transport import (
    DEFAULT_CONNECT_TIMEOUT,
    AmqttClient,
    BrokerRefusedConnection,
    connection_error,
    create_client,
    endpoint_label,
    open_connection,
    secrets,
)
from .workers import ThreadWorkers

__all__ = [
    "EventListener",
    "EventListenerConfig",
    "JobInfo",
    "JobStatus",
    "ReturnType",
    "create_error_result",
    "create_return_type",
    "__version__",
]

logger = logging.getLogger("Listener.event_listener")

PUBLISH_TIMEOUT = 10.0
#: QoS 1/2 publications awaiting their acknowledgement at once (amqtt loses PUBACKs with thousands).
MAX_PUBLISHES_IN_FLIGHT = 64
DISCONNECT_TIMEOUT = 5.0
_MAX_CLEANUP_PERIOD = 60.0
_YIELD_EVERY = 64  # messages taken without the consumer waiting once, then it lets the loop run other tasks
_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR,
           "CRITICAL": logging.CRITICAL}


class EventListener(JobTracker):
    """MQTT Event Listener with job tracking capabilities.

    Args:
        config: every setting; see :class:`EventListenerConfig`.
        config_parser: the TOML parser used for message payloads (a default one when omitted).

    ``client`` is the amqtt ``MQTTClient`` (replaceable, e.g. by a mock in tests); ``jobs`` is the
    live job dict and ``job_lock`` the ``asyncio.Lock`` that guards it.
    """

    __version__ = __version__

    def __init__(self, config: EventListenerConfig, config_parser: Optional[SafeConfigParser] = None) -> None:
        if not isinstance(config, EventListenerConfig):
            raise TypeError(f"config must be an EventListenerConfig, got {type(config).__name__}")
        self.config = config
        self.config_parser = config_parser if config_parser is not None else SafeConfigParser(logger)
        self.logger = logger
        super().__init__(config.max_jobs_in_memory, config.job_cleanup_interval, keep_input=config.keep_job_input)
        self._client: Any = None
        self._owns_client = True
        self._processor: Optional[Processor] = None
        self._running = False
        self._run_active = False  # inside run(); ``_running`` alone may have been set by a user
        self._stop_requested = False
        self._draining = False
        self._busy = False
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._consumer: Optional[asyncio.Task[None]] = None
        self._taken_in_a_row = 0
        self._carried: Set[asyncio.Task[None]] = set()  # consumers of lost connections finishing their job
        self._pending_delivery: Optional[asyncio.Future[Any]] = None
        self._grace_timer: Optional[asyncio.TimerHandle] = None
        self._stopped: Optional[asyncio.Event] = None
        self._ready = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._in_flight: Set[asyncio.Task[None]] = set()
        self._finishing: Set[asyncio.Future[None]] = set()  # completed jobs awaiting their result's PUBACK
        self._signals: Tuple[int, ...] = ()
        self._http: Any = None
        self._log_threshold = _LEVELS[config.log_topic_level.upper()]
        self._secrets = secrets(config)
        self._publish_option_cache: Dict[str, Tuple[int, bool]] = {}
        self._own_topics = frozenset(own_topics(config))
        self._filters = subscription_filters(config)
        self._echo_topics: Dict[str, bool] = {}  # topic -> whether the subscription receives it back
        self._recent = RecentPublications()
        self._metrics = ListenerMetrics()
        self._workers = ThreadWorkers(config.max_concurrent_jobs, name=f"{config.client_id}-worker")
        self._publisher = Publisher(lambda: self.client, self._is_connected, self._metrics,
                                    lambda: endpoint_label(self.config), PUBLISH_TIMEOUT, MAX_PUBLISHES_IN_FLIGHT,
                                    watched=lambda: self._owns_client and self._running,
                                    on_dropped=self._report_dropped)

    # -- the client --------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The MQTT client (amqtt ``MQTTClient``), created on first use."""
        if self._client is None:
            self._client = self._new_client()
        return self._client

    @client.setter
    def client(self, value: Any) -> None:
        self._client = value
        self._owns_client = value is None

    def _new_client(self) -> AmqttClient:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            client = _create_client_outside_loop(self.config)
            client.on_wakeup = self._wakeup.set
            return client
        return create_client(self.config, on_wakeup=self._wakeup.set)

    def _is_connected(self) -> bool:
        """Whether publishing can work now (a client set by the user, e.g. a mock, is taken as connected)."""
        client = self._client
        if not self._owns_client:
            return client is not None
        return client is not None and bool(client.is_connected())

    @property
    def is_running(self) -> bool:
        """True while :meth:`run` is processing messages.

        Assignable, as in the first release: ``False`` during :meth:`run` asks it to stop; any value
        set outside :meth:`run` is kept until :meth:`stop` (which resets it) or the next run.
        """
        return self._running

    @is_running.setter
    def is_running(self, value: bool) -> None:
        self._running = bool(value)
        if not value and self._run_active:
            self.stop()

    @property
    def is_ready(self) -> bool:
        """True while connected and subscribed, i.e. messages published now will be received.

        False as soon as the client sees the connection end, even while a job is still running.
        """
        return self._ready.is_set() and self._is_connected()

    @property
    def is_draining(self) -> bool:
        """True from :meth:`stop` until :meth:`run` returns: taking no new messages, finishing the rest."""
        return self._draining

    @property
    def http_port(self) -> Optional[int]:
        """The port of the health and metrics endpoints while they serve (``http_port`` set), else None."""
        return self._http.port if self._http is not None else None

    async def wait_until_ready(self, timeout: Optional[float] = None) -> None:
        """Wait until :meth:`run` has connected and subscribed.

        Raises:
            asyncio.TimeoutError: not ready within ``timeout`` seconds.
        """
        await asyncio.wait_for(self._ready.wait(), timeout)

    def metrics(self) -> Dict[str, Any]:
        """A snapshot of the listener's counters and state (JSON-ready; see :mod:`Listener.metrics`)."""
        by_status = Counter(job.status.value for job in self._store.jobs.values())
        client = self._client
        queue_depth = client.queued_messages if isinstance(client, AmqttClient) else 0
        self._metrics.abandoned_threads = self._workers.abandoned
        in_flight = len(self._in_flight) + len(self._finishing) + int(self._busy)
        return self._metrics.snapshot(dict(by_status), in_flight, queue_depth,
                                      connected=self._running and self._is_connected(), ready=self.is_ready,
                                      draining=self._draining)

    # -- running -----------------------------------------------------------------------------------

    async def run(self, func: Optional[Processor] = None, *, handle_signals: bool = False) -> None:
        """Connect, subscribe and process messages with ``func`` until :meth:`stop` is called.

        With ``handle_signals``, SIGTERM and SIGINT call :meth:`stop` while it runs
        (see :meth:`install_signal_handlers`).

        A :meth:`stop` that came before ``run()`` (say, a signal during start-up) makes it return at once.

        Raises:
            ConnectionError: the broker cannot be reached, refuses the credentials, or reconnection
                gives up after ``reconnect_retries`` attempts. The message names host and port only.
            RuntimeError: the listener is already running.
        """
        if self._run_active:
            raise RuntimeError("EventListener is already running")
        self._processor = func
        self._loop = asyncio.get_running_loop()
        self._run_active = True
        self._running = True
        self._draining = False
        self._stopped = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._job_finished = asyncio.Event()
        if handle_signals:
            self.install_signal_handlers()
        cleanup = asyncio.create_task(self._cleanup_periodically())
        try:
            self._check_before_start()
            await self._start_http_endpoints()
            await self._serve()
        finally:
            cleanup.cancel()
            await self._drain_leftovers()
            await self._finish_in_flight()
            self._report_unprocessed()
            await self._settle_outbox()
            await self._disconnect()
            await self._stop_http_endpoints()
            if self._grace_timer is not None:
                self._grace_timer.cancel()
                self._grace_timer = None
            self.remove_signal_handlers()
            self._running = False
            self._run_active = False
            self._stop_requested = False  # a stop() between runs applies to the next one
            self._draining = False
            self._stopped.set()
            logger.info("Listener stopped")

    def stop(self) -> None:
        """Stop gracefully: take no new message, let the jobs in flight finish, disconnect.

        Messages already acknowledged to the broker are processed first; jobs still running after
        ``shutdown_grace_period`` seconds are cancelled. Safe to call when not running, from a signal
        handler, or from another thread.
        """
        loop = self._loop
        if not self._run_active or loop is None or loop.is_closed():
            self._stop_requested = True
            self._running = False  # a flag a user set by hand (first-release style) is reset too
            return
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._on_stop_requested()
        else:
            loop.call_soon_threadsafe(self._on_stop_requested)

    def install_signal_handlers(self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)) -> None:
        """Make ``signals`` call :meth:`stop` (call from the running loop; removed when :meth:`run` returns)."""
        loop = asyncio.get_running_loop()
        self.remove_signal_handlers()
        installed = []
        for sig in signals:
            loop.add_signal_handler(sig, self.stop)
            installed.append(int(sig))
        self._signals = tuple(installed)
        self._loop = loop

    def remove_signal_handlers(self) -> None:
        """Undo :meth:`install_signal_handlers`."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            for sig in self._signals:
                loop.remove_signal_handler(sig)
        self._signals = ()

    def _on_stop_requested(self) -> None:
        if self._stop_requested:
            return
        self._stop_requested = True
        self._draining = True
        self._stop_event.set()
        self._wakeup.set()
        self._slot_freed.set()
        client = self._client
        if isinstance(client, AmqttClient):
            client.close_intake()
        delivery = self._pending_delivery
        if delivery is not None and not delivery.done():
            delivery.cancel()
        loop = asyncio.get_running_loop()
        self._grace_timer = loop.call_later(self.config.shutdown_grace_period, self._cancel_jobs)

    def _cancel_jobs(self) -> None:
        """The grace period is over: cancel what is still running (a processor ignoring it is abandoned)."""
        if self._consumer is not None and not self._consumer.done():
            cancel(self._consumer)
        for task in list(self._in_flight) + list(self._carried):
            cancel(task)

    def _check_before_start(self) -> None:
        """Refuse missing certificate files by name; warn about settings that are probably a mistake."""
        if self._owns_client:
            problems = file_problems(self.config)
            if problems:
                raise ConnectionError(f"Cannot connect to MQTT broker at {endpoint_label(self.config)}: "
                                      f"{'; '.join(problems)}")
        for warning in config_warnings(self.config):
            logger.warning("Configuration: %s", redact(warning, self._secrets))

    async def __aenter__(self) -> "EventListener":
        return self

    async def __aexit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                        tb: Optional[TracebackType]) -> None:
        self.stop()
        if self._running and self._stopped is not None:
            await asyncio.wait_for(self._stopped.wait(), self.config.shutdown_grace_period + DISCONNECT_TIMEOUT)
        await self._disconnect()

    async def _serve(self) -> None:
        """Connect, consume until the connection drops, reconnect with backoff; until stopped."""
        attempt = 0
        started = False
        while not self._stop_requested:
            try:
                if not await self._unless_stopped(self._connect_and_subscribe()):
                    return
            except BrokerRefusedConnection:
                raise
            except ConnectionError as exc:
                if self._stop_requested:
                    return
                attempt += 1
                retries = self.config.reconnect_retries
                if not self.config.auto_reconnect or 0 <= retries < attempt:
                    if attempt > 1:
                        raise ConnectionError(f"{exc} (gave up after {attempt} attempts)") from None
                    raise
                delay = min(float(self.config.reconnect_max_interval), 2.0 ** (attempt - 1))
                await self._emit(logging.WARNING, "connection_retry", "Connecting failed (%s); retry %d in %g s",
                                 exc, attempt, delay, publish=False)
                await self._sleep_unless_stopped(delay)
                continue
            attempt = 0
            self._ready.set()
            await self._publisher.flush()  # what was kept during the outage (connection_down first)
            if not started:
                started = True
                await self._emit(logging.INFO, "listener_started", "Listener started on %s, topic %r",
                                 endpoint_label(self.config), self.config.topic)
            else:
                self._metrics.reconnects += 1
                await self._emit(logging.INFO, "connection_up", "Reconnected to %s", endpoint_label(self.config))
            try:
                await self._consume_until_disconnected()
            finally:
                self._ready.clear()
            if self._stop_requested:
                return
            self._metrics.connection_losses += 1
            # Published once the connection is back (kept by the publisher meanwhile).
            await self._emit(logging.WARNING, "connection_down", "Connection to %s lost", endpoint_label(self.config))
            if not self.config.auto_reconnect:
                raise ConnectionError(f"Connection to MQTT broker at {endpoint_label(self.config)} lost")

    async def _connect_and_subscribe(self) -> None:
        await self._connect()
        await self._subscribe()

    async def _unless_stopped(self, work: Awaitable[None]) -> bool:
        """Await ``work`` unless stop() comes first (then cancel it): True when it finished."""
        task = asyncio.ensure_future(work)
        stopping = asyncio.ensure_future(self._stop_event.wait())
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

    async def _sleep_unless_stopped(self, delay: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), delay)

    async def _consume_until_disconnected(self) -> None:
        """Consume until the connection ends; return as soon as it does, even in the middle of a job.

        A consumer still running a job then is *carried*: it finishes that job (its result is kept
        for the next connection) and takes nothing more; the next consumer waits for it, then takes
        over the same delivery queue. So the loss is counted, logged and repaired at once.
        """
        client = self.client
        consumer = asyncio.create_task(self._consume(client, tuple(self._carried)))
        self._consumer = consumer
        liveness = asyncio.create_task(self._watch_liveness(client)) if self._owns_client else None
        closed = asyncio.ensure_future(client.wait_closed()) if isinstance(client, AmqttClient) else None
        try:
            await asyncio.wait({consumer} | ({closed} if closed is not None else set()),
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._consumer = None
            if not consumer.done() and closed is not None and closed.done():
                self._carried.add(consumer)
                consumer.add_done_callback(self._carried.discard)
            for task in (consumer, liveness, closed):
                if task is not None and not task.done() and task not in self._carried:
                    cancel(task)
                    await asyncio.wait({task})
        if consumer.done() and not consumer.cancelled():
            consumer.result()

    async def _consume(self, client: Any, predecessors: Tuple["asyncio.Task[None]", ...] = ()) -> None:
        """Take messages and run them as jobs until the connection ends or stop() was called.

        After stop(), messages already acknowledged (queued) are still processed; nothing more is taken.
        ``predecessors``: consumers of earlier connections still finishing a job, awaited first.
        """
        if predecessors:
            await asyncio.wait(predecessors)
        limit = self.config.max_concurrent_jobs
        while True:
            while limit > 1 and len(self._in_flight) >= limit:  # backpressure: N jobs running
                self._slot_freed.clear()
                await self._slot_freed.wait()
            message = await self._next_message(client)
            if message is None:
                return
            if limit == 1:
                self._busy = True
                try:
                    await self._handle(message.data, message.topic)
                finally:
                    self._busy = False
            else:
                task = asyncio.create_task(self._handle(message.data, message.topic))
                self._in_flight.add(task)
                task.add_done_callback(self._job_done)

    async def _next_message(self, client: Any) -> Any:
        """The next message, or None when the connection ended (or stop() was called) and none is left."""
        if not isinstance(client, AmqttClient):
            return await self._deliver_generic(client)
        wakeup = self._wakeup
        self._taken_in_a_row += 1
        if self._taken_in_a_row >= _YIELD_EVERY:
            # A backlog of jobs that never wait would hold the loop: let the reader, the pings and the probes run.
            self._taken_in_a_row = 0
            await asyncio.sleep(0)
        while True:
            if client.connection_closed and not self._stop_requested:
                return None  # what is queued is taken over by the next connection's consumer
            message = client.take_message()
            if message is not None:
                return message
            if self._stop_requested or client.connection_closed:
                return None
            wakeup.clear()
            message = client.take_message()
            if message is not None:
                return message
            self._taken_in_a_row = 0
            await wakeup.wait()

    async def _deliver_generic(self, client: Any) -> Any:
        """``deliver_message()`` of a client that is not ours (e.g. a test double), cancelled by stop()."""
        if self._stop_requested:
            return None
        delivery = asyncio.ensure_future(client.deliver_message())
        self._pending_delivery = delivery
        try:
            await asyncio.wait({delivery})
        finally:
            self._pending_delivery = None
            if not delivery.done():
                delivery.cancel()
        if delivery.cancelled():
            return None
        error = delivery.exception()
        if error is not None:  # amqtt raises assorted errors once the session is gone
            logger.debug("deliver_message failed: %r", error)
            return None
        return delivery.result()

    def _job_done(self, task: "asyncio.Task[None]") -> None:
        self._in_flight.discard(task)
        self._slot_freed.set()

    async def _handle(self, payload: Any, topic: str) -> None:
        try:
            await self._process_message(payload, topic=topic, pipelined=True)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug of ours must cost one message, not the listener
            logger.exception("Unexpected error while handling a message on %r", topic)

    async def _watch_liveness(self, client: Any) -> None:
        if isinstance(client, AmqttClient):
            if await client.watch_liveness(float(self.config.keep_alive), endpoint_label(self.config)):
                self._wakeup.set()

    async def _drain_leftovers(self) -> None:
        """Stopped while disconnected: process what the lost connection received and acknowledged.

        Bounded like every job at stop (the grace period cancels this consumer too).
        """
        client = self._client
        if (not self._stop_requested or not isinstance(client, AmqttClient) or not client.queued_messages
                or not client.connection_closed):
            return
        consumer = asyncio.ensure_future(self._consume(client, tuple(self._carried)))
        self._consumer = consumer
        try:
            await asyncio.wait({consumer})
        finally:
            self._consumer = None

    def _report_unprocessed(self) -> None:
        """Log how many received messages stop() dropped unprocessed (the grace period ran out)."""
        client = self._client
        if not isinstance(client, AmqttClient):
            return
        dropped = client.drop_queued_messages()
        if not dropped:
            return
        acknowledged = sum(1 for message in dropped if getattr(message, "qos", 0))
        level = logging.ERROR if acknowledged else logging.WARNING
        logger.log(level, "Dropped %d received message(s) unprocessed when the listener stopped (%d QoS 0, "
                   "%d acknowledged QoS 1/2; shutdown_grace_period %g s)", len(dropped), len(dropped) - acknowledged,
                   acknowledged, self.config.shutdown_grace_period)

    async def _finish_in_flight(self) -> None:
        """Wait for concurrent jobs still running and results awaiting acknowledgement (bounded)."""
        waiting: Set[asyncio.Future[Any]] = set(self._in_flight) | set(self._finishing) | set(self._carried)
        if not waiting:
            return
        _, pending = await asyncio.wait(waiting, timeout=self.config.shutdown_grace_period)
        for task in pending:
            cancel(task)
        if pending:
            await asyncio.wait(pending)

    async def _settle_outbox(self) -> None:
        """Send what was kept during an outage if the connection is up; report what is lost."""
        if not self._publisher.pending:
            return
        if self._is_connected():
            await self._publisher.flush()
        lost = self._publisher.discard()
        if lost:
            logger.error("%d result/event publication(s) could not be sent to %s before stopping",
                         lost, endpoint_label(self.config))

    async def _start_http_endpoints(self) -> None:
        if self.config.http_port is None:
            return
        from .http_endpoints import start_http_endpoints  # only services that ask for it load the server

        self._http = await start_http_endpoints(self, self.config.http_host, self.config.http_port)  # logs the address

    async def _stop_http_endpoints(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.close()

    async def _cleanup_periodically(self) -> None:
        period = min(float(self.config.job_cleanup_interval), _MAX_CLEANUP_PERIOD)
        while True:
            await asyncio.sleep(period)
            await self.cleanup_old_jobs()

    # -- MQTT operations -------------------------------------------------------------------------

    async def _connect(self) -> None:
        """Open the MQTT connection (raises ConnectionError naming host and port, never a secret)."""
        previous = self._client
        if self._owns_client and previous is not None and previous.connection_closed:
            self._client = None  # a fresh amqtt client per connection: a used one can hang on publish
            if isinstance(previous, AmqttClient) and isinstance(self.client, AmqttClient):
                self.client.adopt_deliveries(previous)
        timeout = float(self.config.connect_timeout or DEFAULT_CONNECT_TIMEOUT)
        try:
            await open_connection(self.config, self.client, timeout, self.config.cleansession)
        except ConnectionError as error:
            logger.warning("%s", error)
            raise
        logger.info("Connected to MQTT broker at %s", endpoint_label(self.config))

    async def _disconnect(self) -> None:
        """Close the connection cleanly (the broker then does not send the will message)."""
        client = self._client
        if client is None:
            return
        if self._owns_client and not client.is_connected():
            return
        try:
            await asyncio.wait_for(client.disconnect(), DISCONNECT_TIMEOUT)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.debug("Disconnect failed: %r", exc)

    def _subscriptions(self) -> List[Tuple[str, int]]:
        """The filters to subscribe to: ``topic``, plus custom topics it does not already cover."""
        filters = [(self.config.topic, self.config.qos)]
        for topic_filter, options in self.config.custom_topics.items():
            if any(filter_covers(existing, topic_filter) for existing, _ in filters):
                continue
            filters.append((topic_filter, int(options.get("qos", 0))))
        return filters

    async def _subscribe(self) -> None:
        """Subscribe to every filter in one SUBSCRIBE."""
        filters = self._subscriptions()
        try:
            granted = await asyncio.wait_for(self.client.subscribe(filters), PUBLISH_TIMEOUT)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise connection_error(self.config, exc) from None
        if isinstance(granted, list):
            refused = [f for (f, _), code in zip(filters, granted) if code == 0x80]
            if refused:
                raise BrokerRefusedConnection(
                    f"MQTT broker at {endpoint_label(self.config)} refused the subscription to {', '.join(refused)}")
        logger.info("Subscribed to %s", ", ".join(f"{f} (qos {q})" for f, q in filters))

    def _publish_options(self, topic: str) -> Tuple[int, bool]:
        """QoS and retain for the listener's own publication on ``topic``: custom_topics, else defaults."""
        cached = self._publish_option_cache.get(topic)
        if cached is None:
            cached = (self.config.default_qos, self.config.default_retain)
            for topic_filter, options in self.config.custom_topics.items():
                if topic_matches(topic_filter, topic):
                    cached = (int(options.get("qos", 0)), bool(options.get("retain", False)))
                    break
            if len(self._publish_option_cache) < 1024:
                self._publish_option_cache[topic] = cached
        return cached

    async def _send_message(self, topic: str, data: Union[str, bytes, bytearray, Dict[str, Any], Any],
                            qos: Optional[int] = None, retain: Optional[bool] = None) -> None:
        """Publish ``data`` (str is UTF-8 encoded, bytes sent as they are, anything else as JSON)."""
        if isinstance(data, str):
            payload = data.encode("utf-8")
        elif isinstance(data, (bytes, bytearray)):
            payload = bytes(data)
        else:
            payload = to_json_bytes(data)
        if qos is None or retain is None:
            default_qos, default_retain = self._publish_options(topic)
            qos = default_qos if qos is None else qos
            retain = default_retain if retain is None else retain
        self._remember_publication(topic, payload)
        await self._publisher.publish(topic, payload, qos, retain)

    async def _publish_result(self, data: Any, topic: Optional[str] = None) -> None:
        """Publish a result as JSON to ``topic`` (``results_topic`` when empty)."""
        await self._send_message(topic or self.config.results_topic, to_json_bytes(data))

    # -- events ----------------------------------------------------------------------------------

    async def _publish_event(self, topic: str, body: Dict[str, Any]) -> None:
        qos, retain = self._publish_options(topic)
        problem = await self._publisher.deliver((topic, event_json_bytes(body), qos, retain))
        if problem is not None:
            logger.debug("Could not publish %s event to %s: %s", body.get("event", "error"), topic, problem)

    def _info_wanted(self) -> bool:
        """Whether an INFO record goes anywhere (checked before building the one each job may emit)."""
        return logger.isEnabledFor(logging.INFO) or (self._log_threshold <= logging.INFO and bool(self.config.log_topic))

    async def _emit(self, level: int, event: str, message: str, *args: Any, job_id: Optional[str] = None,
                    status: Optional[JobStatus] = None, duration_ms: Optional[float] = None,
                    topic: Optional[str] = None, publish: bool = True) -> None:
        """Log ``message % args`` and mirror it as a JSON log event when it reaches ``log_topic_level``.

        The text is only formatted when the level is enabled: this runs for every job.
        """
        if logger.isEnabledFor(level):
            text = message % args if args else message
            logger.log(level, "%s", redact(text, self._secrets), extra={"job_id": job_id, "event": event, "topic": topic})
        if publish and level >= self._log_threshold and self.config.log_topic:
            body = log_event(event, logging.getLevelName(level), job_id,
                             status.value if status is not None else None, duration_ms)
            await self._publish_event(self.config.log_topic, body)

    async def _report_dropped(self, publication: Publication, job_id: Optional[str], reason: str) -> None:
        """A kept publication the publisher gave up on (its sending kept ending the connection)."""
        topic, payload, qos, _ = publication
        what = f"the result of job {job_id}" if job_id is not None else "a publication"
        text = f"Dropped {what} to {topic!r} ({len(payload)} bytes, QoS {qos}): {reason}"
        await self._publish_error(job_id, ErrorType.PUBLISH_ERROR, text, None)
        await self._emit(logging.ERROR, "publish_dropped", "%s", text, job_id=job_id)

    async def _publish_error(self, job_id: Optional[str], error_type: str, message: str, topic: Optional[str]) -> None:
        self._metrics.errors[error_type] += 1
        body = error_event(job_id, error_type, redact(message, self._secrets), topic or "")
        await self._publish_event(self.config.error_topic, body)

    async def _reject(self, rejection: RejectedMessage, topic: Optional[str]) -> None:
        self._metrics.messages_rejected += 1
        await self._publish_error(rejection.job_id, rejection.error_type, rejection.message, topic)
        await self._emit(logging.WARNING, "payload_rejected", "Rejected message on %r: %s: %s", topic,
                         rejection.error_type, rejection.message, job_id=rejection.job_id, topic=topic)

    # -- processing one message ------------------------------------------------------------------

    async def process_message(self, data: Union[Dict[str, Any], Payload], func: Optional[Processor] = None,
                              *, topic: Optional[str] = None) -> Any:
        """Process one message as a job and return what the processor returned (None if rejected).

        ``data`` may be a dict, or a TOML document as str/bytes. ``func`` defaults to the processor
        given to :meth:`run`; with none, the job simply completes without a result.
        """
        return await self._process_message(data, func, topic=topic)

    async def _process_message(self, data: Union[Dict[str, Any], Payload], func: Optional[Processor] = None,
                               *, topic: Optional[str] = None, pipelined: bool = False) -> Any:
        if topic is not None and self._is_own_message(data, topic):
            return None
        self._metrics.messages_received += 1
        try:
            if isinstance(data, dict):
                fields = dict(data)
            else:
                fields = await decode_payload_off_loop(data, self.config_parser, self.config.max_payload_bytes)
            job_id = resolve_job_id(fields, self.config.job_id_field, self.config.allow_job_id_generation)
        except RejectedMessage as rejection:
            await self._reject(rejection, topic)
            return None
        if topic is not None:
            fields["_topic"] = topic
        if not await self._admit(job_id, fields, topic):
            return None
        return await self._execute(job_id, fields, func if func is not None else self._processor, topic, pipelined)

    def _is_own_message(self, data: Union[Dict[str, Any], Payload], topic: str) -> bool:
        """True (and counted) for a message on the listener's own topics or the echo of its own publication.

        Taking them as jobs would answer each with an error event, which may come back in turn.
        """
        if topic in self._own_topics:
            self._metrics.own_messages_ignored += 1
            return True
        if not isinstance(data, dict):
            payload = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
            if self._recent.is_echo(topic, payload):
                self._metrics.own_echoes_ignored += 1
                return True
        return False

    def _remember_publication(self, topic: str, payload: bytes) -> None:
        """Note a publication the subscription will bring back, so that its echo is dropped."""
        echoes = self._echo_topics.get(topic)
        if echoes is None:
            echoes = topic not in self._own_topics and any(topic_matches(f, topic) for f in self._filters)
            if len(self._echo_topics) < 1024:
                self._echo_topics[topic] = echoes
        if echoes:
            self._recent.remember(topic, payload)

    async def _admit(self, job_id: str, data: Dict[str, Any], topic: Optional[str]) -> bool:
        """Create the job, or apply the duplicate policy; wait while the store is full of active jobs."""
        warned = False
        while True:
            async with self.job_lock:
                if self._job_finished is not None:
                    # Cleared under the lock, before looking: a job finishing after this look sets it again.
                    self._job_finished.clear()
                outcome = self._store.insert(job_id, data, topic)
                if outcome is InsertOutcome.CREATED:
                    return True
                if outcome is InsertOutcome.EXISTS:
                    existing = self._store.jobs[job_id]
                    action = self.config.duplicate_action
                    if action == "reprocess" and existing.status is not JobStatus.RUNNING:
                        self._store.restart(job_id, data, topic)
                        return True
                    self._store.mark_duplicate(job_id)
                    break
                finished = self._job_finished
            if finished is None:
                await self._emit(logging.WARNING, "job_store_full", "Job store full (%d active jobs); job %s dropped",
                                 self.config.max_jobs_in_memory, job_id, job_id=job_id, topic=topic)
                return False
            if not warned:
                warned = True
                await self._emit(logging.WARNING, "job_store_full", "Job store full of active jobs; waiting to admit job %s",
                                 job_id, job_id=job_id, topic=topic)
            await finished.wait()
        self._metrics.jobs_finished[JobStatus.DUPLICATE.value] += 1
        if self.config.duplicate_action == "error":
            await self._publish_error(job_id, ErrorType.DUPLICATE_JOB, f"Job {job_id} was already received", topic)
            level = logging.WARNING
        else:  # the manual: skip ignores duplicates "silently" (INFO, not mirrored at the default log_topic_level)
            level = logging.INFO
        await self._emit(level, "duplicate_job", "Duplicate job %s not processed", job_id,
                         job_id=job_id, status=JobStatus.DUPLICATE, topic=topic)
        return False

    async def _execute(self, job_id: str, data: Dict[str, Any], func: Optional[Processor], topic: Optional[str],
                       pipelined: bool = False) -> Any:
        """Run the processor for an admitted job, publish its result, record the outcome.

        ``pipelined`` (the run loop): a QoS 1/2 result's acknowledgement is awaited in the background,
        so the next job can start meanwhile; the job becomes COMPLETED once the result is acknowledged.
        """
        started = time.perf_counter()
        await self._update_job_status(job_id, JobStatus.RUNNING)
        try:
            result = None if func is None else await call_processor(
                func, data, job_id, workers=self._workers, timeout=self.config.job_timeout)
            publication = self._publication_for(result, job_id)
        except asyncio.CancelledError:
            await self._update_job_status(job_id, JobStatus.FAILED, error="Cancelled: listener stopped")
            self._metrics.jobs_finished[JobStatus.FAILED.value] += 1
            raise
        except BaseException as exc:  # noqa: B036 - a processor's failure, whatever it is, fails only its job
            await self._fail(job_id, exc, topic, time.perf_counter() - started)
            return None
        if publication is not None:
            self._remember_publication(publication[0], publication[1])
        if publication is not None and publication[2] and pipelined:
            sending = await self._publisher.deliver_in_background(publication, job_id)
            finishing = asyncio.ensure_future(self._complete(job_id, result, topic, started, publication, sending))
            self._finishing.add(finishing)
            finishing.add_done_callback(self._finishing.discard)
            return result
        sent = None if publication is None else await self._publisher.deliver(publication, job_id=job_id)
        await self._complete(job_id, result, topic, started, publication, sent)
        return result

    async def _complete(self, job_id: str, result: Any, topic: Optional[str], started: float,
                        publication: Optional[Publication],
                        sent: "Union[None, str, asyncio.Future[Optional[str]]]") -> None:
        """Report a publication problem if there was one, then mark the job COMPLETED."""
        try:
            problem = await sent if isinstance(sent, asyncio.Future) else sent
        except asyncio.CancelledError:  # stopping ran out of grace before the broker acknowledged it
            await self._update_job_status(job_id, JobStatus.COMPLETED, result=result)
            self._metrics.jobs_finished[JobStatus.COMPLETED.value] += 1
            raise
        if problem is not None and publication is not None:
            reason = f"Could not publish the result of job {job_id} to {publication[0]}: {problem}"
            await self._publish_error(job_id, ErrorType.PUBLISH_ERROR, reason, topic)
            await self._emit(logging.ERROR, "publish_failed", "%s", reason, job_id=job_id,
                             status=JobStatus.COMPLETED, topic=topic)
        await self._update_job_status(job_id, JobStatus.COMPLETED, result=result)
        elapsed = time.perf_counter() - started
        self._metrics.jobs_finished[JobStatus.COMPLETED.value] += 1
        self._metrics.observe_duration(elapsed)
        if self._info_wanted():
            await self._emit(logging.INFO, "job_completed", "Job %s completed", job_id, job_id=job_id,
                             status=JobStatus.COMPLETED, duration_ms=elapsed * 1000, topic=topic)

    async def _fail(self, job_id: str, exc: BaseException, topic: Optional[str], elapsed: float) -> None:
        """Record a job's failure (or timeout), publish the error event and the log event."""
        timed_out = isinstance(exc, JobTimeoutError)
        reason = str(exc) if timed_out else redact(describe_exception(exc), self._secrets)
        await self._update_job_status(job_id, JobStatus.FAILED, error=reason)
        self._metrics.jobs_finished[JobStatus.FAILED.value] += 1
        self._metrics.observe_duration(elapsed)
        await self._publish_error(job_id, ErrorType.TIMEOUT if timed_out else ErrorType.PROCESSING_ERROR, reason, topic)
        await self._emit(logging.ERROR, "job_failed", "Job %s failed: %s", job_id, reason, job_id=job_id,
                         status=JobStatus.FAILED, duration_ms=elapsed * 1000, topic=topic)

    def _publication_for(self, result: Any, job_id: str) -> Optional[Publication]:
        """Where and how a processor's result is published; raises for results that cannot be."""
        if result is None:
            return None
        if isinstance(result, ReturnType):
            if result.job_id is None:
                result.job_id = job_id
            topic = result.topic or self.config.results_topic
            if result.qos not in (0, 1, 2) or isinstance(result.qos, bool):
                raise ValueError(f"ReturnType.qos must be 0, 1 or 2, got {result.qos!r}")
            qos, retain, body = int(result.qos), bool(result.retain), result.data
        else:
            topic = self.config.results_topic
            qos, retain = self._publish_options(topic)
            body = result
        problem = topic_name_error(topic)
        if problem:  # brokers drop the connection for such a topic: fail the job instead
            raise RefusedTopic(f"Result topic {topic!r} {problem}")
        try:
            payload = to_json_bytes(body)
        except ResultEncodingError as exc:
            raise ResultEncodingError(f"Result of job {job_id} cannot be encoded as JSON: {exc}") from None
        return topic, payload, qos, retain

    # -- job ids ---------------------------------------------------------------------------------

    def extract_job_id(self, data: Dict[str, Any]) -> Optional[str]:
        """The job id in ``data`` (``job_id_field``) as a string, or None when absent or unusable."""
        try:
            return resolve_job_id(data, self.config.job_id_field, allow_generation=False)
        except RejectedMessage:
            return None

    def generate_job_id(self) -> Optional[str]:
        """A fresh random (uuid4) job id, or None when ``allow_job_id_generation`` is off (as in the first release)."""
        if not self.config.allow_job_id_generation:
            return None
        return generate_job_id()


def _create_client_outside_loop(config: EventListenerConfig) -> AmqttClient:
    """Create the amqtt client without a running loop, undoing amqtt's side effect.

    amqtt's plugin manager, finding no running loop, makes a new one and installs it as the
    thread's current loop. That loop is never used by the client; close it and put back what was there.
    """
    policy = asyncio.get_event_loop_policy()
    local = getattr(policy, "_local", None)
    previous = getattr(local, "_loop", None)
    client = create_client(config)
    stray = getattr(client.plugins_manager, "_loop", None)
    if stray is not None and stray is not previous and not stray.is_running():
        asyncio.set_event_loop(previous)
        stray.close()
    return client
