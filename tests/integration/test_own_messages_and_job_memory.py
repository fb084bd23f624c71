"""Own messages are not jobs, and finished jobs do not hold their payloads (issue 9, items 2 and 10a),
against a mocked MQTT client."""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any, Dict, List
from unittest.mock import AsyncMock

import pytest

from Listener import EventListener, EventListenerConfig, JobStatus, ReturnType


def make_listener(**overrides: Any) -> EventListener:
    options: Dict[str, Any] = {"host": "test-host", "topic": "events/#", "error_topic": "events/errors",
                               "log_topic": "events/logs", "results_topic": "events/results"}
    options.update(overrides)
    listener = EventListener(EventListenerConfig(**options))
    listener.client = AsyncMock()
    return listener


def published_topics(listener: EventListener) -> List[str]:
    return [call.args[0] for call in listener.client.publish.call_args_list]


# -- own topics and echoes --------------------------------------------------------------------------


@pytest.mark.parametrize("topic", ["events/errors", "events/logs", "events/results"])
async def test_a_message_on_an_own_topic_is_counted_not_processed(topic: str) -> None:
    listener = make_listener()
    calls: List[str] = []
    for payload in (b'{"error_type": "invalid_payload"}', b'job_id = "looks-valid"', {"job_id": "as-dict"}):
        assert await listener.process_message(payload, lambda d, j: calls.append(j), topic=topic) is None
    snapshot = listener.metrics()
    assert snapshot["own_messages_ignored"] == 3
    assert snapshot["messages_received"] == 0 and snapshot["messages_rejected"] == 0 and snapshot["errors"] == {}
    assert calls == [] and listener.jobs == {} and published_topics(listener) == []


async def test_the_echo_of_a_return_type_result_is_dropped_and_counted() -> None:
    listener = make_listener()

    def processor(data: Dict[str, Any], job_id: str) -> ReturnType:
        return ReturnType(data={"job_id": job_id, "ok": True}, topic="events/processed")

    await listener.process_message(b'job_id = "j1"', processor, topic="events/in")
    [(topic, payload, _, _)] = [call.args for call in listener.client.publish.call_args_list]
    assert topic == "events/processed"
    assert await listener.process_message(payload, processor, topic="events/processed") is None
    assert listener.metrics()["own_echoes_ignored"] == 1 and listener.metrics()["errors"] == {}
    # The same bytes on another topic are a message like any other (here an invalid one).
    await listener.process_message(payload, processor, topic="events/other")
    assert listener.metrics()["errors"] == {"invalid_payload": 1}
    assert published_topics(listener) == ["events/processed", "events/errors", "events/logs"]


# -- input_data of finished jobs --------------------------------------------------------------------


@pytest.mark.parametrize("keep, processor, status", [
    (False, lambda d, j: {"ok": True}, JobStatus.COMPLETED),
    (False, lambda d, j: 1 / 0, JobStatus.FAILED),
    (True, lambda d, j: {"ok": True}, JobStatus.COMPLETED),
    (True, lambda d, j: 1 / 0, JobStatus.FAILED),
])
async def test_a_finished_job_keeps_its_input_only_when_asked(keep: bool, processor: Any, status: JobStatus) -> None:
    listener = make_listener(keep_job_input=keep)
    seen: List[Dict[str, Any]] = []

    def watching(data: Dict[str, Any], job_id: str) -> Any:
        seen.append(dict(data))
        assert listener.jobs[job_id].input_data == data  # while running, the input is there
        return processor(data, job_id)

    await listener.process_message(b'job_id = "j"\nvalue = 42', watching, topic="events/in")
    job = await listener.get_job_status("j")
    assert job is not None and job.status is status and seen == [{"job_id": "j", "value": 42, "_topic": "events/in"}]
    assert job.input_data == ({"job_id": "j", "value": 42, "_topic": "events/in"} if keep else None)
    # The documented queries still answer from what is kept.
    assert await listener.is_job_completed("j") and await listener.job_exists("j")
    assert list(await (listener.get_completed_jobs() if status is JobStatus.COMPLETED
                       else listener.get_failed_jobs())) == ["j"]


async def test_a_duplicate_also_releases_the_input() -> None:
    listener = make_listener()
    await listener.process_message({"job_id": "d", "v": 1}, lambda d, j: None)
    await listener.process_message({"job_id": "d", "v": 2}, lambda d, j: None)
    job = await listener.get_job_status("d")
    assert job is not None and job.status is JobStatus.DUPLICATE and job.input_data is None


async def test_finished_100_kib_jobs_do_not_keep_their_payloads() -> None:
    jobs, size = 40, 100 * 1024

    async def held_bytes(keep: bool) -> int:
        listener = make_listener(keep_job_input=keep, max_jobs_in_memory=1000)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for n in range(jobs):
                # A parsed message, as the listener holds it (parsing 4 MB under tracemalloc takes too long).
                message = {"job_id": f"big-{n}", "blob": chr(65 + n % 26) * size}
                await listener.process_message(message, lambda d, j: {"len": len(d["blob"])}, topic="events/in")
                del message
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert len(listener.jobs) == jobs and all(j.status is JobStatus.COMPLETED for j in listener.jobs.values())
        return held

    kept = await held_bytes(True)
    dropped = await held_bytes(False)
    assert kept >= jobs * size  # the measurement sees the payloads when they are kept
    assert dropped < jobs * size / 10  # and by default less than a tenth of them remains
