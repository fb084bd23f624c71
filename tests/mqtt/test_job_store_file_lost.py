"""A SQLite job store file deleted or replaced while the listener runs is an error, never silent (issue 23, item 5):
a ``job_store_error`` event names the file, and the acknowledgements of the jobs finished since are held, so the
broker redelivers them to the next session with the same client id (real Mosquitto)."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from pathlib import Path
from typing import Any, Callable, Dict, List, Set

import pytest

from tests.support.brokers import MqttProbe
from tests.support.listeners import job_finished
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(60)


def _replace_with_another_database(path: Path) -> None:
    other = path.with_name("other.db")
    connection = sqlite3.connect(str(other))
    try:
        connection.execute("CREATE TABLE unrelated (x)")
        connection.commit()
    finally:
        connection.close()
    other.replace(path)


@pytest.mark.parametrize("change", ["deleted", "replaced"])
async def test_a_job_store_file_gone_mid_run_holds_acknowledgements_and_is_reported(
        start_listener: Callable[..., Any], probe: Callable[..., MqttProbe], unique_topic: str, tmp_path: Path,
        change: str, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "jobs.db"
    client_id = f"file-{change}-{os.urandom(4).hex()}"
    watcher = probe(f"{unique_topic}/log")
    sender = probe()

    async def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        return {"job_id": job_id}

    listener, task = await start_listener(processor, client_id=client_id, cleansession=False, qos=1,
                                          job_store=f"sqlite:///{path}")
    await asyncio.to_thread(sender.publish, f"{unique_topic}/jobs", 'job_id = "before"', 1)
    await job_finished(listener, "before")
    deliveries = listener.client._deliveries
    await eventually(lambda: deliveries.unacknowledged == 0, 10, "before acknowledged")

    if change == "deleted":
        path.unlink()
    else:
        _replace_with_another_database(path)
    await asyncio.to_thread(sender.publish, f"{unique_topic}/jobs", 'job_id = "after"', 1)
    await asyncio.to_thread(
        watcher.wait_until, lambda ms: any(json.loads(m.payload).get("event") == "job_store_error" for m in ms),
        20, f"{unique_topic}/log", "a job_store_error event")
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR" and "job store" in r.getMessage()]
    assert len(errors) == 1 and f"was {change}" in errors[0] and str(path) in errors[0], errors
    await job_finished(listener, "after")  # processed, recorded in memory, but not acknowledged
    assert deliveries.unacknowledged == 1
    listener.stop()
    await asyncio.wait_for(task, 20)
    reported = [json.loads(m.payload) for m in watcher.messages(f"{unique_topic}/log")]
    assert sum(1 for body in reported if body.get("event") == "job_store_error") == 1  # once, not at every retry
    assert len([r for r in caplog.records if r.levelname == "ERROR" and "job store" in r.getMessage()]) == 1

    assert await _next_session(start_listener, probe, unique_topic, client_id) == {"after"}


async def _next_session(start_listener: Callable[..., Any], probe: Callable[..., MqttProbe], topic: str,
                        client_id: str) -> Set[str]:
    """The jobs the broker gives the next session of ``client_id`` (memory store) before a new one, "sentinel"."""
    ran: List[str] = []

    async def processor(data: Dict[str, Any], job_id: str) -> None:
        ran.append(job_id)

    listener, _ = await start_listener(processor, client_id=client_id, cleansession=False, qos=1)
    await asyncio.to_thread(probe().publish, f"{topic}/jobs", 'job_id = "sentinel"', 1)
    await job_finished(listener, "sentinel")  # redelivered messages come first, one job at a time
    return set(ran) - {"sentinel"}
