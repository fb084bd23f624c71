"""Hostile processors against a running listener (mocked client): SystemExit / KeyboardInterrupt, a
CancelledError of their own, and cancellation swallowed. Each costs its job (FAILED, error event), never
the listener, and ``run()`` and ``asyncio.run`` always come back.

Scenarios that could end the event loop run in their own ``asyncio.run`` inside a sync test, so a
regression fails the test instead of ending the test session.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Optional

import pytest

from Listener import EventListener, JobStatus, run_inline
from Listener.processing import containment
from Listener.processing.processors import call_processor, describe_exception
from Listener.processing.containment import ProcessorInterrupted
from Listener.processing.workers import ThreadWorkers
from tests.support.mocked_listeners import feed, mocked_listener, published_json


ROOT = Path(__file__).resolve().parents[2]
BOUND = 10.0  # every wait in this file ends within this many seconds, whatever the listener does


@pytest.fixture(autouse=True)
def quick_abandon(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(containment, "ABANDON_AFTER", 0.2)


def run_isolated(scenario: Callable[[], Awaitable[None]]) -> None:
    """``asyncio.run(scenario())`` on a thread of its own: whatever escapes the loop fails the test (not the
    session), and so does an ``asyncio.run`` that does not return (its shutdown waits for every task)."""
    escaped: List[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(asyncio.wait_for(scenario(), BOUND))
        except BaseException as exc:  # noqa: B036 - reported to the test below
            escaped.append(exc)

    thread = threading.Thread(target=target, name="isolated-loop", daemon=True)
    thread.start()
    thread.join(BOUND + 5)
    assert not thread.is_alive(), "asyncio.run() did not return: a task the listener left behind still runs"
    if escaped:
        if isinstance(escaped[0], (SystemExit, KeyboardInterrupt)):
            pytest.fail(f"{type(escaped[0]).__name__} escaped the event loop: the processor's failure ended the process")
        raise escaped[0]


async def jobs_until_done(listener: EventListener, job_ids: List[str], processor: Any) -> None:
    """Run the listener on the fed messages until every job in ``job_ids`` has ended, then stop it."""
    run = asyncio.create_task(listener.run(processor))
    try:
        while True:
            jobs = [await listener.get_job_status(job_id) for job_id in job_ids]
            if all(job is not None and job.status in (JobStatus.COMPLETED, JobStatus.FAILED) for job in jobs):
                break
            assert not run.done(), f"run() ended early: {run!r}"
            await asyncio.sleep(0.01)
    finally:
        listener.stop()
        await asyncio.wait_for(run, BOUND)


def error_types(listener: EventListener) -> Dict[Optional[str], str]:
    return {event["job_id"]: event["error_type"] for event in published_json(listener, "test/error")}


# -- item 4: SystemExit / KeyboardInterrupt, with and without job_timeout ---------------------------------


@pytest.mark.parametrize("timeout", [None, 5.0], ids=["no_timeout", "job_timeout"])
@pytest.mark.parametrize("kind", ["async", "sync", "inline"])
@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt])
def test_system_exit_and_keyboard_interrupt_fail_only_their_job(exc_type: type, kind: str,
                                                                timeout: Optional[float]) -> None:
    listener = mocked_listener(job_timeout=timeout)
    feed(listener, 'job_id = "bad"', 'job_id = "next"')

    def sync_processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        if job_id == "bad":
            raise exc_type(3)
        return {"ok": job_id}

    async def async_processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        await asyncio.sleep(0)
        return sync_processor(data, job_id)

    processor = {"async": async_processor, "sync": sync_processor,
                 "inline": run_inline(lambda data, job_id: sync_processor(data, job_id))}[kind]

    run_isolated(lambda: jobs_until_done(listener, ["bad", "next"], processor))

    bad = listener.jobs["bad"]
    assert bad.status is JobStatus.FAILED and bad.error == f"{exc_type.__name__}: 3"
    assert listener.jobs["next"].status is JobStatus.COMPLETED
    assert error_types(listener) == {"bad": "processing_error"}
    assert published_json(listener, "test/results") == [{"ok": "next"}]


# -- item 5: a CancelledError the listener did not ask for ---------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 3])
@pytest.mark.parametrize("timeout", [None, 5.0], ids=["no_timeout", "job_timeout"])
@pytest.mark.parametrize("kind", ["async", "async_awaited_cancelled_future", "sync", "inline"])
def test_a_processors_own_cancelled_error_fails_its_job_and_the_listener_goes_on(
        kind: str, timeout: Optional[float], concurrency: int) -> None:
    listener = mocked_listener(job_timeout=timeout, max_concurrent_jobs=concurrency)
    feed(listener, 'job_id = "cancels"', 'job_id = "after-1"', 'job_id = "after-2"')

    def sync_processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        if job_id == "cancels":
            raise asyncio.CancelledError()
        return {"ok": job_id}

    async def async_processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        await asyncio.sleep(0)
        if job_id == "cancels" and kind == "async_awaited_cancelled_future":
            future = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(future.cancel)  # someone else's cancellation, not the listener's
            await future
        return sync_processor(data, job_id)

    processor = {"async": async_processor, "async_awaited_cancelled_future": async_processor, "sync": sync_processor,
                 "inline": run_inline(lambda data, job_id: sync_processor(data, job_id))}[kind]
    run_isolated(lambda: jobs_until_done(listener, ["cancels", "after-1", "after-2"], processor))

    job = listener.jobs["cancels"]
    assert job.status is JobStatus.FAILED and job.error == "CancelledError", job.error
    assert error_types(listener) == {"cancels": "processing_error"}
    assert sorted(r["ok"] for r in published_json(listener, "test/results")) == ["after-1", "after-2"]
    listener.client.connect.assert_awaited_once()  # the connection was never dropped for it
    failed = [e for e in published_json(listener, "test/log") if e["event"] == "job_failed"]
    assert [e["job_id"] for e in failed] == ["cancels"]


async def test_cancelling_the_caller_of_process_message_still_cancels() -> None:
    """The other side of item 5: a cancellation that *is* asked for (here by the caller) stays one."""
    listener = mocked_listener()
    started = asyncio.Event()

    async def processor(data: Dict[str, Any], job_id: str) -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(listener.process_message({"job_id": "j"}, processor))
    await asyncio.wait_for(started.wait(), BOUND)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, BOUND)
    assert listener.jobs["j"].status is JobStatus.FAILED and listener.jobs["j"].error == "Cancelled: listener stopped"
    assert published_json(listener, "test/error") == []


async def test_call_processor_wraps_what_is_not_an_exception() -> None:
    async def exits(data: Dict[str, Any], job_id: str) -> None:
        raise SystemExit(0)

    def interrupts(data: Dict[str, Any], job_id: str) -> None:
        raise asyncio.CancelledError("mine")

    with pytest.raises(ProcessorInterrupted) as caught:
        await call_processor(exits, {}, "a", timeout=5)
    assert isinstance(caught.value.original, SystemExit) and describe_exception(caught.value) == "SystemExit: 0"
    with pytest.raises(ProcessorInterrupted) as caught:
        await call_processor(interrupts, {}, "b", workers=ThreadWorkers(1))
    assert describe_exception(caught.value) == "CancelledError: mine"


def test_describe_exception_survives_an_exception_whose_str_raises() -> None:
    class Nasty(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert describe_exception(Nasty()) == "Nasty: <unprintable>"
    assert str(ProcessorInterrupted(KeyboardInterrupt())) == "KeyboardInterrupt"


# -- item 6: a processor that swallows cancellation --------------------------------------------------------


def swallowing(started: Optional[List[str]] = None) -> Callable[[Dict[str, Any], str], Awaitable[Any]]:
    """A retry loop with a bare ``except``: every cancellation is swallowed, forever."""
    async def processor(data: Dict[str, Any], job_id: str) -> Any:
        if job_id != "stubborn":
            return {"ok": job_id}
        if started is not None:
            started.append(job_id)
        while True:
            try:
                await asyncio.sleep(0.05)
            except BaseException:  # noqa: B036 - the hostile processor under test
                continue
    return processor


@pytest.mark.parametrize("concurrency", [1, 3])
def test_job_timeout_abandons_a_processor_that_swallows_cancellation(concurrency: int) -> None:
    listener = mocked_listener(job_timeout=0.2, max_concurrent_jobs=concurrency)
    feed(listener, 'job_id = "stubborn"', 'job_id = "after"')
    started = time.monotonic()
    run_isolated(lambda: jobs_until_done(listener, ["stubborn", "after"], swallowing()))
    assert time.monotonic() - started < BOUND
    job = listener.jobs["stubborn"]
    assert job.status is JobStatus.FAILED and job.error == "Timed out after 0.2 s"
    assert error_types(listener) == {"stubborn": "timeout"}
    assert published_json(listener, "test/results") == [{"ok": "after"}]


@pytest.mark.parametrize("concurrency", [1, 3])
def test_stop_abandons_a_processor_that_swallows_cancellation_and_asyncio_run_returns(concurrency: int) -> None:
    listener = mocked_listener(shutdown_grace_period=0.2, max_concurrent_jobs=concurrency)
    feed(listener, 'job_id = "stubborn"')
    started: List[str] = []

    async def scenario() -> None:
        run = asyncio.create_task(listener.run(swallowing(started)))
        while not started:
            await asyncio.sleep(0.01)
        listener.stop()
        await asyncio.wait_for(run, BOUND)

    run_isolated(scenario)  # also fails if asyncio.run's shutdown hangs on a task left behind
    job = listener.jobs["stubborn"]
    assert job.status is JobStatus.FAILED and job.error == "Cancelled: listener stopped"
    listener.client.disconnect.assert_awaited_once()


async def test_a_cancelled_processor_that_cleans_up_briefly_is_not_abandoned() -> None:
    """Catching the cancellation to clean up (and re-raising) is fine: only carrying on is abandoned."""
    cleaned: List[str] = []

    async def tidy(data: Dict[str, Any], job_id: str) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)
            cleaned.append(job_id)
            raise

    with pytest.raises(Exception) as caught:
        await call_processor(tidy, {}, "t", timeout=0.05)
    assert type(caught.value).__name__ == "JobTimeoutError" and cleaned == ["t"]


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_a_swallowing_processor_that_gives_up_in_time_keeps_its_result(concurrency: int) -> None:
    """Swallowing once and then returning within ABANDON_AFTER is not abandoned either (nor cancelled a
    second time when the grace period ends)."""
    listener = mocked_listener(shutdown_grace_period=0.05, max_concurrent_jobs=concurrency)
    feed(listener, 'job_id = "late"')
    started = asyncio.Event()

    async def stubborn_once(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.sleep(0.01)
        return {"late": True}

    run = asyncio.create_task(listener.run(stubborn_once))
    await asyncio.wait_for(started.wait(), BOUND)
    listener.stop()
    await asyncio.wait_for(run, BOUND)
    assert listener.jobs["late"].status is JobStatus.COMPLETED
    assert published_json(listener, "test/results") == [{"late": True}]


SWALLOWING_SCRIPT = """
import asyncio, sys
from unittest.mock import AsyncMock
from Listener import EventListener, EventListenerConfig
from Listener.processing import containment

containment.ABANDON_AFTER = 0.1


async def stubborn(data, job_id):
    while True:
        try:
            await asyncio.sleep(0.05)
        except BaseException:  # swallows CancelledError and GeneratorExit alike
            continue


async def main():
    listener = EventListener(EventListenerConfig(host="test-host", client_id="t", job_timeout=0.1))
    listener.client = AsyncMock()
    await listener.process_message({"job_id": "stubborn"}, stubborn)
    print(listener.jobs["stubborn"].error, containment.unclosable, flush=True)


asyncio.run(main())
"""


def test_the_process_exits_after_abandoning_a_processor_that_swallows_everything() -> None:
    """The abandoned coroutine is never finalized: at interpreter exit, closing it again would spin forever
    (no event loop left, each await fails at once and is swallowed)."""
    done = subprocess.run([sys.executable, "-c", SWALLOWING_SCRIPT], capture_output=True, text=True,  # noqa: S603
                          timeout=BOUND + 10, cwd=str(ROOT), check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["Timed", "out", "after", "0.1", "s", "1"]
    assert "Exception ignored" not in done.stderr
