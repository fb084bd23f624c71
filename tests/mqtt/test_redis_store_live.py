"""The Redis job store with real Mosquitto and a real ``redis-server``: one job id received by two listener
processes runs once in total (with the memory store it runs in both: documented), and Redis lost in the
middle of a run (the job in hand reported by an error event naming the store, no password shown, jobs
running again once Redis is back, every outcome recorded).
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Set

import pytest
import redis

from Listener import EventListener, JobStatus
from tests.support.brokers import BrokerEndpoint
from tests.support.listeners import listener_config, run_until_ready
from tests.support.redis_server import RedisFactory, RedisServer, redis_factory, redis_server, unique_prefix
from tests.support.waiting import until

__all__ = ["redis_factory", "redis_server"]  # the fixtures, for pytest

pytestmark = pytest.mark.timeout(120)

JOBS = 30


class TwoListeners(NamedTuple):
    """What two listener processes did with every copy of jobs j0…j<JOBS-1>."""

    ran: "Counter[str]"  # runs per job id
    pids: Set[str]  # the processes that ran a job
    results: int
    errors: List[Dict[str, Any]]


def run_two_listeners(store: str, copies: int, endpoint: BrokerEndpoint, topic: str, probe: Any, processes: Any,
                      redis_server: RedisServer, runs: Path, *options: str) -> TwoListeners:
    """Start two listener processes (``store``: "redis" or "memory"), publish ``copies`` of each job, and
    wait until every copy that reaches a process is answered (a result or a duplicate_job error event)."""
    setting = redis_server.url(unique_prefix("dedupe")) if store == "redis" else "memory"
    workers = [processes(endpoint, topic, 0.0, "--job-store", setting, "--duplicate-action", "error",
                         "--runs-file", str(runs), "--quiet", *options) for _ in range(2)]
    for worker in workers:
        worker.wait_line("READY")
    watcher = probe(f"{topic}/results", f"{topic}/error")
    sender = probe()
    for n in range(JOBS):
        for _ in range(copies):
            sender.publish(f"{topic}/jobs", f'job_id = "j{n}"\n', qos=1)
    watcher.wait_for(2 * JOBS, timeout=60)
    assert all(worker.process.poll() is None for worker in workers)
    lines = runs.read_text().split()
    return TwoListeners(Counter(lines[0::2]), set(lines[1::2]), len(watcher.messages(f"{topic}/results")),
                        [json.loads(m.payload) for m in watcher.messages(f"{topic}/error")])


@pytest.mark.parametrize("store", ["redis", "memory"])
def test_one_job_id_received_by_two_listener_processes(store: str, mqtt_endpoint: BrokerEndpoint, unique_topic: str,
                                                       probe: Any, processes: Any, redis_server: RedisServer,
                                                       tmp_path: Path) -> None:
    """Both processes subscribe to the same topic, so both receive every message (as two workers of a share
    group do when the same id is published twice). Redis: each id runs once in all; memory: once per process."""
    seen = run_two_listeners(store, 1, mqtt_endpoint, unique_topic, probe, processes, redis_server,
                             tmp_path / "runs.txt")
    if store == "redis":
        assert seen.ran == Counter({f"j{n}": 1 for n in range(JOBS)})
        assert seen.results == JOBS and len(seen.errors) == JOBS
        assert {e["error_type"] for e in seen.errors} == {"duplicate_job"}
    else:
        assert seen.ran == Counter({f"j{n}": 2 for n in range(JOBS)})  # the memory store: per process
        assert seen.results == 2 * JOBS and seen.errors == []


@pytest.mark.parametrize("store", ["redis", "memory"])
def test_one_job_id_published_twice_to_a_share_group(store: str, mqtt_endpoint: BrokerEndpoint, unique_topic: str,
                                                     probe: Any, processes: Any, redis_server: RedisServer,
                                                     tmp_path: Path) -> None:
    """Two workers of one share group; every id is published twice, and the broker hands the two copies to
    the workers in turn. Redis: each id runs once in all; memory: an id whose copies reached both workers
    runs twice (documented in docs/scaling.md)."""
    seen = run_two_listeners(store, 2, mqtt_endpoint, unique_topic, probe, processes, redis_server,
                             tmp_path / "runs.txt", "--share-group", f"g{uuid.uuid4().hex[:8]}")
    if store == "redis":
        # (One worker may run every job: with the copies handed out in turn, the other gets the second copies.)
        assert seen.ran == Counter({f"j{n}": 1 for n in range(JOBS)})
        assert seen.results == JOBS and len(seen.errors) == JOBS
        assert {e["error_type"] for e in seen.errors} == {"duplicate_job"}
    else:  # the copies that reached different workers ran twice: what the Redis store prevents
        assert len(seen.pids) == 2  # both workers ran jobs: the group split the stream
        assert set(seen.ran) == {f"j{n}" for n in range(JOBS)} and sum(seen.ran.values()) > JOBS
        assert seen.results + len(seen.errors) == 2 * JOBS


async def test_redis_lost_and_back_mid_run(mqtt_endpoint: BrokerEndpoint, unique_topic: str, probe: Any,
                                           redis_factory: RedisFactory) -> None:
    password = "redis-pw-31337"
    server = redis_factory.start(password=password)
    prefix = unique_prefix("outage")
    release = threading.Event()
    ran: List[str] = []

    def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        ran.append(job_id)
        if data.get("hold"):
            assert release.wait(30)  # noqa: S101 - bounded: the test releases it
        return {"job_id": job_id}

    watcher = probe(f"{unique_topic}/results", f"{unique_topic}/error", f"{unique_topic}/log")
    listener = EventListener(listener_config(mqtt_endpoint, unique_topic, job_store=server.url(prefix), qos=1,
                                             max_concurrent_jobs=2))
    task = await run_until_ready(listener, processor)
    sender = probe()
    try:
        sender.publish(f"{unique_topic}/jobs", 'job_id = "before"\n', qos=1)
        sender.publish(f"{unique_topic}/jobs", 'job_id = "in-hand"\nhold = true\n', qos=1)
        await until(lambda: listener.is_job_completed("before"))
        await until(lambda: listener.is_job_running("in-hand"))

        await asyncio.to_thread(server.stop)  # Redis goes away while "in-hand" runs
        sender.publish(f"{unique_topic}/jobs", 'job_id = "during"\n', qos=1)
        errors = await asyncio.to_thread(
            watcher.wait_until, lambda ms: any(json.loads(m.payload).get("job_id") == "during" for m in ms),
            timeout=20, topic=f"{unique_topic}/error")
        event = next(json.loads(m.payload) for m in errors if json.loads(m.payload).get("job_id") == "during")
        assert event["error_type"] == "processing_error"
        assert f"redis://:***@127.0.0.1:{server.port}/0" in event["error_message"]
        release.set()  # "in-hand" finishes while Redis is down: its record cannot be written yet
        await asyncio.to_thread(
            watcher.wait_until, lambda ms: any(json.loads(m.payload).get("event") == "job_store_error"
                                               and json.loads(m.payload).get("job_id") is None  # the write failed
                                               for m in ms), timeout=20, topic=f"{unique_topic}/log")
        assert "during" not in ran  # not started without its record

        await asyncio.to_thread(server.start)  # back, empty (no persistence): the listener reconnects by itself
        sender.publish(f"{unique_topic}/jobs", 'job_id = "after"\n', qos=1)
        await asyncio.to_thread(
            watcher.wait_until, lambda ms: {json.loads(m.payload)["job_id"] for m in ms} >= {
                "before", "in-hand", "during", "after"}, timeout=30, topic=f"{unique_topic}/results")
        await until(lambda: listener.is_job_completed("after"))
        check = redis.Redis(port=server.port, password=password, decode_responses=True)
        try:
            for job_id in ("in-hand", "during", "after"):  # written once Redis was back
                await until(lambda: _recorded(check, prefix, job_id))
        finally:
            check.close()
        status = await listener.get_job_status("during")
        assert status is not None and status.status is JobStatus.COMPLETED
    finally:
        release.set()
        listener.stop()
        await asyncio.wait_for(task, 20)
    every_payload = b"".join(m.payload for m in watcher.messages())
    assert password.encode() not in every_payload


async def _recorded(check: "redis.Redis[str]", prefix: str, job_id: str) -> bool:
    return check.hget(f"{prefix}:job:{job_id}", "status") == "completed"
