"""Jobs: their status and their record (the stores that hold them are in :mod:`Listener.jobs.store`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Dict, Optional

__all__ = ["ACTIVE_STATUSES", "CANCELLED", "FINISHED_STATUSES", "JobInfo", "JobStatus", "job_as_dict"]


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

    # A member is only ever equal to itself: its identity hashes it, in C, where Enum's own __hash__ (hashing its
    # name) is a Python call on every status looked up in a set or a dict, several times per job.
    __hash__ = object.__hash__


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


def job_as_dict(job: JobInfo, *, detail: bool = False, show_input: bool = True) -> Dict[str, Any]:
    """``job`` as JSON-ready values (a job list's row; ``detail`` adds ``input``, None unless ``show_input``,
    and ``result``)."""
    duration = (job.completed_at - job.started_at).total_seconds() if job.completed_at is not None else None
    row: Dict[str, Any] = {
        "job_id": job.job_id, "status": job.status.value, "started_at": job.started_at.isoformat(timespec="milliseconds"),
        "completed_at": job.completed_at.isoformat(timespec="milliseconds") if job.completed_at is not None else None,
        "duration_s": duration, "topic": job.topic, "attempts": job.attempts, "duplicate_count": job.duplicate_count,
        "error": job.error,
    }
    if detail:
        row["input"] = job.input_data if show_input else None
        row["result"] = job.result
    return row
