"""Listeners running in the test's own event loop against a real broker: their config, starting one until it
is subscribed, stopping them, and asking them about their jobs.

The ``start_listener`` fixtures of ``tests/mqtt`` and ``tests/interop`` are built from these; a test that needs
a listener the fixtures cannot give uses them directly.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Awaitable, Callable, Dict, Iterable, List, Set, Tuple

from Listener import EventListener, EventListenerConfig
from tests.support.brokers import BrokerEndpoint
from tests.support.proxy import TcpProxy

__all__ = [
    "READY_TIMEOUT", "RECONNECTING", "StartListener", "all_finished", "job_finished", "listener_config", "publish_errors",
    "received", "run_until_ready", "statuses", "stop_listeners", "via",
]

#: How long a listener may take to connect and subscribe.
READY_TIMEOUT = 10.0
#: Reconnect quickly and forever: the tests decide when the listener may come back.
RECONNECTING: Dict[str, Any] = dict(reconnect_retries=-1, reconnect_max_interval=0.5, connect_timeout=2)

#: The ``start_listener`` fixtures: ``await start_listener(...)`` gives the listener and its ``run()`` task.
StartListener = Callable[..., Awaitable[Tuple[EventListener, "asyncio.Task[None]"]]]


def listener_config(endpoint: BrokerEndpoint, prefix: str, **overrides: Any) -> EventListenerConfig:
    """A config for ``endpoint`` whose topics all live under ``prefix``; no reconnects unless overridden."""
    options: Dict[str, Any] = dict(
        host=endpoint.host, port=endpoint.port, username=endpoint.username, password=endpoint.password,
        client_id=f"listener-{uuid.uuid4().hex[:12]}", topic=f"{prefix}/jobs", error_topic=f"{prefix}/error",
        log_topic=f"{prefix}/log", results_topic=f"{prefix}/results", reconnect_retries=0, connect_timeout=5,
    )
    if endpoint.tls:
        options["cafile"] = endpoint.cafile
    options.update(overrides)
    return EventListenerConfig(**options)


def via(proxy: TcpProxy) -> BrokerEndpoint:
    """The endpoint a listener uses to reach its broker through ``proxy``."""
    return BrokerEndpoint(proxy.host, proxy.port)


async def run_until_ready(listener: EventListener, processor: Any,
                          timeout: float = READY_TIMEOUT) -> "asyncio.Task[None]":
    """Start ``listener.run(processor)`` in a task and return it once subscribed (run()'s error if it ends first)."""
    task = asyncio.create_task(listener.run(processor))
    ready = asyncio.create_task(listener.wait_until_ready(timeout))
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()
    await ready
    return task


async def stop_listeners(running: List[Tuple[EventListener, "asyncio.Task[None]"]], timeout: float) -> None:
    """Stop each listener and wait (up to ``timeout`` s each) for its ``run()`` task to end."""
    for listener, task in running:
        listener.stop()
        try:
            await asyncio.wait_for(task, timeout)
        except Exception:  # noqa: S110 - the test may have ended the listener on purpose
            pass


async def job_finished(listener: EventListener, job_id: str, timeout: float = 10.0) -> None:
    """Wait until ``job_id`` is COMPLETED or FAILED."""
    deadline = time.monotonic() + timeout
    while not await listener.is_job_completed(job_id):
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} not finished within {timeout} s: {await listener.get_job_status(job_id)}")
        await asyncio.sleep(0.02)


_UNFINISHED = frozenset({"pending", "running", "missing"})


async def all_finished(listener: EventListener, job_ids: Iterable[str], timeout: float = 20.0) -> None:
    """Wait until every one of ``job_ids`` is COMPLETED, FAILED or DUPLICATE (its message came again after it
    finished): a job whose result is published at QoS 1 or 2 completes once the broker acknowledged the result
    (or the listener gave up on it)."""
    pending = list(job_ids)
    deadline = time.monotonic() + timeout
    while pending:
        pending = [job_id for job_id in pending if (await statuses(listener, [job_id])) & _UNFINISHED]
        if pending and time.monotonic() > deadline:
            raise AssertionError(f"jobs not finished within {timeout} s: {pending}")
        if pending:
            await asyncio.sleep(0.02)


async def statuses(listener: EventListener, job_ids: Iterable[str]) -> Set[str]:
    """The set of statuses (``"completed"``, ``"failed"``, ...) of ``job_ids`` in the listener's job store."""
    found: Set[str] = set()
    for job_id in job_ids:
        job = await listener.get_job_status(job_id)
        found.add("missing" if job is None else job.status.value)
    return found


def received(listener: EventListener) -> int:
    """How many messages the listener took from the broker."""
    return int(listener.metrics()["messages_received"])


def publish_errors(listener: EventListener) -> int:
    """How many of the listener's publications failed."""
    return int(listener.metrics()["publish_errors"])
