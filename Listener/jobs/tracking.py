"""The job bookkeeping the listener delegates to: a job store, the lock that guards it, and the
coroutines the manual documents for querying and updating jobs."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any, Dict, Optional, cast

from .records import InsertOutcome, JobInfo, JobStatus, JobStoreBackend, SharedJobStore

__all__ = ["JobTracker"]

logger = logging.getLogger("Listener.jobs")


class JobTracker:
    """Jobs by id in ``store`` (any :class:`~Listener.jobs.records.JobStoreBackend`), guarded by ``lock``."""

    def __init__(self, store: JobStoreBackend) -> None:
        self.store = store
        self.lock = asyncio.Lock()
        #: Set whenever a job finishes (admission waits on it while the store is full of active jobs).
        self.job_finished = asyncio.Event()

    async def create_job(self, job_id: str, data: Optional[Dict[str, Any]]) -> bool:
        """Create a PENDING job; False (and the job marked DUPLICATE) when the id exists, False when full."""
        shared = self.shared
        if shared is not None:  # claimed in the shared store (which counts the duplicate itself)
            outcome = await shared.claim(job_id, data, None)
        else:
            async with self.lock:
                outcome = self.store.insert(job_id, data)
                if outcome is InsertOutcome.EXISTS:
                    self.store.mark_duplicate(job_id)
        if outcome is InsertOutcome.FULL:
            logger.warning("Job store full (%d active jobs); job %s not created", self.store.max_jobs, job_id)
        return outcome is InsertOutcome.CREATED

    async def update_job_status(self, job_id: str, status: JobStatus, result: Any = None,
                                error: Optional[str] = None) -> bool:
        """Set a job's status (and result or error); False when the id is unknown."""
        if self.lock.locked():
            async with self.lock:
                updated = self.store.set_status(job_id, status, result, error)
        else:  # only the event loop writes and nothing is awaited here: a free lock needs no round trip
            updated = self.store.set_status(job_id, status, result, error)
        if updated and status is not JobStatus.PENDING and status is not JobStatus.RUNNING:
            self.job_finished.set()
        return updated

    async def interrupt_job(self, job_id: str) -> bool:
        """Record a job cut short by stopping (FAILED, run again when its message is redelivered)."""
        async with self.lock:
            interrupted = self.store.interrupt(job_id)
        if interrupted:
            self.job_finished.set()
        return interrupted

    async def start_attempt(self, job_id: str) -> int:
        """Mark the job RUNNING for one more run of its processor; how many runs it has had (0: unknown id)."""
        async with self.lock:
            return self.store.start_attempt(job_id)

    async def mark_job_duplicate(self, job_id: str) -> bool:
        """Record that ``job_id`` arrived again (a running job keeps running)."""
        async with self.lock:
            return self.store.mark_duplicate(job_id)

    @property
    def shared(self) -> Optional[SharedJobStore]:
        """The store when several processes share it (Redis): the queries then read it."""
        return cast(SharedJobStore, self.store) if getattr(self.store, "shared", False) else None

    async def get_job_status(self, job_id: str) -> Optional[JobInfo]:
        """A copy of the job's information, or None when it is not (or no longer) in memory."""
        shared = self.shared
        if shared is not None:
            return await shared.fetch(job_id)
        async with self.lock:
            job = self.store.get(job_id)
            return replace(job) if job is not None else None

    async def is_job_completed(self, job_id: str) -> bool:
        """True when the job finished, successfully or not (COMPLETED or FAILED)."""
        job = await self.get_job_status(job_id)
        return job is not None and job.status in (JobStatus.COMPLETED, JobStatus.FAILED)

    async def is_job_running(self, job_id: str) -> bool:
        """True while the job is RUNNING (a PENDING job has not started)."""
        job = await self.get_job_status(job_id)
        return job is not None and job.status is JobStatus.RUNNING

    async def job_exists(self, job_id: str) -> bool:
        """True when a job with this id is in memory."""
        shared = self.shared
        if shared is not None:
            return await shared.fetch(job_id) is not None
        async with self.lock:
            return job_id in self.store.jobs

    async def jobs_with(self, *statuses: JobStatus) -> Dict[str, JobInfo]:
        """Copies of the jobs with one of ``statuses`` (every job when none is given)."""
        shared = self.shared
        if shared is not None:
            return await shared.fetch_all(*statuses)
        async with self.lock:
            return self.store.snapshot(*statuses)

    async def cleanup_old_jobs(self) -> None:
        """Remove finished jobs whose ``completed_at`` is older than the store's TTL."""
        async with self.lock:
            removed = self.store.cleanup_expired()
        if removed:
            logger.debug("Removed %d finished jobs older than %s", removed, self.store.ttl)
