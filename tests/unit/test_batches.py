"""Unit tests for Listener.processing.batches and the pipeline's batched hand-off of plain ``def`` jobs."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import Any, Dict, List, Optional
from unittest.mock import Mock

import pytest

from Listener import create_return_type, run_inline
from Listener.core.run_state import State
from Listener.processing.batches import MAX_BATCH, Channel, Halt, Outcome, run_in_order
from Listener.jobs.records import JobStatus
from tests.support.mocked_listeners import mocked_listener

_marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")


def _jobs(*ids: str) -> List[Any]:
    return [(contextvars.copy_context(), {"id": job_id}, job_id) for job_id in ids]


class _Collected:
    """A channel stand-in for run_in_order's unit tests: what the worker put, in order."""

    def __init__(self) -> None:
        self.reports: List[Any] = []

    def put(self, index: int, outcome: Optional[Outcome]) -> None:
        self.reports.append((index, outcome))


def _run(processor: Any, jobs: List[Any], halt: Halt) -> List[Any]:
    collected = _Collected()
    run_in_order(processor, jobs, halt, collected)  # type: ignore[arg-type]
    return collected.reports


def test_run_in_order_runs_each_job_in_order_in_its_own_context() -> None:
    seen: List[Any] = []

    def processor(data: Dict[str, Any], job_id: str) -> str:
        seen.append((job_id, _marker.get()))
        _marker.set(job_id)
        return job_id.upper()

    reports = _run(processor, _jobs("a", "b", "c"), Halt())
    assert [index for index, _ in reports] == [0, 1, 2]  # the last job's report ends them: no end marker
    assert [o.result for _, o in reports] == ["A", "B", "C"]
    assert seen == [("a", "unset"), ("b", "unset"), ("c", "unset")]  # nothing leaks from one job to the next
    assert all(o.error is None and o.started <= o.ended for _, o in reports)


def test_run_in_order_reports_each_outcome_before_starting_the_next_job() -> None:
    collected = _Collected()

    def processor(data: Dict[str, Any], job_id: str) -> str:
        return f"{job_id} saw {len(collected.reports)} reports"

    run_in_order(processor, _jobs("a", "b", "c"), Halt(), collected)  # type: ignore[arg-type]
    assert [o.result for _, o in collected.reports] == ["a saw 0 reports", "b saw 1 reports", "c saw 2 reports"]


def test_run_in_order_stops_after_the_first_job_that_raises() -> None:
    calls: List[str] = []

    def processor(data: Dict[str, Any], job_id: str) -> None:
        calls.append(job_id)
        if job_id == "b":
            raise KeyError(job_id)

    reports = _run(processor, _jobs("a", "b", "c"), Halt())
    assert calls == ["a", "b"]
    assert [index for index, _ in reports] == [0, 1] and isinstance(reports[1][1].error, KeyError)


def test_run_in_order_starts_no_job_once_halted_and_says_it_stopped() -> None:
    halt = Halt()
    calls: List[str] = []

    def processor(data: Dict[str, Any], job_id: str) -> None:
        calls.append(job_id)
        halt.set = True  # as the loop does when it gives up on the batch

    reports = _run(processor, _jobs("a", "b"), halt)
    assert calls == ["a"]
    assert [index for index, _ in reports] == [0, -1] and reports[1][1] is None


async def test_a_channel_hands_reports_over_in_order_and_wakes_the_loop_once_for_many() -> None:
    loop = asyncio.get_running_loop()
    channel = Channel(loop)
    wakes: List[Any] = []
    original = loop.call_soon_threadsafe

    def counting(callback: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(callback, "__self__", None) is channel:  # not the executor's own hand-back
            wakes.append(callback)
        return original(callback, *args, **kwargs)

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign, assignment]
    try:
        outcome = Outcome(None, None, 0.0, 0.0)

        def report() -> None:
            for index in range(100):
                channel.put(index, outcome)

        thread = threading.Thread(target=report)
        thread.start()  # the loop does not run meanwhile: every report after the first finds a wake-up on its way
        thread.join(5)
        assert [index for index, _ in await asyncio.wait_for(channel.take(), 5)] == list(range(100))
        assert len(wakes) == 1
        taking = asyncio.ensure_future(channel.take())
        await asyncio.sleep(0)  # the loop waits for a report now
        assert not taking.done()
        await loop.run_in_executor(None, channel.put, 100, outcome)
        assert await asyncio.wait_for(taking, 5) == [(100, outcome)]
        assert len(wakes) == 2
    finally:
        loop.call_soon_threadsafe = original  # type: ignore[method-assign]


async def test_a_channel_loses_no_report_whatever_the_interleaving() -> None:
    channel = Channel(asyncio.get_running_loop())
    outcome = Outcome(None, None, 0.0, 0.0)
    count = 20_000

    def produce() -> None:
        for index in range(count):
            channel.put(index, outcome)

    thread = threading.Thread(target=produce)
    thread.start()
    taken: List[int] = []
    while len(taken) < count:
        taken.extend(index for index, _ in await asyncio.wait_for(channel.take(), 5))
    thread.join(5)
    assert taken == list(range(count))


def test_a_channel_of_a_closed_loop_takes_reports_without_raising() -> None:
    loop = asyncio.new_event_loop()
    channel = Channel(loop)
    loop.close()
    channel.put(0, None)  # an abandoned worker reporting after the listener's loop ended


def _messages(*ids: str) -> List[Any]:
    return [(f'job_id = "{job_id}"\n'.encode(), "test/topic", Mock()) for job_id in ids]


class _Hops:
    """Counts hand-offs to the listener's worker threads (a call awaited, or a batch started)."""

    def __init__(self, listener: Any) -> None:
        self.count = 0
        workers = listener._workers
        run, start = workers.run, workers.start

        async def counted_run(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await run(*args, **kwargs)

        def counted_start(*args: Any) -> Any:
            self.count += 1
            return start(*args)

        workers.run, workers.start = counted_run, counted_start


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


def _listener_for(case: str) -> Any:
    """A mocked listener whose results go out at QoS 1 (a case named "qos 1 …") or 0, with INFO events wanted
    (the case "info wanted") or not."""
    listener = mocked_listener(log_topic="", log_topic_level="INFO" if case == "info wanted" else "WARNING",
                               default_qos=1 if case.startswith("qos 1") else 0)
    if case == "info wanted":
        listener._pipeline._events.log_topic = "test/log"
    return listener


@pytest.mark.parametrize("case, at_once", [
    ("dict", True), ("none", True), ("info wanted", False), ("ReturnType", False), ("qos 1 result", False),
    ("qos 1 written at once", True), ("job lock held", False)])
async def test_a_batch_job_is_finished_without_an_await_only_where_nothing_needs_one(case: str, at_once: bool) -> None:
    """The fast end of a batch job (its QoS 0 result written at once, the job recorded COMPLETED in the same call)
    is taken only where it is the ordinary end without its awaits; each result goes out once either way."""
    listener = _listener_for(case)
    pipeline = listener._pipeline
    sent: List[Any] = []
    pipeline._publisher.send_now = lambda publication: sent.append(publication) or publication.qos == 0  # type: ignore
    if case == "qos 1 written at once":  # the broker has each result at once

        def acknowledged(publication: Any, job_id: Any = None) -> "asyncio.Future[Any]":
            sent.append(publication)
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            future.set_result(None)
            return future

        pipeline._publisher.start_in_background_now = acknowledged  # type: ignore[method-assign]
    executed: List[str] = []
    execute = pipeline._execute

    async def counted(job_id: str, *args: Any, **kwargs: Any) -> Any:
        executed.append(job_id)
        return await execute(job_id, *args, **kwargs)

    pipeline._execute = counted  # type: ignore[method-assign]
    held = asyncio.Event()

    def processor(data: Dict[str, Any], job_id: str) -> Any:
        if case == "job lock held" and job_id == "b":
            asyncio.run_coroutine_threadsafe(listener.job_lock.acquire(), loop).result(5)
            loop.call_soon_threadsafe(held.set)
        if case == "none":
            return None
        if case == "ReturnType":
            return create_return_type({"done": job_id}, "test/results")
        return {"done": job_id}

    loop = asyncio.get_running_loop()
    task = asyncio.create_task(pipeline.process_batch(_messages("a", "b"), processor))
    if case == "job lock held":
        await asyncio.wait_for(held.wait(), 5)
        await asyncio.sleep(0.05)  # b's outcome arrives while the lock is held
        listener.job_lock.release()
    await asyncio.wait_for(task, 5)
    await asyncio.wait_for(asyncio.gather(*pipeline.finishing), 5)  # QoS 1: COMPLETED once acknowledged
    assert [listener.jobs[j].status for j in "ab"] == [JobStatus.COMPLETED] * 2
    if at_once:
        assert executed == []
    else:
        assert "b" in executed
    outgoing = [p.payload for p in sent if p.qos == 0 or case == "qos 1 written at once"] + [
        call.args[1] for call in listener.client.publish.call_args_list]
    outgoing = [payload for payload in outgoing if b'"done"' in payload]  # not the INFO events
    if case != "none":
        assert sorted(outgoing) == [b'{"done":"a"}', b'{"done":"b"}']  # each once
    assert pipeline._metrics.jobs_finished["completed"] == 2


@pytest.mark.parametrize("case", ["not written at once", "info wanted", "qos 1 not started at once"])
async def test_a_batch_job_s_result_is_made_once_when_it_cannot_be_finished_at_once(case: str) -> None:
    """The result's JSON is made once per job: when the fast end cannot finish the job, the awaited end takes the
    publication it made (the mocked client writes nothing directly; websockets and a user's client neither)."""
    listener = _listener_for(case)
    pipeline = listener._pipeline
    made: List[str] = []
    publication_for = pipeline.publication_for

    def counted(result: Any, job_id: str) -> Any:
        made.append(job_id)
        return publication_for(result, job_id)

    pipeline.publication_for = counted  # type: ignore[method-assign]
    await pipeline.process_batch(_messages("a", "b", "c"), lambda data, job_id: {"done": job_id})
    await asyncio.wait_for(asyncio.gather(*pipeline.finishing), 5)
    assert made == ["a", "b", "c"]
    assert [listener.jobs[j].status for j in "abc"] == [JobStatus.COMPLETED] * 3
    published = [call.args[1] for call in listener.client.publish.call_args_list]
    assert [p for p in published if b'"done"' in p] == [f'{{"done":"{j}"}}'.encode() for j in "abc"]


async def test_each_outcome_of_a_batch_is_published_and_recorded_while_the_next_job_runs() -> None:
    listener = mocked_listener(log_topic="")
    started, release = threading.Event(), threading.Event()

    def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        if job_id == "b":
            started.set()
            release.wait(5)
        return {"done": job_id}

    task = asyncio.create_task(listener._pipeline.process_batch(_messages("a", "b", "c"), processor))
    try:
        assert await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)

        async def recorded() -> None:
            while listener.jobs["b"].status is not JobStatus.RUNNING:
                await asyncio.sleep(0.001)
        await asyncio.wait_for(recorded(), 5)
        assert [listener.jobs[j].status for j in "abc"] == [JobStatus.COMPLETED, JobStatus.RUNNING, JobStatus.PENDING]
        published = [call.args[1] for call in listener.client.publish.call_args_list]
        assert published == [b'{"done":"a"}']
        assert list(await listener.get_running_jobs()) == ["b"]
    finally:
        release.set()
        await asyncio.wait_for(task, 5)
    assert [listener.jobs[j].status for j in "abc"] == [JobStatus.COMPLETED] * 3


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
    listener._pipeline._finished_now = lambda job, ran: False  # type: ignore[method-assign]  # recorded with awaits
    listener._pipeline._completed_now = lambda *args: False  # type: ignore[method-assign]
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
    pipeline._created_now = lambda *args: False  # type: ignore[method-assign]  # every admission through admit()
    messages = _messages("a", "b")
    task = asyncio.create_task(pipeline.process_batch(messages, lambda data, job_id: calls.append(job_id)))
    await asyncio.wait_for(waiting.wait(), 5)
    assert listener.jobs["a"].status is JobStatus.PENDING
    task.cancel()
    await asyncio.wait({task}, timeout=5)
    assert task.cancelled() and calls == []
    assert listener.jobs["a"].status is JobStatus.FAILED
    messages[0][2].withhold.assert_called_once_with()
