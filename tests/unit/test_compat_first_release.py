"""Drop-in behaviours of the first public release (1.0.x) that its users' code and test suite rely on,
and the duplicate rules the manual states ("skip" ignores duplicates silently; a duplicate changes nothing
of the first job). The parser's own first-release behaviours (ParsedConfig defaults, _sanitize_path,
_parse_toml_file) are in test_safe_config_parser.py."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any, Dict, List
from unittest.mock import AsyncMock

import pytest

from Listener import EventListener, EventListenerConfig, JobStatus
from Listener.jobs.memory import MemoryJobStore


def make_listener(**overrides: Any) -> EventListener:
    listener = EventListener(EventListenerConfig(host="test-host", client_id="compat-tests", **overrides))
    listener.client = AsyncMock()
    return listener


def published_json(listener: EventListener, topic: str) -> List[Dict[str, Any]]:
    return [json.loads(call.args[1]) for call in listener.client.publish.call_args_list if call.args[0] == topic]


# -- 1. generate_job_id ---------------------------------------------------------------------------------


def test_generate_job_id_is_none_when_generation_is_off() -> None:
    assert make_listener().generate_job_id() is None


def test_generate_job_id_is_a_fresh_uuid4_when_generation_is_on() -> None:
    listener = make_listener(allow_job_id_generation=True)
    first, second = listener.generate_job_id(), listener.generate_job_id()
    assert isinstance(first, str) and first != second
    assert uuid.UUID(first).version == 4


# -- 2. is_running can be assigned ----------------------------------------------------------------------


def test_is_running_can_be_set_and_stop_resets_it() -> None:
    listener = make_listener()
    listener.is_running = True
    assert listener.is_running is True
    listener.stop()
    assert listener.is_running is False


async def test_assigning_false_while_running_stops_the_listener() -> None:
    listener = make_listener()

    async def wait_forever() -> None:
        await asyncio.Event().wait()

    listener.client.deliver_message.side_effect = wait_forever
    listener.client.subscribe.return_value = [0]
    run = asyncio.create_task(listener.run(lambda data, job_id: None))
    await listener.wait_until_ready(5)
    assert listener.is_running is True
    listener.is_running = False
    await asyncio.wait_for(run, 5)
    assert listener.is_running is False
    listener.client.disconnect.assert_awaited_once()


# -- duplicates -----------------------------------------------------------------------------------------


async def test_a_duplicate_keeps_the_first_jobs_completion_time_and_result() -> None:
    store = MemoryJobStore(max_jobs=5, ttl_seconds=60)
    await store.admit("a", {"v": 1})
    await store.set_status("a", JobStatus.COMPLETED, result={"answer": 42})
    job = store.jobs.get("a")
    assert job is not None
    completed_at = job.completed_at
    assert completed_at is not None
    await store.mark_duplicate("a")
    assert (job.status, job.completed_at, job.result) == (JobStatus.DUPLICATE, completed_at, {"answer": 42})


async def test_a_duplicate_of_a_failed_job_keeps_its_error_and_completion_time() -> None:
    store = MemoryJobStore(max_jobs=5, ttl_seconds=60)
    await store.admit("f", None)
    await store.set_status("f", JobStatus.FAILED, error="boom")
    job = store.jobs.get("f")
    assert job is not None
    completed_at = job.completed_at
    await store.mark_duplicate("f")
    assert (job.status, job.completed_at, job.error) == (JobStatus.DUPLICATE, completed_at, "boom")


async def test_the_first_releases_mark_job_duplicate_still_marks_a_known_job() -> None:
    """The first release's own suite calls ``_mark_job_duplicate`` after a second ``_create_job``."""
    listener = make_listener()
    assert await listener._create_job("m-1", {"v": 1}) is True
    assert await listener._create_job("m-1", {"v": 1}) is False
    assert await listener._mark_job_duplicate("m-1") is True
    job = await listener.get_job_status("m-1")
    assert job is not None and job.status is JobStatus.DUPLICATE
    assert await listener._mark_job_duplicate("never-seen") is False


async def test_skip_logs_a_duplicate_at_info_and_publishes_no_log_event(caplog: pytest.LogCaptureFixture) -> None:
    listener = make_listener(duplicate_action="skip")
    processor_calls: List[str] = []

    def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        processor_calls.append(job_id)
        return {"job_id": job_id, "n": len(processor_calls)}

    await listener._process_message({"job_id": "d-1"}, processor)
    first = (await listener.get_job_status("d-1"))
    assert first is not None and first.completed_at is not None
    completed_at = first.completed_at
    with caplog.at_level(logging.INFO, logger="Listener.event_listener"):
        await listener._process_message({"job_id": "d-1"}, processor)
    records = [r for r in caplog.records if "Duplicate job d-1" in r.getMessage()]
    assert [r.levelno for r in records] == [logging.INFO]
    assert processor_calls == ["d-1"]
    assert published_json(listener, "test/log") == []  # below the default log_topic_level (WARNING)
    assert published_json(listener, "test/error") == []
    job = await listener.get_job_status("d-1")
    assert job is not None
    assert (job.status, job.result, job.completed_at) == (JobStatus.DUPLICATE, {"job_id": "d-1", "n": 1}, completed_at)


async def test_skip_duplicates_reach_log_topic_when_info_is_asked_for() -> None:
    listener = make_listener(duplicate_action="skip", log_topic_level="INFO")
    await listener._process_message({"job_id": "d-2"}, lambda data, job_id: None)
    await listener._process_message({"job_id": "d-2"}, lambda data, job_id: None)
    events = [e for e in published_json(listener, "test/log") if e["event"] == "duplicate_job"]
    assert [e["level"] for e in events] == ["INFO"]


async def test_error_keeps_its_error_event_and_warning(caplog: pytest.LogCaptureFixture) -> None:
    listener = make_listener(duplicate_action="error")
    await listener._process_message({"job_id": "d-3"}, lambda data, job_id: {"ok": True})
    with caplog.at_level(logging.INFO, logger="Listener.event_listener"):
        await listener._process_message({"job_id": "d-3"}, lambda data, job_id: {"ok": False})
    assert [e["error_type"] for e in published_json(listener, "test/error")] == ["duplicate_job"]
    assert [e["level"] for e in published_json(listener, "test/log") if e["event"] == "duplicate_job"] == ["WARNING"]
    assert [r.levelno for r in caplog.records if "Duplicate job d-3" in r.getMessage()] == [logging.WARNING]
    job = await listener.get_job_status("d-3")
    assert job is not None and job.result == {"ok": True}


# -- 5. _send_message to a subscribed topic is a job ----------------------------------------------------


async def test_a_message_sent_to_the_listeners_own_topic_comes_back_as_a_job() -> None:
    # The first release's suite publishes its jobs this way while run() runs (SPEC §11).
    listener = make_listener(topic="jobs/#")
    calls: List[str] = []
    toml_text = 'job_id = "sent-1"\naction = "process_data"'
    await listener._send_message("jobs/in", toml_text, 1, False)
    [(topic, payload, qos, retain)] = [call.args for call in listener.client.publish.call_args_list]
    assert (topic, payload, qos, retain) == ("jobs/in", toml_text.encode(), 1, False)
    await listener._process_message(payload, lambda data, job_id: calls.append(job_id), topic="jobs/in")
    assert calls == ["sent-1"]
    assert listener.metrics()["own_echoes_ignored"] == 0
    job = await listener.get_job_status("sent-1")
    assert job is not None and job.status is JobStatus.COMPLETED


async def test_a_result_sent_with_publish_result_is_still_the_listeners_own_echo() -> None:
    listener = make_listener(topic="jobs/#")
    await listener._publish_result({"job_id": "r-1", "ok": True}, "jobs/processed")
    [(_, payload, _, _)] = [call.args for call in listener.client.publish.call_args_list]
    assert await listener._process_message(payload, lambda data, job_id: None, topic="jobs/processed") is None
    assert listener.metrics()["own_echoes_ignored"] == 1 and listener.metrics()["errors"] == {}
