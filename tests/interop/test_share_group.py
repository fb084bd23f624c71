"""``share_group`` on every broker of the tier: where the broker implements shared subscriptions (Mosquitto), two
listeners of one group split the jobs and each job runs once; where it does not (amqtt's broker, Aedes, RabbitMQ
3.10 grant ``$share/...`` as a plain filter that never matches), ``run()`` fails at start-up with a
``ConnectionError`` that says so, instead of waiting forever for jobs that never come."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Callable

import pytest

from Listener import EventListener
from tests.support.brokers import MqttProbe
from tests.support.interop_brokers import InteropBroker
from tests.support.job_messages import body, duplicates, publish_jobs, results_for
from tests.support.listeners import StartListener, listener_config
from tests.support.processors import CountingProcessor

pytestmark = pytest.mark.timeout(90)

#: How long run() may take to connect, find out and fail.
REFUSAL_TIMEOUT = 30.0


async def test_a_share_group_splits_the_jobs_or_is_refused_at_start_up(
        interop_broker: InteropBroker, start_listener: StartListener, probe: Callable[..., MqttProbe],
        unique_topic: str) -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    results = f"{unique_topic}/results"
    if not interop_broker.traits.shared_subscriptions:
        listener = EventListener(listener_config(interop_broker.endpoint, unique_topic, share_group=group, qos=1))
        run = asyncio.create_task(listener.run(CountingProcessor(results)))
        ready = asyncio.create_task(listener.wait_until_ready(REFUSAL_TIMEOUT))
        try:
            await asyncio.wait({run, ready}, timeout=REFUSAL_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
            assert run.done(), (f"run() subscribed to $share/{group}/... on {interop_broker.kind}, which has no shared "
                                f"subscriptions: it would wait forever for jobs that never come")
            with pytest.raises(ConnectionError, match="shared subscription"):
                run.result()
        finally:
            listener.stop()
            ready.cancel()
            await asyncio.wait({run, ready}, timeout=REFUSAL_TIMEOUT)
        return

    first, second = CountingProcessor(results), CountingProcessor(results)
    await start_listener(interop_broker.endpoint, first, share_group=group, qos=1)
    await start_listener(interop_broker.endpoint, second, share_group=group, qos=1)
    watcher = probe(interop_broker.endpoint, results)
    job_ids = [f"s-{index}" for index in range(40)]
    await publish_jobs(probe(interop_broker.endpoint), f"{unique_topic}/jobs", job_ids)
    messages = await results_for(watcher, results, job_ids)

    assert duplicates(messages) == {}
    runs = Counter(first.runs) + Counter(second.runs)
    assert sorted(runs) == sorted(job_ids) and set(runs.values()) == {1}  # each job ran once, in one member
    assert first.runs and second.runs, "both members took jobs"
    assert {body(message)["topic"] for message in messages} == {f"{unique_topic}/jobs"}
