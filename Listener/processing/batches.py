"""Running several queued jobs of a plain ``def`` processor in one hand-off to a worker thread.

Under a backlog at ``max_concurrent_jobs = 1``, each job of a plain ``def`` processor would cost one
thread hand-off there and one back (two wake-ups, about as much CPU as the rest of the job). A *batch*
hands up to :data:`MAX_BATCH` admitted jobs to one worker, which runs them in arrival order and returns
their outcomes together.

The rules (the pipeline applies them; see ``Pipeline.process_batch``):

- Batches are formed only from messages already queued, only for a plain ``def`` processor, at
  ``max_concurrent_jobs = 1`` and without ``job_timeout`` (a timeout abandons one call, not a batch).
- The worker stops at the first job that raises: that job's failure (and retries) follow the ordinary
  path, and the jobs after it run only then, so processing order is kept.
- The worker stops before the next job once :class:`Halt` is set (``stop()``'s grace period ran out):
  jobs not started are not run.
- Each job runs in its own copy of the loop's context, as a job run alone would.
- Each outcome records when the processor started and ended (``time.perf_counter``), so the loop can
  report true durations, and a batch in which a processor was slow makes the next jobs run alone for
  a while (:data:`SLOW_JOB_S`, :data:`ALONE_AFTER_SLOW`), which bounds how long a job waits as PENDING
  behind the ones before it in its batch.
"""

from __future__ import annotations

import contextvars
import time
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple

from .containment import call_contained

__all__ = ["ALONE_AFTER_SLOW", "MAX_BATCH", "SLOW_JOB_S", "Halt", "Outcome", "run_in_order"]

#: Most jobs handed to a worker at once.
MAX_BATCH = 16
#: A processor call longer than this makes the next :data:`ALONE_AFTER_SLOW` jobs run one at a time.
SLOW_JOB_S = 0.002
ALONE_AFTER_SLOW = 64


class Halt:
    """Set from the event loop to stop a running batch before its next job (read by the worker)."""

    __slots__ = ("set",)

    def __init__(self) -> None:
        self.set = False


class Outcome(NamedTuple):
    """What one job's processor did: its result or the exception it raised, and when it ran."""

    result: Any
    error: Optional[BaseException]
    started: float
    ended: float


def run_in_order(func: Callable[..., Any], jobs: Sequence[Tuple[contextvars.Context, Any, str]],
                 halt: Halt) -> List[Outcome]:
    """On a worker thread: call ``func(data, job_id)`` for each job in order, each in its own context.

    Stops after the first job that raises, and before any job once ``halt`` is set; returns the
    outcomes of the jobs that ran (a prefix of ``jobs``).
    """
    outcomes: List[Outcome] = []
    clock = time.perf_counter
    for context, data, job_id in jobs:
        if halt.set:
            break
        started = clock()
        try:
            result, error = context.run(call_contained, func, data, job_id), None
        except BaseException as exc:  # noqa: B036 - handed to the loop with its job, whatever it is
            result, error = None, exc
        outcomes.append(Outcome(result, error, started, clock()))
        if error is not None:
            break
    return outcomes
