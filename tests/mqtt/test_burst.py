"""A burst through the real broker: nothing lost, memory bounded."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable, Dict

import pytest

from Listener import EventListener, JobStatus

pytestmark = pytest.mark.slow
BURST = 2000


async def test_burst_of_qos1_jobs_is_processed_once_each_with_bounded_job_store(
        start_listener: Callable[..., Any], probe: Any, unique_topic: str) -> None:
    def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        return {"job_id": job_id, "n": data["n"]}

    listener, _ = await start_listener(processor, qos=1, max_jobs_in_memory=500, log_topic_level="ERROR",
                                       custom_topics={f"{unique_topic}/results": {"qos": 1}})
    watcher = probe(f"{unique_topic}/results")
    sender = probe()
    await asyncio.to_thread(
        lambda: [sender.publish(f"{unique_topic}/jobs", f'job_id = "burst-{i}"\nn = {i}', qos=1) for i in range(BURST)])
    results = await asyncio.to_thread(watcher.wait_for, BURST, 120.0, f"{unique_topic}/results")
    numbers = sorted(json.loads(m.payload)["n"] for m in results)
    assert numbers == list(range(BURST))
    # The result is handed to the broker just before its job is marked COMPLETED.
    await asyncio.wait_for(_completed(listener, f"burst-{BURST - 1}"), 10)
    jobs = await listener.get_all_jobs()
    assert len(jobs) <= 500
    assert all(job.status is JobStatus.COMPLETED for job in jobs.values())
    assert f"burst-{BURST - 1}" in jobs


async def _completed(listener: EventListener, job_id: str) -> None:
    while not await listener.is_job_completed(job_id):
        await asyncio.sleep(0.01)
