"""One contract for every job store: each behaviour of the :class:`~Listener.jobs.store.JobStore` interface runs
against every store in ``STORES`` (memory, SQLite, Redis), with the same assertions.

A store is added by writing a :class:`Backend` (how to create it, and check what it recorded) and listing it
in ``STORES``. For a store with a file (or a Redis database), every test ends by checking, through a second
connection, that it holds exactly the jobs in memory. The Redis store runs against a real ``redis-server``
(skipped, saying so, only where the binary is not installed).
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, AsyncIterator, Collection, Dict, List, Optional

import pytest

from Listener import EventListener, EventListenerConfig, JobStatus
from Listener.jobs.admission import Admission
from Listener.jobs.factory import create_job_store
from Listener.jobs.memory import MemoryJobStore
from Listener.jobs.records import ACTIVE_STATUSES, CANCELLED, FINISHED_STATUSES
from Listener.jobs.redis import FULL_RECHECK, record_fields
from Listener.jobs.sqlite import job_row
from Listener.jobs.store import JobStore
from tests.support.redis_cluster import RedisCluster, redis_cluster
from tests.support.redis_server import RedisServer, needs_redis, redis_server, unique_prefix

__all__ = ["redis_cluster", "redis_server"]  # the fixtures, for pytest


CREATED, DUPLICATE, FULL = Admission.CREATED, Admission.DUPLICATE, Admission.FULL


class Backend:
    """How the contract creates and checks one kind of store."""

    name = "memory"
    #: The store's ``full_recheck_interval``.
    recheck: Optional[float] = None

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.opened: List[JobStore] = []

    def setting(self) -> str:
        """The ``job_store`` option that selects this store."""
        return "memory"

    async def make(self, max_jobs: int = 10, ttl_seconds: float = 60, keep_input: bool = False) -> JobStore:
        store = create_job_store(self.setting(), max_jobs, ttl_seconds, keep_input)
        await store.open()
        self.opened.append(store)
        return store

    async def check_persisted(self, store: JobStore, expiring: Collection[str] = ()) -> None:
        """Assert that what the store keeps outside memory matches its jobs (nothing to check here).

        ``expiring``: jobs the store forgot that a shared store leaves to expire on their own.
        """
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

    async def check_persisted(self, store: JobStore, expiring: Collection[str] = ()) -> None:
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
    recheck = FULL_RECHECK
    server: RedisServer

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.prefix = unique_prefix("contract")

    #: What the store's keys start with.
    keyspace = property(lambda self: self.prefix)

    def setting(self) -> str:
        return self.server.url(self.prefix)

    def reader(self) -> Any:
        """A second connection, as an operator's redis-cli would be."""
        import redis

        return redis.Redis(port=self.server.port, decode_responses=True)

    async def check_persisted(self, store: JobStore, expiring: Collection[str] = ()) -> None:
        await store.durable()
        reader = self.reader()
        try:
            keys = list(reader.scan_iter(match=f"{self.keyspace}:job:*"))  # every node's, in a cluster
            records = {key.split(":job:", 1)[1]: reader.hgetall(key) for key in keys}
            ids = set(reader.zrange(f"{self.keyspace}:ids", 0, -1))
            lingering = {job_id: reader.pttl(f"{self.keyspace}:job:{job_id}") for job_id in expiring
                         if job_id in records}
        finally:
            reader.close()
        interrupted = getattr(store, "_interrupted", set())
        expected = {fields["job_id"]: fields for fields in
                    (record_fields(job, job.job_id in interrupted) for job in store.jobs.values())}
        for job_id, ttl in lingering.items():  # forgotten here, a finished record expires in Redis
            assert JobStatus(records.pop(job_id)["status"]) in FINISHED_STATUSES and ttl > 0
        for fields in records.values():  # who owns a record is Redis's own bookkeeping: an active one names this store
            owner = fields.pop("owner", None)
            fields.pop("resume", None)
            assert JobStatus(fields["status"]) not in ACTIVE_STATUSES or owner == getattr(store, "owner")
        assert records == expected
        assert ids - set(expiring) == set(expected)


class RedisClusterBackend(RedisBackend):
    """The Redis store on a Redis Cluster (its keys in one slot: the prefix is a hash tag)."""

    name = "redis-cluster"
    cluster: RedisCluster
    keyspace = property(lambda self: f"{{{self.prefix}}}")

    def setting(self) -> str:
        return self.cluster.url(self.prefix)

    def reader(self) -> Any:
        return self.cluster.client()


STORES = {"memory": Backend, "sqlite": SqliteBackend, "redis": RedisBackend, "redis-cluster": RedisClusterBackend}


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=needs_redis),
                        pytest.param("redis-cluster", marks=[needs_redis, pytest.mark.timeout(90)])])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "redis":
        RedisBackend.server = request.getfixturevalue("redis_server")
    if request.param == "redis-cluster":
        RedisClusterBackend.cluster = request.getfixturevalue("redis_cluster")
    made = STORES[request.param](tmp_path)
    yield made
    await made.close()


async def test_admit_creates_a_pending_job_and_the_queries_return_copies(backend: Backend) -> None:
    store = await backend.make(max_jobs=3)
    assert (store.persistent, store.full_recheck_interval) == (backend.name != "memory", backend.recheck)
    assert await store.admit("a", {"x": 1}, topic="t") is CREATED
    job = await store.get("a")
    assert job is not None and (job.status, job.input_data, job.topic, job.attempts, job.duplicate_count) == (
        JobStatus.PENDING, {"x": 1}, "t", 0, 0)
    assert job is not store.jobs["a"] and job == store.jobs["a"]
    job.status = JobStatus.FAILED
    assert store.jobs["a"].status is JobStatus.PENDING
    assert await store.get("missing") is None
    assert await store.exists("a") and not await store.exists("missing")
    await backend.check_persisted(store)


# The duplicate policy: (the held job's state, duplicate_action) -> what admitting its id again does.
POLICY = [
    ("pending", "skip", DUPLICATE), ("pending", "error", DUPLICATE), ("pending", "reprocess", CREATED),
    ("running", "skip", DUPLICATE), ("running", "error", DUPLICATE), ("running", "reprocess", DUPLICATE),
    ("completed", "skip", DUPLICATE), ("completed", "error", DUPLICATE), ("completed", "reprocess", CREATED),
    ("failed", "skip", DUPLICATE), ("failed", "error", DUPLICATE), ("failed", "reprocess", CREATED),
    ("interrupted", "skip", CREATED), ("interrupted", "error", CREATED), ("interrupted", "reprocess", CREATED),
]


@pytest.mark.parametrize("held, action, outcome", POLICY)
async def test_the_duplicate_policy(backend: Backend, held: str, action: str, outcome: Admission) -> None:
    store = await backend.make()
    assert await store.admit("j", {"v": 1}, topic="t1") is CREATED
    if held != "pending":
        assert await store.start_attempt("j") == 1
    if held == "completed":
        await store.set_status("j", JobStatus.COMPLETED, result=7)
    elif held == "failed":
        await store.set_status("j", JobStatus.FAILED, error="ValueError: no")
    elif held == "interrupted":
        assert await store.interrupt("j")
    before = await store.get("j")
    assert before is not None

    assert await store.admit("j", {"v": 2}, topic="t2", duplicate_action=action) is outcome
    after = await store.get("j")
    assert after is not None and after == store.jobs["j"]
    if outcome is DUPLICATE:
        assert after.duplicate_count == 1 and after.attempts == before.attempts
        assert after.input_data != {"v": 2} and after.topic == "t1"  # the held job is not replaced
        if held in ("pending", "running"):  # an active job keeps its status (and its input: it is yet to run)
            assert (after.status, after.completed_at, after.input_data) == (JobStatus[held.upper()], None, {"v": 1})
        else:
            assert after.status is JobStatus.DUPLICATE
        if held in ("completed", "failed"):  # what the first message produced stays
            assert (after.result, after.error, after.completed_at) == (before.result, before.error, before.completed_at)
    else:
        assert (after.status, after.input_data, after.topic, after.result, after.error, after.completed_at) == (
            JobStatus.PENDING, {"v": 2}, "t2", None, None, None)
        if held == "interrupted":  # run again, not a duplicate: its attempts go on
            assert (after.duplicate_count, after.attempts) == (0, 1)
        else:  # reprocess: a duplicate that runs again, counting its own attempts
            assert (after.duplicate_count, after.attempts) == (1, 0)
        assert await store.start_attempt("j") == after.attempts + 1
    await backend.check_persisted(store)


async def test_an_interrupted_job_runs_again_once_when_its_message_returns(backend: Backend) -> None:
    """stop() cut the job short (its message stays unacknowledged): FAILED "Cancelled", yet not a duplicate
    when the message is redelivered; its attempts are kept. A job that merely failed stays a duplicate."""
    store = await backend.make()
    await store.admit("cut", {"v": 1})
    await store.start_attempt("cut")
    await store.admit("failed", {"v": 1})
    await store.start_attempt("failed")
    await store.set_status("failed", JobStatus.FAILED, error="ValueError: no")
    assert await store.interrupt("cut") and not await store.interrupt("unknown")
    cut = await store.get("cut")
    assert cut is not None and (cut.status, cut.error) == (JobStatus.FAILED, CANCELLED)
    assert isinstance(store, MemoryJobStore)  # each store keeps this process's jobs in one
    assert store.is_interrupted("cut") and not store.is_interrupted("failed")
    await backend.check_persisted(store)
    assert await store.admit("failed", {"v": 2}) is DUPLICATE
    assert await store.admit("cut", {"v": 2}) is CREATED
    again = await store.get("cut")
    assert again is not None and (again.status, again.input_data, again.attempts, again.error) == (
        JobStatus.PENDING, {"v": 2}, 1, None)
    assert not store.is_interrupted("cut")
    assert await store.admit("cut", {"v": 3}) is DUPLICATE  # only the first redelivery runs it again
    await backend.check_persisted(store)


async def test_full_of_active_jobs_then_evicts_the_oldest_finished(backend: Backend) -> None:
    store = await backend.make(max_jobs=2)
    assert await store.admit("a", None) is CREATED and await store.admit("b", None) is CREATED
    assert await store.admit("c", None) is FULL
    assert not await store.exists("c")
    await store.set_status("b", JobStatus.COMPLETED)
    await store.set_status("a", JobStatus.FAILED, error="boom")
    assert await store.admit("c", None) is CREATED
    assert sorted(store.jobs) == ["a", "c"]  # b finished first, so it went first
    assert sorted(await store.jobs_with()) == ["a", "c"]
    await backend.check_persisted(store)


async def test_status_changes_record_result_error_attempts_and_drop_input(backend: Backend) -> None:
    store = await backend.make()
    await store.admit("ok", {"x": 1}, topic="jobs")
    await store.admit("bad", {"x": 2})
    assert await store.start_attempt("ok") == 1
    assert store.jobs["ok"].attempts == 1 and store.jobs["ok"].completed_at is None
    assert await store.set_status("ok", JobStatus.COMPLETED, result={"y": [1, 2]})
    await store.start_attempt("bad")
    await store.set_status("bad", JobStatus.FAILED, error="ValueError: no")
    ok, bad = await store.get("ok"), await store.get("bad")
    assert ok is not None and bad is not None
    assert (ok.status, ok.result, ok.input_data, ok.attempts) == (JobStatus.COMPLETED, {"y": [1, 2]}, None, 1)
    assert ok.completed_at is not None and ok.completed_at >= ok.started_at
    assert (bad.status, bad.error, bad.attempts) == (JobStatus.FAILED, "ValueError: no", 1)
    assert await store.set_status("missing", JobStatus.FAILED) is False
    assert await store.start_attempt("missing") == 0
    await backend.check_persisted(store)


async def test_start_attempt_now_is_start_attempt_without_an_await_unless_the_lock_is_held(backend: Backend) -> None:
    store = await backend.make()
    await store.admit("j", {"x": 1})
    assert store.start_attempt_now("j") == 1
    assert (store.jobs["j"].status, store.jobs["j"].attempts) == (JobStatus.RUNNING, 1)
    assert store.start_attempt_now("missing") == 0
    async with store.lock:  # held (a cleanup, a batch write): nothing changes, the caller awaits start_attempt
        assert store.start_attempt_now("j") is None
        assert store.jobs["j"].attempts == 1
    assert await store.start_attempt("j") == 2
    assert await store.set_status("j", JobStatus.COMPLETED, result=1)
    await backend.check_persisted(store)


async def test_admit_now_is_admit_without_an_await_where_the_store_decides_alone(backend: Backend) -> None:
    store = await backend.make(max_jobs=2)
    if backend.name.startswith("redis"):  # Redis claims every id: nothing is decided here
        assert store.admit_now("j", {"x": 1}) is None and "j" not in store.jobs
        return
    assert store.admit_now("j", {"x": 1}, topic="t") is CREATED
    assert (store.jobs["j"].status, store.jobs["j"].input_data, store.jobs["j"].topic) == (JobStatus.PENDING, {"x": 1}, "t")
    assert store.admit_now("j", {"x": 2}) is DUPLICATE and store.jobs["j"].duplicate_count == 1
    assert store.admit_now("k", {}) is CREATED
    assert store.admit_now("full", {}) is FULL and "full" not in store.jobs  # two active jobs held
    async with store.lock:
        assert store.admit_now("other", {}) is None and "other" not in store.jobs
    await backend.check_persisted(store)


async def test_keep_input_keeps_a_finished_jobs_input(backend: Backend) -> None:
    store = await backend.make(keep_input=True)
    await store.admit("a", {"x": 1})
    await store.set_status("a", JobStatus.COMPLETED, result="done")
    job = await store.get("a")
    assert job is not None and job.input_data == {"x": 1}
    await backend.check_persisted(store)


async def test_mark_duplicate(backend: Backend) -> None:
    store = await backend.make()
    for job_id in ("running", "done", "pending"):
        await store.admit(job_id, {"n": job_id})
    await store.start_attempt("running")
    await store.set_status("done", JobStatus.COMPLETED, result=7)
    finished_at = store.jobs["done"].completed_at
    assert await store.mark_duplicate("running") and await store.mark_duplicate("done")
    assert await store.mark_duplicate("pending")
    running, done, pending = [await store.get(job_id) for job_id in ("running", "done", "pending")]
    assert running is not None and (running.status, running.duplicate_count) == (JobStatus.RUNNING, 1)
    assert done is not None and (done.status, done.result, done.completed_at, done.duplicate_count) == (
        JobStatus.DUPLICATE, 7, finished_at, 1)
    assert pending is not None and (pending.status, pending.duplicate_count) == (JobStatus.DUPLICATE, 1)
    assert await store.mark_duplicate("missing") is False
    await backend.check_persisted(store)


async def test_cleanup_expired_removes_only_old_finished_jobs(backend: Backend) -> None:
    store = await backend.make(ttl_seconds=60)
    for job_id in ("old", "new", "active"):
        await store.admit(job_id, None)
    await store.set_status("old", JobStatus.COMPLETED)
    await store.set_status("new", JobStatus.COMPLETED)
    store.jobs["old"].completed_at = datetime.now() - timedelta(seconds=120)
    assert await store.cleanup_expired() == 1
    assert sorted(store.jobs) == ["active", "new"]
    assert await store.cleanup_expired(now=datetime.now() + timedelta(seconds=120)) == 1
    assert sorted(store.jobs) == ["active"]
    await backend.check_persisted(store, expiring={"old", "new"})


async def test_reindex_after_the_jobs_dict_is_replaced(backend: Backend) -> None:
    store = await backend.make(max_jobs=2)
    await store.admit("gone", None)
    donor = MemoryJobStore(2, 60)
    await donor.admit("x", {"k": 1})
    await donor.set_status("x", JobStatus.COMPLETED, result=1)
    await donor.admit("y", None)
    store.jobs = dict(donor.jobs)
    store.reindex()
    await backend.check_persisted(store)  # a durable store rewrote its records to match
    assert await store.admit("z", None) is CREATED  # x, finished, was evicted: the index knows the new dict
    assert sorted(store.jobs) == ["y", "z"]
    await backend.check_persisted(store)


async def test_jobs_with_returns_filtered_copies(backend: Backend) -> None:
    store = await backend.make()
    await store.admit("a", None)
    await store.admit("b", None)
    await store.start_attempt("b")
    running = await store.jobs_with(JobStatus.RUNNING)
    assert list(running) == ["b"] and running["b"] is not store.jobs["b"]
    running["b"].status = JobStatus.FAILED
    assert store.jobs["b"].status is JobStatus.RUNNING
    assert sorted(await store.jobs_with()) == ["a", "b"]
    assert sorted(await store.jobs_with(JobStatus.PENDING, JobStatus.RUNNING)) == ["a", "b"]
    assert await store.jobs_with(JobStatus.COMPLETED) == {}
    await backend.check_persisted(store)


async def test_a_held_lock_keeps_jobs_unchanged_until_released(backend: Backend) -> None:
    """``listener.job_lock`` is the store's lock: while a user holds it, nothing changes ``jobs``."""
    store = await backend.make()
    await store.admit("a", None)
    async with store.lock:
        changes = [asyncio.ensure_future(store.admit("b", None)),
                   asyncio.ensure_future(store.set_status("a", JobStatus.COMPLETED, result=1))]
        await asyncio.sleep(0.2)
        assert list(store.jobs) == ["a"] and store.jobs["a"].status is JobStatus.PENDING
    assert await asyncio.wait_for(asyncio.gather(*changes), 5) == [CREATED, True]
    assert list(store.jobs) == ["a", "b"] and store.jobs["a"].status is JobStatus.COMPLETED
    await backend.check_persisted(store)


async def test_odd_values_are_stored(backend: Backend) -> None:
    store = await backend.make()
    assert await store.admit("bad\udc80id", {"when": datetime(2025, 1, 2, 3, 4, 5), "blob": b"\xff"},
                             topic="t/\u00e9") is CREATED
    await store.set_status("bad\udc80id", JobStatus.COMPLETED, result=object())
    assert await store.get("bad\udc80id") is not None
    await backend.check_persisted(store)


async def test_durable_returns_once_everything_is_recorded(backend: Backend) -> None:
    store = await backend.make(max_jobs=100)
    for n in range(50):
        await store.admit(f"j{n}", {"n": n})
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
    assert await listener._create_job("new", {"n": 1}) and not await listener._create_job("new", {"n": 2})
    assert "new" in await listener.get_duplicate_jobs()  # the first release: a second create is a duplicate
    assert await listener._update_job_status("new", JobStatus.RUNNING) and await listener.is_job_running("new")
    await listener.cleanup_old_jobs()
    assert sorted(listener.jobs) == ["bad", "new", "ok"]
    await backend.check_persisted(listener._tracker.store)
    await listener.__aexit__(None, None, None)
