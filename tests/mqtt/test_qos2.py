"""QoS 2 end to end against a real Mosquitto (issue 21, items 1 and 2): results never lost to the broker's
quota of QoS 2 messages in flight (nor to what a killed listener left in it), and a QoS 2 job the broker
resends after a lost connection runs once.

The SIGKILL burst at QoS 2 (jobs and results, memory and SQLite stores) is in test_acknowledgements.py; the
other brokers (amqtt's, Aedes, RabbitMQ's downgrade to QoS 1) are in tests/interop.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections import Counter
from typing import Any, Callable, Dict, List

import pytest

from Listener import JobStatus, ReturnType, create_return_type
from Listener.mqtt.packets import publish_packet
from Listener.mqtt.wire_handler import OWN_PACKET_IDS
from tests.support.brokers import BrokerEndpoint, MosquittoBroker, MqttProbe
from tests.support.job_messages import body
from tests.support.listeners import RECONNECTING, job_finished, via
from tests.support.processors import CountingProcessor
from tests.support.proxy import TcpProxy
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(90)

RESULTS = 200


def qos2_result(data: Dict[str, Any], job_id: str) -> ReturnType:
    return create_return_type({"job_id": job_id}, "", qos=2)


async def publish(sender: MqttProbe, topic: str, job_ids: List[str], qos: int) -> None:
    def go() -> None:
        for job_id in job_ids:
            sender.publish(topic, f'job_id = "{job_id}"', qos=qos)
    await asyncio.to_thread(go)


async def all_results(watcher: MqttProbe, topic: str, job_ids: List[str], timeout: float = 30.0) -> Counter[str]:
    wanted = set(job_ids)
    found = await asyncio.to_thread(
        watcher.wait_until, lambda ms: wanted <= {body(m)["job_id"] for m in ms}, timeout, topic,
        f"a result for each of {len(job_ids)} jobs")
    return Counter(body(m)["job_id"] for m in found)


@pytest.mark.parametrize("max_queued", [None, 1000], ids=["compose_config", "mosquitto_default_queue"])
async def test_every_qos2_result_reaches_the_broker_within_its_quota(
        broker_factory: Callable[..., MosquittoBroker], start_listener: Callable[..., Any],
        probe: Callable[..., MqttProbe], unique_topic: str, max_queued: Any) -> None:
    """200 QoS 2 results: Mosquitto takes 20 QoS 2 messages in flight from a client (max_inflight_messages)
    and refuses the rest with PUBREC 0x97, which a 3.1.1 client used to read as a delivery (134-170 of 200
    arrived); with max_queued_messages 0, as in docker/mosquitto/mosquitto.conf, it drops the connection
    instead. The listener keeps max_inflight_publications (20) in flight: all 200 arrive, once each."""
    broker = broker_factory(max_queued=max_queued)
    results, errors = f"{unique_topic}/results", f"{unique_topic}/error"
    listener, _ = await start_listener(qos2_result, endpoint=broker.plain, qos=1, max_concurrent_jobs=8)
    watcher = probe(results, errors, endpoint=broker.plain)
    job_ids = [f"r-{i:03d}" for i in range(RESULTS)]
    await publish(probe(endpoint=broker.plain), f"{unique_topic}/jobs", job_ids, qos=1)
    counts = await all_results(watcher, results, job_ids)
    assert set(counts.values()) == {1}, [job for job, n in counts.items() if n > 1]
    for job_id in job_ids:
        await job_finished(listener, job_id)
    metrics = listener.metrics()
    assert metrics["jobs"] == {"completed": RESULTS}
    assert metrics["publish_errors"] == 0 and metrics["connection_losses"] == 0
    assert metrics["publishes_refused"] == 0  # never more in flight than the broker takes
    assert watcher.messages(errors) == []


def leave_qos2_publications_behind(endpoint: BrokerEndpoint, client_id: str, topic: str, count: int) -> None:
    """What a listener killed with ``count`` QoS 2 results in flight leaves in its kept session: PUBLISHes with
    its packet ids that the broker acknowledged (PUBREC) and never saw released (PUBREL)."""
    with socket.create_connection((endpoint.host, endpoint.port), timeout=5) as sock:
        name = client_id.encode()
        connect = b"\x00\x04MQTT\x04\x00\x00\x3c" + len(name).to_bytes(2, "big") + name  # clean session off
        sock.sendall(b"\x10" + bytes([len(connect)]) + connect)
        assert sock.recv(4)[:1] == b"\x20"
        packet_ids = list(OWN_PACKET_IDS)[-count:]
        sock.sendall(b"".join(publish_packet(topic, b'{"left": %d}' % i, 2, False, i) for i in packet_ids))
        received = b""
        while received.count(b"\x50\x02") < count:
            received += sock.recv(4096)


@pytest.mark.parametrize("max_queued", [None, 1000], ids=["compose_config", "mosquitto_default_queue"])
async def test_qos2_publications_a_killed_listener_left_behind_never_cost_a_result(
        broker_factory: Callable[..., MosquittoBroker], start_listener: Callable[..., Any],
        probe: Callable[..., MqttProbe], unique_topic: str, max_queued: Any) -> None:
    """A kept session holding 20 unreleased QoS 2 publications fills Mosquitto's quota. Mosquitto then drops
    every new QoS 2 publication while answering a 3.1.1 client with an ordinary PUBREC (with its default
    max_queued_messages), or drops the connection (with max_queued_messages 0, as in the compose file): results
    were lost silently, or never got out. The listener releases them first: every result arrives once, and so
    do the 20 left behind (at least once: a result a killed process had sent is not lost either)."""
    broker = broker_factory(max_queued=max_queued)
    client_id = f"left-{os.urandom(4).hex()}"
    results, errors = f"{unique_topic}/results", f"{unique_topic}/error"
    watcher = probe(results, errors, endpoint=broker.plain)
    await asyncio.to_thread(leave_qos2_publications_behind, broker.plain, client_id, results, 20)
    listener, _ = await start_listener(qos2_result, endpoint=broker.plain, client_id=client_id, cleansession=False,
                                       qos=1)
    job_ids = [f"n-{i:03d}" for i in range(50)]
    await publish(probe(endpoint=broker.plain), f"{unique_topic}/jobs", job_ids, qos=1)
    found = await asyncio.to_thread(
        watcher.wait_until, lambda ms: len([m for m in ms if b"left" in m.payload]) >= 20
        and set(job_ids) <= {body(m).get("job_id") for m in ms}, 30, results, "every result and every leftover")
    counts = Counter(body(m).get("job_id") for m in found if b"job_id" in m.payload)
    assert set(counts.values()) == {1}
    assert sorted(body(m)["left"] for m in found if b"left" in m.payload) == list(range(65_516, 65_536))
    metrics = listener.metrics()
    # With max_queued_messages 0 the first QoS 2 publication, which finds the quota full, costs one connection
    # (Mosquitto drops it instead of answering); the next connection releases the leftovers at once.
    assert metrics["publish_errors"] == 0 and metrics["connection_losses"] == (1 if max_queued is None else 0)
    assert watcher.messages(errors) == []


async def test_a_qos2_job_resent_after_a_lost_connection_runs_once_and_is_then_the_listeners(
        broker_factory: Callable[..., MosquittoBroker], proxy_factory: Callable[..., TcpProxy],
        start_listener: Callable[..., Any], probe: Callable[..., MqttProbe], unique_topic: str) -> None:
    """The connection is cut while a QoS 2 job runs (no PUBREC yet): the broker resends the PUBLISH (DUP) on
    the next connection. It is the same message: the job runs once, its PUBREC goes out on the new connection
    when it finishes, and a later session with the same client id does not get it again."""
    broker = broker_factory(persistence=True)
    proxy = proxy_factory(broker.plain)
    processor = CountingProcessor(hold=("held",))
    client_id = f"qos2-resend-{os.urandom(4).hex()}"
    results, jobs = f"{unique_topic}/results", f"{unique_topic}/jobs"
    options: Dict[str, Any] = dict(client_id=client_id, cleansession=False, qos=2, **RECONNECTING)
    listener, task = await start_listener(processor, endpoint=via(proxy), **options)
    watcher = probe(results, endpoint=broker.plain)
    sender = probe(endpoint=broker.plain)

    await publish(sender, jobs, ["held"], qos=2)
    assert await asyncio.to_thread(processor.started.wait, 10)
    reconnects = listener.metrics()["reconnects"]
    proxy.cut()
    await eventually(lambda: listener.metrics()["reconnects"] > reconnects and listener.is_ready, 15, "reconnected")
    await publish(sender, jobs, ["after"], qos=2)  # queued behind the resend of "held", in order
    processor.release.set()
    counts = await all_results(watcher, results, ["held", "after"])
    assert counts == Counter({"held": 1, "after": 1})
    assert processor.runs == Counter({"held": 1, "after": 1})
    job = await listener.get_job_status("held")
    assert job is not None and job.status is JobStatus.COMPLETED

    listener.stop()
    await asyncio.wait_for(task, 15)
    second = CountingProcessor()
    await start_listener(second, endpoint=broker.plain, **options)
    await publish(sender, jobs, ["marker"], qos=2)
    await all_results(watcher, results, ["marker"])
    assert second.order == ["marker"]  # neither "held" nor "after" came back: both were handed over
