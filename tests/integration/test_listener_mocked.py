"""EventListener against a mocked MQTT client: the calls it makes and the job bookkeeping it does."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from datetime import datetime
from typing import Any, Dict, List
from unittest.mock import AsyncMock, MagicMock

import pytest

from Listener import EventListener, JobStatus, ReturnType, SafeConfigParser, create_return_type
from tests.support.mocked_listeners import feed, mocked_listener, publications, published_json, wait_forever
from tests.support.waiting import until


async def test_success_publishes_result_positionally_once() -> None:
    listener = mocked_listener()

    def processor(data: Dict[str, Any], job_id: str) -> ReturnType:
        return ReturnType(data={"result": "processed", "input": data}, topic="test/results", qos=1, retain=False,
                          message_id=1, timestamp=datetime.now(), job_id=job_id)

    await listener._process_message({"job_id": "integration-001", "task": "test"}, processor)

    job = await listener.get_job_status("integration-001")
    assert job is not None and job.status is JobStatus.COMPLETED
    listener.client.publish.assert_called_once()
    topic, payload, qos, retain = listener.client.publish.call_args.args
    assert (topic, qos, retain) == ("test/results", 1, False)
    assert isinstance(payload, bytes)
    assert json.loads(payload) == {"result": "processed", "input": {"job_id": "integration-001", "task": "test"}}
    assert listener.client.publish.call_args.kwargs == {}


async def test_failure_marks_failed_and_publishes_error_event() -> None:
    listener = mocked_listener()

    def processor(data: Dict[str, Any], job_id: str) -> None:
        raise ValueError("Test error")

    assert await listener._process_message({"job_id": "error-001"}, processor) is None
    job = await listener.get_job_status("error-001")
    assert job is not None and job.status is JobStatus.FAILED
    assert job.error is not None and "Test error" in job.error
    errors = published_json(listener, "test/error")
    assert len(errors) == 1
    assert errors[0]["error_type"] == "processing_error" and errors[0]["job_id"] == "error-001"
    assert "Traceback" not in errors[0]["error_message"]
    logs = published_json(listener, "test/log")
    assert [event["event"] for event in logs] == ["job_failed"]
    assert logs[0]["status"] == "failed" and logs[0]["duration_ms"] >= 0


async def test_processor_base_exception_fails_only_its_job() -> None:
    listener = mocked_listener()

    def processor(data: Dict[str, Any], job_id: str) -> None:
        raise KeyboardInterrupt("boom")

    await listener._process_message({"job_id": "kbi"}, processor)
    job = await listener.get_job_status("kbi")
    assert job is not None and job.status is JobStatus.FAILED and "KeyboardInterrupt" in (job.error or "")


async def test_connect_and_subscribe_once_with_all_filters() -> None:
    listener = mocked_listener(topic="events/#", qos=1, custom_topics={
        "events/alerts": {"qos": 2, "retain": True},  # covered by events/# -> not subscribed twice
        "metrics/+": {"qos": 0, "retain": False},
    })
    await listener._connect()
    await listener._subscribe()
    listener.client.connect.assert_awaited_once()
    assert listener.client.connect.call_args.args[0] == "mqtt://test-host:1883"
    listener.client.subscribe.assert_awaited_once_with([("events/#", 1), ("metrics/+", 0)])


async def test_connect_failure_raises_connection_error_without_password() -> None:
    listener = mocked_listener(password="hunter2-secret")
    listener.client.connect.side_effect = OSError("refused by hunter2-secret")
    with pytest.raises(ConnectionError) as info:
        await listener._connect()
    assert "test-host:1883" in str(info.value)
    assert "hunter2-secret" not in str(info.value)


async def test_dict_result_goes_to_results_topic_with_custom_topic_defaults() -> None:
    listener = mocked_listener(results_topic="out/results", custom_topics={"out/#": {"qos": 2, "retain": True}})
    await listener.process_message({"job_id": "d-1"}, lambda data, job_id: {"ok": True, "job": job_id})
    assert publications(listener) == [("out/results", b'{"ok":true,"job":"d-1"}', 2, True)]


async def test_none_result_publishes_nothing() -> None:
    listener = mocked_listener()
    await listener.process_message({"job_id": "n-1"}, lambda data, job_id: None)
    listener.client.publish.assert_not_called()
    assert (await listener.get_job_status("n-1")).status is JobStatus.COMPLETED  # type: ignore[union-attr]


async def test_without_processor_job_just_completes() -> None:
    listener = mocked_listener()
    await listener._process_message({"job_id": "test-001", "task_type": "test_task"})
    job = await listener.get_job_status("test-001")
    assert job is not None and job.status is JobStatus.COMPLETED and job.result is None


async def test_return_type_without_job_id_gets_the_jobs_id_and_results_topic() -> None:
    listener = mocked_listener()
    result = create_return_type({"x": 1}, "")
    await listener.process_message({"job_id": "r-1"}, lambda data, job_id: result)
    assert result.job_id == "r-1"
    assert publications(listener)[0][0] == "test/results"


async def test_unserialisable_result_fails_the_job_cleanly() -> None:
    listener = mocked_listener()
    await listener.process_message({"job_id": "u-1"}, lambda data, job_id: {"obj": object()})
    job = await listener.get_job_status("u-1")
    assert job is not None and job.status is JobStatus.FAILED and "JSON" in (job.error or "")
    assert published_json(listener, "test/error")[0]["error_type"] == "processing_error"


async def test_wildcard_result_topic_fails_the_job_instead_of_reaching_the_broker() -> None:
    listener = mocked_listener()
    await listener.process_message({"job_id": "w-1"}, lambda data, job_id: create_return_type({}, "a/+/b"))
    assert (await listener.get_job_status("w-1")).status is JobStatus.FAILED  # type: ignore[union-attr]
    assert all(topic != "a/+/b" for topic, *_ in publications(listener))


async def test_async_processor_is_awaited_on_the_loop_and_sync_runs_on_a_thread() -> None:
    listener = mocked_listener()
    loop_thread = threading.get_ident()
    seen: Dict[str, int] = {}

    async def async_processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        seen["async"] = threading.get_ident()
        await asyncio.sleep(0)
        return {"kind": "async"}

    def sync_processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        seen["sync"] = threading.get_ident()
        return {"kind": "sync"}

    assert await listener.process_message({"job_id": "a"}, async_processor) == {"kind": "async"}
    assert await listener.process_message({"job_id": "s"}, sync_processor) == {"kind": "sync"}
    assert seen["async"] == loop_thread and seen["sync"] != loop_thread


@pytest.mark.parametrize("payload, error_type", [
    (b"job_id = \"x\"\nthis is not toml", "invalid_payload"),
    (b"\xff\xfe not utf-8", "invalid_payload"),
    (b"job_id = \"big\"\nblob = \"" + b"a" * (1024 * 1024) + b"\"", "payload_too_large"),
    (b"task = \"no id\"", "missing_job_id"),
    (b"job_id = [1, 2]", "invalid_payload"),
])
async def test_rejected_payloads_publish_one_error_event_and_create_no_job(payload: bytes, error_type: str) -> None:
    listener = mocked_listener()
    called = []
    await listener._process_message(payload, lambda data, job_id: called.append(job_id), topic="test/topic")
    assert called == []
    assert await listener.get_all_jobs() == {}
    errors = published_json(listener, "test/error")
    assert len(errors) == 1
    assert errors[0]["error_type"] == error_type and errors[0]["topic"] == "test/topic"
    assert set(errors[0]) == {"job_id", "status", "error_type", "error_message", "topic", "timestamp"}


async def test_toml_string_payload_is_parsed_and_gets_topic() -> None:
    listener = mocked_listener()
    received: List[Dict[str, Any]] = []
    await listener.process_message('job_id = "t-1"\nvalue = 3\n', lambda d, j: received.append(d), topic="a/b")
    assert received == [{"job_id": "t-1", "value": 3, "_topic": "a/b"}]


async def test_generated_job_id_when_allowed() -> None:
    listener = mocked_listener(allow_job_id_generation=True)
    ids: List[str] = []
    await listener.process_message({"task": "x"}, lambda d, job_id: ids.append(job_id))
    assert len(ids) == 1 and len(ids[0]) == 36 and await listener.job_exists(ids[0])


@pytest.mark.parametrize("action, runs, error_events", [("skip", 1, 0), ("reprocess", 2, 0), ("error", 1, 1)])
async def test_duplicate_policies(action: str, runs: int, error_events: int) -> None:
    listener = mocked_listener(duplicate_action=action)
    calls: List[str] = []
    for _ in range(2):
        await listener.process_message({"job_id": "dup"}, lambda d, job_id: calls.append(job_id))
    assert len(calls) == runs
    job = await listener.get_job_status("dup")
    assert job is not None
    assert job.status is (JobStatus.COMPLETED if action == "reprocess" else JobStatus.DUPLICATE)
    errors = [e for e in published_json(listener, "test/error") if e["error_type"] == "duplicate_job"]
    assert len(errors) == error_events


async def test_send_message_encodes_str_and_json() -> None:
    listener = mocked_listener()
    await listener._send_message("t/a", "héllo", 1, True)
    await listener._send_message("t/b", {"k": "v"}, 0, False)
    await listener._send_message("t/c", b"raw", 2, False)
    assert publications(listener) == [("t/a", "héllo".encode(), 1, True), ("t/b", b'{"k":"v"}', 0, False),
                                      ("t/c", b"raw", 2, False)]


async def test_publish_result_uses_given_topic() -> None:
    listener = mocked_listener()
    await listener._create_job("mqtt-test-001", {"task": "test"})
    await listener._publish_result({"job_id": "mqtt-test-001", "result": "success"}, "test/results")
    assert publications(listener) == [("test/results", b'{"job_id":"mqtt-test-001","result":"success"}', 0, False)]


async def test_publish_failure_is_reported_not_raised() -> None:
    listener = mocked_listener()
    listener.client.publish.side_effect = [OSError("socket closed"), None, None]
    await listener.process_message({"job_id": "p-1"}, lambda d, j: {"x": 1})
    job = await listener.get_job_status("p-1")
    assert job is not None and job.status is JobStatus.COMPLETED
    topics = [call.args[0] for call in listener.client.publish.call_args_list]
    assert topics[0] == "test/results" and "test/error" in topics
    error_payload = next(call.args[1] for call in listener.client.publish.call_args_list if call.args[0] == "test/error")
    assert json.loads(error_payload)["error_type"] == "publish_error"


async def test_info_log_topic_level_publishes_audit_trail() -> None:
    listener = mocked_listener(log_topic_level="INFO")
    await listener.process_message({"job_id": "i-1"}, lambda d, j: None)
    logs = published_json(listener, "test/log")
    assert [e["event"] for e in logs] == ["job_completed"]
    assert logs[0]["job_id"] == "i-1" and logs[0]["status"] == "completed" and "duration_ms" in logs[0]


async def test_empty_log_topic_turns_log_events_off() -> None:
    listener = mocked_listener(log_topic="", log_topic_level="DEBUG")
    await listener.process_message({"job_id": "q-1"}, lambda d, j: 1 / 0)
    assert all(topic != "" for topic, *_ in publications(listener))
    assert [topic for topic, *_ in publications(listener)] == ["test/error"]


async def test_password_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    listener = mocked_listener(password="s3cr3t-token-xyz")
    listener.client.connect.side_effect = OSError("cannot reach")
    with pytest.raises(ConnectionError):
        await listener._connect()

    def processor(data: Dict[str, Any], job_id: str) -> None:
        raise RuntimeError("leaking s3cr3t-token-xyz")

    await listener.process_message({"job_id": "sec"}, processor)
    assert "s3cr3t-token-xyz" not in caplog.text
    for _, payload, _, _ in publications(listener):
        assert b"s3cr3t-token-xyz" not in payload
    assert "s3cr3t-token-xyz" not in repr(listener.config)


async def test_job_queries_return_copies() -> None:
    listener = mocked_listener()
    await listener._create_job("c-1", {"a": 1})
    jobs = await listener.get_all_jobs()
    jobs["c-1"].status = JobStatus.FAILED
    jobs.clear()
    assert (await listener.get_job_status("c-1")).status is JobStatus.PENDING  # type: ignore[union-attr]
    copy = await listener.get_job_status("c-1")
    assert copy is not listener.jobs["c-1"]


async def test_stop_when_not_running_is_safe() -> None:
    listener = mocked_listener()
    listener.stop()
    assert listener.is_running is False


async def test_run_with_mock_client_processes_until_stopped() -> None:
    listener = mocked_listener()
    messages: asyncio.Queue[Any] = asyncio.Queue()
    for i in range(3):
        messages.put_nowait(MagicMock(topic="test/topic", data=bytearray(f'job_id = "m-{i}"'.encode())))
    listener.client.deliver_message.side_effect = messages.get
    listener.client.subscribe.return_value = [0]
    done: List[str] = []

    def processor(data: Dict[str, Any], job_id: str) -> None:
        done.append(job_id)
        if len(done) == 3:
            listener.stop()

    await asyncio.wait_for(listener.run(processor), 5)
    assert done == ["m-0", "m-1", "m-2"]
    listener.client.connect.assert_awaited_once()
    listener.client.subscribe.assert_awaited_once()
    listener.client.disconnect.assert_awaited_once()
    assert listener.is_running is False


async def test_stop_while_idle_interrupts_the_wait_for_messages() -> None:
    listener = mocked_listener()
    listener.client.deliver_message.side_effect = wait_forever
    listener.client.subscribe.return_value = [0]
    run = asyncio.create_task(listener.run(lambda d, j: None))
    await listener.wait_until_ready(5)
    assert listener.is_running and listener.is_ready
    listener.stop()
    await asyncio.wait_for(run, 5)
    assert not listener.is_ready


async def test_async_context_manager_stops_a_running_listener() -> None:
    listener = mocked_listener()
    listener.client.deliver_message.side_effect = wait_forever
    listener.client.subscribe.return_value = [0]
    async with listener as entered:
        assert entered is listener
        run = asyncio.create_task(listener.run())
        await listener.wait_until_ready(5)
    assert run.done() and not listener.is_running


async def test_subscription_refused_by_broker_is_a_connection_error() -> None:
    listener = mocked_listener()
    listener.client.subscribe.return_value = [0x80]
    with pytest.raises(ConnectionError, match="refused the subscription to test/topic"):
        await listener.run(lambda d, j: None)


async def test_connection_lost_reconnects_and_resubscribes() -> None:
    listener = mocked_listener(reconnect_retries=3)
    listener.client.subscribe.return_value = [0]
    sessions = {"count": 0}

    async def deliver() -> Any:
        sessions["count"] += 1
        if sessions["count"] == 1:
            return None  # first session: the connection is lost at once
        listener.stop()
        await wait_forever()

    listener.client.deliver_message.side_effect = deliver
    await asyncio.wait_for(listener.run(lambda d, j: None), 5)
    assert listener.client.connect.await_count == 2
    assert listener.client.subscribe.await_count == 2


async def test_unreachable_broker_gives_up_after_retries() -> None:
    listener = mocked_listener(reconnect_retries=1, reconnect_max_interval=0.05)
    listener.client.connect.side_effect = OSError("refused")
    with pytest.raises(ConnectionError, match="gave up after 2 attempts"):
        await asyncio.wait_for(listener.run(lambda d, j: None), 5)
    assert listener.client.connect.await_count == 2


async def test_run_twice_at_once_is_refused() -> None:
    listener = mocked_listener()
    listener.client.deliver_message.side_effect = wait_forever
    listener.client.subscribe.return_value = [0]
    run = asyncio.create_task(listener.run())
    await listener.wait_until_ready(5)
    with pytest.raises(RuntimeError, match="already running"):
        await listener.run()
    listener.stop()
    await asyncio.wait_for(run, 5)


async def test_mock_processors_are_called_not_hung_on() -> None:
    """A MagicMock has every attribute; unwrapping partials must not chase its endless children."""
    listener = mocked_listener()
    sync_mock = MagicMock(return_value={"ok": 1})
    async_mock = AsyncMock(return_value={"ok": 2})
    assert await asyncio.wait_for(listener.process_message({"job_id": "m-sync"}, sync_mock), 5) == {"ok": 1}
    assert await asyncio.wait_for(listener.process_message({"job_id": "m-async"}, async_mock), 5) == {"ok": 2}
    async_mock.assert_awaited_once()


async def test_full_store_of_active_jobs_makes_the_listener_wait_not_drop() -> None:
    listener = mocked_listener(max_jobs_in_memory=2)
    await listener._create_job("held-1", {})
    await listener._create_job("held-2", {})
    feed(listener, b'job_id = "waiting"')
    processed: List[str] = []
    run = asyncio.create_task(listener.run(lambda d, job_id: processed.append(job_id)))
    await listener.wait_until_ready(5)

    async def waiting_announced() -> bool:
        return any(e["event"] == "job_store_full" for e in published_json(listener, "test/log"))

    await until(waiting_announced)
    assert processed == [] and not await listener.job_exists("waiting")
    await listener._update_job_status("held-1", JobStatus.COMPLETED)
    await until(lambda: listener.is_job_completed("waiting"))
    assert processed == ["waiting"] and not await listener.job_exists("held-1")
    listener.stop()
    await asyncio.wait_for(run, 5)


async def test_grace_period_bounds_a_hanging_job_at_stop() -> None:
    listener = mocked_listener(shutdown_grace_period=0.1)
    feed(listener, b'job_id = "hangs"')
    started = asyncio.Event()

    async def processor(data: Dict[str, Any], job_id: str) -> None:
        started.set()
        await asyncio.Event().wait()

    run = asyncio.create_task(listener.run(processor))
    await asyncio.wait_for(started.wait(), 5)
    listener.stop()
    await asyncio.wait_for(run, 5)
    job = await listener.get_job_status("hangs")
    assert job is not None and job.status is JobStatus.FAILED and "listener stopped" in (job.error or "")
    listener.client.disconnect.assert_awaited_once()


async def test_running_listener_sweeps_expired_jobs() -> None:
    listener = mocked_listener(job_cleanup_interval=0.05)
    feed(listener, b'job_id = "old"')
    run = asyncio.create_task(listener.run(lambda d, j: None))
    await until(lambda: listener.is_job_completed("old"))
    await until(lambda: _not(listener.job_exists("old")))
    listener.stop()
    await asyncio.wait_for(run, 5)


async def _not(awaitable: Any) -> bool:
    return not await awaitable


async def test_stop_from_another_thread() -> None:
    listener = mocked_listener()
    feed(listener)
    run = asyncio.create_task(listener.run())
    await listener.wait_until_ready(5)
    await asyncio.to_thread(listener.stop)
    await asyncio.wait_for(run, 5)
    assert not listener.is_running


async def test_connection_lost_without_auto_reconnect_raises() -> None:
    listener = mocked_listener(auto_reconnect=False)
    listener.client.subscribe.return_value = [0]
    listener.client.deliver_message.return_value = None  # amqtt's sign that the connection is gone
    with pytest.raises(ConnectionError, match="lost"):
        await asyncio.wait_for(listener.run(), 5)


async def test_stop_during_reconnect_backoff_returns_without_error() -> None:
    listener = mocked_listener(reconnect_retries=-1, reconnect_max_interval=60)
    listener.client.connect.side_effect = OSError("broker down")
    run = asyncio.create_task(listener.run())

    async def tried_twice() -> bool:
        return listener.client.connect.await_count >= 2

    await until(tried_twice)  # the second attempt comes after a 1 s backoff; the next waits 2 s
    listener.stop()
    await asyncio.wait_for(run, 1.0)
    assert listener.client.connect.await_count == 2


async def test_an_internal_error_costs_one_message_not_the_listener() -> None:
    calls: List[str] = []

    class BrokenParser(SafeConfigParser):
        """Fails on the first payload with an error no part of the listener expects."""

        def parse_config_from_string(self, config_string: str) -> Dict[str, Any]:
            calls.append(config_string)
            if "first" in config_string:
                raise RuntimeError("bug")
            return super().parse_config_from_string(config_string)

    listener = EventListener(mocked_listener().config, config_parser=BrokenParser())
    listener.client = AsyncMock()
    feed(listener, b'job_id = "first"', b'job_id = "second"')
    run = asyncio.create_task(listener.run(lambda d, j: None))
    await until(lambda: listener.is_job_completed("second"))
    assert calls == ['job_id = "first"', 'job_id = "second"'] and not await listener.job_exists("first")
    listener.stop()
    await asyncio.wait_for(run, 5)
