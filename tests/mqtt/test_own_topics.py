"""The listener's own publications must never feed back into it (issue 9, item 2), through Mosquitto.

Before the fix one invalid message, with a subscription covering ``error_topic``/``log_topic``, made
the listener reject its own error event, publish another, and so on: thousands of messages a second.
Each test sends one invalid message, then a valid job, and counts everything published under the
test's prefix with an independent subscriber.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Dict

import pytest

from Listener import EventListener, ReturnType
from tests.support.brokers import BrokerEndpoint
from tests.support.job_messages import body, wait_for


WAIT = 10.0


async def metric_reaches(listener: EventListener, name: str, value: int) -> None:
    """Wait (bounded) until ``listener.metrics()[name]`` is at least ``value``."""
    async def poll() -> None:
        while listener.metrics()[name] < value:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(poll(), WAIT)


def echo_processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
    return {"job_id": job_id, "echo": data.get("value")}


async def test_manual_5_1_2_layout_ignores_its_own_error_and_log_events(
        start_listener: Callable[..., Any], probe: Any, unique_topic: str, caplog: pytest.LogCaptureFixture) -> None:
    # The manual's §5.1.2: topic="events/+", error_topic="events/errors", log_topic="events/logs".
    caplog.set_level(logging.WARNING, logger="Listener.event_listener")
    events = unique_topic
    watcher = probe(f"{events}/#")
    listener, _ = await start_listener(echo_processor, topic=f"{events}/+", error_topic=f"{events}/errors",
                                       log_topic=f"{events}/logs", results_topic=f"{events}/results")
    assert "also receives error_topic" in caplog.text and "also receives log_topic" in caplog.text
    sender = probe()
    sender.publish(f"{events}/in", b"this is = = not TOML")
    [error] = await wait_for(watcher, 1, f"{events}/errors")
    assert body(error)["error_type"] == "invalid_payload"
    await metric_reaches(listener, "own_messages_ignored", 2)  # its error event and its log event came back
    sender.publish(f"{events}/in", 'job_id = "after"\nvalue = 7')
    [result] = await wait_for(watcher, 1, f"{events}/results")
    assert body(result) == {"job_id": "after", "echo": 7}
    await metric_reaches(listener, "own_messages_ignored", 3)  # and so did the result
    published = await asyncio.to_thread(watcher.wait_for, 5, WAIT)
    assert sorted(m.topic.rsplit("/", 1)[1] for m in published) == ["errors", "in", "in", "logs", "results"]
    snapshot = listener.metrics()
    assert snapshot["own_messages_ignored"] == 3 and snapshot["messages_rejected"] == 1
    assert snapshot["errors"] == {"invalid_payload": 1}
    assert list(await listener.get_all_jobs()) == ["after"]


async def test_hash_subscription_over_the_default_style_layout(start_listener: Callable[..., Any], probe: Any,
                                                               unique_topic: str) -> None:
    # Like topic="test/#" with the defaults test/error, test/log, test/results.
    watcher = probe(f"{unique_topic}/#")
    listener, _ = await start_listener(echo_processor, topic=f"{unique_topic}/#", log_topic_level="INFO")
    sender = probe()
    sender.publish(f"{unique_topic}/jobs", b"\xff\xfe not UTF-8")
    await wait_for(watcher, 1, f"{unique_topic}/error")
    sender.publish(f"{unique_topic}/jobs", 'job_id = "ok"\nvalue = "v"')
    [result] = await wait_for(watcher, 1, f"{unique_topic}/results")
    assert body(result) == {"job_id": "ok", "echo": "v"}
    # Log events listener_started, payload_rejected and job_completed (INFO and up), the error event and
    # the result: all five come back to the listener, which takes none of them as a job.
    logs = await wait_for(watcher, 3, f"{unique_topic}/log")
    assert [body(m)["event"] for m in logs] == ["listener_started", "payload_rejected", "job_completed"]
    await metric_reaches(listener, "own_messages_ignored", 5)
    published = await asyncio.to_thread(watcher.wait_for, 7, WAIT)
    assert sorted(m.topic.rsplit("/", 1)[1] for m in published) == [
        "error", "jobs", "jobs", "log", "log", "log", "results"]
    snapshot = listener.metrics()
    assert snapshot["own_messages_ignored"] == 5 and snapshot["errors"] == {"invalid_payload": 1}


async def test_return_type_to_a_covered_topic_is_not_taken_back_as_an_invalid_job(
        start_listener: Callable[..., Any], probe: Any, unique_topic: str) -> None:
    # The manual's §11.2.1: topic="events/#", results published to "events/processed".
    events = f"{unique_topic}/events"
    error_topic = f"{unique_topic}/out/error"  # outside the subscription: every error event is visible
    watcher = probe(f"{unique_topic}/#")

    def processor(data: Dict[str, Any], job_id: str) -> ReturnType:
        return ReturnType(data={"job_id": job_id, "processed": True}, topic=f"{events}/processed", qos=1)

    listener, _ = await start_listener(processor, topic=f"{events}/#", error_topic=error_topic, qos=1)
    sender = probe()
    sender.publish(f"{events}/in", b"[[[ broken")
    await wait_for(watcher, 1, error_topic)
    for n in range(3):
        sender.publish(f"{events}/in", f'job_id = "job-{n}"')
    await wait_for(watcher, 3, f"{events}/processed")
    await metric_reaches(listener, "own_echoes_ignored", 3)
    assert len(watcher.messages(error_topic)) == 1  # only the broken message's error
    assert listener.metrics()["errors"] == {"invalid_payload": 1}
    assert sorted(await listener.get_all_jobs()) == ["job-0", "job-1", "job-2"]


async def test_send_message_to_the_subscribed_topic_is_a_job_but_own_topics_stay_ignored(
        start_listener: Callable[..., Any], probe: Any, unique_topic: str) -> None:
    # The first release's suite publishes its jobs with the listener's own _send_message while run() runs.
    watcher = probe(f"{unique_topic}/#")
    listener, _ = await start_listener(echo_processor, topic=f"{unique_topic}/#")
    await listener._send_message(topic=f"{unique_topic}/jobs", data='job_id = "sent"\nvalue = 1', qos=1, retain=False)
    [result] = await wait_for(watcher, 1, f"{unique_topic}/results")
    assert body(result) == {"job_id": "sent", "echo": 1}
    await metric_reaches(listener, "own_messages_ignored", 1)  # the result came back on results_topic
    # A job-like message sent to an own topic is still never a job.
    await listener._send_message(f"{unique_topic}/error", 'job_id = "not-a-job"', 1, False)
    await metric_reaches(listener, "own_messages_ignored", 2)
    snapshot = listener.metrics()
    assert snapshot["own_echoes_ignored"] == 0 and snapshot["errors"] == {}
    assert list(await listener.get_all_jobs()) == ["sent"]


async def test_uri_wins_over_a_disagreeing_host_and_the_start_warns(
        mqtt_endpoint: BrokerEndpoint, start_listener: Callable[..., Any], probe: Any, unique_topic: str,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="Listener.event_listener")
    uri = f"mqtt://{mqtt_endpoint.host}:{mqtt_endpoint.port}"
    listener, _ = await start_listener(echo_processor, uri=uri, host="nowhere.invalid", port=1)
    warnings = [r.getMessage() for r in caplog.records if "the uri wins" in r.getMessage()]
    assert len(warnings) == 1 and "host 'nowhere.invalid'" in warnings[0] and "port 1" in warnings[0]
    assert listener.is_ready
