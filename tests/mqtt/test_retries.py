"""Job retries through Mosquitto: attempts, their error events, the backoff between them, stop() meanwhile."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from Listener import JobStatus
from tests.support.job_messages import body, wait_for
from tests.support.listeners import job_finished
from tests.support.processors import Flaky


async def test_failing_twice_then_succeeding_completes_on_attempt_three(
        start_listener: Callable[..., Any], probe: Any, unique_topic: str) -> None:
    processor = Flaky(failures=2)
    listener, _ = await start_listener(processor, qos=1, max_retries=2, retry_backoff=0.05)
    watcher = probe(f"{unique_topic}/#")
    probe().publish(f"{unique_topic}/jobs", 'job_id = "r-1"\n')
    [result] = await wait_for(watcher, 1, f"{unique_topic}/results")
    await job_finished(listener, "r-1")
    assert body(result) == {"job_id": "r-1", "attempts": 3}
    errors = [body(m) for m in await wait_for(watcher, 2, f"{unique_topic}/error")]
    assert [(e["job_id"], e["attempt"], e["max_attempts"], e["will_retry"]) for e in errors] == [
        ("r-1", 1, 3, True), ("r-1", 2, 3, True)]
    assert "upstream down (call 2) (attempt 2 of 3; retrying in" in errors[1]["error_message"]
    job = await listener.get_job_status("r-1")
    assert job is not None and (job.status, job.attempts) == (JobStatus.COMPLETED, 3)
    # Everything for the job is out once it is COMPLETED (its QoS 1 result acknowledged): one result, two errors.
    await asyncio.to_thread(probe().publish, f"{unique_topic}/jobs", 'job_id = "r-1"\n')  # a duplicate, skipped

    async def duplicate_seen() -> None:
        while getattr(await listener.get_job_status("r-1"), "duplicate_count", 0) != 1:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(duplicate_seen(), 10)
    assert len(processor.calls) == 3
    assert len(watcher.messages(f"{unique_topic}/results")) == 1 and len(watcher.messages(f"{unique_topic}/error")) == 2
    assert listener.metrics()["jobs_retried"] == 2


async def test_always_failing_ends_failed_after_max_retries_plus_one_attempts_with_backoff_between(
        start_listener: Callable[..., Any], probe: Any, unique_topic: str) -> None:
    processor = Flaky(failures=100)
    backoff = 0.1
    listener, _ = await start_listener(processor, qos=1, max_retries=2, retry_backoff=backoff)
    watcher = probe(f"{unique_topic}/error")
    probe().publish(f"{unique_topic}/jobs", 'job_id = "r-2"\n')
    errors = [body(m) for m in await wait_for(watcher, 3, f"{unique_topic}/error")]
    await job_finished(listener, "r-2")
    assert len(processor.calls) == 3
    gaps = [later - earlier for earlier, later in zip(processor.calls, processor.calls[1:])]
    # Each wait is retry_backoff × 2^(n-1) less at most a quarter (jitter); no upper bound on a loaded machine.
    assert gaps[0] >= 0.75 * backoff and gaps[1] >= 0.75 * 2 * backoff, gaps
    assert [(e["attempt"], e["will_retry"]) for e in errors] == [(1, True), (2, True), (3, False)]
    assert errors[2]["error_message"] == "ConnectionResetError: upstream down (call 3) (attempt 3 of 3)"
    job = await listener.get_job_status("r-2")
    assert job is not None and (job.status, job.attempts) == (JobStatus.FAILED, 3)
    assert job.error == "ConnectionResetError: upstream down (call 3)"
    assert listener.metrics()["jobs_finished"] == {"failed": 1}


async def test_stop_during_a_backoff_wait_ends_promptly(start_listener: Callable[..., Any], probe: Any,
                                                        unique_topic: str) -> None:
    processor = Flaky(failures=100)
    # The wait (45-60 s) outlasts the grace period (30 s): run() returning within 10 s means stop() ended the wait.
    listener, run = await start_listener(processor, qos=1, max_retries=3, retry_backoff=60)
    watcher = probe(f"{unique_topic}/error")
    probe().publish(f"{unique_topic}/jobs", 'job_id = "r-3"\n')
    [error] = await wait_for(watcher, 1, f"{unique_topic}/error")
    assert (body(error)["attempt"], body(error)["will_retry"]) == (1, True)
    listener.stop()
    await asyncio.wait_for(run, 10)
    assert len(processor.calls) == 1
    job = await listener.get_job_status("r-3")
    assert job is not None and (job.status, job.error, job.attempts) == (JobStatus.FAILED,
                                                                         "Cancelled: listener stopped", 1)
    assert listener.metrics()["jobs_retried"] == 0
