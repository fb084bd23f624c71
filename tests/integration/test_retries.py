"""Job retries (``max_retries``, ``retry_backoff``) through the real pipeline, with a mocked MQTT client."""

from __future__ import annotations

import asyncio
from typing import Any, Dict, List

from Listener import JobStatus
from Listener.processing.processors import JobTimeoutError
from Listener.testing import TestListener
from tests.support.mocked_listeners import feed, mocked_listener, published_json, wait_forever
from tests.support.processors import Flaky

SPEC_ERROR_FIELDS = {"job_id", "status", "error_type", "error_message", "topic", "timestamp"}


async def test_failing_twice_then_succeeding_completes_on_the_third_attempt() -> None:
    listener = mocked_listener(max_retries=2, retry_backoff=0.01)
    processor = Flaky(failures=2)
    expected = {"job_id": "f-1", "attempts": 3}
    assert await asyncio.wait_for(listener.process_message({"job_id": "f-1"}, processor), 5) == expected
    job = await listener.get_job_status("f-1")
    assert job is not None and (job.status, job.attempts, job.result) == (JobStatus.COMPLETED, 3, expected)
    assert published_json(listener, "test/results") == [{"job_id": "f-1", "attempts": 3}]  # once
    errors = published_json(listener, "test/error")
    assert [(e["attempt"], e["max_attempts"], e["will_retry"]) for e in errors] == [(1, 3, True), (2, 3, True)]
    assert all(e["error_type"] == "processing_error" and e["job_id"] == "f-1" for e in errors)
    assert "ConnectionResetError: upstream down (call 1) (attempt 1 of 3; retrying in" in errors[0]["error_message"]
    assert "attempt 2 of 3" in errors[1]["error_message"]
    assert [e["event"] for e in published_json(listener, "test/log")] == ["job_retry", "job_retry"]
    metrics = listener.metrics()
    assert metrics["jobs_retried"] == 2 and metrics["jobs_finished"] == {"completed": 1}
    assert metrics["errors"] == {"processing_error": 2}


async def test_always_failing_ends_failed_after_max_retries_plus_one_attempts_with_backoff() -> None:
    listener = mocked_listener(max_retries=3, retry_backoff=0.02)
    processor = Flaky(failures=10)
    assert await asyncio.wait_for(listener.process_message({"job_id": "f-2"}, processor), 5) is None
    assert len(processor.calls) == 4
    gaps = [later - earlier for earlier, later in zip(processor.calls, processor.calls[1:])]
    # retry_backoff × 2^(n-1), less at most a quarter (jitter); no upper bound: the machine may be slow.
    assert [gap >= 0.75 * 0.02 * 2 ** n for n, gap in enumerate(gaps)] == [True, True, True], gaps
    job = await listener.get_job_status("f-2")
    assert job is not None and (job.status, job.attempts) == (JobStatus.FAILED, 4)
    assert job.error == "ConnectionResetError: upstream down (call 4)"
    errors = published_json(listener, "test/error")
    assert [(e["attempt"], e["will_retry"]) for e in errors] == [(1, True), (2, True), (3, True), (4, False)]
    assert errors[-1]["error_message"] == "ConnectionResetError: upstream down (call 4) (attempt 4 of 4)"
    assert [e["event"] for e in published_json(listener, "test/log")] == ["job_retry"] * 3 + ["job_failed"]
    assert listener.metrics()["jobs_retried"] == 3 and listener.metrics()["jobs_finished"] == {"failed": 1}


async def test_without_retries_the_error_event_keeps_exactly_the_documented_fields() -> None:
    listener = mocked_listener()
    processor = Flaky(failures=1)
    assert await listener.process_message({"job_id": "f-3"}, processor) is None
    assert len(processor.calls) == 1
    (error,) = published_json(listener, "test/error")
    assert set(error) == SPEC_ERROR_FIELDS
    assert error["error_message"] == "ConnectionResetError: upstream down (call 1)"
    job = await listener.get_job_status("f-3")
    assert job is not None and (job.status, job.attempts) == (JobStatus.FAILED, 1)
    assert listener.metrics()["jobs_retried"] == 0


async def test_a_timed_out_attempt_is_retried() -> None:
    listener = mocked_listener(max_retries=1, retry_backoff=0, job_timeout=0.1)
    calls: List[str] = []

    async def hangs_once(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        calls.append(job_id)
        if len(calls) == 1:
            await wait_forever()
        return {"ok": True}

    assert await asyncio.wait_for(listener.process_message({"job_id": "t-1"}, hangs_once), 5) == {"ok": True}
    (error,) = published_json(listener, "test/error")
    assert (error["error_type"], error["attempt"], error["will_retry"]) == ("timeout", 1, True)
    assert error["error_message"].startswith(str(JobTimeoutError(0.1)))
    job = await listener.get_job_status("t-1")
    assert job is not None and (job.status, job.attempts) == (JobStatus.COMPLETED, 2)


async def test_a_result_that_cannot_be_published_is_not_retried() -> None:
    listener = mocked_listener(max_retries=3, retry_backoff=0)
    calls: List[str] = []

    def unencodable(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        calls.append(job_id)
        return {"handle": object()}

    assert await listener.process_message({"job_id": "u-1"}, unencodable) is None
    assert calls == ["u-1"]
    (error,) = published_json(listener, "test/error")
    assert (error["attempt"], error["max_attempts"], error["will_retry"]) == (1, 4, False)
    assert "cannot be encoded as JSON" in error["error_message"]
    job = await listener.get_job_status("u-1")
    assert job is not None and (job.status, job.attempts) == (JobStatus.FAILED, 1)


async def test_a_job_waiting_to_be_retried_stays_running_and_its_duplicate_is_skipped() -> None:
    listener = mocked_listener(max_retries=1, retry_backoff=0.5)
    processor = Flaky(failures=1)
    first = asyncio.create_task(listener.process_message({"job_id": "d-1"}, processor))

    async def waiting_to_retry() -> None:
        while listener.metrics()["errors"].get("processing_error") != 1:
            await asyncio.sleep(0.005)

    await asyncio.wait_for(waiting_to_retry(), 5)
    assert (await listener.get_running_jobs()).keys() == {"d-1"}
    assert await listener.process_message({"job_id": "d-1"}, processor) is None  # the duplicate
    assert await asyncio.wait_for(first, 5) == {"job_id": "d-1", "attempts": 2}
    assert len(processor.calls) == 2
    job = await listener.get_job_status("d-1")
    assert job is not None and (job.status, job.duplicate_count, job.attempts) == (JobStatus.COMPLETED, 1, 2)


async def test_stop_during_a_backoff_wait_ends_the_job_at_once_without_a_retry() -> None:
    # A 60 s backoff against the default 30 s grace period: only watching stop() lets run() return in time.
    listener = mocked_listener(max_retries=2, retry_backoff=60)
    feed(listener, b'job_id = "s-1"')
    processor = Flaky(failures=10)
    run = asyncio.create_task(listener.run(processor))

    async def waiting_to_retry() -> None:
        while not published_json(listener, "test/error"):
            await asyncio.sleep(0.005)

    await asyncio.wait_for(waiting_to_retry(), 5)
    listener.stop()
    await asyncio.wait_for(run, 5)
    assert len(processor.calls) == 1
    job = await listener.get_job_status("s-1")
    assert job is not None and (job.status, job.error, job.attempts) == (JobStatus.FAILED,
                                                                         "Cancelled: listener stopped", 1)
    errors = published_json(listener, "test/error")
    assert [(e["attempt"], e["will_retry"]) for e in errors] == [(1, True)]  # announced before stop() came
    assert [e["event"] for e in published_json(listener, "test/log")] == ["job_retry", "job_failed"]
    assert listener.metrics()["jobs_retried"] == 0 and listener.metrics()["jobs_finished"] == {"failed": 1}


async def test_a_job_failing_after_stop_is_not_retried() -> None:
    listener = mocked_listener(max_retries=2, retry_backoff=60)
    feed(listener, b'job_id = "s-2"')
    calls: List[str] = []

    async def fails_while_draining(data: Dict[str, Any], job_id: str) -> None:  # async: stop() takes effect at once
        calls.append(job_id)
        listener.stop()
        raise RuntimeError("broken")

    await asyncio.wait_for(listener.run(fails_while_draining), 5)
    assert calls == ["s-2"]
    job = await listener.get_job_status("s-2")
    assert job is not None and (job.status, job.error) == (JobStatus.FAILED, "RuntimeError: broken")
    (error,) = published_json(listener, "test/error")
    assert (error["attempt"], error["will_retry"], error["error_message"]) == (
        1, False, "RuntimeError: broken (attempt 1 of 3)")


async def test_test_listener_reports_the_last_attempts_error_event() -> None:
    from Listener import EventListenerConfig

    async with TestListener(EventListenerConfig(max_retries=1, retry_backoff=0), Flaky(failures=5)) as test:
        outcome = await test.publish({"job_id": "tl-1"})
    assert outcome.status is JobStatus.FAILED
    assert outcome.error is not None and (outcome.error["attempt"], outcome.error["will_retry"]) == (2, False)
