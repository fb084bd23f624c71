"""Unit tests for Listener.processing.batches and the pipeline's batched hand-off of plain ``def`` jobs."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import Any, Dict, List, Optional
from unittest.mock import Mock

from Listener import run_inline
from Listener.core.run_state import State
from Listener.processing.batches import ALONE_AFTER_SLOW, MAX_BATCH, Halt, run_in_order
from Listener.jobs.records import JobStatus
from tests.support.mocked_listeners import mocked_listener

_marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")


def _jobs(*ids: str) -> List[Any]:
    return [(contextvars.copy_context(), {"id": job_id}, job_id) for job_id in ids]


def test_run_in_order_runs_each_job_in_order_in_its_own_context() -> None:
    seen: List[Any] = []

    def processor(data: Dict[str, Any], job_id: str) -> str:
        seen.append((job_id, _marker.get()))
        _marker.set(job_id)
        return job_id.upper()

    outcomes = run_in_order(processor, _jobs("a", "b", "c"), Halt())
    assert [o.result for o in outcomes] == ["A", "B", "C"]
    assert seen == [("a", "unset"), ("b", "unset"), ("c", "unset")]  # nothing leaks from one job to the next
    assert all(o.error is None and o.started <= o.ended for o in outcomes)


def test_run_in_order_stops_after_the_first_job_that_raises() -> None:
    calls: List[str] = []

    def processor(data: Dict[str, Any], job_id: str) -> None:
        calls.append(job_id)
        if job_id == "b":
            raise KeyError(job_id)

    outcomes = run_in_order(processor, _jobs("a", "b", "c"), Halt())
    assert calls == ["a", "b"]
    assert len(outcomes) == 2 and isinstance(outcomes[1].error, KeyError)


def test_run_in_order_starts_no_job_once_halted() -> None:
    halt = Halt()
    calls: List[str] = []

    def processor(data: Dict[str, Any], job_id: str) -> None:
        calls.append(job_id)
        halt.set = True  # as the loop does when it gives up on the batch

    assert len(run_in_order(processor, _jobs("a", "b"), halt)) == 1
    assert calls == ["a"]


def _messages(*ids: str) -> List[Any]:
    return [(f'job_id = "{job_id}"\n'.encode(), "test/topic", Mock()) for job_id in ids]


class _Hops:
    """Counts hand-offs to the listener's worker threads."""

    def __init__(self, listener: Any) -> None:
        self.count = 0
        workers = listener._workers
        original = workers.run

        async def run(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await original(*args, **kwargs)

        workers.run = run


async def test_a_batch_runs_in_arrival_order_in_one_hop_and_publishes_every_result_in_order() -> None:
    listener = mocked_listener(log_topic="")
    hops = _Hops(listener)
    calls: List[Any] = []

    def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        calls.append((job_id, threading.current_thread() is threading.main_thread()))
        return {"done": job_id}

    ids = [f"j{i}" for i in range(5)]
    messages = _messages(*ids)
    await listener._pipeline.process_batch(messages, processor)
    assert calls == [(job_id, False) for job_id in ids]
    assert hops.count == 1
    assert all(listener.jobs[job_id].status is JobStatus.COMPLETED for job_id in ids)
    assert all(listener.jobs[job_id].attempts == 1 for job_id in ids)
    published = [call.args[1] for call in listener.client.publish.call_args_list]
    assert [p for p in published if b"done" in p] == [f'{{"done":"{job_id}"}}'.encode() for job_id in ids]
    assert listener._pipeline._metrics.jobs_finished["completed"] == 5


async def test_a_failing_job_in_a_batch_is_retried_before_the_jobs_after_it_run() -> None:
    listener = mocked_listener(log_topic="", max_retries=1, retry_backoff=0)
    calls: List[str] = []
    failed: List[str] = []

    def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        calls.append(job_id)
        if job_id in ("b", "d") and job_id not in failed:
            failed.append(job_id)
            raise ValueError(f"first try of {job_id}")
        if job_id == "e":
            raise ValueError("always")
        return {"ok": job_id}

    await listener._pipeline.process_batch(_messages("a", "b", "c", "d", "e", "f"), processor)
    assert calls == ["a", "b", "b", "c", "d", "d", "e", "e", "f"]
    expected = [JobStatus.COMPLETED] * 4 + [JobStatus.FAILED, JobStatus.COMPLETED]
    assert [listener.jobs[j].status for j in "abcdef"] == expected
    assert listener.jobs["b"].attempts == 2 and listener.jobs["c"].attempts == 1
    assert listener._pipeline._metrics.jobs_retried == 3


async def test_duplicates_and_rejected_messages_in_a_batch_keep_the_one_by_one_order() -> None:
    listener = mocked_listener(log_topic="", duplicate_action="error")
    order: List[str] = []
    listener._events.error = _recorder(order, "error")  # type: ignore[method-assign]

    def processor(data: Dict[str, Any], job_id: str) -> None:
        order.append(f"run {job_id}")

    messages = _messages("a", "b") + [(b"not = [toml", "test/topic", Mock())] + _messages("c", "a", "d")
    await listener._pipeline.process_batch(messages, processor)
    assert order == ["run a", "run b", "error invalid_payload", "run c", "error duplicate_job", "run d"]
    assert listener.jobs["a"].duplicate_count == 1


def _recorder(order: List[str], label: str) -> Any:
    async def record(job_id: Optional[str], error_type: Any, message: str, topic: Optional[str], **_: Any) -> None:
        order.append(f"{label} {getattr(error_type, 'value', error_type)}")
    return record


async def test_a_full_job_store_runs_the_gathered_jobs_instead_of_waiting_for_them() -> None:
    listener = mocked_listener(log_topic="", max_jobs_in_memory=2)
    listener._pipeline._run.state = State.RUNNING  # as in the run loop: wait rather than drop
    calls: List[str] = []

    def processor(data: Dict[str, Any], job_id: str) -> None:
        calls.append(job_id)

    await asyncio.wait_for(listener._pipeline.process_batch(_messages("a", "b", "c", "d"), processor), 5)
    assert calls == ["a", "b", "c", "d"]


async def test_stop_in_the_middle_of_a_batch_runs_no_later_job_and_leaves_every_message_unacknowledged() -> None:
    listener = mocked_listener(log_topic="")
    started, release = threading.Event(), threading.Event()
    calls: List[str] = []

    def processor(data: Dict[str, Any], job_id: str) -> None:
        calls.append(job_id)
        if job_id == "a":
            started.set()
            release.wait(5)

    messages = _messages("a", "b", "c")
    task = asyncio.create_task(listener._pipeline.process_batch(messages, processor))
    assert await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
    assert listener.jobs["a"].status is JobStatus.RUNNING
    assert listener.jobs["b"].status is JobStatus.PENDING  # not started: waits its turn in the batch
    task.cancel()
    await asyncio.wait({task}, timeout=5)
    assert task.cancelled()
    release.set()
    await asyncio.sleep(0.05)  # let the abandoned worker return from "a" (it must then stop)
    assert calls == ["a"]
    for job_id in "abc":
        assert listener.jobs[job_id].status is JobStatus.FAILED
    for _, _, ticket in messages:
        ticket.withhold.assert_called_once_with()
        ticket.settle.assert_not_called()
    # Cut short, not duplicates: they run again when redelivered.
    await listener._pipeline.process_batch(_messages("b"), processor)
    assert calls == ["a", "b"]


def test_batches_only_for_plain_def_processors_one_at_a_time_without_a_timeout() -> None:
    def plain(data: Dict[str, Any], job_id: str) -> None:
        return None

    async def coroutine(data: Dict[str, Any], job_id: str) -> None:
        return None

    pipeline = mocked_listener()._pipeline
    assert pipeline.batch_size(plain) == MAX_BATCH
    assert pipeline.batch_size(coroutine) == 1
    assert pipeline.batch_size(run_inline(lambda data, job_id: None)) == 1
    assert pipeline.batch_size(None) == 1
    assert mocked_listener(job_timeout=5)._pipeline.batch_size(plain) == 1
    assert mocked_listener(max_concurrent_jobs=2)._pipeline.batch_size(plain) == 1


async def test_a_slow_job_makes_the_next_jobs_run_alone_for_a_while() -> None:
    listener = mocked_listener(log_topic="")
    pipeline = listener._pipeline

    def processor(data: Dict[str, Any], job_id: str) -> None:
        if job_id == "slow":
            threading.Event().wait(0.01)

    await pipeline.process_batch(_messages("fast1", "fast2"), processor)
    assert pipeline.batch_size(processor) == MAX_BATCH
    await pipeline.process_batch(_messages("fast3", "slow"), processor)
    sizes = [pipeline.batch_size(processor) for _ in range(ALONE_AFTER_SLOW + 1)]
    assert sizes == [1] * ALONE_AFTER_SLOW + [MAX_BATCH]


async def test_jobs_whose_outcome_was_not_recorded_when_stop_cut_in_are_cut_short_not_left_pending() -> None:
    listener = mocked_listener(log_topic="")
    tracker = listener._tracker
    original = tracker.update_job_status
    blocked = asyncio.Event()

    async def update(job_id: str, status: JobStatus, *args: Any, **kwargs: Any) -> bool:
        if job_id == "a" and status is JobStatus.COMPLETED:
            blocked.set()
            await asyncio.Event().wait()  # recording "a" hangs until cancelled
        return await original(job_id, status, *args, **kwargs)

    tracker.update_job_status = update  # type: ignore[method-assign]
    messages = _messages("a", "b", "c")
    task = asyncio.create_task(listener._pipeline.process_batch(messages, lambda data, job_id: None))
    await asyncio.wait_for(blocked.wait(), 5)
    task.cancel()
    await asyncio.wait({task}, timeout=5)
    assert task.cancelled()
    for job_id, (_, _, ticket) in zip("bc", messages[1:]):
        assert listener.jobs[job_id].status is JobStatus.FAILED  # ran on the thread, never recorded: runs again
        ticket.withhold.assert_called_once_with()


async def test_jobs_gathered_but_not_handed_over_when_stop_cut_in_are_cut_short() -> None:
    listener = mocked_listener(log_topic="")
    pipeline = listener._pipeline
    calls: List[str] = []
    admit, waiting = pipeline.admit, asyncio.Event()

    async def slow_admit(job_id: str, *args: Any) -> bool:
        if job_id == "b":  # an admission that waits (a shared store's claim, the job lock): "a" is gathered
            waiting.set()
            await asyncio.Event().wait()
        return await admit(job_id, *args)

    pipeline.admit = slow_admit  # type: ignore[method-assign]
    messages = _messages("a", "b")
    task = asyncio.create_task(pipeline.process_batch(messages, lambda data, job_id: calls.append(job_id)))
    await asyncio.wait_for(waiting.wait(), 5)
    assert listener.jobs["a"].status is JobStatus.PENDING
    task.cancel()
    await asyncio.wait({task}, timeout=5)
    assert task.cancelled() and calls == []
    assert listener.jobs["a"].status is JobStatus.FAILED
    messages[0][2].withhold.assert_called_once_with()
