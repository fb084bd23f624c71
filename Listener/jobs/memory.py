"""The memory job store: a dict of jobs bounded by ``max_jobs`` (``job_store = "memory"``, the default).

The SQLite and Redis stores build on it: it is their copy of this process's jobs.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Callable, Dict, Iterator, List, Optional, Set

from .admission import Admission, Verdict, decide
from .records import ACTIVE_STATUSES, CANCELLED, FINISHED_STATUSES, JobInfo, JobStatus

__all__ = ["MemoryJobStore"]


class MemoryJobStore:
    """A :class:`~Listener.jobs.store.JobStore` holding its jobs in a dict, evicting the oldest finished jobs first.

    A job's ``input_data`` is dropped when it finishes, unless ``keep_input`` is set (the
    ``keep_job_input`` option): a held job then costs a few hundred bytes, not its payload.

    ``jobs`` is the live dict (the listener exposes it as ``listener.jobs``). Finished jobs are also
    kept in an ordered index by the time they finished, so making room for a new job is O(1)
    amortised however many jobs are held. The store is not thread-safe: use it from the event loop.
    The synchronous methods (:meth:`remove`, :meth:`snapshot`, …) do not look at ``lock``.
    """

    #: Jobs live in this process only.
    persistent = False
    #: Only this process's jobs take slots: a job finishing here is the only way one frees.
    full_recheck_interval: Optional[float] = None
    #: Nothing outlives the process: no orphans to look for.
    orphan_scan_interval: Optional[float] = None

    def __init__(self, max_jobs: int, ttl_seconds: float, keep_input: bool = False) -> None:
        self.jobs: Dict[str, JobInfo] = {}
        self.lock = asyncio.Lock()
        self.max_jobs = max_jobs
        self.ttl = timedelta(seconds=ttl_seconds)
        #: Keep a finished job's ``input_data``; by default it is dropped, so held jobs cost little memory.
        self.keep_input = keep_input
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._interrupted: Set[str] = set()  # cut short: run again when their message comes again

    def __len__(self) -> int:
        return len(self.jobs)

    def __iter__(self) -> Iterator[str]:
        return iter(self.jobs)

    # -- the JobStore interface: nothing is awaited unless someone holds the lock ----------------

    async def admit(self, job_id: str, data: Optional[Dict[str, Any]], topic: Optional[str] = None,
                    duplicate_action: str = "skip") -> Admission:
        """Create the job, or apply the duplicate policy (:func:`~Listener.jobs.admission.decide`) to the job
        holding the id; FULL when every slot holds an active job."""
        if self.lock.locked():
            async with self.lock:
                return self._admit(job_id, data, topic, duplicate_action)
        return self._admit(job_id, data, topic, duplicate_action)

    def admit_now(self, job_id: str, data: Optional[Dict[str, Any]], topic: Optional[str] = None,
                  duplicate_action: str = "skip") -> Optional[Admission]:
        """:meth:`admit` without awaiting; None (nothing changed) while somebody holds :attr:`lock`."""
        if self.lock.locked():
            return None
        return self._admit(job_id, data, topic, duplicate_action)

    async def set_status(self, job_id: str, status: JobStatus, result: Any = None, error: Optional[str] = None) -> bool:
        """Move a job to ``status``; finished states record ``completed_at``. False when the id is unknown."""
        if self.lock.locked():
            async with self.lock:
                return self._set_status(job_id, status, result, error)
        return self._set_status(job_id, status, result, error)

    def set_status_now(self, job_id: str, status: JobStatus, result: Any = None,
                       error: Optional[str] = None) -> Optional[bool]:
        """:meth:`set_status` without awaiting; None (nothing changed) while somebody holds :attr:`lock`."""
        if self.lock.locked():
            return None
        return self._set_status(job_id, status, result, error)

    async def start_attempt(self, job_id: str) -> int:
        """Mark the job RUNNING and count one more start of its processor; its ``attempts`` (0 when unknown)."""
        if self.lock.locked():
            async with self.lock:
                return self._start_attempt(job_id)
        return self._start_attempt(job_id)

    def start_attempt_now(self, job_id: str) -> Optional[int]:
        """:meth:`start_attempt` without awaiting; None (nothing changed) while somebody holds :attr:`lock`."""
        if self.lock.locked():
            return None
        return self._start_attempt(job_id)

    async def orphans(self) -> List[JobInfo]:
        """None: a job held only in memory dies with its process (the broker redelivers its message)."""
        return []

    async def interrupt(self, job_id: str, error: str = CANCELLED) -> bool:
        """Record a job cut short by stopping: FAILED with ``error``, and run again (not a duplicate) when its
        message, left unacknowledged, is redelivered. False when the id is unknown."""
        async with self.lock:
            return self._interrupt(job_id, error)

    async def mark_duplicate(self, job_id: str) -> bool:
        """Record that ``job_id`` arrived again (see :attr:`~Listener.jobs.admission.Verdict.DUPLICATE`)."""
        async with self.lock:
            return self._mark_duplicate(job_id)

    async def get(self, job_id: str) -> Optional[JobInfo]:
        """A copy of the job with this id, or None."""
        async with self.lock:
            job = self.jobs.get(job_id)
            return None if job is None else replace(job)

    async def exists(self, job_id: str) -> bool:
        """True when a job with this id is held."""
        async with self.lock:
            return job_id in self.jobs

    async def jobs_with(self, *statuses: JobStatus) -> Dict[str, JobInfo]:
        """Copies of the jobs with one of ``statuses`` (every job when none is given)."""
        async with self.lock:
            return self.snapshot(*statuses)

    async def recent(self, limit: int) -> List[JobInfo]:
        """Copies of the ``limit`` jobs admitted last, newest first, without input and result."""
        async with self.lock:
            return self._recent(limit)

    async def cleanup_expired(self, now: Optional[datetime] = None) -> int:
        """Remove finished jobs older than the TTL; return how many were removed.

        A full pass, which also rebuilds the eviction index so that jobs users put into ``jobs``
        by hand become evictable too.
        """
        async with self.lock:
            return self._cleanup_expired(now)

    def reindex(self) -> None:
        """Rebuild the eviction index from ``jobs`` (after the dict was replaced or edited by hand)."""
        self._index_finished()

    async def open(self, on_error: Optional[Callable[[str], None]] = None,
                   on_failover: Optional[Callable[[str], None]] = None) -> None:
        """Nothing to open: the memory store is ready when created (and never fails to write)."""

    async def close(self) -> None:
        """Nothing to close."""

    async def durable(self) -> None:
        """Return at once: the memory store keeps nothing elsewhere."""

    # -- synchronous helpers ---------------------------------------------------------------------

    def is_interrupted(self, job_id: str) -> bool:
        """True for a job cut short (or found unfinished in a durable store) whose message has not come again."""
        return job_id in self._interrupted

    def remove(self, job_id: str) -> bool:
        """Forget a job. False when the id is unknown."""
        self._finished.pop(job_id, None)
        if self.jobs.pop(job_id, None) is None:
            return False
        self._interrupted.discard(job_id)
        self._removed(job_id)
        return True

    def count_active(self) -> int:
        """How many jobs are PENDING or RUNNING."""
        return sum(1 for job in self.jobs.values() if job.status in ACTIVE_STATUSES)

    def snapshot(self, *statuses: JobStatus) -> Dict[str, JobInfo]:
        """Copies of the held jobs (all, or those with one of ``statuses``); never the live objects."""
        wanted = frozenset(statuses)
        return {
            job_id: replace(job) for job_id, job in self.jobs.items() if not wanted or job.status in wanted
        }

    def _recent(self, limit: int) -> List[JobInfo]:
        # The dict is in admission order: the newest jobs are its last ones, no sort over every job needed.
        newest = itertools.islice(reversed(self.jobs.values()), max(0, limit))
        return [replace(job, input_data=None, result=None) for job in newest]

    # -- what changes (called from the event loop, nothing awaited) ------------------------------

    def _admit(self, job_id: str, data: Optional[Dict[str, Any]], topic: Optional[str],
               duplicate_action: str) -> Admission:
        held = self.jobs.get(job_id)
        interrupted = job_id in self._interrupted
        if interrupted:  # this admission consumes it, whatever it decides
            self._interrupted.discard(job_id)
        verdict = decide(None if held is None else held.status, interrupted, duplicate_action)
        if verdict is Verdict.NEW or held is None:
            if len(self.jobs) >= self.max_jobs and not self._make_room():
                return Admission.FULL
            job = self.jobs[job_id] = JobInfo(job_id=job_id, status=JobStatus.PENDING, input_data=data, topic=topic)
            self._changed(job)
            return Admission.CREATED
        if verdict is Verdict.DUPLICATE:
            self._count_duplicate(held)
            return Admission.DUPLICATE
        if verdict is Verdict.RUN_AGAIN:
            self._put(JobInfo(job_id=job_id, status=JobStatus.PENDING, input_data=data, topic=topic,
                              duplicate_count=held.duplicate_count, attempts=held.attempts))
        else:
            self._put(JobInfo(job_id=job_id, status=JobStatus.PENDING, input_data=data, topic=topic,
                              duplicate_count=held.duplicate_count + 1))
        return Admission.CREATED

    def _put(self, job: JobInfo) -> None:
        """Hold ``job`` (new, or replacing the job with its id): active, so out of the eviction index."""
        self._finished.pop(job.job_id, None)
        self.jobs[job.job_id] = job
        self._changed(job)

    def _set_status(self, job_id: str, status: JobStatus, result: Any = None, error: Optional[str] = None) -> bool:
        job = self.jobs.get(job_id)
        if job is None:
            return False
        job.status = status
        if result is not None:
            job.result = result
        if error is not None:
            job.error = error
        if status in FINISHED_STATUSES:
            job.completed_at = datetime.now()
            if not self.keep_input:
                job.input_data = None
            self._finished.pop(job_id, None)
            self._finished[job_id] = None
        else:
            job.completed_at = None
            self._finished.pop(job_id, None)
        self._changed(job)
        return True

    def _start_attempt(self, job_id: str) -> int:
        job = self.jobs.get(job_id)
        if job is None:
            return 0
        job.attempts += 1
        self._set_status(job_id, JobStatus.RUNNING)
        return job.attempts

    def _count_duplicate(self, job: JobInfo) -> None:
        """A duplicate admitted: an active job only counts it (it keeps its status and its input, as it is
        yet to run or running); a finished one becomes DUPLICATE as :meth:`_mark_duplicate` makes it."""
        if job.status in ACTIVE_STATUSES:
            job.duplicate_count += 1
            self._changed(job)
        else:
            self._mark_duplicate(job.job_id)

    def _mark_duplicate(self, job_id: str) -> bool:
        # A finished job keeps completed_at (so its place in the eviction order), result and error: the
        # duplicate changes nothing of what the first message produced.
        job = self.jobs.get(job_id)
        if job is None:
            return False
        job.duplicate_count += 1
        if job.status is JobStatus.RUNNING:
            self._changed(job)
            return True
        if job.status in FINISHED_STATUSES and job.completed_at is not None:
            job.status = JobStatus.DUPLICATE
            if job_id not in self._finished:  # a job put into ``jobs`` by hand
                self._finished[job_id] = None
            self._changed(job)
            return True
        self._set_status(job_id, JobStatus.DUPLICATE)
        return True

    def _interrupt(self, job_id: str, error: str) -> bool:
        if not self._set_status(job_id, JobStatus.FAILED, error=error):
            return False
        self._interrupted.add(job_id)
        return True

    def _make_room(self) -> bool:
        """Evict the oldest finished job; False when every held job is active."""
        while self._finished:
            job_id, _ = self._finished.popitem(last=False)
            job = self.jobs.get(job_id)
            # The index can be stale when users edit ``jobs`` directly; trust the dict.
            if job is not None and job.status in FINISHED_STATUSES:
                del self.jobs[job_id]
                self._interrupted.discard(job_id)
                self._removed(job_id)
                return True
        return False

    def _cleanup_expired(self, now: Optional[datetime]) -> int:
        cutoff = (now or datetime.now()) - self.ttl
        expired = [
            job_id for job_id, job in self.jobs.items()
            if job.status in FINISHED_STATUSES and (job.completed_at or job.started_at) < cutoff
        ]
        for job_id in expired:
            del self.jobs[job_id]
            self._interrupted.discard(job_id)
            self._removed(job_id)
        self._index_finished()
        return len(expired)

    def _index_finished(self) -> None:
        finished = sorted(
            (job for job in self.jobs.values() if job.status in FINISHED_STATUSES),
            key=lambda job: job.completed_at or job.started_at,
        )
        self._finished = OrderedDict((job.job_id, None) for job in finished)

    def _changed(self, job: JobInfo) -> None:
        """Hook: ``job`` was created or changed (a durable store records it)."""

    def _removed(self, job_id: str) -> None:
        """Hook: the job ``job_id`` was forgotten (a durable store deletes it)."""
