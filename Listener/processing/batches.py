"""Running several queued jobs of a plain ``def`` processor in one hand-off to a worker thread.

Under a backlog at ``max_concurrent_jobs = 1``, each job of a plain ``def`` processor would cost one
thread hand-off there and one back (two wake-ups, about as much CPU as the rest of the job). A *batch*
hands up to :data:`MAX_BATCH` admitted jobs to one worker, which runs them in arrival order and reports
each job's outcome through a :class:`Channel` the moment its processor returns: the loop publishes and
records that job while the worker runs the next one, and one wake-up of the loop covers every outcome
that arrived meanwhile.

The rules (the pipeline applies them; see ``Pipeline.process_batch``):

- Batches are formed only from messages already queued, only for a plain ``def`` processor, at
  ``max_concurrent_jobs = 1`` and without ``job_timeout`` (a timeout abandons one call, not a batch).
- Outcomes are reported in order, each as soon as its processor returned; the worker starts the next
  job right after reporting one that returned, so the loop takes the report of job ``i`` as the start
  of job ``i + 1`` (the first job starts at the hand-off).
- The worker stops at the first job that raises: that job's failure (and retries) follow the ordinary
  path, and the jobs after it run only then, so processing order is kept.
- The worker stops before the next job once :class:`Halt` is set (``stop()``'s grace period ran out):
  jobs not started are not run.
- Each job runs in its own copy of the loop's context, as a job run alone would.
- Each outcome records when the processor started and ended (``time.perf_counter``), so the loop can
  report true durations.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple

from .containment import call_contained

__all__ = ["MAX_BATCH", "Channel", "Halt", "Outcome", "run_in_order"]

#: Most jobs handed to a worker at once.
MAX_BATCH = 16


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


#: A report of the worker: the index of a job in its batch and its outcome; ``(-1, None)``: the worker
#: stopped without reporting the batch's last outcome (halted, or failed outside any job).
Report = Tuple[int, Optional[Outcome]]


class Channel:
    """Carries a batch's outcomes from its worker thread to the event loop as they happen.

    :meth:`put` (worker thread) appends a report and wakes the loop only when no wake-up is already
    on its way, so a loop busy with earlier outcomes takes many reports per wake-up; :meth:`take`
    (event loop) returns every report that arrived, in order, waiting for one if there is none.
    """

    __slots__ = ("_loop", "_lock", "_reports", "_waking", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._reports: List[Report] = []
        self._waking = False  # a wake-up is scheduled on the loop and has not run yet
        self._waiter: Optional["asyncio.Future[None]"] = None

    def put(self, index: int, outcome: Optional[Outcome]) -> None:
        """On the worker thread: report job ``index``'s outcome (``-1, None``: the worker stopped)."""
        with self._lock:
            self._reports.append((index, outcome))
            if self._waking:
                return
            self._waking = True
        try:
            self._loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    def _wake(self) -> None:
        with self._lock:
            self._waking = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def take(self) -> List[Report]:
        """On the event loop: the reports not taken yet, oldest first (waits until there is one)."""
        while True:
            with self._lock:
                if self._reports:
                    reports, self._reports = self._reports, []
                    return reports
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None


def run_in_order(func: Callable[..., Any], jobs: Sequence[Tuple[contextvars.Context, Any, str]],
                 halt: Halt, channel: Channel) -> None:
    """On a worker thread: call ``func(data, job_id)`` for each job in order, each in its own context,
    putting each job's outcome into ``channel`` as soon as it is known.

    Stops after the first job that raises, and before any job once ``halt`` is set. The last report
    is the outcome of the last job or of the one that raised; otherwise ``(-1, None)`` ends them.
    """
    clock = time.perf_counter
    last = len(jobs) - 1
    finished = False
    try:
        for index, (context, data, job_id) in enumerate(jobs):
            if halt.set:
                break
            started = clock()
            try:
                result, error = context.run(call_contained, func, data, job_id), None
            except BaseException as exc:  # noqa: B036 - handed to the loop with its job, whatever it is
                result, error = None, exc
            finished = error is not None or index == last
            channel.put(index, Outcome(result, error, started, clock()))
            if error is not None:
                break
    finally:
        if not finished:
            channel.put(-1, None)
