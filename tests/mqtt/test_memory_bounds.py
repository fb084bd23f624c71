"""Memory bounded by bytes, not by what the broker sends: a QoS 0 burst larger than ``max_pending_messages`` is
processed whole (the listener stops reading, the broker keeps the rest), and big QoS 1 messages from a broker that
does not limit its in-flight window are held up to a byte bound, not read into memory as they come."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Dict, List

import pytest

from Listener import EventListener
from Listener.mqtt.client import AmqttClient
from Listener.mqtt.wire_handler import HOLD_BYTES
from tests.support.brokers import BrokerFactory

pytestmark = pytest.mark.mqtt_integration

BURST = 50_000
#: How long the count of processed jobs may stay still before the test gives up (the burst was lost in part).
STILL = 15.0


async def until_count(count: Callable[[], int], target: int, what: str) -> None:
    """Wait until ``count()`` reaches ``target``; AssertionError once it stayed still for :data:`STILL` seconds."""
    last, since = -1, time.monotonic()
    while count() < target:
        if count() != last:
            last, since = count(), time.monotonic()
        elif time.monotonic() - since > STILL:
            raise AssertionError(f"{what}: {count()} of {target}, no progress for {STILL} s")
        await asyncio.sleep(0.05)


def own_client(listener: EventListener) -> AmqttClient:
    client = listener.client
    assert isinstance(client, AmqttClient)
    return client


async def test_a_qos0_burst_of_50000_jobs_from_one_publisher_is_processed_whole_with_default_settings(
        start_listener: Callable[..., Any], probe: Any, unique_topic: str) -> None:
    """It kept 16,610 of 50,000: past ``max_pending_messages`` (10,000 queued) the reader went on reading and
    dropped the rest. Now what finds no room is held in its wire form (about 60 bytes a job here), and past
    ``HOLD_BYTES`` of those the reader stops reading while Mosquitto keeps the stream."""
    done: List[str] = []

    def processor(data: Dict[str, Any], job_id: str) -> None:  # a plain def: its jobs go to a worker thread
        done.append(job_id)

    listener, _ = await start_listener(processor, log_topic_level="ERROR")
    sender = probe()
    topic = f"{unique_topic}/jobs"
    await asyncio.to_thread(lambda: [sender.publish_nowait(topic, f'job_id = "{i}"', qos=0) for i in range(BURST)])
    await until_count(lambda: len(done), BURST, "jobs of the burst processed")
    assert listener.metrics()["messages_dropped"] == 0
    assert len(set(done)) == BURST


MESSAGE = 64 * 1024
FLOOD = 1_000
PENDING = 100


async def test_big_qos1_messages_from_a_broker_without_an_inflight_limit_are_held_up_to_a_byte_bound(
        broker_factory: BrokerFactory, start_listener: Callable[..., Any], probe: Any, unique_topic: str) -> None:
    """``max_inflight_messages 0``: Mosquitto sends every QoS 1 message at once. The listener held each one past
    ``max_pending_messages`` whole, waiting for its turn, and read on (4,000 x 64 KiB: 359 MB). Now what it holds
    (queued payloads, messages held in their wire form, bytes not read yet) stays under a bound in bytes while its
    jobs are blocked, and every job runs once they are released."""
    broker = broker_factory(max_inflight=0)
    release = asyncio.Event()
    done: List[str] = []

    async def processor(data: Dict[str, Any], job_id: str) -> None:
        await release.wait()
        done.append(job_id)

    listener, _ = await start_listener(processor, endpoint=broker.plain, qos=1, max_pending_messages=PENDING,
                                       max_concurrent_jobs=4, log_topic_level="ERROR")
    client = own_client(listener)
    bound = PENDING * (MESSAGE + 1024) + 2 * HOLD_BYTES
    sender = probe(endpoint=broker.plain)
    blob = "a" * MESSAGE
    topic = f"{unique_topic}/jobs"
    await asyncio.to_thread(lambda: [sender.publish_nowait(topic, f'job_id = "{i}"\nblob = "{blob}"', qos=1)
                                     for i in range(FLOOD)])
    peak = 0

    def held() -> int:
        nonlocal peak
        peak = max(peak, client.held_bytes)
        return peak

    def settled() -> bool:  # the reader paused (bounded), or read past the bound (the old way)
        wire = client.wire
        return held() > bound or (wire is not None and wire.paused)

    deadline = time.monotonic() + 60
    while not settled():
        assert time.monotonic() < deadline, f"the reader neither paused nor read on: {client.held_bytes} bytes held"
        await asyncio.sleep(0.02)
    assert held() <= bound, f"{peak} bytes held, bound {bound}"
    release.set()
    sampling = True

    async def sample() -> None:
        while sampling:
            held()
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(sample())
    try:
        await until_count(lambda: len(done), FLOOD, "jobs of the flood processed")
    finally:
        sampling = False
        await sampler
    assert peak <= bound, f"{peak} bytes held, bound {bound}"
    assert sorted(done, key=int) == [str(i) for i in range(FLOOD)]
