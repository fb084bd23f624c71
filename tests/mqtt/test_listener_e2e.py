"""End to end through Mosquitto: a paho publisher/subscriber on one side, the EventListener on the other."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Dict, List

import pytest

from Listener import EventListener, JobStatus, create_return_type
from tests.support.job_messages import body, wait_for
from tests.support.listeners import job_finished


async def test_return_type_result_arrives_as_json_on_its_topic(start_listener: Callable[..., Any], probe: Any,
                                                               unique_topic: str) -> None:
    seen: List[Dict[str, Any]] = []

    def processor(data: Dict[str, Any], job_id: str) -> Any:
        seen.append(data)
        return create_return_type({"job_id": job_id, "doubled": data["value"] * 2}, f"{unique_topic}/custom", qos=1)

    listener, _ = await start_listener(processor, qos=1)
    watcher = probe(f"{unique_topic}/#")
    probe().publish(f"{unique_topic}/jobs", 'job_id = "e2e-1"\nvalue = 21\n')
    [message] = await wait_for(watcher, 1, f"{unique_topic}/custom")
    assert body(message) == {"job_id": "e2e-1", "doubled": 42}
    assert message.qos == 1
    assert seen == [{"job_id": "e2e-1", "value": 21, "_topic": f"{unique_topic}/jobs"}]
    await job_finished(listener, "e2e-1")
    job = await listener.get_job_status("e2e-1")
    assert job is not None and job.status is JobStatus.COMPLETED and job.topic == f"{unique_topic}/jobs"
    assert watcher.messages(f"{unique_topic}/log") == [] and watcher.messages(f"{unique_topic}/error") == []


async def test_dict_result_goes_to_results_topic(start_listener: Callable[..., Any], probe: Any,
                                                 unique_topic: str) -> None:
    await start_listener(lambda data, job_id: {"job_id": job_id, "when": data["when"]})
    watcher = probe(f"{unique_topic}/results")
    probe().publish(f"{unique_topic}/jobs", 'job_id = "e2e-2"\nwhen = 2025-01-09T10:30:00Z\n')
    [message] = await wait_for(watcher, 1, f"{unique_topic}/results")
    assert body(message) == {"job_id": "e2e-2", "when": "2025-01-09T10:30:00+00:00"}


async def test_async_processor(start_listener: Callable[..., Any], probe: Any, unique_topic: str) -> None:
    async def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        await asyncio.sleep(0.01)
        return {"job_id": job_id, "async": True}

    await start_listener(processor)
    watcher = probe(f"{unique_topic}/results")
    probe().publish(f"{unique_topic}/jobs", 'job_id = "e2e-async"')
    [message] = await wait_for(watcher, 1, f"{unique_topic}/results")
    assert body(message) == {"job_id": "e2e-async", "async": True}


async def test_bad_messages_each_give_one_error_event_and_the_loop_goes_on(
        start_listener: Callable[..., Any], probe: Any, unique_topic: str, tmp_path: Any) -> None:
    real_file = tmp_path / "job.toml"
    real_file.write_text('job_id = "from-file"\nsecret = "do not read me"\n')
    calls: List[str] = []
    listener, _ = await start_listener(lambda data, job_id: calls.append(job_id) or {"job_id": job_id})
    watcher = probe(f"{unique_topic}/error", f"{unique_topic}/results")
    sender = probe()
    bad = [
        (b'job_id = "x"\nnot toml at all', "invalid_payload"),
        (b"\xff\xfe\x00 binary", "invalid_payload"),
        (b'job_id = "big"\nblob = "' + b"a" * (1024 * 1024 + 10) + b'"', "payload_too_large"),
        (str(real_file).encode(), "invalid_payload"),
        (b'task = "no job id"', "missing_job_id"),
    ]
    for payload, _ in bad:
        sender.publish(f"{unique_topic}/jobs", payload)
    sender.publish(f"{unique_topic}/jobs", 'job_id = "after-the-bad-ones"')
    errors = await wait_for(watcher, len(bad), f"{unique_topic}/error")
    [result] = await wait_for(watcher, 1, f"{unique_topic}/results")
    assert [body(m)["error_type"] for m in errors] == [expected for _, expected in bad]
    assert all(body(m)["topic"] == f"{unique_topic}/jobs" for m in errors)
    assert all(b"do not read me" not in m.payload for m in errors)
    assert body(result) == {"job_id": "after-the-bad-ones"}
    assert calls == ["after-the-bad-ones"]
    assert list(await listener.get_all_jobs()) == ["after-the-bad-ones"]


async def test_processor_exception_fails_job_and_publishes_error(start_listener: Callable[..., Any], probe: Any,
                                                                 unique_topic: str) -> None:
    def processor(data: Dict[str, Any], job_id: str) -> Any:
        if data.get("explode"):
            raise RuntimeError("kaboom")
        return {"job_id": job_id}

    listener, _ = await start_listener(processor)
    watcher = probe(f"{unique_topic}/#")
    sender = probe()
    sender.publish(f"{unique_topic}/jobs", 'job_id = "boom"\nexplode = true')
    sender.publish(f"{unique_topic}/jobs", 'job_id = "fine"')
    [error] = await wait_for(watcher, 1, f"{unique_topic}/error")
    assert body(error)["error_type"] == "processing_error" and "kaboom" in body(error)["error_message"]
    [log] = await wait_for(watcher, 1, f"{unique_topic}/log")
    assert body(log)["event"] == "job_failed" and body(log)["status"] == "failed"
    await wait_for(watcher, 1, f"{unique_topic}/results")
    job = await listener.get_job_status("boom")
    assert job is not None and job.status is JobStatus.FAILED and "kaboom" in (job.error or "")


@pytest.mark.parametrize("action, runs, error_events", [("skip", 1, 0), ("reprocess", 2, 0), ("error", 1, 1)])
async def test_duplicate_policies(start_listener: Callable[..., Any], probe: Any, unique_topic: str,
                                  action: str, runs: int, error_events: int) -> None:
    calls: List[str] = []
    listener, _ = await start_listener(lambda data, job_id: calls.append(job_id) or {"n": len(calls)},
                                       duplicate_action=action)
    watcher = probe(f"{unique_topic}/#")
    sender = probe()
    for payload in ('job_id = "d"', 'job_id = "d"', 'job_id = "end"'):
        sender.publish(f"{unique_topic}/jobs", payload)
    await wait_for(watcher, runs + 1, f"{unique_topic}/results")
    await job_finished(listener, "end")
    assert calls == ["d"] * runs + ["end"]
    duplicate_errors = [m for m in watcher.messages(f"{unique_topic}/error") if body(m)["error_type"] == "duplicate_job"]
    assert len(duplicate_errors) == error_events
    job = await listener.get_job_status("d")
    assert job is not None
    assert job.status is (JobStatus.COMPLETED if action == "reprocess" else JobStatus.DUPLICATE)


async def test_job_id_generation(start_listener: Callable[..., Any], probe: Any, unique_topic: str) -> None:
    listener, _ = await start_listener(lambda data, job_id: {"job_id": job_id}, allow_job_id_generation=True)
    watcher = probe(f"{unique_topic}/results")
    probe().publish(f"{unique_topic}/jobs", 'task = "anonymous"')
    [message] = await wait_for(watcher, 1, f"{unique_topic}/results")
    generated = body(message)["job_id"]
    assert len(generated) == 36 and await listener.job_exists(generated)


async def test_custom_topics_are_subscribed_and_give_publish_defaults(start_listener: Callable[..., Any], probe: Any,
                                                                      unique_topic: str) -> None:
    topics: List[str] = []
    await start_listener(
        lambda data, job_id: topics.append(data["_topic"]) or {"job_id": job_id},
        custom_topics={f"{unique_topic}/alerts/+": {"qos": 1}, f"{unique_topic}/results": {"qos": 1, "retain": False}})
    watcher = probe(f"{unique_topic}/results")
    sender = probe()
    sender.publish(f"{unique_topic}/alerts/fire", 'job_id = "alert-1"')
    sender.publish(f"{unique_topic}/jobs", 'job_id = "job-1"')
    messages = await wait_for(watcher, 2, f"{unique_topic}/results")
    assert topics == [f"{unique_topic}/alerts/fire", f"{unique_topic}/jobs"]
    assert {m.qos for m in messages} == {1}


async def test_stop_lets_the_job_in_flight_finish(start_listener: Callable[..., Any], probe: Any,
                                                  unique_topic: str) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        started.set()
        await release.wait()
        return {"job_id": job_id, "finished": True}

    listener, task = await start_listener(processor)
    watcher = probe(f"{unique_topic}/results")
    probe().publish(f"{unique_topic}/jobs", 'job_id = "slow"')
    await asyncio.wait_for(started.wait(), 10)
    listener.stop()
    await asyncio.sleep(0.05)
    assert not task.done() and await listener.is_job_running("slow")
    release.set()
    await asyncio.wait_for(task, 10)
    [message] = await wait_for(watcher, 1, f"{unique_topic}/results")
    assert body(message) == {"job_id": "slow", "finished": True}
    assert (await listener.get_job_status("slow")).status is JobStatus.COMPLETED  # type: ignore[union-attr]
    assert not listener.is_running


async def test_manual_connection_fixture_pattern(mqtt_auth_endpoint: Any, mqtt_username: str, mqtt_password: str,
                                                 unique_topic: str) -> None:
    """Manual §9.3.2: _connect / _subscribe / _create_job / _publish_result / _disconnect on a real broker."""
    from Listener import EventListenerConfig, SafeConfigParser
    config = EventListenerConfig(host=mqtt_auth_endpoint.host, port=mqtt_auth_endpoint.port, username=mqtt_username,
                                 password=mqtt_password, topic=f"{unique_topic}/events", client_id=unique_topic[-20:])
    listener = EventListener(config)
    await listener._connect()
    assert listener.client is not None and listener.client.is_connected()
    await listener._subscribe()
    await listener._create_job("mqtt-test-001", {"task": "test"})
    await listener._publish_result({"job_id": "mqtt-test-001", "result": "success"}, f"{unique_topic}/results")
    parsed = SafeConfigParser().parse_config_from_string('job_id = "toml-test-001"\ntask_type = "data_processing"\n')
    await listener._create_job(parsed["job_id"], parsed)
    assert (await listener.get_job_status("toml-test-001")).job_id == "toml-test-001"  # type: ignore[union-attr]
    await listener._disconnect()
    assert not listener.client.is_connected()
