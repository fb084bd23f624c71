"""The SQLite job store across listener restarts, through Mosquitto: a job that completed is a duplicate
when its message comes again; a job a crash left RUNNING runs again, its attempts counted."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any, Dict, List

import pytest

from Listener import EventListener, JobStatus
from tests.support.brokers import BrokerEndpoint
from tests.support.listeners import listener_config, run_until_ready
from tests.support.waiting import until

pytestmark = pytest.mark.timeout(90)


async def test_a_new_listener_on_the_same_database_skips_a_completed_job_and_reruns_an_interrupted_one(
        mqtt_endpoint: BrokerEndpoint, unique_topic: str, probe: Any, tmp_path: Path) -> None:
    database = tmp_path / "jobs.db"
    ran: List[str] = []

    def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        ran.append(job_id)
        return {"job_id": job_id}

    config = listener_config(mqtt_endpoint, unique_topic, job_store=f"sqlite:///{database}", qos=1)
    first = EventListener(config)
    task = await run_until_ready(first, processor)
    probe().publish(f"{unique_topic}/jobs", 'job_id = "once"\n', qos=1)
    await until(lambda: first.is_job_completed("once"))
    first.stop()
    await asyncio.wait_for(task, 15)

    # As a crash would leave it: a job the processor had started and never finished.
    writer = sqlite3.connect(str(database))
    with writer:
        writer.execute("INSERT INTO jobs (job_id, status, started_at, attempts) VALUES ('crashed', 'running', ?, 1)",
                       ("2025-01-01T00:00:00.000000",))
    writer.close()

    second = EventListener(config)
    task = await run_until_ready(second, processor)
    try:
        crashed = await second.get_job_status("crashed")
        assert crashed is not None and crashed.status is JobStatus.PENDING and crashed.attempts == 1
        sender = probe()
        sender.publish(f"{unique_topic}/jobs", 'job_id = "once"\n', qos=1)  # redelivered after a restart
        sender.publish(f"{unique_topic}/jobs", 'job_id = "crashed"\n', qos=1)
        await until(lambda: second.is_job_completed("crashed"))
        await until(lambda: _status_is(second, "once", JobStatus.DUPLICATE))
        assert ran == ["once", "crashed"]  # "once" ran in the first listener only
        rerun = await second.get_job_status("crashed")
        assert rerun is not None and rerun.attempts == 2 and rerun.result == {"job_id": "crashed"}
    finally:
        second.stop()
        await asyncio.wait_for(task, 15)
    reader = sqlite3.connect(str(database))
    try:
        stored = dict(reader.execute("SELECT job_id, status || '/' || attempts FROM jobs").fetchall())
    finally:
        reader.close()
    assert stored == {"once": "duplicate/1", "crashed": "completed/2"}


async def _status_is(listener: EventListener, job_id: str, status: JobStatus) -> bool:
    job = await listener.get_job_status(job_id)
    return job is not None and job.status is status
