"""Jobs: their status, their record, and the bounded in-memory store that holds them."""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Callable, Dict, Iterator, Optional, Protocol, Set

__all__ = ["CANCELLED", "JobInfo", "JobStatus", "JobStore", "JobStoreBackend", "InsertOutcome", "ACTIVE_STATUSES",
           "FINISHED_STATUSES", "SharedJobStore"]


#: The error of a job cancelled by stopping (its message stays unacknowledged: it runs again when redelivered).
CANCELLED = "Cancelled: listener stopped"


class JobStatus(enum.Enum):
    """Job execution status."""

    #: Queued but not yet started.
    PENDING = "pending"
    #: Being processed right now.
    RUNNING = "running"
    #: The processor returned normally.
    COMPLETED = "completed"
    #: The processor raised, or its result could not be published.
    FAILED = "failed"
    #: A message arrived again with a job id already known.
    DUPLICATE = "duplicate"


ACTIVE_STATUSES = frozenset({JobStatus.PENDING, JobStatus.RUNNING})
FINISHED_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.DUPLICATE})


@dataclass
class JobInfo:
    """Information about a job run."""

    job_id: str
    status: JobStatus
    started_at: datetime = field(default_factory=datetime.now)
    completed_at: Optional[datetime] = None
    input_data: Optional[Dict[str, Any]] = None
    result: Optional[Any] = None
    error: Optional[str] = None
    #: The topic the job's message arrived on (None for jobs created directly).
    topic: Optional[str] = None
    #: How many times the same job id arrived again after this job was created.
    duplicate_count: int = 0
    #: How many times the processor was started for this job (a job a crash interrupted runs again).
    attempts: int = 0


class InsertOutcome(enum.Enum):
    """What :meth:`JobStore.insert` did."""

    #: A new PENDING job was stored.
    CREATED = "created"
    #: A job with this id is already stored; nothing changed.
    EXISTS = "exists"
    #: Every slot holds an active job; nothing changed.
    FULL = "full"


class JobStoreBackend(Protocol):
    """What the listener needs from a job store (:class:`JobStore` keeps jobs in memory).

    A durable store (sqlite, Redis) implements these with the same meaning; the listener calls them
    under its ``job_lock``, from the event loop. ``jobs`` is the live mapping ``listener.jobs`` shows.
    """

    jobs: Dict[str, JobInfo]
    max_jobs: int
    ttl: timedelta
    #: Whether jobs outlive the process (then a message is acknowledged only once :meth:`durable` passed).
    persistent: bool

    def get(self, job_id: str) -> Optional[JobInfo]:
        """The job with this id, or None."""

    def insert(self, job_id: str, data: Optional[Dict[str, Any]], topic: Optional[str] = None) -> InsertOutcome:
        """Store a new PENDING job unless the id exists or no slot can be freed (evicting finished jobs)."""

    def restart(self, job_id: str, data: Optional[Dict[str, Any]], topic: Optional[str] = None) -> JobInfo:
        """Reset an existing job to PENDING with new input (``duplicate_action = "reprocess"``)."""

    def set_status(self, job_id: str, status: JobStatus, result: Any = None, error: Optional[str] = None) -> bool:
        """Move a job to ``status``; False when the id is unknown."""

    def mark_duplicate(self, job_id: str) -> bool:
        """Record that ``job_id`` arrived again (a RUNNING job keeps running); False when unknown."""

    def interrupt(self, job_id: str, error: str = CANCELLED) -> bool:
        """Record a job cut short by stopping: FAILED, and run again when its message is redelivered."""

    def start_attempt(self, job_id: str) -> int:
        """Mark the job RUNNING and count one more start of its processor; its ``attempts`` (0 when unknown)."""

    def cleanup_expired(self, now: Optional[datetime] = None) -> int:
        """Remove finished jobs older than the TTL; return how many were removed."""

    async def open(self, on_error: Optional[Callable[[str], None]] = None) -> None:
        """Make the store ready (a durable store opens its file); called when ``run()`` starts.

        ``on_error`` is called on the event loop with a message whenever a later write fails.
        """

    async def close(self) -> None:
        """Write what is not yet written and release the store; called when ``run()`` returns."""

    def reindex(self) -> None:
        """Take note of a ``jobs`` mapping replaced or edited by hand."""

    def snapshot(self, *statuses: JobStatus) -> Dict[str, JobInfo]:
        """Copies of the stored jobs (all, or those with one of ``statuses``)."""

    async def durable(self) -> None:
        """Return once every change made so far is on disk (at once for a store without a disk).

        The acknowledgement path awaits it before it acknowledges a message, so that a job the broker
        will not redeliver is recorded. Raises :class:`~Listener.jobs.factory.JobStoreError` when the
        changes cannot be written (then the message must not be acknowledged).
        """


class SharedJobStore(JobStoreBackend, Protocol):
    """A store shared by several processes (Redis): admission claims ids in it, queries read it.

    Its ``shared`` attribute is True (a plain :class:`JobStore`'s is False, and it has none of these).
    """

    async def claim(self, job_id: str, data: Optional[Dict[str, Any]], topic: Optional[str],
                    reprocess: bool = False) -> InsertOutcome:
        """Create the job's record unless one holds its id, atomically for every process sharing the store."""

    async def fetch(self, job_id: str) -> Optional[JobInfo]:
        """A copy of the job's shared record, or None."""

    async def fetch_all(self, *statuses: JobStatus) -> Dict[str, JobInfo]:
        """Copies of every process's jobs (those with one of ``statuses``)."""


class JobStore:
    """A dict of jobs bounded by ``max_jobs``, evicting the oldest finished jobs first.

    A job's ``input_data`` is dropped when it finishes, unless ``keep_input`` is set (the
    ``keep_job_input`` option): a held job then costs a few hundred bytes, not its payload.

    ``jobs`` is the live dict (the listener exposes it as ``listener.jobs``). Finished jobs are also
    kept in an ordered index by the time they finished, so making room for a new job is O(1)
    amortised however many jobs are held. The store is not thread-safe: use it from the event loop
    (the listener guards it with ``job_lock``).
    """

    #: Jobs live in this process only.
    persistent = False
    #: Not shared with other processes (see :class:`SharedJobStore`).
    shared = False

    def __init__(self, max_jobs: int, ttl_seconds: float, keep_input: bool = False) -> None:
        self.jobs: Dict[str, JobInfo] = {}
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

    def get(self, job_id: str) -> Optional[JobInfo]:
        """The job with this id, or None."""
        return self.jobs.get(job_id)

    def insert(self, job_id: str, data: Optional[Dict[str, Any]], topic: Optional[str] = None) -> InsertOutcome:
        """Store a new PENDING job unless the id exists or no slot can be freed.

        An interrupted job (see :meth:`interrupt`) is not a duplicate: it starts again, its ``attempts`` kept.
        """
        if job_id in self._interrupted:
            self._interrupted.discard(job_id)
            old = self.jobs.get(job_id)
            if old is not None and old.status is not JobStatus.RUNNING:
                self._finished.pop(job_id, None)
                job = self.jobs[job_id] = JobInfo(job_id=job_id, status=JobStatus.PENDING, input_data=data,
                                                  topic=topic, duplicate_count=old.duplicate_count,
                                                  attempts=old.attempts)
                self._changed(job)
                return InsertOutcome.CREATED
        if job_id in self.jobs:
            return InsertOutcome.EXISTS
        if len(self.jobs) >= self.max_jobs and not self._make_room():
            return InsertOutcome.FULL
        job = self.jobs[job_id] = JobInfo(job_id=job_id, status=JobStatus.PENDING, input_data=data, topic=topic)
        self._changed(job)
        return InsertOutcome.CREATED

    def restart(self, job_id: str, data: Optional[Dict[str, Any]], topic: Optional[str] = None) -> JobInfo:
        """Reset an existing job to PENDING with new input, for ``duplicate_action="reprocess"``."""
        old = self.jobs[job_id]
        self._finished.pop(job_id, None)
        job = JobInfo(job_id=job_id, status=JobStatus.PENDING, input_data=data, topic=topic,
                      duplicate_count=old.duplicate_count + 1)
        self.jobs[job_id] = job
        self._changed(job)
        return job

    def set_status(self, job_id: str, status: JobStatus, result: Any = None, error: Optional[str] = None) -> bool:
        """Move a job to ``status``; finished states record ``completed_at``. False when the id is unknown."""
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

    def start_attempt(self, job_id: str) -> int:
        """Mark the job RUNNING and count one more start of its processor; its ``attempts`` (0 when unknown)."""
        job = self.jobs.get(job_id)
        if job is None:
            return 0
        job.attempts += 1
        self.set_status(job_id, JobStatus.RUNNING)
        return job.attempts

    def mark_duplicate(self, job_id: str) -> bool:
        """Record that ``job_id`` arrived again.

        A RUNNING job keeps running (its status must stay truthful); any other job becomes DUPLICATE.
        A job that had finished keeps its ``completed_at``, ``result`` and ``error`` (and so its place in
        the eviction order): the duplicate changes nothing of what the first message produced.
        """
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
        self.set_status(job_id, JobStatus.DUPLICATE)
        return True

    def interrupt(self, job_id: str, error: str = CANCELLED) -> bool:
        """Record a job cut short by stopping: FAILED with ``error``, and run again (not a duplicate) when its
        message, left unacknowledged, is redelivered. False when the id is unknown."""
        if not self.set_status(job_id, JobStatus.FAILED, error=error):
            return False
        self._interrupted.add(job_id)
        return True

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

    def _make_room(self) -> bool:
        """Evict the oldest finished job; False when every stored job is active."""
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

    def cleanup_expired(self, now: Optional[datetime] = None) -> int:
        """Remove finished jobs older than the TTL; return how many were removed.

        A full pass, which also rebuilds the eviction index so that jobs users put into ``jobs``
        by hand become evictable too.
        """
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

    def reindex(self) -> None:
        """Rebuild the eviction index from ``jobs`` (after the dict was replaced or edited by hand)."""
        self._index_finished()

    def _index_finished(self) -> None:
        finished = sorted(
            (job for job in self.jobs.values() if job.status in FINISHED_STATUSES),
            key=lambda job: job.completed_at or job.started_at,
        )
        self._finished = OrderedDict((job.job_id, None) for job in finished)

    async def open(self, on_error: Optional[Callable[[str], None]] = None) -> None:
        """Nothing to open: the memory store is ready when created (and never fails to write)."""

    async def close(self) -> None:
        """Nothing to close."""

    async def durable(self) -> None:
        """Return at once: the memory store keeps nothing on disk (see :meth:`JobStoreBackend.durable`)."""

    def _changed(self, job: JobInfo) -> None:
        """Hook: ``job`` was created or changed (a durable store records it)."""

    def _removed(self, job_id: str) -> None:
        """Hook: the job ``job_id`` was forgotten (a durable store deletes it)."""

    def count_active(self) -> int:
        """How many jobs are PENDING or RUNNING."""
        return sum(1 for job in self.jobs.values() if job.status in ACTIVE_STATUSES)

    def snapshot(self, *statuses: JobStatus) -> Dict[str, JobInfo]:
        """Copies of the stored jobs (all, or those with one of ``statuses``); never the live objects."""
        wanted = frozenset(statuses)
        return {
            job_id: replace(job) for job_id, job in self.jobs.items() if not wanted or job.status in wanted
        }
