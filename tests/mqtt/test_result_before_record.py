"""With a job store that outlives the process, a QoS 0 result is handed to the socket before its job is recorded
COMPLETED: the listener's writes otherwise wait for the end of the event loop's turn, while the SQLite writer
thread (or Redis) may commit the record at once. A SIGKILL in between left a job recorded COMPLETED whose
result never went out, and whose redelivered message was then a duplicate: the result was lost for good
(tests/mqtt/test_acknowledgements.py::test_sigkill_mid_burst_loses_no_job saw 9 such jobs on a loaded machine).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest

from Listener import EventListener, JobStatus
from Listener.mqtt.wire_handler import WireHandler
from tests.support.brokers import BrokerEndpoint
from tests.support.listeners import listener_config, run_until_ready
from tests.support.redis_server import redis_server, unique_prefix

__all__ = ["redis_server"]  # the fixture, for pytest

JOBS = 40


def _sync(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
    return {"job_id": job_id}


async def _async(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
    return {"job_id": job_id}


@pytest.mark.parametrize("direct", [True, False], ids=["written_directly", "through_deliver"])
@pytest.mark.parametrize("concurrency", [1, 16])
@pytest.mark.parametrize("processor", [_sync, _async], ids=["def", "async_def"])
@pytest.mark.parametrize("qos", [1, 2])
@pytest.mark.parametrize("store", ["sqlite", "redis"])
async def test_a_qos0_result_is_in_the_socket_before_its_job_is_recorded_completed(
        mqtt_endpoint: BrokerEndpoint, unique_topic: str, probe: Any, tmp_path: Path, request: pytest.FixtureRequest,
        store: str, qos: int, processor: Callable[..., Any], concurrency: int, direct: bool) -> None:
    """Each store that outlives the process, jobs at QoS 1 and 2 (those the broker redelivers), results written
    directly (``send_now``) or the ordinary way (``deliver``: a connection not watched, a full socket buffer), with
    each way of finishing a job: in a batch of a plain ``def`` processor, one by one, concurrently."""
    job_store = (f"sqlite:///{tmp_path / 'jobs.db'}" if store == "sqlite"
                 else str(request.getfixturevalue("redis_server").url(unique_prefix("before-record"))))
    config = listener_config(mqtt_endpoint, unique_topic, qos=qos, default_qos=0, log_topic="",
                             max_concurrent_jobs=concurrency, job_store=job_store)
    listener = EventListener(config)
    records = listener._tracker.store
    assert records.persistent
    unsent_at_completion: List[int] = []  # bytes written but not yet handed to the socket, at each COMPLETED

    def unsent() -> int:
        wire = listener.client.wire
        assert isinstance(wire, WireHandler)
        return wire._outgoing_size

    set_status_now, set_status = records.set_status_now, records.set_status

    def spied_now(job_id: str, status: JobStatus, *args: Any) -> Any:
        if status is JobStatus.COMPLETED:
            unsent_at_completion.append(unsent())
        return set_status_now(job_id, status, *args)

    async def spied(job_id: str, status: JobStatus, *args: Any) -> Any:
        if status is JobStatus.COMPLETED:
            unsent_at_completion.append(unsent())
        return await set_status(job_id, status, *args)

    records.set_status_now, records.set_status = spied_now, spied  # type: ignore[method-assign]
    if not direct:
        listener._publisher.send_now = lambda publication: False  # type: ignore[method-assign]
    task = await run_until_ready(listener, processor)
    watcher = probe(f"{unique_topic}/results")
    try:
        sender = probe()
        for i in range(JOBS):
            sender.publish(f"{unique_topic}/jobs", f'job_id = "r-{i}"', qos=qos)
        results = await asyncio.to_thread(watcher.wait_for, JOBS, 20.0, f"{unique_topic}/results")
        assert sorted(json.loads(m.payload)["job_id"] for m in results) == sorted(f"r-{i}" for i in range(JOBS))
    finally:
        listener.stop()
        await asyncio.wait_for(task, 15)
    assert len(unsent_at_completion) >= JOBS
    assert unsent_at_completion == [0] * len(unsent_at_completion)
