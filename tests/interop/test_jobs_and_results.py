"""Jobs and results through every broker of the tier: each QoS of job with each QoS of result, a burst of QoS 2,
retained results, and ``+``/``#`` wildcards in ``topic``.

The contract, on every broker: every job runs once and gets exactly one result, and no result needs an error
event. A broker that does not do QoS 2 (RabbitMQ 3.10) grants QoS 1 instead; that downgrade is accepted, a
``publish_error`` is not.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, Callable, List

import pytest

from tests.support.brokers import MqttProbe
from tests.support.interop_brokers import InteropBroker
from tests.support.job_messages import body, duplicates, job_ids_of, publish_jobs, results_for
from tests.support.listeners import StartListener, all_finished, publish_errors
from tests.support.processors import CountingProcessor

pytestmark = pytest.mark.timeout(90)

JOBS = 5


def delivered_qos(broker: InteropBroker, qos: int) -> int:
    """The QoS a subscriber at QoS 2 receives a publication made at ``qos`` with."""
    granted = 2 if broker.traits.qos2 else 1
    return granted if broker.traits.upgrades_qos else min(qos, granted)


async def fence(watcher: MqttProbe, sender: MqttProbe, jobs: str, results: str, qos: int,
                job_id: str = "fence") -> List[Any]:
    """Publish one more job and wait for its result: a duplicate of an earlier result of the same listener would
    have come first (one job at a time, results in order). Returns every result message, the fence's included."""
    await publish_jobs(sender, jobs, [job_id], qos)
    return await results_for(watcher, results, [job_id])


@pytest.mark.parametrize("job_qos, result_qos", list(itertools.product((0, 1, 2), (0, 1, 2))))
async def test_every_job_gets_exactly_one_result(interop_broker: InteropBroker, start_listener: StartListener,
                                                 probe: Callable[..., MqttProbe], unique_topic: str,
                                                 job_qos: int, result_qos: int) -> None:
    jobs, results, errors = f"{unique_topic}/jobs", f"{unique_topic}/results", f"{unique_topic}/error"
    processor = CountingProcessor(results, qos=result_qos)
    listener, _ = await start_listener(interop_broker.endpoint, processor, qos=job_qos)
    watcher = probe(interop_broker.endpoint, results, errors)
    sender = probe(interop_broker.endpoint)
    job_ids = [f"j{job_qos}r{result_qos}-{index}" for index in range(JOBS)]

    await publish_jobs(sender, jobs, job_ids, job_qos)
    await results_for(watcher, results, job_ids)
    messages = await fence(watcher, sender, jobs, results, job_qos)
    await all_finished(listener, job_ids + ["fence"])

    assert sorted(job_ids_of(messages)) == sorted(job_ids + ["fence"])
    assert duplicates(messages) == {}
    assert processor.ran_twice() == []
    assert {message.qos for message in messages} == {delivered_qos(interop_broker, result_qos)}
    assert [body(message) for message in watcher.messages(errors)] == []
    assert publish_errors(listener) == 0


async def test_a_burst_of_qos2_jobs_with_qos2_results_runs_each_once(
        interop_broker: InteropBroker, start_listener: StartListener, probe: Callable[..., MqttProbe],
        unique_topic: str) -> None:
    jobs, results, errors = f"{unique_topic}/jobs", f"{unique_topic}/results", f"{unique_topic}/error"
    processor = CountingProcessor(results, qos=2)
    listener, _ = await start_listener(interop_broker.endpoint, processor, qos=2, max_concurrent_jobs=4)
    watcher = probe(interop_broker.endpoint, results, errors)
    senders = [probe(interop_broker.endpoint) for _ in range(2)]
    job_ids = [f"burst-{index}" for index in range(60)]

    await asyncio.gather(*(publish_jobs(sender, jobs, job_ids[part::2], 2)
                           for part, sender in enumerate(senders)))
    await results_for(watcher, results, job_ids, timeout=30)
    messages = await fence(watcher, senders[0], jobs, results, 2)
    await all_finished(listener, job_ids + ["fence"], timeout=30)

    assert duplicates(messages) == {}
    assert processor.ran_twice() == [] and len(processor.ran()) == len(job_ids) + 1
    assert [body(message) for message in watcher.messages(errors)] == []
    assert publish_errors(listener) == 0


async def test_a_retained_result_reaches_a_subscriber_that_comes_later(
        interop_broker: InteropBroker, start_listener: StartListener, probe: Callable[..., MqttProbe],
        unique_topic: str) -> None:
    assert interop_broker.traits.retained  # every broker of the tier keeps retained messages
    retained = f"{unique_topic}/retained"
    await start_listener(interop_broker.endpoint, CountingProcessor(retained, qos=1, retain=True), qos=1)
    early = probe(interop_broker.endpoint, retained)
    sender = probe(interop_broker.endpoint)
    await publish_jobs(sender, f"{unique_topic}/jobs", ["kept"], 1)
    [live] = await results_for(early, retained, ["kept"])
    assert not live.retain  # a live delivery carries no retain flag (MQTT-3.3.1-9)

    late = probe(interop_broker.endpoint, retained)
    await results_for(late, retained, ["kept"])
    # A live message after it: any other copy of the retained one was sent before it.
    await asyncio.to_thread(sender.publish, retained, '{"job_id": "after"}', 1)
    messages = await results_for(late, retained, ["after"])
    stored = [message for message in messages if body(message)["job_id"] == "kept"]
    assert all(message.retain and body(message) == body(live) for message in stored)
    # amqtt also sends it when the probe connects (the early probe subscribed to it): see retained_on_connect.
    assert len(stored) == (2 if interop_broker.traits.retained_on_connect else 1)
    await asyncio.to_thread(sender.publish, retained, b"", 1, True)  # cleared: amqtt would send it to every newcomer


async def test_plus_and_hash_wildcards_choose_the_jobs(interop_broker: InteropBroker, start_listener: StartListener,
                                                       probe: Callable[..., MqttProbe], unique_topic: str) -> None:
    results = f"{unique_topic}/results"
    plus, hash_ = f"{unique_topic}/plus/+/jobs", f"{unique_topic}/hash/#"
    await start_listener(interop_broker.endpoint, CountingProcessor(results, qos=1), qos=1, topic=plus)
    await start_listener(interop_broker.endpoint, CountingProcessor(results, qos=1), qos=1, topic=hash_)
    watcher = probe(interop_broker.endpoint, results)
    sender = probe(interop_broker.endpoint)
    sent = {
        f"{unique_topic}/plus/a/jobs": "plus-one-level",
        f"{unique_topic}/plus/a/b/jobs": "plus-two-levels",  # + is exactly one level: no match
        f"{unique_topic}/plus/jobs": "plus-no-level",  # nor zero levels
        f"{unique_topic}/hash": "hash-parent",  # # matches its parent level too (MQTT-4.7.1-2)
        f"{unique_topic}/hash/x": "hash-one-level",
        f"{unique_topic}/hash/x/y/z": "hash-three-levels",
        f"{unique_topic}/hashed/x": "hash-other-branch",  # not under .../hash/
    }
    for topic, job_id in sent.items():
        await asyncio.to_thread(sender.publish, topic, f'job_id = "{job_id}"', 1)
    matching = ["plus-one-level", "hash-parent", "hash-one-level", "hash-three-levels"]
    await results_for(watcher, results, matching)
    await fence(watcher, sender, f"{unique_topic}/plus/fence/jobs", results, 1, "plus-fence")
    messages = await fence(watcher, sender, f"{unique_topic}/hash/fence", results, 1, "hash-fence")

    assert sorted(job_ids_of(messages)) == sorted(matching + ["plus-fence", "hash-fence"])
    topics = {body(message)["job_id"]: body(message)["topic"] for message in messages}
    assert all(topics[job_id] == topic for topic, job_id in sent.items() if job_id in topics)
