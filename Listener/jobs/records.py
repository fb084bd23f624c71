"""Jobs: their status and their record (the stores that hold them are in :mod:`Listener.jobs.store`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Dict, Optional

__all__ = ["ACTIVE_STATUSES", "CANCELLED", "FINISHED_STATUSES", "JobInfo", "JobStatus"]


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
