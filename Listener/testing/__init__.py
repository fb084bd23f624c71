"""Test your processor: the listener's real pipeline in memory, and brokers for tests that want a real one.

``TestListener(config, processor)`` runs :meth:`EventListener.run` over an in-memory broker: the same
decoding, job ids, duplicate policy, processor call (sync or async), results, error and log events, job
store, subscriptions, QoS and ``custom_topics`` routing as on a broker, with no network::

    async with TestListener(config, processor) as t:
        outcome = await t.publish({"job_id": "a-1", "task": "resize"})
        assert outcome.status is JobStatus.COMPLETED and outcome.result == {...}

:func:`running_broker` gives a real broker (``mosquitto`` when installed, else amqtt's embedded one, or
the external broker named by ``MQTT_HOST``/``MQTT_PORT``); the pytest plugin's ``mqtt_broker`` fixture
is built on it. See docs/testing.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, AsyncIterator, Dict, List, Mapping, Optional, Set, Tuple, Type, Union

import tomli_w

from ..config.settings import EventListenerConfig
from ..core.topics import topic_name_error
from ..event_listener import EventListener
from ..jobs.records import JobStatus
from ..pipeline.message_pipeline import MessageObserver
from ..processing.processors import Processor
from .brokers import BrokerAddress, running_broker
from .memory_broker import MemoryBroker, MemoryClient, MemoryMessage

__all__ = ["BrokerAddress", "JobOutcome", "PublishedMessage", "TestListener", "running_broker", "running_listener"]

DEFAULT_TIMEOUT = 30.0
#: A message published by the listener: (topic, payload bytes, qos, retain).
PublishedMessage = MemoryMessage


@dataclass(frozen=True)
class JobOutcome:
    """What became of one message published with :meth:`TestListener.publish`.

    Attributes:
        job_id: the job's id (the generated one when ``allow_job_id_generation`` made it), or the id named
            by a rejected message, or None.
        status: the job's status once the message was handled (COMPLETED, FAILED, DUPLICATE …), or None
            when no job was created (the payload was rejected).
        result: the decoded JSON result published for this message, or None.
        error: the decoded error event published for this message (with retries, the last one), or None.
    """

    job_id: Optional[str]
    status: Optional[JobStatus]
    result: Any = None
    error: Optional[Dict[str, Any]] = None


@dataclass(eq=False)
class _Delivery:
    """One copy of a test publication as the listener handles it."""

    finished: asyncio.Event = field(default_factory=asyncio.Event)
    job_id: Optional[str] = None
    publications: List[MemoryMessage] = field(default_factory=list)
    finishing: Set["asyncio.Future[Any]"] = field(default_factory=set)
    failure: Optional[BaseException] = None


class _TaggedPayload(bytes):
    """A payload copy that knows which :class:`_Delivery` it belongs to (the pipeline sees plain bytes)."""

    delivery: _Delivery


_CURRENT: "contextvars.ContextVar[Optional[_Delivery]]" = contextvars.ContextVar("listener_test_delivery", default=None)


class _DeliveryObserver(MessageObserver):
    """Bookkeeping of which job id, publications and failure each test message led to (the listener is unchanged)."""

    def started(self, payload: Any) -> Any:
        delivery = getattr(payload, "delivery", None)
        if not isinstance(delivery, _Delivery):
            return None
        return delivery, _CURRENT.set(delivery)  # copied into the tasks the pipeline starts for this message

    def admitted(self, job_id: str) -> None:
        delivery = _CURRENT.get()
        if delivery is not None:
            delivery.job_id = job_id

    def finished(self, token: Any, acknowledging: Set["asyncio.Future[None]"], failure: Optional[BaseException]) -> None:
        delivery, context_token = token
        if failure is not None:
            delivery.failure = failure
        delivery.finishing = set(acknowledging)  # QoS 1/2 results awaiting acknowledgement
        _CURRENT.reset(context_token)
        delivery.finished.set()


def _decode(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except ValueError:
        return payload


class TestListener:
    """An :class:`EventListener` running ``processor`` over an in-memory broker (an async context manager).

    Args:
        config: the listener's configuration; host, port and credentials are not used.
        processor: the processor, sync or async, as given to :meth:`EventListener.run` (None: jobs just complete).
        timeout: default bound, in seconds, of start-up and of each :meth:`publish`.

    ``listener`` is the running :class:`EventListener` (job queries: ``get_job_status``, ``get_all_jobs`` …);
    ``published`` lists what the listener published as ``(topic, decoded JSON)``, in order;
    ``messages`` lists the same as :data:`PublishedMessage` objects (topic, raw bytes, qos, retain);
    ``retained`` maps topics to the retained message the in-memory broker holds.
    """

    __test__ = False  # not a pytest test class, even when imported into a test module

    def __init__(self, config: Optional[EventListenerConfig] = None, processor: Optional[Processor] = None,
                 *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.config = config if config is not None else EventListenerConfig()
        self.processor = processor
        self.timeout = timeout
        self.broker = MemoryBroker(on_publish=self._record)
        self.listener: EventListener = EventListener(self.config, observer=_DeliveryObserver())
        self._client = MemoryClient(self.broker, self.config.client_id)
        self.listener.client = self._client
        self._tester = MemoryClient(self.broker, "test-publisher")
        self.messages: List[PublishedMessage] = []
        self._run: Optional["asyncio.Task[None]"] = None

    @property
    def published(self) -> List[Tuple[str, Any]]:
        """``(topic, decoded payload)`` of every publication of the listener, in order (raw bytes if not JSON)."""
        return [(message.topic, _decode(message.data)) for message in self.messages]

    @property
    def retained(self) -> Dict[str, PublishedMessage]:
        """The retained message of each topic, as the broker holds it."""
        return dict(self.broker.retained)

    def _record(self, sender: MemoryClient, message: MemoryMessage) -> None:
        if sender is not self._client:
            return
        self.messages.append(message)
        delivery = _CURRENT.get()
        if delivery is not None:
            delivery.publications.append(message)

    async def __aenter__(self) -> "TestListener":
        await self.start()
        return self

    async def __aexit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                        tb: Optional[TracebackType]) -> None:
        await self.stop(raise_errors=exc_type is None)

    async def start(self) -> None:
        """Start the listener (connected and subscribed when this returns)."""
        if self._run is not None:
            raise RuntimeError("TestListener is already started")
        self._run = asyncio.create_task(self.listener.run(self.processor))
        ready = asyncio.ensure_future(self.listener.wait_until_ready())
        try:
            await asyncio.wait({self._run, ready}, timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not ready.done():
                ready.cancel()
        if self._run.done():
            self._run.result()
            raise RuntimeError("the listener stopped while starting")
        if not ready.done() or ready.cancelled():
            raise asyncio.TimeoutError(f"the listener was not ready within {self.timeout} s")

    async def stop(self, raise_errors: bool = True) -> None:
        """Stop the listener as :meth:`EventListener.stop` does (jobs in flight finish first)."""
        run, self._run = self._run, None
        if run is None:
            return
        self.listener.stop()
        done, _ = await asyncio.wait({run}, timeout=self.config.shutdown_grace_period + self.timeout)
        if not done:
            run.cancel()
            await asyncio.wait({run})
            if raise_errors:
                raise asyncio.TimeoutError("the listener did not stop in time")
        elif raise_errors and not run.cancelled():
            run.result()

    async def publish(self, payload: Union[str, bytes, Mapping[str, Any]], topic: Optional[str] = None, *,
                      qos: int = 1, retain: bool = False, timeout: Optional[float] = None) -> JobOutcome:
        """Publish a message to the listener, wait until it is handled, and return its :class:`JobOutcome`.

        Args:
            payload: TOML text (str or bytes, sent as they are, so invalid ones are rejected as on a broker)
                or a dict (sent as TOML).
            topic: the topic to publish on; the config's ``topic`` when omitted (which must then be a topic
                name, not a filter with ``+`` or ``#``).
            qos: of the publication; the listener receives it at min(qos, its subscription's QoS).
            retain: the retain flag of the publication.
            timeout: seconds to wait for the outcome (the ``timeout`` given to the constructor by default).

        Raises:
            LookupError: no subscription of the listener matches ``topic`` (on a broker it would be dropped).
            ValueError: ``topic`` is not a valid topic name.
            asyncio.TimeoutError: the message was not handled within ``timeout`` seconds.
            RuntimeError: the listener is not started, or it stopped with an error.
        """
        run = self._run
        if run is None or run.done():
            if run is not None and not run.cancelled() and run.exception() is not None:
                raise RuntimeError(f"the listener stopped with an error: {run.exception()!r}")
            raise RuntimeError("TestListener is not started: use 'async with TestListener(...)'")
        topic = self.config.topic if topic is None else topic
        problem = topic_name_error(topic)
        if problem:
            raise ValueError(f"cannot publish to {topic!r}: it {problem}"
                             + ("; pass topic= (the config's topic is a filter)" if topic == self.config.topic else ""))
        data = payload.encode("utf-8") if isinstance(payload, str) else \
            bytes(payload) if isinstance(payload, (bytes, bytearray)) else tomli_w.dumps(payload).encode("utf-8")
        deliveries: List[_Delivery] = []

        def tag(copy: bytes) -> bytes:
            delivery = _Delivery()
            deliveries.append(delivery)
            tagged = _TaggedPayload(copy)
            tagged.delivery = delivery
            return tagged

        copies = self.broker.route(self._tester, MemoryMessage(topic, data, qos, retain), wrap=tag)
        if not copies:
            raise LookupError(f"no subscription of the listener matches {topic!r} "
                              f"(it subscribes to {', '.join(f for f, _ in self._client.subscriptions)})")
        await self._settle(deliveries, run, self.timeout if timeout is None else timeout)
        return await self._outcome(deliveries[0])

    async def _settle(self, deliveries: List[_Delivery], run: "asyncio.Task[None]", timeout: float) -> None:
        async def handled() -> None:
            for delivery in deliveries:
                await delivery.finished.wait()
                if delivery.finishing:
                    await asyncio.wait(delivery.finishing)

        waiter = asyncio.ensure_future(handled())
        try:
            await asyncio.wait({waiter, run}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not waiter.done():
                waiter.cancel()
        if not waiter.done() or waiter.cancelled():
            if run.done():
                raise RuntimeError("the listener stopped before the message was handled"
                                   + ("" if run.cancelled() or run.exception() is None else f": {run.exception()!r}"))
            raise asyncio.TimeoutError(f"the message was not handled within {timeout} s")
        for delivery in deliveries:
            if delivery.failure is not None and not isinstance(delivery.failure, asyncio.CancelledError):
                raise delivery.failure

    async def _outcome(self, delivery: _Delivery) -> JobOutcome:
        events = {self.config.error_topic, self.config.log_topic}
        result = next((_decode(m.data) for m in delivery.publications if m.topic not in events), None)
        errors = [m for m in delivery.publications if m.topic == self.config.error_topic]
        error = _decode(errors[-1].data) if errors else None  # with retries: the last attempt's
        job_id = delivery.job_id
        if job_id is None and isinstance(error, dict):
            job_id = error.get("job_id")
        status = None
        if delivery.job_id is not None:
            job = await self.listener.get_job_status(delivery.job_id)
            status = job.status if job is not None else None
        return JobOutcome(job_id, status, result, error)


@contextlib.asynccontextmanager
async def running_listener(config: EventListenerConfig, processor: Optional[Processor] = None, *,
                           timeout: float = DEFAULT_TIMEOUT) -> AsyncIterator[EventListener]:
    """Run a real :class:`EventListener` (e.g. against the ``mqtt_broker`` fixture) for the ``with`` block.

    Yields the listener once it is connected and subscribed; on exit it is stopped as :meth:`EventListener.stop`
    does and :meth:`EventListener.run`'s error, if it ended with one, is raised.

    Raises:
        ConnectionError: the broker could not be reached.
        asyncio.TimeoutError: not ready within ``timeout`` seconds.
    """
    listener = EventListener(config)
    run = asyncio.create_task(listener.run(processor))
    ready = asyncio.ensure_future(listener.wait_until_ready())
    await asyncio.wait({run, ready}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():
        ready.cancel()
        if run.done():
            run.result()
            raise RuntimeError("the listener stopped while starting")
        listener.stop()
        await asyncio.wait({run}, timeout=timeout)
        raise asyncio.TimeoutError(f"the listener was not ready within {timeout} s")
    failed = False
    try:
        yield listener
    except BaseException:
        failed = True
        raise
    finally:
        listener.stop()
        done, _ = await asyncio.wait({run}, timeout=config.shutdown_grace_period + timeout)
        if not done:
            run.cancel()
            await asyncio.wait({run})
        elif not failed and not run.cancelled():
            run.result()
