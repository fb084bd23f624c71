"""The job-tracking half of the listener: the bounded job store, its lock, and the coroutines the
manual documents for querying and updating jobs (``EventListener`` inherits them)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any, Dict, Optional

from .jobs import InsertOutcome, JobInfo, JobStatus, JobStore

__all__ = ["JobTracker"]

logger = logging.getLogger("Listener.event_listener")


class JobTracker:
    """Jobs by id: ``jobs`` is the live dict, ``job_lock`` the ``asyncio.Lock`` that guards it."""

    def __init__(self, max_jobs: int, ttl_seconds: float, keep_input: bool = False) -> None:
        self._store = JobStore(max_jobs, ttl_seconds, keep_input)
        self.job_lock = asyncio.Lock()
        #: Set whenever a job finishes, while a run is active (admission waits on it when the store is full).
        self._job_finished: Optional[asyncio.Event] = None

    @property
    def jobs(self) -> Dict[str, JobInfo]:
        """The live job dict (hold ``job_lock`` while iterating it from a coroutine)."""
        return self._store.jobs

    @jobs.setter
    def jobs(self, value: Dict[str, JobInfo]) -> None:
        self._store.jobs = value
        self._store.reindex()

    async def _create_job(self, job_id: str, data: Optional[Dict[str, Any]]) -> bool:
        """Create a PENDING job; False (and the job marked DUPLICATE) when the id exists, False when full."""
        async with self.job_lock:
            outcome = self._store.insert(job_id, data)
            if outcome is InsertOutcome.EXISTS:
                self._store.mark_duplicate(job_id)
        if outcome is InsertOutcome.FULL:
            logger.warning("Job store full (%d active jobs); job %s not created", self._store.max_jobs, job_id)
        return outcome is InsertOutcome.CREATED

    async def _update_job_status(self, job_id: str, status: JobStatus, result: Any = None,
                                 error: Optional[str] = None) -> bool:
        """Set a job's status (and result or error); False when the id is unknown."""
        async with self.job_lock:
            updated = self._store.set_status(job_id, status, result, error)
        if updated and self._job_finished is not None and status not in (JobStatus.PENDING, JobStatus.RUNNING):
            self._job_finished.set()
        return updated

    async def _mark_job_duplicate(self, job_id: str) -> bool:
        """Record that ``job_id`` arrived again (a running job keeps running)."""
        async with self.job_lock:
            return self._store.mark_duplicate(job_id)

    async def get_job_status(self, job_id: str) -> Optional[JobInfo]:
        """A copy of the job's information, or None when it is not (or no longer) in memory."""
        async with self.job_lock:
            job = self._store.get(job_id)
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
        async with self.job_lock:
            return job_id in self._store.jobs

    async def get_all_jobs(self) -> Dict[str, JobInfo]:
        """Copies of every job in memory."""
        async with self.job_lock:
            return self._store.snapshot()

    async def get_running_jobs(self) -> Dict[str, JobInfo]:
        """Copies of the RUNNING jobs."""
        async with self.job_lock:
            return self._store.snapshot(JobStatus.RUNNING)

    async def get_completed_jobs(self) -> Dict[str, JobInfo]:
        """Copies of the COMPLETED jobs."""
        async with self.job_lock:
            return self._store.snapshot(JobStatus.COMPLETED)

    async def get_duplicate_jobs(self) -> Dict[str, JobInfo]:
        """Copies of the jobs marked DUPLICATE."""
        async with self.job_lock:
            return self._store.snapshot(JobStatus.DUPLICATE)

    async def get_failed_jobs(self) -> Dict[str, JobInfo]:
        """Copies of the FAILED jobs."""
        async with self.job_lock:
            return self._store.snapshot(JobStatus.FAILED)

    async def cleanup_old_jobs(self) -> None:
        """Remove finished jobs whose ``completed_at`` is older than ``job_cleanup_interval`` seconds."""
        async with self.job_lock:
            removed = self._store.cleanup_expired()
        if removed:
            logger.debug("Removed %d finished jobs older than %s", removed, self._store.ttl)
