"""Helpers shared by the interop tests: a counting processor, publishing jobs, waiting for their results."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from typing import Any, Dict, Iterable, List, Optional, Set

from Listener import EventListener, create_return_type
from Listener.results import ReturnType
from tests.support.brokers import MqttProbe


def body(message: Any) -> Dict[str, Any]:
    """The JSON payload of a received MQTT message."""
    return json.loads(message.payload.decode("utf-8"))  # type: ignore[no-any-return]


def job_ids_of(messages: Iterable[Any]) -> List[str]:
    """The ``job_id`` of each result message, in arrival order."""
    return [str(body(message).get("job_id")) for message in messages]


class CountingProcessor:
    """A sync processor that counts its runs per job and returns ``{"job_id": ...}`` on ``topic`` at ``qos``.

    ``hold``: a job id whose run waits until :attr:`release` is set (:attr:`started` is set when it begins).
    ``seconds``: how long each run takes otherwise.
    """

    def __init__(self, topic: str, qos: int = 1, retain: bool = False, hold: Optional[str] = None,
                 seconds: float = 0.0) -> None:
        self.topic = topic
        self.qos = qos
        self.retain = retain
        self.hold = hold
        self.seconds = seconds
        self.runs: Counter[str] = Counter()
        self.started = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, data: Dict[str, Any], job_id: str) -> ReturnType:
        with self._lock:
            self.runs[job_id] += 1
        if job_id == self.hold:
            self.started.set()
            if not self.release.wait(60):
                raise RuntimeError("never released")
        elif self.seconds:
            time.sleep(self.seconds)
        return create_return_type({"job_id": job_id, "topic": data.get("_topic")}, self.topic, qos=self.qos,
                                  retain=self.retain)

    def ran_twice(self) -> List[str]:
        """Job ids that ran more than once."""
        with self._lock:
            return sorted(job_id for job_id, count in self.runs.items() if count > 1)

    def ran(self) -> List[str]:
        """Job ids that ran at least once."""
        with self._lock:
            return sorted(self.runs)


def publish_jobs(sender: MqttProbe, topic: str, job_ids: Iterable[str], qos: int = 1) -> None:
    """Publish one TOML job per id; QoS 1 and 2 publications are each acknowledged before the next."""
    for job_id in job_ids:
        if qos:
            sender.publish(topic, f'job_id = "{job_id}"', qos=qos)
        else:
            sender.publish_nowait(topic, f'job_id = "{job_id}"', qos=0)


async def results_for(watcher: MqttProbe, topic: str, job_ids: Iterable[str], timeout: float = 20.0) -> List[Any]:
    """Wait until a result for every one of ``job_ids`` arrived on ``topic``; return every message there."""
    wanted = set(job_ids)
    return await asyncio.to_thread(
        watcher.wait_until, lambda found: wanted <= set(job_ids_of(found)), timeout, topic,
        f"results for {sorted(wanted)}")


def duplicates(messages: Iterable[Any]) -> Dict[str, int]:
    """Job ids with more than one result among ``messages``, with their counts."""
    counts = Counter(job_ids_of(messages))
    return {job_id: count for job_id, count in counts.items() if count > 1}


def received(listener: EventListener) -> int:
    """How many messages the listener took from the broker."""
    return int(listener.metrics()["messages_received"])


def publish_errors(listener: EventListener) -> int:
    """How many of the listener's publications failed."""
    return int(listener.metrics()["publish_errors"])


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
