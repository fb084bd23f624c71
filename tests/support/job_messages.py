"""Jobs published and results read through an :class:`~tests.support.brokers.MqttProbe`, from async tests.

The probe's calls block; these run them on a thread so the listener on the test's event loop keeps going.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any, Dict, Iterable, List

from tests.support.brokers import MqttProbe

__all__ = ["assert_each_result_once", "body", "duplicates", "job_ids_of", "publish_jobs", "results_for", "wait_for"]


def body(message: Any) -> Dict[str, Any]:
    """The JSON payload of a received MQTT message."""
    return json.loads(message.payload.decode("utf-8"))  # type: ignore[no-any-return]


def job_ids_of(messages: Iterable[Any]) -> List[str]:
    """The ``job_id`` of each result message, in arrival order."""
    return [str(body(message).get("job_id")) for message in messages]


def duplicates(messages: Iterable[Any]) -> Dict[str, int]:
    """Job ids with more than one result among ``messages``, with their counts."""
    counts = Counter(job_ids_of(messages))
    return {job_id: count for job_id, count in counts.items() if count > 1}


def assert_each_result_once(messages: Iterable[Any]) -> None:
    """No job's result was published twice."""
    assert duplicates(messages) == {}


async def publish_jobs(sender: MqttProbe, topic: str, job_ids: Iterable[str], qos: int = 1) -> None:
    """Publish one TOML job per id, in order; at QoS 1 and 2 each is acknowledged by the broker before the next."""
    def publish() -> None:
        for job_id in job_ids:
            if qos:
                sender.publish(topic, f'job_id = "{job_id}"', qos=qos)
            else:
                sender.publish_nowait(topic, f'job_id = "{job_id}"', qos=0)
    await asyncio.to_thread(publish)


async def wait_for(watcher: MqttProbe, count: int, topic: str, timeout: float = 10.0) -> List[Any]:
    """Wait until ``count`` messages arrived on ``topic``; return them."""
    return await asyncio.to_thread(watcher.wait_for, count, timeout, topic)


async def results_for(watcher: MqttProbe, topic: str, job_ids: Iterable[str], timeout: float = 20.0) -> List[Any]:
    """Wait until a result for every one of ``job_ids`` arrived on ``topic``; return every message there."""
    wanted = set(job_ids)
    return await asyncio.to_thread(
        watcher.wait_until, lambda found: wanted <= set(job_ids_of(found)), timeout, topic,
        f"results for {sorted(wanted)}")
