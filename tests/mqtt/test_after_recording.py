"""ack_policy = "after_recording" against a real Mosquitto (issue 23, item 2): a QoS 1/2 message is acknowledged
once its job is recorded with its input in a durable job store, so one hung job no longer holds the broker's
in-flight window; and what an acknowledged job left unfinished at a crash is resumed from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Set

import pytest

from Listener import EventListener
from tests.support.brokers import BrokerFactory, MqttProbe
from tests.support.job_messages import body
from tests.support.listener_processes import ListenerProcess
from tests.support.listeners import listener_config, run_until_ready, stop_listeners

pytestmark = pytest.mark.timeout(120)

#: Mosquitto's default max_inflight_messages: QoS 1/2 messages sent to the listener and not yet acknowledged.
BROKER_INFLIGHT = 20
FAST_JOBS = 60


async def _until(condition: Callable[[], bool], timeout: float, every: float = 0.02) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(every)
    await asyncio.wait_for(poll(), timeout)


@pytest.mark.parametrize("qos", [1, 2])
async def test_one_hung_job_does_not_stall_the_others(broker_factory: BrokerFactory, probe: Callable[..., MqttProbe],
                                                      unique_topic: str, tmp_path: Path, qos: int) -> None:
    """Mosquitto at its default in-flight limit (20), SQLite store, max_concurrent_jobs 4: one job hangs, then
    60 fast ones arrive. Every fast job finishes while the hung one still runs (with after_processing about 20
    would: the hung job's acknowledgement, first in line, holds back all later ones and the broker stops sending);
    released, it finishes too. At QoS 2 the PUBREC is the acknowledgement that goes out once recorded."""
    broker = broker_factory(max_inflight=BROKER_INFLIGHT)
    release = threading.Event()
    finished: Set[str] = set()
    lock = threading.Lock()

    def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        if job_id == "hung":
            release.wait(60)
        with lock:
            finished.add(job_id)
        return {"job_id": job_id}

    listener = EventListener(listener_config(broker.plain, unique_topic, qos=qos, max_concurrent_jobs=4,
                                             ack_policy="after_recording",
                                             job_store=f"sqlite:///{tmp_path / 'jobs.db'}"))
    task = await run_until_ready(listener, processor)
    try:
        sender = probe(endpoint=broker.plain)
        sender.publish(f"{unique_topic}/jobs", 'job_id = "hung"', qos=qos)
        await _until(lambda: "hung" in listener.jobs and listener.jobs["hung"].status.value == "running", 10)
        fast = [f"fast-{i:03d}" for i in range(FAST_JOBS)]

        def send() -> None:
            for job_id in fast:
                sender.publish(f"{unique_topic}/jobs", f'job_id = "{job_id}"', qos=qos)
        await asyncio.to_thread(send)
        with contextlib.suppress(asyncio.TimeoutError):
            await _until(lambda: set(fast) <= finished, 30)
        missing = sorted(set(fast) - finished)
        assert not missing, f"{len(missing)} of {FAST_JOBS} fast jobs stalled behind the hung one, e.g. {missing[:5]}"
        assert "hung" not in finished
        release.set()
        await _until(lambda: "hung" in finished, 10)
    finally:
        release.set()
        await stop_listeners([(listener, task)], 20)


def _runs(path: Path) -> Dict[str, List[int]]:
    found: Dict[str, List[int]] = defaultdict(list)
    if path.exists():
        for line in path.read_text().splitlines():
            job_id, pid = line.split()
            found[job_id].append(int(pid))
    return found


def _statuses(database: Path) -> Dict[str, str]:
    """Each job's status in the SQLite file (read as an operator would, with a second connection)."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as reader:
        return dict(reader.execute("SELECT job_id, status FROM jobs").fetchall())


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_sigkill_loses_no_acknowledged_job_it_is_resumed_from_the_store(
        broker_factory: BrokerFactory, processes: Callable[..., ListenerProcess], probe: Callable[..., MqttProbe],
        unique_topic: str, tmp_path: Path, concurrency: int) -> None:
    """SQLite + after_recording, persistent session, 16 QoS 1 jobs of 0.5 s. SIGKILL while jobs run (and, one at a
    time, while the jobs of a batch are recorded and acknowledged but not started): their messages were
    acknowledged, so the broker never sends them again; the next process resumes them from the file. Every job
    gets a result; only a job that had started and was not recorded finished may run twice."""
    broker = broker_factory(max_inflight=BROKER_INFLIGHT)
    runs = tmp_path / "runs.txt"
    database = tmp_path / "jobs.db"
    results = f"{unique_topic}/results"
    watcher = probe(results, endpoint=broker.plain)
    options = ("--client-id", f"resume-{os.urandom(4).hex()}", "--persistent", "--max-concurrent", str(concurrency),
               "--runs-file", str(runs), "--quiet", "--ack-policy", "after_recording",
               "--job-store", f"sqlite:///{database}")
    job_ids = [f"r-{i:02d}" for i in range(16)]
    first = processes(broker.plain, unique_topic, 0.5, *options)
    await asyncio.to_thread(first.wait_line, "READY")
    sender = probe(endpoint=broker.plain)

    def send() -> None:
        for job_id in job_ids:
            sender.publish(f"{unique_topic}/jobs", f'job_id = "{job_id}"', qos=1)
    await asyncio.to_thread(send)

    def acknowledged_unfinished() -> Set[str]:
        return {job_id for job_id, status in _statuses(database).items() if status in ("pending", "running")}
    # Kill once a few jobs are done and some acknowledged ones are unfinished (running, or recorded and waiting).
    await _until(lambda: len(watcher.messages(results)) >= 2 and len(acknowledged_unfinished()) >= 2, 30, every=0.01)
    first.process.send_signal(signal.SIGKILL)
    first.kill()
    unfinished = acknowledged_unfinished()
    statuses = _statuses(database)
    completed_before = {job_id for job_id, status in statuses.items() if status == "completed"}
    ran_before = set(_runs(runs))

    second = processes(broker.plain, unique_topic, 0.5, *options)
    await asyncio.to_thread(second.wait_line, "READY")

    def missing() -> Set[str]:
        return set(job_ids) - {body(m)["job_id"] for m in watcher.messages(results)}
    with contextlib.suppress(asyncio.TimeoutError):
        await _until(lambda: not missing(), 40, every=0.1)
    assert not missing(), f"jobs never resumed: {sorted(missing())} (unfinished in the store at the kill: {unfinished})"
    by_job = _runs(runs)
    assert set(by_job) == set(job_ids)
    twice = {job_id for job_id, pids in by_job.items() if len(pids) > 1}
    assert all(len(pids) <= 2 for pids in by_job.values()), dict(by_job)
    assert twice <= ran_before - completed_before, (twice, ran_before, completed_before)
    print(f"concurrency {concurrency}: {len(unfinished)} acknowledged jobs unfinished at the kill, "
          f"{len(completed_before)} completed, {len(twice)} ran twice")


NOTE = "a job that runs long holds back the acknowledgements"


@pytest.mark.parametrize("overrides,noted", [
    ({"qos": 1, "max_concurrent_jobs": 4}, True),
    ({"qos": 1, "max_concurrent_jobs": 1}, False),  # one job at a time: nothing overtakes it anyway
    ({"qos": 0, "max_concurrent_jobs": 4}, False),  # nothing to acknowledge
    ({"qos": 1, "max_concurrent_jobs": 4, "ack_policy": "on_receipt"}, False),
])
async def test_a_startup_note_says_what_a_slow_job_holds_up_with_after_processing(
        start_listener: Any, caplog: pytest.LogCaptureFixture, overrides: Dict[str, Any], noted: bool) -> None:
    caplog.set_level("INFO", logger="Listener")
    await start_listener(None, **overrides)
    notes = [record for record in caplog.records if NOTE in record.getMessage()]
    assert len(notes) == (1 if noted else 0)
    if noted:
        text = notes[0].getMessage()
        assert "job_timeout" in text and "after_recording" in text and notes[0].levelname == "INFO"


async def test_a_job_cut_short_at_stop_is_resumed_by_the_next_run(
        mqtt_endpoint: Any, probe: Callable[..., MqttProbe], unique_topic: str, tmp_path: Path) -> None:
    """after_recording acknowledged the message when the job was recorded, so the broker will not send it again
    (here the session is not even kept): the job the grace period cut short is resumed from the SQLite file by
    the next run, with its input, and its result published."""
    runs: List[str] = []
    hang = asyncio.Event()

    async def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        runs.append(job_id)
        if len(runs) == 1:
            await hang.wait()  # never set: the first run is cut short
        return {"job_id": job_id, "n": data["n"]}

    config = listener_config(mqtt_endpoint, unique_topic, qos=1, ack_policy="after_recording",
                             job_store=f"sqlite:///{tmp_path / 'jobs.db'}", shutdown_grace_period=0.2)
    watcher = probe(f"{unique_topic}/results")
    first = EventListener(config)
    task = await run_until_ready(first, processor)
    probe().publish(f"{unique_topic}/jobs", 'job_id = "cut"\nn = 7', qos=1)
    await _until(lambda: runs == ["cut"], 10)
    first.stop()
    await asyncio.wait_for(task, 10)
    status = await first.get_job_status("cut")
    assert status is not None and status.status.value == "failed"  # "Cancelled: listener stopped"

    second = EventListener(config)
    task = await run_until_ready(second, processor)
    try:
        results = await asyncio.to_thread(watcher.wait_for, 1, 10, f"{unique_topic}/results")
        assert body(results[0]) == {"job_id": "cut", "n": 7} and runs == ["cut", "cut"]
        resumed = await second.get_job_status("cut")
        assert resumed is not None and resumed.status.value == "completed" and resumed.attempts == 2
    finally:
        await stop_listeners([(second, task)], 10)


@pytest.mark.parametrize("limit", [1, 2])
async def test_resumed_jobs_take_slots_within_max_concurrent_jobs_before_new_messages(
        mqtt_endpoint: Any, probe: Callable[..., MqttProbe], unique_topic: str, tmp_path: Path, limit: int) -> None:
    """Six jobs a crash left recorded in the file are resumed at start, never more than ``max_concurrent_jobs`` at
    once (resumed and new jobs together), and ahead of the messages that arrive meanwhile."""
    from Listener.jobs.sqlite import SqliteJobStore

    database = tmp_path / "jobs.db"
    crashed = SqliteJobStore(database, 100, 60, keep_input=True)
    await crashed.open()
    for n in range(6):
        await crashed.admit(f"old-{n}", {"n": n, "_topic": f"{unique_topic}/jobs"}, f"{unique_topic}/jobs")
    await crashed.start_attempt("old-0")
    await crashed.close()  # as a SIGKILL leaves it: one RUNNING, five PENDING

    started: List[str] = []
    running, peak = 0, 0

    async def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        nonlocal running, peak
        started.append(job_id)
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        return {"job_id": job_id}

    config = listener_config(mqtt_endpoint, unique_topic, qos=1, ack_policy="after_recording",
                             job_store=f"sqlite:///{database}", max_concurrent_jobs=limit)
    listener = EventListener(config)
    task = await run_until_ready(listener, processor)
    try:
        sender = probe()
        for n in range(3):
            sender.publish(f"{unique_topic}/jobs", f'job_id = "new-{n}"', qos=1)
        wanted = {f"old-{n}" for n in range(6)} | {f"new-{n}" for n in range(3)}
        await _until(lambda: set(started) >= wanted and running == 0, 15)
        assert sorted(started) == sorted(wanted)  # each once
        assert set(started[:6]) == {f"old-{n}" for n in range(6)}
        assert peak <= limit
        old = await listener.get_job_status("old-0")
        assert old is not None and old.status.value == "completed" and old.attempts == 2
    finally:
        await stop_listeners([(listener, task)], 10)


async def test_a_job_taken_over_while_a_batch_runs_waits_for_it_and_then_runs(
        mqtt_endpoint: Any, probe: Callable[..., MqttProbe], unique_topic: str, tmp_path: Path) -> None:
    """A store that looks for orphans while ``run()`` goes on (Redis, when another worker's lease lapses) hands one
    over while ``max_concurrent_jobs = 1`` runs a batch of queued jobs on the worker thread: the taken-over job
    waits for the batch, runs, and the messages after it run too (nothing waits on anything for ever)."""
    ran: List[str] = []
    lock = threading.Lock()

    def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        time.sleep(0.01)
        with lock:
            ran.append(job_id)
        return {"job_id": job_id}

    config = listener_config(mqtt_endpoint, unique_topic, qos=1, ack_policy="after_recording",
                             job_store=f"sqlite:///{tmp_path / 'jobs.db'}")
    listener = EventListener(config)
    store: Any = listener._tracker.store
    plain_orphans = store.orphans

    async def orphans() -> List[Any]:
        if "taken-over" in store.jobs or len(ran) < 5:  # once, while the queued messages run in batches
            return list(await plain_orphans())
        await store.admit("taken-over", {"n": 1}, f"{unique_topic}/jobs")  # as another worker's job, its lease lapsed
        return [store.jobs["taken-over"]]

    store.orphans, store.orphan_scan_interval = orphans, 0.02
    task = await run_until_ready(listener, processor)
    try:
        sender = probe()

        def send() -> None:
            for n in range(200):
                sender.publish_nowait(f"{unique_topic}/jobs", f'job_id = "m-{n:03d}"', qos=1)
        await asyncio.to_thread(send)
        with contextlib.suppress(asyncio.TimeoutError):
            await _until(lambda: len(ran) == 201, 20)
        assert len(ran) == 201, f"{len(ran)} jobs ran; taken over: {'taken-over' in store.jobs}"
        assert "taken-over" in ran and sorted(ran) == sorted({*ran})
    finally:
        await stop_listeners([(listener, task)], 10)
