"""The job bookkeeping the listener delegates to: a job store, the event that tells a job finished, and
the coroutines the manual documents for querying and updating jobs."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Dict, Optional

from .admission import Admission
from .records import JobInfo, JobStatus
from .store import JobStore

__all__ = ["JobTracker"]

logger = logging.getLogger("Listener.jobs")


class JobTracker:
    """Jobs by id in ``store`` (any :class:`~Listener.jobs.store.JobStore`)."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        #: Set whenever a job finishes (admission waits on it while the store is full of active jobs).
        self.job_finished = asyncio.Event()
        self._settling: Dict[str, "asyncio.Future[None]"] = {}

    @property
    def lock(self) -> asyncio.Lock:
        """The store's lock, which guards ``store.jobs`` (``listener.job_lock``)."""
        return self.store.lock

    async def create_job(self, job_id: str, data: Optional[Dict[str, Any]]) -> bool:
        """Create a PENDING job; False (and the job marked DUPLICATE) when the id exists, False when full."""
        outcome = await self.store.admit(job_id, data)
        held = self.store.jobs.get(job_id)
        if outcome is Admission.DUPLICATE and held is not None and held.status is JobStatus.PENDING:
            # The manual (§9.5.4): a second create marks the job DUPLICATE, even one yet to run (a message's
            # duplicate leaves an active job's status alone).
            await self.store.set_status(job_id, JobStatus.DUPLICATE)
        if outcome is Admission.FULL:
            logger.warning("Job store full (%d active jobs); job %s not created", self.store.max_jobs, job_id)
        return outcome is Admission.CREATED

    async def update_job_status(self, job_id: str, status: JobStatus, result: Any = None,
                                error: Optional[str] = None) -> bool:
        """Set a job's status (and result or error); False when the id is unknown."""
        return self._updated(job_id, status, await self.store.set_status(job_id, status, result, error))

    def update_job_status_now(self, job_id: str, status: JobStatus, result: Any = None,
                              error: Optional[str] = None) -> Optional[bool]:
        """:meth:`update_job_status` without awaiting, where the store can; None when it cannot (nothing changed)."""
        updated = self.store.set_status_now(job_id, status, result, error)
        return None if updated is None else self._updated(job_id, status, updated)

    def _updated(self, job_id: str, status: JobStatus, updated: bool) -> bool:
        if updated and status is not JobStatus.PENDING and status is not JobStatus.RUNNING:
            self.job_finished.set()
            self._settled(job_id, finished=True)
        return updated

    async def interrupt_job(self, job_id: str) -> bool:
        """Record a job cut short by stopping (FAILED, run again when its message is redelivered)."""
        interrupted = await self.store.interrupt(job_id)
        if interrupted:
            self.job_finished.set()
            self._settled(job_id, finished=False)
        return interrupted

    def settled(self, job_id: str) -> "asyncio.Future[None]":
        """A future done once the job finishes through this tracker, cancelled if stopping cuts it short."""
        future = self._settling.get(job_id)
        if future is None:
            future = self._settling[job_id] = asyncio.get_running_loop().create_future()
        return future

    def _settled(self, job_id: str, finished: bool) -> None:
        future = self._settling.pop(job_id, None)
        if future is not None and not future.done():
            if finished:
                future.set_result(None)
            else:
                future.cancel()

    async def start_attempt(self, job_id: str) -> int:
        """Mark the job RUNNING for one more run of its processor; how many runs it has had (0: unknown id)."""
        return await self.store.start_attempt(job_id)

    def start_attempt_now(self, job_id: str) -> Optional[int]:
        """:meth:`start_attempt` without awaiting, where the store can; None when it cannot (nothing changed)."""
        return self.store.start_attempt_now(job_id)

    async def mark_job_duplicate(self, job_id: str) -> bool:
        """Record that ``job_id`` arrived again (a running job keeps running)."""
        return await self.store.mark_duplicate(job_id)

    async def get_job_status(self, job_id: str) -> Optional[JobInfo]:
        """A copy of the job's information, or None when it is not (or no longer) in the store."""
        return await self.store.get(job_id)

    async def is_job_completed(self, job_id: str) -> bool:
        """True when the job finished, successfully or not (COMPLETED or FAILED)."""
        job = await self.get_job_status(job_id)
        return job is not None and job.status in (JobStatus.COMPLETED, JobStatus.FAILED)

    async def is_job_running(self, job_id: str) -> bool:
        """True while the job is RUNNING (a PENDING job has not started)."""
        job = await self.get_job_status(job_id)
        return job is not None and job.status is JobStatus.RUNNING

    async def job_exists(self, job_id: str) -> bool:
        """True when a job with this id is in the store."""
        return await self.store.exists(job_id)

    async def jobs_with(self, *statuses: JobStatus) -> Dict[str, JobInfo]:
        """Copies of the jobs with one of ``statuses`` (every job when none is given)."""
        return await self.store.jobs_with(*statuses)

    async def cleanup_old_jobs(self) -> None:
        """Remove finished jobs whose ``completed_at`` is older than the store's TTL."""
        removed = await self.store.cleanup_expired()
        if removed:
            logger.debug("Removed %d finished jobs older than %s", removed, self.store.ttl)
