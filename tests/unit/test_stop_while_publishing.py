"""A job whose result is waiting to go out when ``stop()`` cuts in is recorded as cut short, never left RUNNING."""

from __future__ import annotations

import asyncio
from typing import Any, Dict
from unittest.mock import Mock

import pytest

from Listener import create_return_type
from Listener.jobs.records import JobStatus
from tests.support.mocked_listeners import mocked_listener


def _qos1_result(data: Dict[str, Any], job_id: str) -> Any:
    return create_return_type({"done": job_id}, "results/out", qos=1)


@pytest.mark.parametrize("pipelined, method", [(True, "deliver_in_background"), (False, "deliver")])
async def test_a_job_cut_short_while_its_result_waits_to_be_sent_is_not_left_running(
        pipelined: bool, method: str) -> None:
    listener = mocked_listener(log_topic="")
    pipeline = listener._pipeline
    waiting = asyncio.Event()

    async def no_free_slot(*args: Any, **kwargs: Any) -> Any:
        waiting.set()
        await asyncio.Event().wait()  # every QoS 1/2 slot is taken until stop() cancels this

    setattr(pipeline._publisher, method, no_free_slot)
    task = asyncio.create_task(pipeline.process({"job_id": "j"}, _qos1_result, "test/topic", pipelined=pipelined))
    await asyncio.wait_for(waiting.wait(), 5)
    assert listener.jobs["j"].status is JobStatus.RUNNING
    task.cancel()
    await asyncio.wait({task}, timeout=5)
    assert task.cancelled()
    assert listener.jobs["j"].status is JobStatus.FAILED  # cut short: runs again when its message is redelivered
    assert not await listener.is_job_running("j")


@pytest.mark.parametrize("ending", ["finishes", "is cut short"])
async def test_a_duplicate_of_a_job_still_running_here_is_acknowledged_only_once_that_job_finished(ending: str) -> None:
    """Say the connection dropped and the broker redelivered the message of a job that still runs: acknowledging
    the copy at once would lose the job if the process died before it ended (the first copy's acknowledgement
    went with the old connection)."""
    listener = mocked_listener(log_topic="")
    pipeline = listener._pipeline
    started, release = asyncio.Event(), asyncio.Event()

    async def processor(data: Dict[str, Any], job_id: str) -> None:
        started.set()
        await release.wait()

    first = asyncio.create_task(pipeline.process({"job_id": "j"}, processor, "test/topic"))
    await asyncio.wait_for(started.wait(), 5)
    ticket = Mock()
    assert await pipeline.process({"job_id": "j"}, processor, "test/topic", ticket=ticket) is None
    [until] = ticket.defer.call_args.args
    assert not until.done()  # not acknowledged while the job runs
    if ending == "finishes":
        release.set()
        await asyncio.wait_for(first, 5)
        assert until.done() and not until.cancelled()  # now it may be
    else:
        first.cancel()
        await asyncio.wait({first}, timeout=5)
        assert until.cancelled()  # left with the broker, as the job's own message is
    ticket.settle.assert_not_called()
    ticket.withhold.assert_not_called()
