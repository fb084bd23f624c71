"""max_concurrent_jobs through a real broker: overlap, its bound, order, backpressure, threads, draining stop."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any, Callable, Dict, List, Set

import pytest

from Listener import JobStatus
from tests.support.brokers import MqttProbe


class Overlap:
    """Counts how many calls run at the same time (thread-safe, for sync and async processors)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.current = 0
        self.peak = 0
        self.order: List[str] = []
        self.threads: Set[str] = set()

    def enter(self, job_id: str) -> None:
        with self._lock:
            self.current += 1
            self.peak = max(self.peak, self.current)
            self.order.append(job_id)
            self.threads.add(threading.current_thread().name)

    def leave(self) -> None:
        with self._lock:
            self.current -= 1


def publish_jobs(probe: MqttProbe, topic: str, count: int, prefix: str = "job", qos: int = 1) -> List[str]:
    ids = [f"{prefix}-{i:04d}" for i in range(count)]
    for job_id in ids:
        probe.publish(topic, f'job_id = "{job_id}"\n', qos=qos)
    return ids


async def results(watcher: MqttProbe, topic: str, count: int, timeout: float = 20.0) -> List[Dict[str, Any]]:
    messages = await asyncio.to_thread(watcher.wait_for, count, timeout, topic)
    return [json.loads(m.payload) for m in messages]


async def run_backlog(queued: Callable[[], bool], release: Callable[[], None], watcher: MqttProbe, topic: str,
                      ids: List[str], overlap: "Overlap") -> None:
    """Once ``queued()`` says the backlog behind the first (held) job is there, ``release`` it; every result comes,
    in arrival order, from jobs run one at a time."""
    async def backlog() -> None:
        while not queued():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(backlog(), 10)
    release()
    done = await results(watcher, f"{topic}/results", len(ids))
    assert [r["job_id"] for r in done] == ids
    assert overlap.order == ids and overlap.peak == 1


async def test_async_jobs_overlap_up_to_the_limit_and_never_beyond(start_listener: Callable[..., Any], probe: Any,
                                                                   unique_topic: str) -> None:
    overlap = Overlap()
    release = asyncio.Event()

    async def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        overlap.enter(job_id)
        try:
            await release.wait()
        finally:
            overlap.leave()
        return {"job_id": job_id}

    listener, _ = await start_listener(processor, qos=1, max_concurrent_jobs=4)
    watcher = probe(f"{unique_topic}/results")
    ids = publish_jobs(probe(), f"{unique_topic}/jobs", 12)

    async def four_running() -> None:
        while overlap.current < 4:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(four_running(), 10)
    # Held there: the fifth message must not start while four are in flight.
    assert listener.metrics()["in_flight"] == 4
    assert len(await listener.get_running_jobs()) == 4
    release.set()
    done = await results(watcher, f"{unique_topic}/results", 12)
    assert sorted(r["job_id"] for r in done) == ids
    assert overlap.peak == 4


async def test_one_at_a_time_keeps_arrival_order(start_listener: Callable[..., Any], probe: Any,
                                                 unique_topic: str) -> None:
    overlap = Overlap()

    async def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        overlap.enter(job_id)
        await asyncio.sleep(0.002)
        overlap.leave()
        return {"job_id": job_id}

    await start_listener(processor, qos=1)
    watcher = probe(f"{unique_topic}/results")
    ids = publish_jobs(probe(), f"{unique_topic}/jobs", 30)
    done = await results(watcher, f"{unique_topic}/results", 30)
    assert [r["job_id"] for r in done] == ids
    assert overlap.order == ids and overlap.peak == 1


async def test_a_backlog_for_a_plain_def_processor_runs_in_order_in_fewer_thread_hand_offs(
        start_listener: Callable[..., Any], probe: Any, unique_topic: str) -> None:
    """Messages queued behind a running plain ``def`` job are handed to its worker thread in batches."""
    overlap = Overlap()
    first_running, release = threading.Event(), threading.Event()

    def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        overlap.enter(job_id)
        if job_id.endswith("0000"):
            first_running.set()
            release.wait(10)
        overlap.leave()
        return {"job_id": job_id}

    listener, _ = await start_listener(processor, qos=1)
    hops = 0
    run, start = listener._workers.run, listener._workers.start

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal hops
        hops += 1
        return await run(*args, **kwargs)

    def counted_start(*args: Any) -> Any:  # a batch
        nonlocal hops
        hops += 1
        return start(*args)
    listener._workers.run = counted  # type: ignore[method-assign]
    listener._workers.start = counted_start  # type: ignore[method-assign]
    watcher = probe(f"{unique_topic}/results")
    ids = publish_jobs(probe(), f"{unique_topic}/jobs", 15)
    assert await asyncio.to_thread(first_running.wait, 10)
    await run_backlog(lambda: listener.metrics()["queue_depth"] + len(listener.jobs) >= 15, release.set, watcher,
                      unique_topic, ids, overlap)
    assert hops <= 2  # the first job (alone, or with what had arrived), then all queued behind it at once
    assert all(job.status is JobStatus.COMPLETED for job in (await listener.get_all_jobs()).values())


@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_a_backlog_for_an_async_processor_stays_queued_and_each_payload_is_decoded_once_in_runs(
        start_listener: Callable[..., Any], probe: Any, unique_topic: str, qos: int) -> None:
    """Messages queued behind a running ``async def`` job stay in the queue (queue_depth counts them) and are taken
    one at a time, in order; their payloads are decoded ahead, together with the one taken, each once."""
    overlap = Overlap()
    first_running, release = asyncio.Event(), asyncio.Event()

    async def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        overlap.enter(job_id)
        if job_id.endswith("0000"):
            first_running.set()
            await release.wait()
        overlap.leave()
        return {"job_id": job_id}

    listener, _ = await start_listener(processor, qos=qos)
    pipeline = listener._pipeline
    parsed: List[str] = []
    parse, decode_ahead = pipeline._parser.parse_config_from_string, pipeline.decode_ahead
    runs: List[int] = []
    pipeline._parser.parse_config_from_string = lambda text: parsed.append(text) or parse(text)
    pipeline.decode_ahead = lambda payloads: runs.append(len(payloads)) or decode_ahead(payloads)
    watcher = probe(f"{unique_topic}/results")
    ids = publish_jobs(probe(), f"{unique_topic}/jobs", 15, qos=qos)
    await asyncio.wait_for(first_running.wait(), 10)
    # All 14 behind the running job stay queued: none is taken ahead of its turn.
    await run_backlog(lambda: listener.metrics()["queue_depth"] >= 14, release.set, watcher, unique_topic, ids,
                      overlap)
    assert len(parsed) == 15 and sorted(parsed) == sorted(set(parsed))  # each payload once
    # Every payload behind the first decoded ahead, in runs of up to 16 (the first too, if others had come with it).
    assert sum(runs) in (14, 15) and len(runs) <= 3


@pytest.mark.parametrize("ack_policy, queued", [("on_receipt", 2), ("after_processing", 20)])
async def test_backpressure_holds_messages_at_the_broker(start_listener: Callable[..., Any], probe: Any,
                                                         unique_topic: str, ack_policy: str, queued: int) -> None:
    """on_receipt: at most max_concurrent_jobs acknowledged messages wait in the queue. after_processing: nothing
    queued is acknowledged, and the broker's in-flight limit (mosquitto's default, 20) bounds what it sends."""
    started: List[str] = []
    release = asyncio.Event()

    async def processor(data: Dict[str, Any], job_id: str) -> None:
        started.append(job_id)
        await release.wait()

    listener, _ = await start_listener(processor, qos=1, max_concurrent_jobs=2, ack_policy=ack_policy)
    publish_jobs(probe(), f"{unique_topic}/jobs", 30)

    async def two_started() -> None:
        while len(started) < 2:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(two_started(), 10)
    # Give the broker every chance to push more; what the listener took must stay bounded.
    for _ in range(20):
        await asyncio.sleep(0.01)
        snapshot = listener.metrics()
        assert snapshot["in_flight"] <= 2
        assert snapshot["queue_depth"] <= queued  # received, not started: the delivery window / broker in-flight limit
        assert snapshot["messages_received"] <= 2
    assert len(started) == 2
    release.set()

    async def all_done() -> None:
        while listener.metrics()["jobs_finished"].get("completed", 0) < 30:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(all_done(), 20)


async def test_sync_processors_run_on_n_threads(start_listener: Callable[..., Any], probe: Any,
                                                unique_topic: str) -> None:
    overlap = Overlap()
    barrier = threading.Barrier(3, timeout=10)

    def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        overlap.enter(job_id)
        try:
            if int(job_id.rsplit("-", 1)[1]) < 3:
                barrier.wait()  # only passes if three calls really run at once
        finally:
            overlap.leave()
        return {"job_id": job_id, "thread": threading.current_thread().name}

    loop_thread = threading.current_thread().name
    await start_listener(processor, qos=1, max_concurrent_jobs=3)
    watcher = probe(f"{unique_topic}/results")
    publish_jobs(probe(), f"{unique_topic}/jobs", 9)
    done = await results(watcher, f"{unique_topic}/results", 9)
    assert overlap.peak == 3
    assert loop_thread not in {r["thread"] for r in done}
    assert 1 < len(overlap.threads) <= 3


async def test_stop_during_a_burst_finishes_what_it_took(start_listener: Callable[..., Any], probe: Any,
                                                         unique_topic: str) -> None:
    handled: List[str] = []
    first = asyncio.Event()

    async def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        first.set()
        await asyncio.sleep(0.05)
        handled.append(job_id)
        return {"job_id": job_id}

    listener, task = await start_listener(processor, qos=1, max_concurrent_jobs=4)
    watcher = probe(f"{unique_topic}/results")
    publish_jobs(probe(), f"{unique_topic}/jobs", 200)
    await asyncio.wait_for(first.wait(), 10)
    listener.stop()
    assert listener.is_draining
    await asyncio.wait_for(task, 20)
    assert not listener.is_draining and not listener.is_running
    jobs = await listener.get_all_jobs()
    # Every job it took was finished and its result published; the rest stayed with the broker.
    assert jobs and all(job.status is JobStatus.COMPLETED for job in jobs.values())
    assert 1 <= len(jobs) < 200
    done = await results(watcher, f"{unique_topic}/results", len(jobs))
    assert sorted(r["job_id"] for r in done) == sorted(jobs) == sorted(handled)


async def test_job_timeout_fails_a_hung_sync_job_and_goes_on(start_listener: Callable[..., Any], probe: Any,
                                                             unique_topic: str) -> None:
    hang = threading.Event()

    def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        if job_id == "hangs":
            hang.wait(30)
        return {"job_id": job_id}

    listener, _ = await start_listener(processor, job_timeout=0.5)
    watcher = probe(f"{unique_topic}/#")
    sender = probe()
    sender.publish(f"{unique_topic}/jobs", 'job_id = "hangs"\n')
    sender.publish(f"{unique_topic}/jobs", 'job_id = "next"\n')
    try:
        [result] = await results(watcher, f"{unique_topic}/results", 1)
        assert result == {"job_id": "next"}
        [error] = await results(watcher, f"{unique_topic}/error", 1)
        assert error["error_type"] == "timeout" and error["job_id"] == "hangs"
        job = await listener.get_job_status("hangs")
        assert job is not None and job.status is JobStatus.FAILED and job.error == "Timed out after 0.5 s"
        assert listener.metrics()["abandoned_threads"] == 1
    finally:
        hang.set()
