"""Unit tests for the job records (Listener.jobs.records), the duplicate policy (Listener.jobs.admission)
and what only the memory store does (Listener.jobs.memory): its eviction index, hand edits of ``jobs``, its
synchronous helpers. What every store does alike is in tests/unit/test_job_store_contract.py."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import datetime, timedelta
from typing import Optional

import pytest

from Listener.jobs.admission import Admission, Verdict, admission_of, decide
from Listener.jobs.memory import MemoryJobStore
from Listener.jobs.records import ACTIVE_STATUSES, FINISHED_STATUSES, JobInfo, JobStatus


CREATED, DUPLICATE, FULL = Admission.CREATED, Admission.DUPLICATE, Admission.FULL


def test_job_status_values() -> None:
    assert {s.name: s.value for s in JobStatus} == {
        "PENDING": "pending",
        "RUNNING": "running",
        "COMPLETED": "completed",
        "FAILED": "failed",
        "DUPLICATE": "duplicate",
    }
    assert ACTIVE_STATUSES == {JobStatus.PENDING, JobStatus.RUNNING}
    assert FINISHED_STATUSES == {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.DUPLICATE}


def test_job_info_defaults() -> None:
    before = datetime.now()
    job = JobInfo(job_id="j", status=JobStatus.PENDING)
    assert before <= job.started_at <= datetime.now()
    assert job.completed_at is None
    assert job.input_data is None
    assert job.result is None
    assert job.error is None
    assert job.topic is None
    assert job.duplicate_count == 0
    job.status = JobStatus.RUNNING  # mutable
    assert job.status is JobStatus.RUNNING
    assert [f.name for f in dataclasses.fields(JobInfo)][:7] == [
        "job_id", "status", "started_at", "completed_at", "input_data", "result", "error"]


# -- the policy ---------------------------------------------------------------------------------


@pytest.mark.parametrize("held", [None, *JobStatus])
@pytest.mark.parametrize("interrupted", [False, True])
@pytest.mark.parametrize("action", ["skip", "error", "reprocess"])
def test_decide_never_starts_a_running_job_twice(held: Optional[JobStatus], interrupted: bool, action: str) -> None:
    verdict = decide(held, interrupted, action)
    if held is None:
        assert verdict is Verdict.NEW
    elif held is JobStatus.RUNNING:
        assert verdict is Verdict.DUPLICATE
    elif interrupted:
        assert verdict is Verdict.RUN_AGAIN  # not a duplicate, whatever the action
    elif action == "reprocess":
        assert verdict is Verdict.RESTART
    else:
        assert verdict is Verdict.DUPLICATE


@pytest.mark.parametrize("held", [None, *JobStatus])
@pytest.mark.parametrize("elsewhere, abandoned", [(True, False), (False, True)])
def test_decide_waits_for_a_job_active_in_a_live_worker_and_takes_over_a_dead_ones(
        held: Optional[JobStatus], elsewhere: bool, abandoned: bool) -> None:
    """A shared store: ownership decides first for an active job, whatever the action; a finished job's
    owner does not matter (the policy applies as ever)."""
    for action in ("skip", "error", "reprocess"):
        verdict = decide(held, False, action, elsewhere=elsewhere, abandoned=abandoned)
        if held in ACTIVE_STATUSES:
            assert verdict is (Verdict.BUSY if elsewhere else Verdict.RUN_AGAIN)
        else:
            assert verdict is decide(held, False, action)


def test_admission_of_each_verdict() -> None:
    assert [admission_of(verdict) for verdict in Verdict] == [CREATED, CREATED, CREATED, DUPLICATE, Admission.BUSY]


# -- the memory store ---------------------------------------------------------------------------


async def test_admit_a_new_job_and_get_a_copy() -> None:
    store = MemoryJobStore(max_jobs=3, ttl_seconds=60)
    assert await store.admit("a", {"x": 1}, topic="t") is CREATED
    job = await store.get("a")
    assert job is not None and job is not store.jobs["a"]
    assert (job.status, job.input_data, job.topic) == (JobStatus.PENDING, {"x": 1}, "t")
    assert await store.get("missing") is None
    assert await store.exists("a") and not await store.exists("missing")


async def test_full_when_every_slot_is_active_and_a_duplicate_wins_over_full() -> None:
    store = MemoryJobStore(max_jobs=2, ttl_seconds=60)
    assert await store.admit("a", None) is CREATED
    assert await store.admit("b", None) is CREATED
    await store.set_status("b", JobStatus.RUNNING)
    assert await store.admit("c", None) is FULL
    assert set(store) == {"a", "b"}
    assert await store.admit("b", None) is DUPLICATE
    assert store.jobs["b"].status is JobStatus.RUNNING and store.jobs["b"].duplicate_count == 1


async def test_set_status() -> None:
    store = MemoryJobStore(max_jobs=5, ttl_seconds=60)
    await store.admit("a", None)
    job = store.jobs["a"]
    assert await store.set_status("a", JobStatus.RUNNING) is True
    assert job.completed_at is None
    assert await store.set_status("a", JobStatus.COMPLETED, result={"ok": True}) is True
    assert job.status is JobStatus.COMPLETED
    assert job.result == {"ok": True}
    assert isinstance(job.completed_at, datetime)
    assert await store.set_status("a", JobStatus.FAILED, error="boom") is True
    assert job.error == "boom" and job.result == {"ok": True}  # None does not erase
    assert await store.set_status("a", JobStatus.PENDING) is True
    assert job.completed_at is None  # active again: cleared
    assert await store.set_status("nope", JobStatus.COMPLETED) is False
    assert "nope" not in store.jobs


@pytest.mark.parametrize("status", sorted(FINISHED_STATUSES, key=lambda s: s.value))
async def test_set_status_finished_sets_completed_at(status: JobStatus) -> None:
    store = MemoryJobStore(max_jobs=5, ttl_seconds=60)
    await store.admit("a", None)
    await store.set_status("a", status)
    assert store.jobs["a"].completed_at is not None


async def test_mark_duplicate() -> None:
    store = MemoryJobStore(max_jobs=5, ttl_seconds=60)
    await store.admit("p", None)
    assert await store.mark_duplicate("p") is True
    pending = store.jobs["p"]
    assert (pending.status, pending.duplicate_count) == (JobStatus.DUPLICATE, 1)
    assert pending.completed_at is not None

    await store.admit("r", None)
    await store.set_status("r", JobStatus.RUNNING)
    assert await store.mark_duplicate("r") is True
    running = store.jobs["r"]
    assert (running.status, running.duplicate_count, running.completed_at) == (JobStatus.RUNNING, 1, None)
    await store.mark_duplicate("r")
    assert running.duplicate_count == 2

    await store.admit("c", None)
    await store.set_status("c", JobStatus.COMPLETED)
    await store.mark_duplicate("c")
    assert store.jobs["c"].status is JobStatus.DUPLICATE

    assert await store.mark_duplicate("unknown") is False
    assert "unknown" not in store.jobs


async def test_a_running_duplicate_is_not_evictable() -> None:
    store = MemoryJobStore(max_jobs=1, ttl_seconds=60)
    await store.admit("r", None)
    await store.start_attempt("r")
    assert await store.admit("r", None) is DUPLICATE
    assert await store.admit("new", None) is FULL
    assert "r" in store.jobs


async def test_reprocess_replaces_the_job_and_the_restarted_job_is_active() -> None:
    store = MemoryJobStore(max_jobs=2, ttl_seconds=60)
    await store.admit("a", {"v": 1}, topic="t1")
    await store.set_status("a", JobStatus.COMPLETED, result=5)
    await store.admit("a", None)  # a duplicate (skip)
    old = store.jobs["a"]
    assert await store.admit("a", {"v": 2}, topic="t2", duplicate_action="reprocess") is CREATED
    job = store.jobs["a"]
    assert job is not old
    assert (job.status, job.input_data, job.topic, job.result) == (JobStatus.PENDING, {"v": 2}, "t2", None)
    assert job.duplicate_count == 2
    assert job.completed_at is None
    # A restarted job is active: it must not be evicted.
    await store.admit("b", None)
    await store.set_status("b", JobStatus.RUNNING)
    assert await store.admit("c", None) is FULL


async def test_remove() -> None:
    store = MemoryJobStore(max_jobs=2, ttl_seconds=60)
    await store.admit("a", None)
    await store.set_status("a", JobStatus.COMPLETED)
    assert store.remove("a") is True
    assert store.remove("a") is False
    assert len(store) == 0
    assert await store.admit("a", None) is CREATED  # a forgotten id is new again
    # The index no longer refers to the first "a": a full store of active jobs stays FULL.
    await store.admit("b", None)
    assert await store.admit("d", None) is FULL


async def test_eviction_follows_finish_order_not_creation_order() -> None:
    store = MemoryJobStore(max_jobs=4, ttl_seconds=60)
    for job_id in ("a", "b", "c", "d"):
        assert await store.admit(job_id, None) is CREATED
    # Finish in a different order than created: c, a, d; b stays active.
    await store.set_status("c", JobStatus.COMPLETED)
    await store.set_status("a", JobStatus.FAILED, error="x")
    await store.set_status("d", JobStatus.DUPLICATE)
    await store.set_status("b", JobStatus.RUNNING)
    assert await store.admit("e", None) is CREATED
    assert set(store) == {"a", "b", "d", "e"}  # c finished first
    assert await store.admit("f", None) is CREATED
    assert set(store) == {"b", "d", "e", "f"}  # then a
    assert await store.admit("g", None) is CREATED
    assert set(store) == {"b", "e", "f", "g"}  # then d
    assert await store.admit("h", None) is FULL  # only active jobs left
    assert len(store) == 4


async def test_refinishing_moves_job_to_the_back() -> None:
    store = MemoryJobStore(max_jobs=2, ttl_seconds=60)
    await store.admit("a", None)
    await store.admit("b", None)
    await store.set_status("a", JobStatus.COMPLETED)
    await store.set_status("b", JobStatus.COMPLETED)
    await store.set_status("a", JobStatus.FAILED)  # a finished again, after b
    await store.admit("c", None)
    assert set(store) == {"a", "c"}


async def test_reactivated_job_is_not_evicted() -> None:
    store = MemoryJobStore(max_jobs=2, ttl_seconds=60)
    await store.admit("a", None)
    await store.admit("b", None)
    await store.set_status("a", JobStatus.COMPLETED)
    await store.set_status("a", JobStatus.RUNNING)
    assert await store.admit("c", None) is FULL


async def test_max_jobs_never_exceeded_over_many_admissions() -> None:
    store = MemoryJobStore(max_jobs=50, ttl_seconds=60)
    refused = 0
    for n in range(10_000):
        outcome = await store.admit(f"job-{n}", {"n": n})
        assert len(store) <= 50
        if outcome is FULL:
            refused += 1
            continue
        assert outcome is CREATED
        # Jobs finish as they go, a few stay active for a while.
        if n % 7:
            await store.set_status(f"job-{n}", JobStatus.RUNNING)
            await store.set_status(f"job-{n}", JobStatus.COMPLETED if n % 3 else JobStatus.FAILED)
    assert len(store) == 50
    assert refused > 0  # eventually every slot held an active (every 7th) job
    assert store.count_active() == 50


async def test_stale_index_after_deleting_from_jobs_directly() -> None:
    store = MemoryJobStore(max_jobs=3, ttl_seconds=60)
    for job_id in ("a", "b", "c"):
        await store.admit(job_id, None)
        await store.set_status(job_id, JobStatus.COMPLETED)
    del store.jobs["a"]  # the index still lists "a"
    assert await store.admit("d", None) is CREATED  # room without eviction
    assert set(store) == {"b", "c", "d"}
    assert await store.admit("e", None) is CREATED  # stale "a" skipped, "b" evicted
    assert set(store) == {"c", "d", "e"}
    store.jobs["c"] = JobInfo(job_id="c", status=JobStatus.RUNNING)  # replaced by hand: now active
    assert await store.admit("f", None) is FULL
    assert set(store) == {"c", "d", "e"}


async def test_cleanup_expired_with_now() -> None:
    store = MemoryJobStore(max_jobs=10, ttl_seconds=3600)
    for job_id in ("old", "young", "active", "dup"):
        await store.admit(job_id, None)
    await store.set_status("old", JobStatus.COMPLETED)
    await store.set_status("young", JobStatus.FAILED)
    await store.mark_duplicate("dup")
    base = datetime.now()
    store.jobs["old"].completed_at = base - timedelta(hours=2)
    store.jobs["young"].completed_at = base - timedelta(minutes=30)
    store.jobs["dup"].completed_at = base - timedelta(hours=1, seconds=1)
    store.jobs["active"].started_at = base - timedelta(days=30)
    assert await store.cleanup_expired(now=base) == 2
    assert set(store) == {"young", "active"}
    assert await store.cleanup_expired(now=base) == 0
    assert await store.cleanup_expired(now=base + timedelta(hours=1)) == 1
    assert set(store) == {"active"}
    assert await store.cleanup_expired() == 0


async def test_cleanup_expired_uses_started_at_without_completed_at() -> None:
    store = MemoryJobStore(max_jobs=10, ttl_seconds=10)
    store.jobs["manual"] = JobInfo(job_id="manual", status=JobStatus.COMPLETED,
                                   started_at=datetime(2020, 1, 1))
    assert await store.cleanup_expired(now=datetime(2020, 1, 1, 0, 0, 5)) == 0
    assert await store.cleanup_expired(now=datetime(2020, 1, 1, 0, 0, 11)) == 1


async def test_cleanup_rebuilds_index_for_jobs_added_by_hand() -> None:
    store = MemoryJobStore(max_jobs=2, ttl_seconds=3600)
    store.jobs["x"] = JobInfo(job_id="x", status=JobStatus.COMPLETED, completed_at=datetime.now())
    await store.admit("y", None)
    assert await store.admit("z", None) is FULL  # "x" is not indexed yet
    await store.cleanup_expired()
    assert await store.admit("z", None) is CREATED
    assert set(store) == {"y", "z"}


async def test_reindex_after_replacing_jobs() -> None:
    store = MemoryJobStore(max_jobs=3, ttl_seconds=60)
    await store.admit("gone", None)
    await store.set_status("gone", JobStatus.COMPLETED)
    t0 = datetime(2024, 1, 1)
    store.jobs = {
        "late": JobInfo(job_id="late", status=JobStatus.COMPLETED, completed_at=t0 + timedelta(seconds=20)),
        "early": JobInfo(job_id="early", status=JobStatus.FAILED, completed_at=t0 + timedelta(seconds=10)),
        "run": JobInfo(job_id="run", status=JobStatus.RUNNING),
    }
    store.reindex()
    assert await store.admit("n1", None) is CREATED
    assert set(store) == {"late", "run", "n1"}
    assert await store.admit("n2", None) is CREATED
    assert set(store) == {"run", "n1", "n2"}
    assert await store.admit("n3", None) is FULL


async def test_count_active() -> None:
    store = MemoryJobStore(max_jobs=10, ttl_seconds=60)
    assert store.count_active() == 0
    for job_id, status in [("p", JobStatus.PENDING), ("r", JobStatus.RUNNING), ("c", JobStatus.COMPLETED),
                           ("f", JobStatus.FAILED), ("d", JobStatus.DUPLICATE)]:
        await store.admit(job_id, None)
        await store.set_status(job_id, status)
    assert store.count_active() == 2


async def test_snapshot_and_jobs_with_return_filtered_copies() -> None:
    store = MemoryJobStore(max_jobs=10, ttl_seconds=60)
    await store.admit("a", {"k": 1})
    await store.admit("b", None)
    await store.admit("c", None)
    await store.set_status("b", JobStatus.RUNNING)
    await store.set_status("c", JobStatus.COMPLETED, result=1)
    everything = store.snapshot()
    assert set(everything) == {"a", "b", "c"}
    assert everything is not store.jobs
    assert everything["a"] == store.jobs["a"] and everything["a"] is not store.jobs["a"]
    everything["a"].status = JobStatus.FAILED
    assert store.jobs["a"].status is JobStatus.PENDING
    del everything["b"]
    assert "b" in store.jobs
    assert set(store.snapshot(JobStatus.RUNNING)) == {"b"}
    assert set(store.snapshot(JobStatus.COMPLETED, JobStatus.PENDING)) == {"a", "c"}
    assert store.snapshot(JobStatus.DUPLICATE) == {}
    assert await store.jobs_with(JobStatus.COMPLETED, JobStatus.PENDING) == store.snapshot(JobStatus.COMPLETED,
                                                                                           JobStatus.PENDING)


async def test_len_and_iteration() -> None:
    store = MemoryJobStore(max_jobs=10, ttl_seconds=60)
    assert len(store) == 0 and list(store) == []
    for job_id in ("x", "y", "z"):
        await store.admit(job_id, None)
    assert len(store) == 3
    assert list(store) == ["x", "y", "z"]
    assert "y" in store
    assert store.max_jobs == 10
    assert store.ttl == timedelta(seconds=60)
    assert (store.persistent, store.full_recheck_interval) == (False, None)


async def test_start_attempt_marks_running_and_counts_each_start() -> None:
    store = MemoryJobStore(max_jobs=2, ttl_seconds=60)
    assert await store.start_attempt("missing") == 0 and "missing" not in store.jobs
    await store.admit("a", {"v": 1})
    assert store.jobs["a"].attempts == 0
    assert [await store.start_attempt("a") for _ in range(3)] == [1, 2, 3]
    job = store.jobs["a"]
    assert (job.status, job.attempts, job.completed_at) == (JobStatus.RUNNING, 3, None)
    await store.set_status("a", JobStatus.COMPLETED, result=1)
    assert store.snapshot()["a"].attempts == 3  # kept once finished, and in the copies queries return
    assert await store.admit("a", {"v": 2}, duplicate_action="reprocess") is CREATED
    assert store.jobs["a"].attempts == 0  # a reprocessed job counts its own runs


async def test_a_held_lock_makes_every_change_wait_for_it() -> None:
    """``listener.job_lock``: while a user holds it, nothing changes ``jobs`` under their feet."""
    store = MemoryJobStore(max_jobs=5, ttl_seconds=60)
    await store.admit("a", None)
    async with store.lock:
        changes = [asyncio.ensure_future(change) for change in (
            store.admit("b", None), store.set_status("a", JobStatus.RUNNING), store.start_attempt("a"),
            store.interrupt("a"), store.mark_duplicate("a"), store.cleanup_expired())]
        await asyncio.sleep(0.01)
        assert not any(change.done() for change in changes)
        assert list(store.jobs) == ["a"] and store.jobs["a"].status is JobStatus.PENDING
    await asyncio.wait_for(asyncio.gather(*changes), 5)
    assert list(store.jobs) == ["a", "b"] and store.jobs["a"].duplicate_count == 1
