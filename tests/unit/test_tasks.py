"""Tasks that say whether a cancellation was asked of them (Listener.core.tasks), and what containment makes
of a processor's CancelledError in them: its own failure, or the listener's cancellation."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Coroutine

import pytest

from Listener.core.tasks import CountingTask, start_task
from Listener.processing.containment import Contained, ProcessorInterrupted

pytestmark = pytest.mark.unit

BOUND = 5.0

Starter = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]
#: start_task is what the listener uses (a CountingTask on 3.10); CountingTask itself runs the 3.10 way anywhere.
STARTERS = {"start_task": start_task, "CountingTask": CountingTask}


async def test_a_counting_task_counts_the_cancellations_asked_while_it_runs() -> None:
    release = asyncio.Event()
    task = CountingTask(release.wait())
    assert task.cancelling() == 0
    await asyncio.sleep(0)
    assert task.cancel() and task.cancel() and task.cancelling() == 2
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, BOUND)
    assert not task.cancel() and task.cancelling() == 2  # asked of a task already done: not counted


@pytest.mark.parametrize("starter", STARTERS)
async def test_a_processor_awaiting_a_future_somebody_else_cancelled_fails_on_its_own(starter: str) -> None:
    async def processor() -> None:
        future = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(future.cancel)  # not the task's cancellation
        await future

    task = STARTERS[starter](_awaiting(processor()))
    with pytest.raises(ProcessorInterrupted, match="^CancelledError$"):
        await asyncio.wait_for(task, BOUND)
    assert not task.cancelled()


@pytest.mark.parametrize("starter", STARTERS)
async def test_a_cancellation_asked_of_the_task_goes_through_the_processor(starter: str) -> None:
    """``task.cancel()`` by anyone (not only the listener's ``cancel``) is the task's: it is not turned into
    the processor's failure, or stopping could never cut a job short."""
    entered = asyncio.Event()

    async def processor() -> None:
        entered.set()
        await asyncio.Event().wait()

    task = STARTERS[starter](_awaiting(processor()))
    await asyncio.wait_for(entered.wait(), BOUND)
    task.cancel()
    await asyncio.wait({task}, timeout=BOUND)
    assert task.cancelled()


async def _awaiting(awaitable: Coroutine[Any, Any, Any]) -> Any:
    return await Contained(awaitable)
