"""The duplicate policy: what admitting a message's job id does when a job already holds that id.

One set of rules for every store. :func:`decide` states them; the memory store (and the SQLite store,
built on it) applies them through it, and the Redis store's claim script follows the same branches, in
the same order, atomically for every process sharing the store; only a shared store knows jobs active in
another process (``elsewhere``, ``abandoned``: see :func:`decide`).
"""

from __future__ import annotations

import enum
from typing import Optional

from .records import ACTIVE_STATUSES, JobStatus

__all__ = ["Admission", "REPROCESS", "Verdict", "admission_of", "decide"]

#: The ``duplicate_action`` that runs a held job again (unless it is RUNNING); ``skip`` and ``error`` do not.
REPROCESS = "reprocess"


class Admission(enum.Enum):
    """What :meth:`~Listener.jobs.store.JobStore.admit` did with a job id."""

    #: The job is to run: a new id, a job restarted by ``reprocess``, an interrupted job run again, or (a
    #: shared store) an active job taken over from a process whose lease lapsed.
    CREATED = "created"
    #: A job holds the id and is not to run again: the duplicate was recorded on it.
    DUPLICATE = "duplicate"
    #: Every slot holds an active job and none could be freed: nothing changed.
    FULL = "full"
    #: The job holding the id is active in another process whose lease is alive (a shared store): nothing
    #: changed. Admit again later: the job settles (then a duplicate), or its owner's lease lapses (then it
    #: runs here). Its message must not be acknowledged meanwhile: the job may yet be lost with its owner.
    BUSY = "busy"


class Verdict(enum.Enum):
    """Which rule of the policy applies to a job id (see :func:`decide`)."""

    #: No job holds the id: a new PENDING job (if a slot is free).
    NEW = "new"
    #: The job holding the id was cut short (stop, crash, or its owner's lease lapsed): PENDING again, its
    #: ``attempts`` and ``duplicate_count`` kept. Not a duplicate: its message was never acknowledged.
    RUN_AGAIN = "run_again"
    #: ``reprocess``: PENDING again with the new input, ``duplicate_count`` + 1, ``attempts`` from 0.
    RESTART = "restart"
    #: ``duplicate_count`` + 1. An active job (PENDING or RUNNING) keeps its status, so that it stays
    #: truthful and the job is not evictable before it ran; a finished one becomes DUPLICATE, keeping its
    #: ``completed_at``, ``result`` and ``error``.
    DUPLICATE = "duplicate"
    #: The job is active in another live process (see :attr:`Admission.BUSY`): nothing changes.
    BUSY = "busy"


def decide(held: Optional[JobStatus], interrupted: bool, duplicate_action: str, elsewhere: bool = False,
           abandoned: bool = False) -> Verdict:
    """The rule for an id held by a job in status ``held`` (None: no job holds it).

    For an active job (PENDING or RUNNING) of a shared store, who owns it comes first: ``elsewhere``
    (another process owns it and its lease is alive) gives BUSY, ``abandoned`` (its owner's lease lapsed:
    it died, or stopped renewing) gives RUN_AGAIN. An active job of this process is never started a
    second time (but a PENDING one is restarted by ``reprocess``, as a finished one is), whatever the
    action or the interruption says.
    """
    if held is None:
        return Verdict.NEW
    if held in ACTIVE_STATUSES and elsewhere:
        return Verdict.BUSY
    if held in ACTIVE_STATUSES and abandoned:
        return Verdict.RUN_AGAIN
    if held is JobStatus.RUNNING:
        return Verdict.DUPLICATE
    if interrupted:
        return Verdict.RUN_AGAIN
    if duplicate_action == REPROCESS:
        return Verdict.RESTART
    return Verdict.DUPLICATE


def admission_of(verdict: Verdict) -> Admission:
    """What the caller is told once ``verdict`` was applied (a NEW job only when a slot was free)."""
    if verdict is Verdict.BUSY:
        return Admission.BUSY
    return Admission.DUPLICATE if verdict is Verdict.DUPLICATE else Admission.CREATED
