"""The duplicate policy: what admitting a message's job id does when a job already holds that id.

One set of rules for every store. :func:`decide` states them; the memory store (and the SQLite store,
built on it) applies them through it, and the Redis store's claim script follows the same branches, in
the same order, atomically for every process sharing the store.
"""

from __future__ import annotations

import enum
from typing import Optional

from .records import JobStatus

__all__ = ["Admission", "REPROCESS", "Verdict", "admission_of", "decide"]

#: The ``duplicate_action`` that runs a held job again (unless it is RUNNING); ``skip`` and ``error`` do not.
REPROCESS = "reprocess"


class Admission(enum.Enum):
    """What :meth:`~Listener.jobs.store.JobStore.admit` did with a job id."""

    #: The job is to run: a new id, a job restarted by ``reprocess``, or an interrupted job run again.
    CREATED = "created"
    #: A job holds the id and is not to run again: the duplicate was recorded on it.
    DUPLICATE = "duplicate"
    #: Every slot holds an active job and none could be freed: nothing changed.
    FULL = "full"


class Verdict(enum.Enum):
    """Which rule of the policy applies to a job id (see :func:`decide`)."""

    #: No job holds the id: a new PENDING job (if a slot is free).
    NEW = "new"
    #: The job holding the id was cut short (stop, crash): PENDING again, its ``attempts`` and
    #: ``duplicate_count`` kept. Not a duplicate: its message was never acknowledged.
    RUN_AGAIN = "run_again"
    #: ``reprocess``: PENDING again with the new input, ``duplicate_count`` + 1, ``attempts`` from 0.
    RESTART = "restart"
    #: ``duplicate_count`` + 1; the job becomes DUPLICATE unless it is RUNNING (its status stays truthful),
    #: and a finished job keeps its ``completed_at``, ``result`` and ``error``.
    DUPLICATE = "duplicate"


def decide(held: Optional[JobStatus], interrupted: bool, duplicate_action: str) -> Verdict:
    """The rule for an id held by a job in status ``held`` (None: no job holds it).

    A RUNNING job is never started a second time, whatever the action or the interruption says.
    """
    if held is None:
        return Verdict.NEW
    if held is JobStatus.RUNNING:
        return Verdict.DUPLICATE
    if interrupted:
        return Verdict.RUN_AGAIN
    if duplicate_action == REPROCESS:
        return Verdict.RESTART
    return Verdict.DUPLICATE


def admission_of(verdict: Verdict) -> Admission:
    """What the caller is told once ``verdict`` was applied (a NEW job only when a slot was free)."""
    return Admission.DUPLICATE if verdict is Verdict.DUPLICATE else Admission.CREATED
