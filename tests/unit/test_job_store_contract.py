"""One contract for every job store: each behaviour runs against every store in ``STORES``.

A store is added by writing a :class:`Backend` (how to create it, reopen it, and check what it wrote)
and listing it in ``STORES``. For a store with a file (or a Redis database), every test ends by checking,
through a second connection, that it holds exactly the jobs in memory. The Redis store runs against a
real ``redis-server`` (skipped, saying so, only where the binary is not installed).
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, AsyncIterator, Dict, List, Optional

import pytest

from Listener import EventListener, EventListenerConfig, JobStatus
from Listener.jobs.records import CANCELLED, InsertOutcome, JobStore
from Listener.jobs.redis import RedisJobStore, record_fields
from Listener.jobs.sqlite import SqliteJobStore, job_row
from tests.support.redis_server import RedisServer, redis_server, unique_prefix

__all__ = ["redis_server"]  # the fixture, for pytest


CREATED, EXISTS, FULL = InsertOutcome.CREATED, InsertOutcome.EXISTS, InsertOutcome.FULL


class Backend:
    """How the contract creates and checks one kind of store."""

    name = "memory"

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.opened: List[JobStore] = []

    def setting(self) -> str:
        """The ``job_store`` option that selects this store."""
        return "memory"

    async def make(self, max_jobs: int = 10, ttl_seconds: float = 60, keep_input: bool = False) -> JobStore:
        store = JobStore(max_jobs, ttl_seconds, keep_input)
        await store.open()
        self.opened.append(store)
        return store

    async def check_persisted(self, store: JobStore) -> None:
        """Assert that what the store keeps outside memory matches its jobs (nothing to check here)."""
        await store.durable()

    async def close(self) -> None:
        for store in self.opened:
            await store.close()


class SqliteBackend(Backend):
    name = "sqlite"

    def path(self) -> Path:
        return self.tmp_path / "jobs.db"

    def setting(self) -> str:
        return f"sqlite:///{self.path()}"

    async def make(self, max_jobs: int = 10, ttl_seconds: float = 60, keep_input: bool = False) -> JobStore:
        store = SqliteJobStore(self.path(), max_jobs, ttl_seconds, keep_input)
        await store.open()
        self.opened.append(store)
        return store

    async def check_persisted(self, store: JobStore) -> None:
        await store.durable()
        reader = sqlite3.connect(str(self.path()))  # a second connection, as an operator's sqlite3 would be
        try:
            rows = {row[0]: tuple(row) for row in reader.execute("SELECT * FROM jobs")}
        finally:
            reader.close()
        expected = [job_row(job) for job in store.jobs.values()]
        assert rows == {row[0]: row for row in expected}


class RedisBackend(Backend):
    name = "redis"
    server: RedisServer

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.prefix = unique_prefix("contract")

    def setting(self) -> str:
        return self.server.url(self.prefix)

    async def make(self, max_jobs: int = 10, ttl_seconds: float = 60, keep_input: bool = False) -> JobStore:
        store = RedisJobStore(self.setting(), max_jobs, ttl_seconds, keep_input)
        await store.open()
        self.opened.append(store)
        return store

    async def check_persisted(self, store: JobStore) -> None:
        import redis

        await store.durable()
        reader = redis.Redis(port=self.server.port, decode_responses=True)  # a second connection
        try:
            keys = reader.keys(f"{self.prefix}:job:*")
            records = {key.split(":job:", 1)[1]: reader.hgetall(key) for key in keys}
            ids = set(reader.zrange(f"{self.prefix}:ids", 0, -1))
        finally:
            reader.close()
        interrupted = getattr(store, "_interrupted", set())
        expected = {fields["job_id"]: fields for fields in
                    (record_fields(job, job.job_id in interrupted) for job in store.jobs.values())}
        assert records == expected
        assert ids == set(expected)


STORES = {"memory": Backend, "sqlite": SqliteBackend, "redis": RedisBackend}


@pytest.fixture(params=sorted(STORES))
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "redis":
        RedisBackend.server = request.getfixturevalue("redis_server")
    made = STORES[request.param](tmp_path)
    yield made
    await made.close()


async def test_insert_exists_and_get(backend: Backend) -> None:
    store = await backend.make(max_jobs=3)
    assert store.insert("a", {"x": 1}, topic="t") is CREATED
    job = store.get("a")
    assert job is not None and (job.status, job.input_data, job.topic, job.attempts) == (JobStatus.PENDING, {"x": 1}, "t", 0)
    assert store.insert("a", {"x": 2}) is EXISTS
    assert store.jobs["a"].input_data == {"x": 1}
    assert store.get("missing") is None
    await backend.check_persisted(store)


async def test_full_of_active_jobs_then_evicts_the_oldest_finished(backend: Backend) -> None:
    store = await backend.make(max_jobs=2)
    assert store.insert("a", None) is CREATED and store.insert("b", None) is CREATED
    assert store.insert("c", None) is FULL
    store.set_status("b", JobStatus.COMPLETED)
    store.set_status("a", JobStatus.FAILED, error="boom")
    assert store.insert("c", None) is CREATED
    assert sorted(store.jobs) == ["a", "c"]  # b finished first, so it went first
    await backend.check_persisted(store)


async def test_status_changes_record_result_error_attempts_and_drop_input(backend: Backend) -> None:
    store = await backend.make()
    store.insert("ok", {"x": 1}, topic="jobs")
    store.insert("bad", {"x": 2})
    assert store.start_attempt("ok")
    assert store.jobs["ok"].attempts == 1 and store.jobs["ok"].completed_at is None
    store.set_status("ok", JobStatus.COMPLETED, result={"y": [1, 2]})
    store.start_attempt("bad")
    store.set_status("bad", JobStatus.FAILED, error="ValueError: no")
    ok, bad = store.jobs["ok"], store.jobs["bad"]
    assert (ok.status, ok.result, ok.input_data, ok.attempts) == (JobStatus.COMPLETED, {"y": [1, 2]}, None, 1)
    assert ok.completed_at is not None and ok.completed_at >= ok.started_at
    assert (bad.status, bad.error, bad.attempts) == (JobStatus.FAILED, "ValueError: no", 1)
    assert store.set_status("missing", JobStatus.FAILED) is False
    await backend.check_persisted(store)


async def test_keep_input_keeps_a_finished_jobs_input(backend: Backend) -> None:
    store = await backend.make(keep_input=True)
    store.insert("a", {"x": 1})
    store.set_status("a", JobStatus.COMPLETED, result="done")
    assert store.jobs["a"].input_data == {"x": 1}
    await backend.check_persisted(store)


async def test_mark_duplicate(backend: Backend) -> None:
    store = await backend.make()
    for job_id in ("running", "done", "pending"):
        store.insert(job_id, {"n": job_id})
    store.start_attempt("running")
    store.set_status("done", JobStatus.COMPLETED, result=7)
    finished_at = store.jobs["done"].completed_at
    assert store.mark_duplicate("running") and store.mark_duplicate("done") and store.mark_duplicate("pending")
    assert store.jobs["running"].status is JobStatus.RUNNING and store.jobs["running"].duplicate_count == 1
    done = store.jobs["done"]
    assert (done.status, done.result, done.completed_at, done.duplicate_count) == (JobStatus.DUPLICATE, 7, finished_at, 1)
    assert store.jobs["pending"].status is JobStatus.DUPLICATE
    assert store.mark_duplicate("missing") is False
    await backend.check_persisted(store)


async def test_restart_counts_the_duplicate_and_starts_attempts_afresh(backend: Backend) -> None:
    store = await backend.make()
    store.insert("a", {"v": 1})
    store.start_attempt("a")
    store.set_status("a", JobStatus.FAILED, error="x")
    job = store.restart("a", {"v": 2}, topic="t2")
    assert (job.status, job.input_data, job.topic, job.error, job.duplicate_count, job.attempts) == (
        JobStatus.PENDING, {"v": 2}, "t2", None, 1, 0)
    store.start_attempt("a")
    assert store.jobs["a"].attempts == 1
    await backend.check_persisted(store)


async def test_remove(backend: Backend) -> None:
    store = await backend.make()
    store.insert("a", None)
    store.set_status("a", JobStatus.COMPLETED)
    assert store.remove("a") and not store.remove("a")
    assert store.insert("a", None) is CREATED  # a forgotten id is new again
    await backend.check_persisted(store)


async def test_cleanup_expired_removes_only_old_finished_jobs(backend: Backend) -> None:
    store = await backend.make(ttl_seconds=60)
    for job_id in ("old", "new", "active"):
        store.insert(job_id, None)
    store.set_status("old", JobStatus.COMPLETED)
    store.set_status("new", JobStatus.COMPLETED)
    store.jobs["old"].completed_at = datetime.now() - timedelta(seconds=120)
    assert store.cleanup_expired() == 1
    assert sorted(store.jobs) == ["active", "new"]
    await backend.check_persisted(store)


async def test_reindex_after_the_jobs_dict_is_replaced(backend: Backend) -> None:
    store = await backend.make(max_jobs=2)
    store.insert("gone", None)
    replacement = await backend.make(max_jobs=2) if backend.name == "memory" else None
    donor = replacement or JobStore(2, 60)
    donor.insert("x", {"k": 1})
    donor.set_status("x", JobStatus.COMPLETED, result=1)
    donor.insert("y", None)
    store.jobs = dict(donor.jobs)
    store.reindex()
    assert store.insert("z", None) is CREATED  # x, finished, was evicted: the index knows the new dict
    assert sorted(store.jobs) == ["y", "z"]
    await backend.check_persisted(store)


async def test_snapshot_returns_filtered_copies(backend: Backend) -> None:
    store = await backend.make()
    store.insert("a", None)
    store.insert("b", None)
    store.start_attempt("b")
    running = store.snapshot(JobStatus.RUNNING)
    assert list(running) == ["b"] and running["b"] is not store.jobs["b"]
    running["b"].status = JobStatus.FAILED
    assert store.jobs["b"].status is JobStatus.RUNNING
    assert sorted(store.snapshot()) == ["a", "b"]
    await backend.check_persisted(store)


async def test_odd_values_are_stored(backend: Backend) -> None:
    store = await backend.make()
    store.insert("bad\udc80id", {"when": datetime(2025, 1, 2, 3, 4, 5), "blob": b"\xff"}, topic="t/\u00e9")
    store.set_status("bad\udc80id", JobStatus.COMPLETED, result=object())
    assert store.get("bad\udc80id") is not None
    await backend.check_persisted(store)


async def test_durable_returns_once_everything_is_recorded(backend: Backend) -> None:
    store = await backend.make()
    for n in range(50):
        store.insert(f"j{n}", {"n": n})
    await store.durable()
    await store.durable()  # nothing new: returns at once
    await backend.check_persisted(store)


async def test_the_listeners_queries_work_the_same(backend: Backend) -> None:
    listener = EventListener(EventListenerConfig(job_store=backend.setting(), max_jobs_in_memory=10))

    def processor(data: Dict[str, Any], job_id: str) -> Optional[Dict[str, Any]]:
        if data.get("fail"):
            raise RuntimeError("asked to fail")
        return {"done": job_id}

    assert await listener.process_message({"job_id": "ok"}, processor) == {"done": "ok"}
    assert await listener.process_message({"job_id": "bad", "fail": True}, processor) is None
    assert await listener.process_message({"job_id": "ok"}, processor) is None  # a duplicate: skipped
    async with listener.job_lock:
        assert sorted(listener.jobs) == ["bad", "ok"]
    ok = await listener.get_job_status("ok")
    assert ok is not None and (ok.status, ok.result, ok.attempts, ok.duplicate_count) == (
        JobStatus.DUPLICATE, {"done": "ok"}, 1, 1)
    assert await listener.is_job_completed("bad") and not await listener.is_job_running("bad")
    assert await listener.job_exists("ok") and not await listener.job_exists("nope")
    assert sorted(await listener.get_all_jobs()) == ["bad", "ok"]
    assert list(await listener.get_failed_jobs()) == ["bad"]
    assert list(await listener.get_duplicate_jobs()) == ["ok"]
    assert await listener.get_running_jobs() == {} and await listener.get_completed_jobs() == {}
    await listener.cleanup_old_jobs()
    assert sorted(listener.jobs) == ["bad", "ok"]
    await backend.check_persisted(listener._tracker.store)
    await listener.__aexit__(None, None, None)


async def test_an_interrupted_job_runs_again_when_its_message_returns(backend: Backend) -> None:
    """stop() cut the job short (its message stays unacknowledged): FAILED "Cancelled", yet not a duplicate
    when the message is redelivered; its attempts are kept. A job that merely failed stays a duplicate."""
    store = await backend.make()
    store.insert("cut", {"v": 1})
    store.start_attempt("cut")
    store.insert("failed", {"v": 1})
    store.start_attempt("failed")
    store.set_status("failed", JobStatus.FAILED, error="ValueError: no")
    assert store.interrupt("cut") and not store.interrupt("unknown")
    cut = store.get("cut")
    assert cut is not None and (cut.status, cut.error) == (JobStatus.FAILED, CANCELLED)
    assert store.is_interrupted("cut") and not store.is_interrupted("failed")
    await backend.check_persisted(store)
    assert store.insert("failed", {"v": 2}) is EXISTS
    assert store.insert("cut", {"v": 2}) is CREATED
    again = store.get("cut")
    assert again is not None and (again.status, again.input_data, again.attempts, again.error) == (
        JobStatus.PENDING, {"v": 2}, 1, None)
    assert not store.is_interrupted("cut")
    assert store.insert("cut", {"v": 3}) is EXISTS  # only the first redelivery runs it again
    await backend.check_persisted(store)
