"""What every job store is: the interface the listener uses, and the error a store reports.

Three stores implement :class:`JobStore` (chosen by :func:`~Listener.jobs.factory.create_job_store` from
the ``job_store`` setting): :class:`~Listener.jobs.memory.MemoryJobStore`,
:class:`~Listener.jobs.sqlite.SqliteJobStore` and :class:`~Listener.jobs.redis.RedisJobStore`.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any, Callable, Dict, List, Optional, Protocol

from ..errors import ListenerError
from .admission import Admission
from .records import CANCELLED, JobInfo, JobStatus

__all__ = ["JobStore", "JobStoreError"]


class JobStoreError(ListenerError, OSError):
    """The job store cannot be opened or written (the message names the file, never a secret)."""


class JobStore(Protocol):
    """Where the listener keeps its jobs.

    The coroutines are called from the event loop. Those of a store that keeps its jobs in memory await
    nothing unless someone holds :attr:`lock` (they then wait for it), so admitting a job and changing its
    status cost no turn of the event loop. Any coroutine that must reach another process (Redis) may raise
    :class:`JobStoreError` when it cannot; a query answers from this process's jobs instead.
    """

    #: This process's jobs, live (``listener.jobs``). Replacing or editing it by hand needs :meth:`reindex`.
    jobs: Dict[str, JobInfo]
    #: Guards :attr:`jobs` (``listener.job_lock``): users hold it while they iterate or edit the dict.
    lock: asyncio.Lock
    #: The most jobs held; a new job evicts the oldest finished one, and is refused when all are active.
    max_jobs: int
    #: How long a finished job is kept (``job_cleanup_interval``).
    ttl: timedelta
    #: Whether jobs outlive the process (then a message is acknowledged only once :meth:`durable` passed).
    persistent: bool
    #: Seconds between admissions tried again while the store is full, when other processes free its slots
    #: without this one hearing of it; None when only a job of this process finishing can free one.
    full_recheck_interval: Optional[float]
    #: Seconds between looks for :meth:`orphans` while ``run()`` goes on; None: only once, when it starts.
    orphan_scan_interval: Optional[float]

    async def admit(self, job_id: str, data: Optional[Dict[str, Any]], topic: Optional[str] = None,
                    duplicate_action: str = "skip") -> Admission:
        """Create the job, or apply the duplicate policy (:mod:`Listener.jobs.admission`) to the job holding the id.

        Raises:
            JobStoreError: the store cannot be reached (nothing was recorded).
        """

    def admit_now(self, job_id: str, data: Optional[Dict[str, Any]], topic: Optional[str] = None,
                  duplicate_action: str = "skip") -> Optional[Admission]:
        """:meth:`admit` without awaiting, where the store can (it decides alone, and nobody holds :attr:`lock`);
        None when it cannot, and nothing was changed: then await :meth:`admit`."""

    async def set_status(self, job_id: str, status: JobStatus, result: Any = None, error: Optional[str] = None) -> bool:
        """Move a job to ``status`` (a finished one records ``completed_at``); False when the id is unknown."""

    def set_status_now(self, job_id: str, status: JobStatus, result: Any = None,
                       error: Optional[str] = None) -> Optional[bool]:
        """:meth:`set_status` without awaiting, where the store can (nobody holds :attr:`lock`); None when it
        cannot, and nothing was changed: then await :meth:`set_status`."""

    async def start_attempt(self, job_id: str) -> int:
        """Mark the job RUNNING and count one more start of its processor; its ``attempts`` (0 when unknown)."""

    def start_attempt_now(self, job_id: str) -> Optional[int]:
        """:meth:`start_attempt` without awaiting, where the store can (nobody holds :attr:`lock`); None when it
        cannot, and nothing was changed: then await :meth:`start_attempt`."""

    async def interrupt(self, job_id: str, error: str = CANCELLED) -> bool:
        """Record a job cut short by stopping: FAILED, and run again when its message is redelivered."""

    async def mark_duplicate(self, job_id: str) -> bool:
        """Record that ``job_id`` arrived again, as :meth:`admit` does for a duplicate; False when unknown."""

    async def orphans(self) -> List[JobInfo]:
        """Jobs recorded with their input whose processing never finished and that no live process owns any
        more (an earlier run on this store was killed, or the worker that owned them stopped renewing its
        lease). Each job returned is now owned by this process and PENDING: the listener runs it. Called only
        with ``ack_policy = "after_recording"`` (otherwise the broker redelivers such a job's message).
        The memory store has none."""

    async def get(self, job_id: str) -> Optional[JobInfo]:
        """A copy of the job with this id, or None."""

    async def exists(self, job_id: str) -> bool:
        """True when a job holds this id."""

    async def jobs_with(self, *statuses: JobStatus) -> Dict[str, JobInfo]:
        """Copies of the jobs with one of ``statuses`` (every job when none is given)."""

    async def recent(self, limit: int) -> List[JobInfo]:
        """Copies of the ``limit`` jobs created last, newest first, without ``input_data`` and ``result``: the rows
        of a job list, at a cost bounded by ``limit`` (every worker's jobs with Redis)."""

    async def cleanup_expired(self, now: Optional[datetime] = None) -> int:
        """Remove finished jobs older than :attr:`ttl`; return how many were removed."""

    def reindex(self) -> None:
        """Take note of a :attr:`jobs` dict replaced or edited by hand."""

    async def open(self, on_error: Optional[Callable[[str], None]] = None,
                   on_failover: Optional[Callable[[str], None]] = None) -> None:
        """Make the store ready (a durable store opens its file); called when ``run()`` starts.

        ``on_error`` is called on the event loop with a message whenever a later write fails; ``on_failover``
        whenever the store's server changed under it (a replicated Redis's failover; other stores never call it).

        Raises:
            JobStoreError: the store cannot be opened (the message names it, never a secret).
        """

    async def close(self) -> None:
        """Write what is not yet written and release the store; called when ``run()`` returns."""

    async def durable(self) -> None:
        """Return once every change made so far is recorded (at once for a store that keeps nothing elsewhere).

        The acknowledgement path awaits it before it acknowledges a message, so that a job the broker
        will not redeliver is recorded.

        Raises:
            JobStoreError: the changes cannot be recorded (then the message must not be acknowledged).
        """
