"""Unit tests for Listener.jobs.records: JobStatus, JobInfo and the bounded JobStore."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

import pytest

from Listener.jobs.records import (
    ACTIVE_STATUSES,
    FINISHED_STATUSES,
    InsertOutcome,
    JobInfo,
    JobStatus,
    JobStore,
)


CREATED, EXISTS, FULL = InsertOutcome.CREATED, InsertOutcome.EXISTS, InsertOutcome.FULL


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


def test_insert_exists_and_get() -> None:
    store = JobStore(max_jobs=3, ttl_seconds=60)
    assert store.insert("a", {"x": 1}, topic="t") is CREATED
    job = store.get("a")
    assert job is not None
    assert (job.status, job.input_data, job.topic) == (JobStatus.PENDING, {"x": 1}, "t")
    assert store.insert("a", {"x": 2}) is EXISTS
    assert store.get("a").input_data == {"x": 1}  # unchanged
    assert store.get("missing") is None


def test_insert_full_when_every_slot_active() -> None:
    store = JobStore(max_jobs=2, ttl_seconds=60)
    assert store.insert("a", None) is CREATED
    assert store.insert("b", None) is CREATED
    store.set_status("b", JobStatus.RUNNING)
    assert store.insert("c", None) is FULL
    assert set(store) == {"a", "b"}
    assert store.insert("a", None) is EXISTS  # EXISTS wins over FULL


def test_set_status() -> None:
    store = JobStore(max_jobs=5, ttl_seconds=60)
    store.insert("a", None)
    assert store.set_status("a", JobStatus.RUNNING) is True
    assert store.get("a").completed_at is None
    assert store.set_status("a", JobStatus.COMPLETED, result={"ok": True}) is True
    job = store.get("a")
    assert job.status is JobStatus.COMPLETED
    assert job.result == {"ok": True}
    assert isinstance(job.completed_at, datetime)
    assert store.set_status("a", JobStatus.FAILED, error="boom") is True
    assert job.error == "boom" and job.result == {"ok": True}  # None does not erase
    assert store.set_status("a", JobStatus.PENDING) is True
    assert job.completed_at is None  # active again: cleared
    assert store.set_status("nope", JobStatus.COMPLETED) is False
    assert "nope" not in store.jobs


@pytest.mark.parametrize("status", sorted(FINISHED_STATUSES, key=lambda s: s.value))
def test_set_status_finished_sets_completed_at(status: JobStatus) -> None:
    store = JobStore(max_jobs=5, ttl_seconds=60)
    store.insert("a", None)
    store.set_status("a", status)
    assert store.get("a").completed_at is not None


def test_mark_duplicate() -> None:
    store = JobStore(max_jobs=5, ttl_seconds=60)
    store.insert("p", None)
    assert store.mark_duplicate("p") is True
    assert store.get("p").status is JobStatus.DUPLICATE
    assert store.get("p").duplicate_count == 1
    assert store.get("p").completed_at is not None

    store.insert("r", None)
    store.set_status("r", JobStatus.RUNNING)
    assert store.mark_duplicate("r") is True
    assert store.get("r").status is JobStatus.RUNNING
    assert store.get("r").duplicate_count == 1
    assert store.get("r").completed_at is None
    store.mark_duplicate("r")
    assert store.get("r").duplicate_count == 2

    store.insert("c", None)
    store.set_status("c", JobStatus.COMPLETED)
    store.mark_duplicate("c")
    assert store.get("c").status is JobStatus.DUPLICATE

    assert store.mark_duplicate("unknown") is False
    assert "unknown" not in store.jobs


def test_running_duplicate_is_not_evictable() -> None:
    store = JobStore(max_jobs=1, ttl_seconds=60)
    store.insert("r", None)
    store.set_status("r", JobStatus.RUNNING)
    store.mark_duplicate("r")
    assert store.insert("new", None) is FULL
    assert "r" in store.jobs


def test_restart() -> None:
    store = JobStore(max_jobs=2, ttl_seconds=60)
    store.insert("a", {"v": 1}, topic="t1")
    store.set_status("a", JobStatus.COMPLETED, result=5)
    store.mark_duplicate("a")
    old = store.get("a")
    job = store.restart("a", {"v": 2}, topic="t2")
    assert job is store.get("a") and job is not old
    assert (job.status, job.input_data, job.topic, job.result) == (JobStatus.PENDING, {"v": 2}, "t2", None)
    assert job.duplicate_count == 2
    assert job.completed_at is None
    # A restarted job is active: it must not be evicted.
    store.insert("b", None)
    store.set_status("b", JobStatus.RUNNING)
    assert store.insert("c", None) is FULL
    with pytest.raises(KeyError):
        store.restart("missing", None)


def test_remove() -> None:
    store = JobStore(max_jobs=2, ttl_seconds=60)
    store.insert("a", None)
    store.set_status("a", JobStatus.COMPLETED)
    assert store.remove("a") is True
    assert store.remove("a") is False
    assert len(store) == 0
    # The index no longer refers to "a": a full store of active jobs stays FULL.
    store.insert("b", None)
    store.insert("c", None)
    assert store.insert("d", None) is FULL


def test_eviction_follows_finish_order_not_creation_order() -> None:
    store = JobStore(max_jobs=4, ttl_seconds=60)
    for job_id in ("a", "b", "c", "d"):
        assert store.insert(job_id, None) is CREATED
    # Finish in a different order than created: c, a, d; b stays active.
    store.set_status("c", JobStatus.COMPLETED)
    store.set_status("a", JobStatus.FAILED, error="x")
    store.set_status("d", JobStatus.DUPLICATE)
    store.set_status("b", JobStatus.RUNNING)
    assert store.insert("e", None) is CREATED
    assert set(store) == {"a", "b", "d", "e"}  # c finished first
    assert store.insert("f", None) is CREATED
    assert set(store) == {"b", "d", "e", "f"}  # then a
    assert store.insert("g", None) is CREATED
    assert set(store) == {"b", "e", "f", "g"}  # then d
    assert store.insert("h", None) is FULL  # only active jobs left
    assert len(store) == 4


def test_refinishing_moves_job_to_the_back() -> None:
    store = JobStore(max_jobs=2, ttl_seconds=60)
    store.insert("a", None)
    store.insert("b", None)
    store.set_status("a", JobStatus.COMPLETED)
    store.set_status("b", JobStatus.COMPLETED)
    store.set_status("a", JobStatus.FAILED)  # a finished again, after b
    store.insert("c", None)
    assert set(store) == {"a", "c"}


def test_reactivated_job_is_not_evicted() -> None:
    store = JobStore(max_jobs=2, ttl_seconds=60)
    store.insert("a", None)
    store.insert("b", None)
    store.set_status("a", JobStatus.COMPLETED)
    store.set_status("a", JobStatus.RUNNING)
    assert store.insert("c", None) is FULL


def test_max_jobs_never_exceeded_over_many_inserts() -> None:
    store = JobStore(max_jobs=50, ttl_seconds=60)
    refused = 0
    for n in range(10_000):
        outcome = store.insert(f"job-{n}", {"n": n})
        assert len(store) <= 50
        if outcome is FULL:
            refused += 1
            continue
        assert outcome is CREATED
        # Jobs finish as they go, a few stay active for a while.
        if n % 7:
            store.set_status(f"job-{n}", JobStatus.RUNNING)
            store.set_status(f"job-{n}", JobStatus.COMPLETED if n % 3 else JobStatus.FAILED)
    assert len(store) == 50
    assert refused > 0  # eventually every slot held an active (every 7th) job
    assert store.count_active() == 50


def test_stale_index_after_deleting_from_jobs_directly() -> None:
    store = JobStore(max_jobs=3, ttl_seconds=60)
    for job_id in ("a", "b", "c"):
        store.insert(job_id, None)
        store.set_status(job_id, JobStatus.COMPLETED)
    del store.jobs["a"]  # the index still lists "a"
    assert store.insert("d", None) is CREATED  # room without eviction
    assert set(store) == {"b", "c", "d"}
    assert store.insert("e", None) is CREATED  # stale "a" skipped, "b" evicted
    assert set(store) == {"c", "d", "e"}
    store.jobs["c"] = JobInfo(job_id="c", status=JobStatus.RUNNING)  # replaced by hand: now active
    assert store.insert("f", None) is FULL
    assert set(store) == {"c", "d", "e"}


def test_cleanup_expired_with_now() -> None:
    store = JobStore(max_jobs=10, ttl_seconds=3600)
    for job_id in ("old", "young", "active", "dup"):
        store.insert(job_id, None)
    store.set_status("old", JobStatus.COMPLETED)
    store.set_status("young", JobStatus.FAILED)
    store.mark_duplicate("dup")
    base = datetime.now()
    store.get("old").completed_at = base - timedelta(hours=2)
    store.get("young").completed_at = base - timedelta(minutes=30)
    store.get("dup").completed_at = base - timedelta(hours=1, seconds=1)
    store.get("active").started_at = base - timedelta(days=30)
    assert store.cleanup_expired(now=base) == 2
    assert set(store) == {"young", "active"}
    assert store.cleanup_expired(now=base) == 0
    assert store.cleanup_expired(now=base + timedelta(hours=1)) == 1
    assert set(store) == {"active"}
    assert store.cleanup_expired() == 0


def test_cleanup_expired_uses_started_at_without_completed_at() -> None:
    store = JobStore(max_jobs=10, ttl_seconds=10)
    store.jobs["manual"] = JobInfo(job_id="manual", status=JobStatus.COMPLETED,
                                   started_at=datetime(2020, 1, 1))
    assert store.cleanup_expired(now=datetime(2020, 1, 1, 0, 0, 5)) == 0
    assert store.cleanup_expired(now=datetime(2020, 1, 1, 0, 0, 11)) == 1


def test_cleanup_rebuilds_index_for_jobs_added_by_hand() -> None:
    store = JobStore(max_jobs=2, ttl_seconds=3600)
    store.jobs["x"] = JobInfo(job_id="x", status=JobStatus.COMPLETED, completed_at=datetime.now())
    store.insert("y", None)
    assert store.insert("z", None) is FULL  # "x" is not indexed yet
    store.cleanup_expired()
    assert store.insert("z", None) is CREATED
    assert set(store) == {"y", "z"}


def test_reindex_after_replacing_jobs() -> None:
    store = JobStore(max_jobs=3, ttl_seconds=60)
    store.insert("gone", None)
    store.set_status("gone", JobStatus.COMPLETED)
    t0 = datetime(2024, 1, 1)
    store.jobs = {
        "late": JobInfo(job_id="late", status=JobStatus.COMPLETED, completed_at=t0 + timedelta(seconds=20)),
        "early": JobInfo(job_id="early", status=JobStatus.FAILED, completed_at=t0 + timedelta(seconds=10)),
        "run": JobInfo(job_id="run", status=JobStatus.RUNNING),
    }
    store.reindex()
    assert store.insert("n1", None) is CREATED
    assert set(store) == {"late", "run", "n1"}
    assert store.insert("n2", None) is CREATED
    assert set(store) == {"run", "n1", "n2"}
    assert store.insert("n3", None) is FULL


def test_count_active() -> None:
    store = JobStore(max_jobs=10, ttl_seconds=60)
    assert store.count_active() == 0
    for job_id, status in [("p", JobStatus.PENDING), ("r", JobStatus.RUNNING), ("c", JobStatus.COMPLETED),
                           ("f", JobStatus.FAILED), ("d", JobStatus.DUPLICATE)]:
        store.insert(job_id, None)
        store.set_status(job_id, status)
    assert store.count_active() == 2


def test_snapshot_returns_filtered_copies() -> None:
    store = JobStore(max_jobs=10, ttl_seconds=60)
    store.insert("a", {"k": 1})
    store.insert("b", None)
    store.insert("c", None)
    store.set_status("b", JobStatus.RUNNING)
    store.set_status("c", JobStatus.COMPLETED, result=1)
    everything = store.snapshot()
    assert set(everything) == {"a", "b", "c"}
    assert everything is not store.jobs
    assert everything["a"] == store.jobs["a"] and everything["a"] is not store.jobs["a"]
    everything["a"].status = JobStatus.FAILED
    assert store.get("a").status is JobStatus.PENDING
    del everything["b"]
    assert "b" in store.jobs
    assert set(store.snapshot(JobStatus.RUNNING)) == {"b"}
    assert set(store.snapshot(JobStatus.COMPLETED, JobStatus.PENDING)) == {"a", "c"}
    assert store.snapshot(JobStatus.DUPLICATE) == {}


def test_len_and_iteration() -> None:
    store = JobStore(max_jobs=10, ttl_seconds=60)
    assert len(store) == 0 and list(store) == []
    for job_id in ("x", "y", "z"):
        store.insert(job_id, None)
    assert len(store) == 3
    assert list(store) == ["x", "y", "z"]
    assert "y" in store
    assert store.max_jobs == 10
    assert store.ttl == timedelta(seconds=60)


def test_start_attempt_marks_running_and_counts_each_start() -> None:
    store = JobStore(max_jobs=2, ttl_seconds=60)
    assert store.start_attempt("missing") == 0 and "missing" not in store.jobs
    store.insert("a", {"v": 1})
    assert store.get("a").attempts == 0  # type: ignore[union-attr]
    assert [store.start_attempt("a") for _ in range(3)] == [1, 2, 3]
    job = store.get("a")
    assert job is not None and (job.status, job.attempts, job.completed_at) == (JobStatus.RUNNING, 3, None)
    store.set_status("a", JobStatus.COMPLETED, result=1)
    assert store.snapshot()["a"].attempts == 3  # kept once finished, and in the copies queries return
    assert store.restart("a", {"v": 2}).attempts == 0  # a reprocessed job counts its own runs
