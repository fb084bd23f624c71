"""The SQLite store's orphans (issue 23, item 2): what a killed or stopped run left unfinished, handed over once."""

from __future__ import annotations

from pathlib import Path

from Listener.jobs.admission import Admission
from Listener.jobs.memory import MemoryJobStore
from Listener.jobs.records import CANCELLED, JobStatus
from Listener.jobs.sqlite import SqliteJobStore


async def test_orphans_are_the_unfinished_jobs_with_input_found_at_open_returned_once(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    first = SqliteJobStore(path, 10, 60, keep_input=True)
    await first.open()
    assert await first.orphans() == []  # a new file: nothing left by an earlier run
    for job_id in ("done", "running", "pending", "cancelled", "redelivered", "no-input"):
        await first.admit(job_id, None if job_id == "no-input" else {"id": job_id, "_topic": "t/jobs"}, "t/jobs")
    await first.start_attempt("done")
    await first.set_status("done", JobStatus.COMPLETED, result={"ok": 1})
    await first.start_attempt("running")
    await first.start_attempt("cancelled")
    await first.interrupt("cancelled", CANCELLED)  # a stop cut it short
    await first.close()  # as a crash would leave the others

    second = SqliteJobStore(path, 10, 60, keep_input=True)
    await second.open()
    try:
        # Its message came again before the listener looked: the redelivery runs it, the store does not.
        assert await second.admit("redelivered", {"id": "redelivered"}, "t/jobs") is Admission.CREATED
        found = await second.orphans()
        assert [job.job_id for job in found] == ["running", "pending", "cancelled"]  # oldest first
        for job in found:
            assert job.status is JobStatus.PENDING and job.error is None
            assert job.input_data == {"id": job.job_id, "_topic": "t/jobs"} and job.topic == "t/jobs"
            assert second.jobs[job.job_id].status is JobStatus.PENDING and not second.is_interrupted(job.job_id)
        assert found[0].attempts == 1
        assert await second.orphans() == []  # handed over once
        # Taken over: a redelivered message now finds a job held (a duplicate), not one to run again.
        assert await second.admit("running", {"id": "running"}, "t/jobs") is Admission.DUPLICATE
        assert second.is_interrupted("no-input")  # nothing to run it on: it waits for its message
    finally:
        await second.close()


async def test_the_memory_store_has_no_orphans() -> None:
    store = MemoryJobStore(10, 60)
    await store.admit("a", {"id": "a"})
    assert await store.orphans() == [] and store.orphan_scan_interval is None
