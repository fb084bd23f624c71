"""Results stream and status is true at full speed (issue 23, item 3), through a real Mosquitto.

A plain ``def`` processor at the default ``max_concurrent_jobs = 1`` runs a backlog several jobs per
hand-off to its worker thread (``Listener/processing/batches.py``). Whatever jobs share a hand-off, each
job's result goes out when its processor returns, and the job is RUNNING exactly while its processor
runs: PENDING before, COMPLETED after. Checked with every job store (memory, SQLite, Redis).
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any, Dict, List

import pytest

from Listener import EventListener, JobStatus
from tests.support.brokers import BrokerEndpoint, MqttProbe
from tests.support.listeners import listener_config, run_until_ready, stop_listeners
from tests.support.redis_server import redis_server, unique_prefix
from tests.support.waiting import until

__all__ = ["redis_server"]  # the fixture, for pytest

pytestmark = pytest.mark.timeout(120)

#: How long a check may take to come true (it comes true within milliseconds when the listener is right).
SETTLE = 15.0


def job_store_setting(store: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if store == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    if store == "redis":
        return str(request.getfixturevalue("redis_server").url(unique_prefix("stream")))
    return "memory"


class Held:
    """A plain ``def`` processor: ``gate`` and ``block`` wait (on their threading.Event) until released."""

    def __init__(self) -> None:
        self.gate, self.block = threading.Event(), threading.Event()
        self.gate_started, self.block_started = threading.Event(), threading.Event()

    def __call__(self, data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        if job_id == "gate":
            self.gate_started.set()
            assert self.gate.wait(30)  # noqa: S101 - bounded: the test releases it
        elif job_id == "block":
            self.block_started.set()
            assert self.block.wait(30)  # noqa: S101 - bounded: the test releases it
        return {"done": job_id}

    def release(self) -> None:
        self.gate.set()
        self.block.set()


async def backlog_behind_a_gate(listener: EventListener, processor: Held, sender: MqttProbe, topic: str,
                                ids: List[str]) -> List[List[str]]:
    """Publish ``gate``, and once it runs (alone) ``ids`` (QoS 0); once they all wait in the listener, release
    the gate: the next hand-off to the worker thread takes the first 16 of them at once.
    Returns the job ids of each batch handed to a worker thread from then on (filled in as they start)."""
    batches: List[List[str]] = []
    start = listener._workers.start

    def counted(func: Any, processor: Any, jobs: List[Any], *args: Any) -> Any:
        batches.append([job_id for _, _, job_id in jobs])
        return start(func, processor, jobs, *args)

    listener._workers.start = counted  # type: ignore[method-assign]
    sender.publish(f"{topic}/jobs", 'job_id = "gate"\n', qos=0)
    assert await asyncio.to_thread(processor.gate_started.wait, SETTLE)
    for job_id in ids:
        sender.publish_nowait(f"{topic}/jobs", f'job_id = "{job_id}"\n', qos=0)

    async def all_waiting() -> bool:
        return bool(listener.metrics()["queue_depth"] + len(listener.jobs) >= len(ids) + 1)
    await until(all_waiting, f"{len(ids)} jobs queued behind the gate")
    processor.gate.set()
    return batches


async def statuses(listener: EventListener, ids: List[str]) -> List[Any]:
    return [getattr(await listener.get_job_status(job_id), "status", None) for job_id in ids]


def results_of(watcher: MqttProbe, topic: str) -> List[str]:
    return [json.loads(m.payload)["done"] for m in watcher.messages(f"{topic}/results")]


@pytest.mark.parametrize("store", ["memory", "sqlite", "redis"])
@pytest.mark.parametrize("where", ["last", "middle"])
async def test_results_stream_and_only_the_job_whose_processor_runs_is_running(
        store: str, where: str, mqtt_endpoint: BrokerEndpoint, unique_topic: str, probe: Any, tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    """``last``: 100 quick jobs, then one that blocks; ``middle``: the blocking job has 10 quick jobs before it
    and 5 after it, all in one hand-off to the worker thread. While it blocks, every job before it is
    COMPLETED and its result received, it alone is RUNNING, and the jobs after it are PENDING."""
    before = [f"q{i:03d}" for i in range(100 if where == "last" else 10)]
    after = [] if where == "last" else [f"r{i}" for i in range(5)]
    processor = Held()
    watcher = probe(f"{unique_topic}/results")
    listener = EventListener(listener_config(mqtt_endpoint, unique_topic,
                                             job_store=job_store_setting(store, tmp_path, request)))
    task = await run_until_ready(listener, processor)
    try:
        batches = await backlog_behind_a_gate(listener, processor, probe(), unique_topic, before + ["block"] + after)
        await asyncio.to_thread(processor.block_started.wait, SETTLE)
        assert any(ids.index("block") > 0 for ids in batches if "block" in ids)  # a hand-off shared with earlier jobs
        earlier = ["gate"] + before
        # Their results leave as each processor returns, not when the hand-off they shared ends.
        await asyncio.to_thread(watcher.wait_for, len(earlier), SETTLE, f"{unique_topic}/results")

        async def settled() -> bool:
            return (await statuses(listener, earlier) == [JobStatus.COMPLETED] * len(earlier)
                    and await listener.is_job_running("block"))
        await until(settled, "the jobs before the blocked one COMPLETED, and it RUNNING")

        assert processor.block_started.is_set() and not processor.block.is_set()  # still blocked: no race below
        assert results_of(watcher, unique_topic) == earlier
        assert (await listener.get_job_status("block")).status is JobStatus.RUNNING  # type: ignore[union-attr]
        assert list(await listener.get_running_jobs()) == ["block"]
        assert await statuses(listener, after) == [JobStatus.PENDING] * len(after)
        if store != "redis":  # /metrics counts this process's jobs (the Redis store's are the same here)
            jobs = listener.metrics()["jobs"]
            assert jobs.get("running") == 1 and jobs.get("pending", 0) == len(after)
            assert jobs.get("completed") == len(earlier)

        processor.block.set()
        await asyncio.to_thread(watcher.wait_for, len(earlier) + 1 + len(after), SETTLE, f"{unique_topic}/results")
        assert results_of(watcher, unique_topic) == earlier + ["block"] + after
        await until(lambda: _no_running(listener), "no job RUNNING once every processor returned")
    finally:
        processor.release()
        await stop_listeners([(listener, task)], SETTLE)


async def _no_running(listener: EventListener) -> bool:
    return not await listener.get_running_jobs()


async def test_a_job_is_pending_until_its_processor_starts_and_running_until_it_returns(
        mqtt_endpoint: BrokerEndpoint, unique_topic: str, probe: Any) -> None:
    """Each of 20 jobs handed over together, seen from inside its own processor: RUNNING, and the one before
    it COMPLETED with its result already received by a subscriber."""
    ids = [f"s{i:02d}" for i in range(20)]
    watcher = probe(f"{unique_topic}/results")
    listener: EventListener
    seen: List[Any] = []
    loop = asyncio.get_running_loop()

    async def look(job_id: str, previous: str) -> Any:
        async def recorded() -> bool:
            return (await listener.is_job_running(job_id) and await listener.is_job_completed(previous)
                    and previous in results_of(watcher, unique_topic))
        if any(isinstance(found, str) for _, found in seen):
            return (job_id, "not looked at: an earlier job was not seen right")
        try:
            await until(recorded, timeout=SETTLE, interval=0.01)
        except AssertionError:
            return (job_id, "not seen RUNNING with the previous job finished and its result out")
        return (job_id, list(await listener.get_running_jobs()))

    held = Held()

    def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        if job_id == "gate":
            held(data, job_id)
        else:
            previous = "gate" if job_id == ids[0] else ids[ids.index(job_id) - 1]
            seen.append(asyncio.run_coroutine_threadsafe(look(job_id, previous), loop).result(SETTLE + 5))
        return {"done": job_id}

    listener = EventListener(listener_config(mqtt_endpoint, unique_topic))
    task = await run_until_ready(listener, processor)
    try:
        batches = await backlog_behind_a_gate(listener, held, probe(), unique_topic, ids)
        await asyncio.to_thread(watcher.wait_for, len(ids) + 1, SETTLE + 10, f"{unique_topic}/results")
        assert seen == [(job_id, [job_id]) for job_id in ids]
        assert max(map(len, batches)) > 1  # the backlog went to the worker thread in batches
    finally:
        held.release()
        await stop_listeners([(listener, task)], SETTLE)
