"""Publications the broker answers by dropping the connection, connections reset under QoS 1 results,
liveness under a backlog, and messages dropped at stop (issue 9, items 1, 3 and 7), against real mosquitto.

docs/reliability.md ("Publications and liveness") maps each failure mode to the test here that proves it.
Every wait is bounded and waits for an event or a state, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from typing import Any, Callable, Dict, List, Set

import pytest

from Listener import JobStatus, ReturnType
from tests.support.brokers import MosquittoBroker, MqttProbe
from tests.support.job_messages import body
from tests.support.listeners import RECONNECTING, job_finished, via
from tests.support.proxy import TcpProxy
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(90)


def error_events(watcher: MqttProbe, topic: str) -> List[Dict[str, Any]]:
    return [body(m) for m in watcher.messages(topic)]


async def wait_for_error(watcher: MqttProbe, topic: str, job_id: str, timeout: float = 10.0) -> Dict[str, Any]:
    """The first error event about ``job_id`` on ``topic``."""
    found = await asyncio.to_thread(
        watcher.wait_until, lambda ms: any(body(m).get("job_id") == job_id for m in ms), timeout, topic,
        f"an error event for {job_id!r}")
    return next(body(m) for m in found if body(m).get("job_id") == job_id)


# -- item 1: poison publications ---------------------------------------------------------------------


@pytest.mark.parametrize("toml_job_id,topic_of", [
    pytest.param('"bad\\u0001id"', lambda results, job_id: f"{results}/{job_id}", id="job_id_with_U+0001"),
    pytest.param('"bad\\u0085id"', lambda results, job_id: f"{results}/{job_id}", id="job_id_with_U+0085"),
    pytest.param('"bad\\uFFFFid"', lambda results, job_id: f"{results}/{job_id}", id="job_id_with_U+FFFF"),
    pytest.param('"sys-1"', lambda results, job_id: f"$SYS/{job_id}", id="dollar_SYS_topic"),
])
async def test_a_result_topic_the_broker_would_disconnect_for_fails_its_job_and_processing_goes_on(
        broker_factory: Callable[..., MosquittoBroker], start_listener: Callable[..., Any],
        probe: Callable[..., MqttProbe], unique_topic: str, toml_job_id: str,
        topic_of: Callable[[str, str], str]) -> None:
    """Issue 9 item 1: a QoS 1 result to a topic mosquitto disconnects for (control character, non-character,
    ``$SYS``) is never sent: the job is FAILED with a processing_error event, the connection stays up, and the
    next job is processed as usual."""
    broker = broker_factory()
    results, errors, jobs = f"{unique_topic}/results", f"{unique_topic}/error", f"{unique_topic}/jobs"

    def processor(data: Dict[str, Any], job_id: str) -> ReturnType:
        topic = f"{results}/{job_id}" if job_id == "ok-1" else topic_of(results, job_id)
        return ReturnType(data={"job_id": job_id}, topic=topic, qos=1)

    listener, _ = await start_listener(processor, endpoint=broker.plain, **RECONNECTING)
    watcher = probe(f"{results}/#", errors, endpoint=broker.plain)
    sender = probe(endpoint=broker.plain)
    await asyncio.to_thread(sender.publish, jobs, f"job_id = {toml_job_id}")
    event = await asyncio.to_thread(
        watcher.wait_until, lambda ms: len(ms) >= 1, 10.0, errors, "an error event for the poison job")
    bad = body(event[0])
    assert bad["error_type"] == "processing_error" and "Result topic" in bad["error_message"]
    job = await listener.get_job_status(bad["job_id"])
    assert job is not None and job.status is JobStatus.FAILED

    await asyncio.to_thread(sender.publish, jobs, 'job_id = "ok-1"')
    await asyncio.to_thread(watcher.wait_for, 1, 10.0, f"{results}/ok-1")
    await job_finished(listener, "ok-1")
    metrics = listener.metrics()
    assert metrics["connection_losses"] == 0 and metrics["reconnects"] == 0
    assert metrics["jobs_finished"] == {"failed": 1, "completed": 1}


async def test_a_result_above_the_brokers_packet_limit_is_dropped_after_two_lost_connections_and_reported(
        broker_factory: Callable[..., MosquittoBroker], start_listener: Callable[..., Any],
        probe: Callable[..., MqttProbe], unique_topic: str, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 9 item 1: mosquitto (max_packet_size 2 KiB) drops the connection for a 10 kB QoS 1 result. The
    result is kept and retried once after the reconnect; when that attempt ends the connection too it is dropped
    and reported (publish_error event, ERROR log, publish_errors), and later jobs are processed."""
    caplog.set_level(logging.INFO, logger="Listener")
    broker = broker_factory(max_packet_size=2048)
    results, errors, jobs = f"{unique_topic}/results", f"{unique_topic}/error", f"{unique_topic}/jobs"

    def processor(data: Dict[str, Any], job_id: str) -> ReturnType:
        size = 10_000 if job_id.startswith("big") else 10
        return ReturnType(data={"job_id": job_id, "blob": "x" * size}, topic=results, qos=1)

    listener, _ = await start_listener(processor, endpoint=broker.plain, **RECONNECTING)
    watcher = probe(results, errors, endpoint=broker.plain)
    sender = probe(endpoint=broker.plain)
    await asyncio.to_thread(sender.publish, jobs, 'job_id = "big-1"')
    event = await wait_for_error(watcher, errors, "big-1", timeout=20.0)
    assert event["error_type"] == "publish_error" and "given up after 2 attempts" in event["error_message"]

    await asyncio.to_thread(sender.publish, jobs, 'job_id = "ok-1"')
    found = await asyncio.to_thread(watcher.wait_for, 1, 10.0, results)
    assert [body(m)["job_id"] for m in found] == ["ok-1"]
    metrics = listener.metrics()
    assert 1 <= metrics["connection_losses"] <= 2, metrics
    assert metrics["publish_errors"] >= 1 and metrics["errors"].get("publish_error") == 1
    dropped = [r for r in caplog.records if r.levelno == logging.ERROR and "Dropped the result of job big-1" in r.getMessage()]
    assert len(dropped) == 1


# -- item 7: QoS 1 results in flight when the connection resets -----------------------------------------


async def test_qos1_results_in_flight_through_connection_resets_are_resent_or_reported(
        broker_factory: Callable[..., MosquittoBroker], proxy_factory: Callable[..., TcpProxy],
        start_listener: Callable[..., Any], probe: Callable[..., MqttProbe], unique_topic: str) -> None:
    """Issue 9 item 7: 400 QoS 1 jobs with QoS 1 results, the connection reset 3 times while results are in flight:
    every job ends with its result published or a publish_error event reported, never silently lost."""
    broker = broker_factory()
    proxy = proxy_factory(broker.plain)
    results, errors, jobs = f"{unique_topic}/results", f"{unique_topic}/error", f"{unique_topic}/jobs"
    listener, _ = await start_listener(lambda data, job_id: {"job_id": job_id}, endpoint=via(proxy),
                                       client_id=f"resets-{os.urandom(4).hex()}", cleansession=False, qos=1,
                                       default_qos=1, **RECONNECTING)
    watcher = probe(results, errors, endpoint=broker.plain)
    sender = probe(endpoint=broker.plain)
    job_ids = [f"j-{i}" for i in range(400)]

    def accounted() -> Set[str]:
        done = {body(m).get("job_id") for m in watcher.messages(results)}
        reported = {e.get("job_id") for e in error_events(watcher, errors) if e.get("error_type") == "publish_error"}
        return done | reported

    async def cut_while_publishing() -> int:
        cuts = 0
        for threshold in (60, 160, 260):
            await eventually(lambda: len(watcher.messages(results)) >= threshold, 30, f"{threshold} results")
            proxy.cut()
            cuts += 1
        return cuts

    cutter = asyncio.create_task(cut_while_publishing())
    await asyncio.to_thread(lambda: [sender.publish(jobs, f'job_id = "{job_id}"', qos=1) for job_id in job_ids])
    assert await asyncio.wait_for(cutter, 40) == 3
    await eventually(lambda: set(job_ids) <= accounted(), 40, "every job accounted for")
    assert {e.get("error_type") for e in error_events(watcher, errors)} <= {"publish_error"}
    assert not any("inflight_out" in e.get("error_message", "") for e in error_events(watcher, errors))
    metrics = listener.metrics()
    assert metrics["connection_losses"] >= 3


# -- item 3: liveness under a backlog; a big payload parsed off the loop ------------------------------


@pytest.mark.slow
async def test_a_large_backlog_is_not_mistaken_for_a_dead_connection(
        broker_factory: Callable[..., MosquittoBroker], start_listener: Callable[..., Any],
        probe: Callable[..., MqttProbe], unique_topic: str) -> None:
    """Issue 9 item 3: 20,000 QoS 0 jobs flood the listener (keep_alive 2 s). The PINGRESP waits behind them, but
    the packets arriving are proof of life: the connection is never dropped and every message is received."""
    count = 20_000
    broker = broker_factory()
    listener, _ = await start_listener(None, endpoint=broker.plain, keep_alive=2, ping_delay=1,
                                       max_jobs_in_memory=count + 10, max_pending_messages=count + 10,
                                       **RECONNECTING)
    sender = probe(endpoint=broker.plain)
    jobs = f"{unique_topic}/jobs"

    def flood() -> None:
        for i in range(count):
            sender.publish_nowait(jobs, f'job_id = "b-{i}"', 0)
        # acknowledged once paho has written the 20,000 before it: allow for a loaded machine
        sender.publish(jobs, 'job_id = "last"', qos=1, timeout=60)

    await asyncio.to_thread(flood)
    await eventually(lambda: listener.metrics()["messages_received"] >= count + 1, 60, "every message received")
    metrics = listener.metrics()
    assert metrics["connection_losses"] == 0, metrics
    assert metrics["jobs_finished"].get("completed") == count + 1


# -- extra: messages dropped at stop are counted ------------------------------------------------------


async def test_stop_logs_how_many_queued_messages_the_grace_period_dropped(
        start_listener: Callable[..., Any], probe: Callable[..., MqttProbe], unique_topic: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """Stopped with hundreds of QoS 0 jobs queued and a slow processor: what the grace period leaves is
    dropped, and the log says how many."""
    caplog.set_level(logging.INFO, logger="Listener")
    count = 500

    async def slow(data: Dict[str, Any], job_id: str) -> None:
        await asyncio.sleep(0.05)

    listener, task = await start_listener(slow, shutdown_grace_period=0.3)
    sender = probe()
    jobs = f"{unique_topic}/jobs"

    def flood() -> None:
        for i in range(count):
            sender.publish_nowait(jobs, f'job_id = "q-{i}"', 0)
        sender.publish(jobs, 'job_id = "q-last"', qos=1)

    await asyncio.to_thread(flood)
    await eventually(lambda: listener.metrics()["messages_received"] + listener.metrics()["queue_depth"] >= count + 1,
                     15, "every message queued")
    listener.stop()
    await asyncio.wait_for(task, 10)
    processed = listener.metrics()["messages_received"]
    lines = [r.getMessage() for r in caplog.records if "unprocessed when the listener stopped" in r.getMessage()]
    assert len(lines) == 1, lines
    match = re.match(r"Dropped (\d+) received message", lines[0])
    assert match is not None and int(match.group(1)) == count + 1 - processed > 0
    assert "QoS 0, lost" in lines[0]  # and the QoS 1 one, if dropped, goes with the clean session: all lost (ERROR)


async def test_direct_qos0_writes_reach_the_broker_whole_even_past_the_socket_buffer(
        start_listener: Callable[..., Any], probe: Callable[..., Any], unique_topic: str) -> None:
    """QoS 0 publications skip amqtt's packet machinery (one write each). A burst larger than the socket's
    buffer waits for it to drain, and every message arrives whole and in order; once the connection is
    closed, a QoS 0 publish goes back through amqtt, which refuses it."""
    listener, _ = await start_listener()
    topic = f"{unique_topic}/direct"
    watcher = probe(topic)
    payloads = [bytes([65 + i]) * 1_500_000 for i in range(4)]
    for payload in payloads:
        await asyncio.wait_for(listener.client.publish(topic, payload, qos=0, retain=False), 30)
    received = await asyncio.to_thread(watcher.wait_for, 4, 30.0, topic)
    assert [m.payload for m in received] == payloads
    client = listener.client  # the listener reconnects with a new client meanwhile: this one stays closed
    await client.disconnect()
    with pytest.raises(Exception):
        await asyncio.wait_for(client.publish(topic, b"late", qos=0, retain=False), 10)
