"""EventListener: receive TOML messages from MQTT, track each as a job, publish results as JSON.

The public facade. The work is done by parts that never import it: :mod:`~Listener.mqtt.connection`
(one broker connection), :mod:`~Listener.pipeline.runner` (the run loop), :mod:`~Listener.pipeline.message_pipeline`
(one message end to end), :mod:`~Listener.ops.events` (logs and events), :mod:`~Listener.jobs.tracking` (the job store).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections import Counter
from types import TracebackType
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Type, Union

from ._version import __version__
from .config.checks import check_before_start
from .config.parser import SafeConfigParser
from .config.settings import EventListenerConfig, http_token
from .core.redaction import mask_uri_credentials
from .core.run_state import RunState, State
from .core.serialization import to_json_bytes
from .core.topics import PublishOptions, shared_filters, subscriptions
from .jobs.factory import create_job_store
from .jobs.records import JobInfo, JobStatus, job_as_dict
from .jobs.tracking import JobTracker
from .mqtt.client import endpoint_label, secrets
from .mqtt.connection import DISCONNECT_TIMEOUT, ClientSlot, connect, disconnect, subscribe
from .mqtt.delivery_queue import Ticket
from .mqtt.publisher import Publisher
from .ops.events import EventSink
from .ops.metrics import ListenerMetrics
from .ops.signals import StopSignals
from .pipeline.message_pipeline import MessageObserver, Pipeline
from .pipeline.payloads import Payload, find_job_id, generate_job_id
from .pipeline.runner import Runner
from .processing.processors import Processor
from .processing.workers import ThreadWorkers
from .results import ReturnType, create_error_result, create_return_type

__all__ = ["EventListener", "EventListenerConfig", "JobInfo", "JobStatus", "ReturnType", "create_error_result",
           "create_return_type", "__version__"]

logger = logging.getLogger("Listener.event_listener")

PUBLISH_TIMEOUT = 10.0


class EventListener:
    """MQTT Event Listener with job tracking capabilities.

    Args:
        config: every setting; see :class:`EventListenerConfig`.
        config_parser: the TOML parser used for message payloads (a default one when omitted).
        observer: hooks following each message through the pipeline (a
            :class:`~Listener.pipeline.message_pipeline.MessageObserver`; what ``Listener.testing`` uses).

    ``client`` is the amqtt ``MQTTClient`` (replaceable, e.g. by a mock in tests); ``jobs`` is the
    live job dict and ``job_lock`` the ``asyncio.Lock`` that guards it.
    """

    __version__ = __version__

    def __init__(self, config: EventListenerConfig, config_parser: Optional[SafeConfigParser] = None, *,
                 observer: Optional[MessageObserver] = None) -> None:
        if not isinstance(config, EventListenerConfig):
            raise TypeError(f"config must be an EventListenerConfig, got {type(config).__name__}")
        self.config = config
        self.config_parser = config_parser if config_parser is not None else SafeConfigParser(logger)
        self.logger = logger
        self._endpoint = endpoint = endpoint_label(config)
        self._processor: Optional[Processor] = None
        self._running = False  # only what a user assigned to ``is_running`` outside run()
        self._signals: Optional[StopSignals] = None
        self._http: Any = None
        self._dashboard: Any = None
        # Each part gets its collaborators here, once; none is set afterwards.
        run_state = RunState()
        self._slot = ClientSlot(config, run_state)
        self._metrics = metrics = ListenerMetrics()
        # after_recording: an acknowledged job cut short must keep its input, to run again from the store.
        store = create_job_store(config.job_store, config.max_jobs_in_memory, config.job_cleanup_interval,
                                 config.keep_job_input or config.ack_policy == "after_recording")
        self._tracker = JobTracker(store)
        self._store_reports: Set["asyncio.Future[None]"] = set()
        self._workers = ThreadWorkers(config.max_concurrent_jobs, name=f"{config.client_id}-worker")
        options = PublishOptions(config.default_qos, config.default_retain, config.custom_topics)
        self._publisher = Publisher(self._slot, metrics, endpoint, options, PUBLISH_TIMEOUT,
                                    config.max_inflight_publications)
        self._events = EventSink(logger, secrets(config), config.log_topic, config.error_topic,
                                 logging.getLevelName(config.log_topic_level.upper()), metrics, self._publisher)
        self._pipeline = Pipeline(config, self.config_parser, self._tracker, self._publisher, self._events, metrics,
                                  self._workers, run_state, options, observer)
        # Own-message detection (pipeline) keeps matching on the real filters; only the SUBSCRIBE is shared.
        self._filters = shared_filters(subscriptions(config.topic, config.qos, config.custom_topics), config.share_group)
        self._runner = Runner(config, endpoint, self._slot, self._filters, self._publisher, self._events, metrics,
                              self._tracker, self._pipeline, run_state)

    # -- the client and the state ------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The MQTT client (amqtt ``MQTTClient``), created on first use."""
        return self._slot.client

    @client.setter
    def client(self, value: Any) -> None:
        self._slot.client = value

    @property
    def is_running(self) -> bool:
        """True while :meth:`run` is processing messages.

        Assignable, as in the first release: ``False`` during :meth:`run` asks it to stop; any value
        set outside :meth:`run` is kept until :meth:`stop` (which resets it) or the next run.
        """
        return self._runner.active or self._running

    @is_running.setter
    def is_running(self, value: bool) -> None:
        self._running = bool(value)
        if not value and self._runner.active:
            self.stop()

    @property
    def state(self) -> State:
        """Where :meth:`run` is: idle, connecting, running, draining or stopped."""
        return self._runner.state

    @property
    def is_ready(self) -> bool:
        """True while connected and subscribed, i.e. messages published now will be received.

        False as soon as the client sees the connection end, even while a job is still running.
        """
        return self._runner.ready.is_set() and self._slot.is_connected()

    @property
    def is_draining(self) -> bool:
        """True from :meth:`stop` until :meth:`run` returns: taking no new messages, finishing the rest."""
        return self._runner.state is State.DRAINING

    @property
    def http_port(self) -> Optional[int]:
        """The port of the health and metrics endpoints while they serve (``http_port`` set), else None."""
        return self._http.port if self._http is not None else None

    async def wait_until_ready(self, timeout: Optional[float] = None) -> None:
        """Wait until :meth:`run` has connected and subscribed.

        Raises:
            asyncio.TimeoutError: not ready within ``timeout`` seconds.
        """
        await asyncio.wait_for(self._runner.ready.wait(), timeout)

    def metrics(self) -> Dict[str, Any]:
        """A snapshot of the listener's counters and state (JSON-ready; see :mod:`Listener.ops.metrics`)."""
        by_status = Counter(job.status.value for job in self.jobs.values())
        current = self._slot.current
        self._metrics.abandoned_threads = self._workers.abandoned
        return self._metrics.snapshot(dict(by_status), self._runner.in_flight, current.queued if current else 0,
                                      connected=self.is_running and self._slot.is_connected(), ready=self.is_ready,
                                      draining=self.is_draining)

    # -- running -----------------------------------------------------------------------------------

    async def run(self, func: Optional[Processor] = None, *, handle_signals: bool = False) -> None:
        """Connect, subscribe and process messages with ``func`` until :meth:`stop` is called.

        With ``handle_signals``, SIGTERM and SIGINT stop it (see :meth:`install_signal_handlers`).
        A :meth:`stop` that came before ``run()`` (say, a signal during start-up) makes it return at once.

        Raises:
            ConnectionError: the broker cannot be reached, refuses the credentials, or reconnection
                gives up after ``reconnect_retries`` attempts. The message names host and port only.
            RuntimeError: the listener is already running.
        """
        if self._runner.active:
            raise RuntimeError("EventListener is already running")
        self._processor = func
        if handle_signals:
            self.install_signal_handlers()
        try:
            await self._runner.run(self._start, func)
        finally:
            http, self._http = self._http, None
            if http is not None:
                await http.close()
            dashboard, self._dashboard = self._dashboard, None
            if dashboard is not None:
                await dashboard.close()
            await self._tracker.store.close()
            self.remove_signal_handlers()
            self._running = False

    async def _start(self) -> None:
        """Refuse missing certificate files by name; warn about likely mistakes; start the HTTP endpoints."""
        check_before_start(self.config, self._slot.owned, self._endpoint,
                           lambda warning: logger.warning("Configuration: %s", self._events.redact(warning)))
        await self._open_job_store()
        if self.config.http_port is not None:
            # Only services that ask for the endpoints load the server and the dashboard.
            from .ops.dashboard import Dashboard
            from .ops.http_endpoints import start_http_endpoints

            self._dashboard = Dashboard(_DashboardView(self), token=http_token(self.config),
                                        bind_host=self.config.http_host)
            await self._dashboard.start()
            self._http = await start_http_endpoints(self, self.config.http_host, self.config.http_port,
                                                    handler=self._dashboard)

    async def _open_job_store(self) -> None:
        """Open the job store (a SQLite file is created, checked and loaded; raises JobStoreError naming it)."""
        await self._tracker.store.open(on_error=self._job_store_failed, on_failover=self._job_store_failed_over)

    def _job_store_failed(self, message: str) -> None:
        """Writing the job store failed (the writer retries): an ERROR log event, on the event loop."""
        self._report_store(logging.ERROR, "job_store_error", message)

    def _job_store_failed_over(self, message: str) -> None:
        """The job store's Redis failed over to another master (the store goes on there): a WARNING log event."""
        self._report_store(logging.WARNING, "job_store_failover", message)

    def _report_store(self, level: int, event: str, message: str) -> None:
        task = asyncio.ensure_future(self._events.log(level, event, "%s", message))
        self._store_reports.add(task)
        task.add_done_callback(self._store_reports.discard)

    def stop(self) -> None:
        """Stop gracefully: take no new message, let the jobs in flight finish, disconnect.

        Messages already acknowledged to the broker are processed first; jobs still running after
        ``shutdown_grace_period`` seconds are cancelled. Safe to call when not running, from a signal
        handler, or from another thread.
        """
        if not self._runner.active:
            self._running = False  # a flag a user set by hand (first-release style) is reset too
        self._runner.stop()

    def install_signal_handlers(self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT), *,
                                on_second_signal: Callable[[], None] = lambda: None, exit_after: Optional[float] = None,
                                before_exit: Callable[[int], None] = lambda code: None) -> StopSignals:
        """Make the first of ``signals`` call :meth:`stop` and a second one stop at once (running jobs are
        cancelled, then ``on_second_signal`` is called). Call from the main thread; removed when :meth:`run` returns.

        ``exit_after``: seconds after the second signal at which a process still running is ended (exit
        code 128 + the signal number; ``before_exit`` is called first). Returns the handlers.
        """
        self.remove_signal_handlers()
        self._signals = StopSignals(asyncio.get_running_loop(), self.stop, self._runner.stop_now, signals,
                                    then=on_second_signal, exit_after=exit_after, before_exit=before_exit)
        return self._signals

    def remove_signal_handlers(self) -> None:
        """Undo :meth:`install_signal_handlers`."""
        handlers, self._signals = self._signals, None
        if handlers is not None:
            handlers.remove()

    async def __aenter__(self) -> "EventListener":
        return self

    async def __aexit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                        tb: Optional[TracebackType]) -> None:
        self.stop()
        if self._runner.active:
            await asyncio.wait_for(self._runner.finished.wait(), self.config.shutdown_grace_period + DISCONNECT_TIMEOUT)
        await self._disconnect()
        await self._tracker.store.close()

    # -- the manual's MQTT operations --------------------------------------------------------------

    async def _connect(self) -> None:
        """Open the MQTT connection (raises ConnectionError naming host and port, never a secret)."""
        await connect(self._slot.for_new_connection(), self.config, self._endpoint)

    async def _disconnect(self) -> None:
        """Close the connection cleanly (the broker then does not send the will message)."""
        if self._slot.current is not None:
            await disconnect(self._slot.adapter)

    async def _subscribe(self) -> None:
        """Subscribe to ``topic`` and the custom topics it does not cover, in one SUBSCRIBE."""
        await subscribe(self._slot.adapter, self.config, self._endpoint, self._filters)

    async def _send_message(self, topic: str, data: Union[str, bytes, bytearray, Dict[str, Any], Any],
                            qos: Optional[int] = None, retain: Optional[bool] = None) -> None:
        """Publish ``data`` (str is UTF-8 encoded, bytes sent as they are, anything else as JSON).

        A message sent to a topic this listener subscribes to is processed as a job when it comes back
        (the first release's behaviour), unless the topic is its ``error_topic``, ``log_topic`` or
        ``results_topic``.
        """
        await self._pipeline.send_message(topic, data, qos, retain)

    async def _publish_result(self, data: Any, topic: Optional[str] = None) -> None:
        """Publish a result as JSON to ``topic`` (``results_topic`` when empty); its echo is not a job."""
        await self._pipeline.send_message(topic or self.config.results_topic, to_json_bytes(data), result=True)

    # -- processing one message ------------------------------------------------------------------

    async def process_message(self, data: Union[Dict[str, Any], Payload], func: Optional[Processor] = None,
                              *, topic: Optional[str] = None) -> Any:
        """Process one message as a job and return what the processor returned (None if rejected).

        ``data`` may be a dict, or a TOML document as str/bytes. ``func`` defaults to the processor
        given to :meth:`run`; with none, the job simply completes without a result. A SQLite job store
        is opened by the first call (or by :meth:`run`) and closed when :meth:`run` returns.
        """
        if not self._runner.active:
            await self._open_job_store()
        return await self._process_message(data, func, topic=topic)

    async def _process_message(self, data: Union[Dict[str, Any], Payload], func: Optional[Processor] = None,
                               *, topic: Optional[str] = None, pipelined: bool = False,
                               ticket: Optional[Ticket] = None) -> Any:
        return await self._pipeline.process(data, func if func is not None else self._processor, topic, pipelined,
                                            ticket)

    # -- jobs ------------------------------------------------------------------------------------

    @property
    def jobs(self) -> Dict[str, JobInfo]:
        """The live job dict (hold ``job_lock`` while iterating it from a coroutine)."""
        return self._tracker.store.jobs

    @jobs.setter
    def jobs(self, value: Dict[str, JobInfo]) -> None:
        self._tracker.store.jobs = value
        self._tracker.store.reindex()

    @property
    def job_lock(self) -> asyncio.Lock:
        """The ``asyncio.Lock`` that guards ``jobs``."""
        return self._tracker.lock

    async def _create_job(self, job_id: str, data: Optional[Dict[str, Any]]) -> bool:
        """Create a PENDING job; False (and the job marked DUPLICATE) when the id exists, False when full."""
        return await self._tracker.create_job(job_id, data)

    async def _update_job_status(self, job_id: str, status: JobStatus, result: Any = None,
                                 error: Optional[str] = None) -> bool:
        """Set a job's status (and result or error); False when the id is unknown."""
        return await self._tracker.update_job_status(job_id, status, result, error)

    async def _mark_job_duplicate(self, job_id: str) -> bool:
        """Record that ``job_id`` arrived again (a running job keeps running)."""
        return await self._tracker.mark_job_duplicate(job_id)

    async def get_job_status(self, job_id: str) -> Optional[JobInfo]:
        """A copy of the job's information, or None when it is not (or no longer) in memory."""
        return await self._tracker.get_job_status(job_id)

    async def is_job_completed(self, job_id: str) -> bool:
        """True when the job finished, successfully or not (COMPLETED or FAILED)."""
        return await self._tracker.is_job_completed(job_id)

    async def is_job_running(self, job_id: str) -> bool:
        """True while the job is RUNNING (a PENDING job has not started)."""
        return await self._tracker.is_job_running(job_id)

    async def job_exists(self, job_id: str) -> bool:
        """True when a job with this id is in memory."""
        return await self._tracker.job_exists(job_id)

    async def get_all_jobs(self) -> Dict[str, JobInfo]:
        """Copies of every job in memory."""
        return await self._tracker.jobs_with()

    async def get_running_jobs(self) -> Dict[str, JobInfo]:
        """Copies of the RUNNING jobs."""
        return await self._tracker.jobs_with(JobStatus.RUNNING)

    async def get_completed_jobs(self) -> Dict[str, JobInfo]:
        """Copies of the COMPLETED jobs."""
        return await self._tracker.jobs_with(JobStatus.COMPLETED)

    async def get_duplicate_jobs(self) -> Dict[str, JobInfo]:
        """Copies of the jobs marked DUPLICATE."""
        return await self._tracker.jobs_with(JobStatus.DUPLICATE)

    async def get_failed_jobs(self) -> Dict[str, JobInfo]:
        """Copies of the FAILED jobs."""
        return await self._tracker.jobs_with(JobStatus.FAILED)

    async def cleanup_old_jobs(self) -> None:
        """Remove finished jobs whose ``completed_at`` is older than ``job_cleanup_interval`` seconds."""
        await self._tracker.cleanup_old_jobs()

    def extract_job_id(self, data: Dict[str, Any]) -> Optional[str]:
        """The job id in ``data`` (``job_id_field``) as a string, or None when absent or unusable."""
        return find_job_id(data, self.config.job_id_field)

    def generate_job_id(self) -> Optional[str]:
        """A fresh random (uuid4) job id, or None when ``allow_job_id_generation`` is off (as in the first release)."""
        return generate_job_id() if self.config.allow_job_id_generation else None


#: Jobs the dashboard converts between two turns of the event loop.
_ROWS_PER_TURN = 100


class _DashboardView:
    """What the dashboard shows of one listener (a :class:`~Listener.ops.dashboard.DashboardSource`)."""

    def __init__(self, listener: EventListener) -> None:
        self._listener = listener
        self.secrets = secrets(listener.config)
        self._started_at = time.time()

    def overview(self) -> Dict[str, Any]:
        listener, config = self._listener, self._listener.config
        return {"kind": "listener", "version": __version__, "state": listener.state.value,
                "broker": listener._endpoint, "client_id": config.client_id,
                "subscriptions": [[topic, qos] for topic, qos in listener._filters],
                "job_store": mask_uri_credentials(config.job_store), "keep_job_input": config.keep_job_input,
                "started_at": self._started_at, "workers": None}

    def metrics(self) -> Dict[str, Any]:
        return self._listener.metrics()

    async def recent_jobs(self, limit: int) -> Optional[List[Dict[str, Any]]]:
        jobs = await self._listener._tracker.store.recent(limit)
        rows: List[Dict[str, Any]] = []
        for start in range(0, len(jobs), _ROWS_PER_TURN):  # let messages through between slices of a long list
            rows.extend(job_as_dict(job) for job in jobs[start:start + _ROWS_PER_TURN])
            await asyncio.sleep(0)
        return rows

    async def job(self, job_id: str) -> Optional[Dict[str, Any]]:
        job = await self._listener._tracker.store.get(job_id)
        # The store may hold the input (to resume the job) where users asked for it not to be kept.
        return None if job is None else job_as_dict(job, detail=True, show_input=self._listener.config.keep_job_input)
