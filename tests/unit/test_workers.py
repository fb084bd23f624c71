"""Unit tests for Listener.processing.workers: the thread pool that runs synchronous processors."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, List

import pytest

from Listener.processing.workers import _DONE, ThreadWorkers, _Call


async def test_workers_run_calls_off_the_loop_thread() -> None:
    workers = ThreadWorkers(2)
    names = await asyncio.gather(*(workers.run(lambda: threading.current_thread().name) for _ in range(4)))
    assert threading.current_thread().name not in names
    assert workers.threads <= 2
    workers.shutdown()


async def test_workers_pass_exceptions_through() -> None:
    workers = ThreadWorkers(1)

    def boom() -> None:
        raise KeyError("nope")

    with pytest.raises(KeyError):
        await workers.run(boom)
    assert await workers.run(lambda x: x + 1, 1) == 2


async def test_workers_use_up_to_size_threads_at_once() -> None:
    workers = ThreadWorkers(3)
    barrier = threading.Barrier(3, timeout=5)
    # Only passes if three calls run at the same time on three threads.
    assert await asyncio.gather(*(workers.run(barrier.wait) for _ in range(3))) is not None
    assert workers.threads == 3


async def test_a_hung_call_is_abandoned_and_replaced() -> None:
    workers = ThreadWorkers(1)
    release = threading.Event()
    with pytest.raises(asyncio.TimeoutError):
        await workers.run(release.wait, timeout=0.1)
    assert workers.abandoned == 1
    # The only slot was stuck: a new worker must take the next call.
    assert await asyncio.wait_for(workers.run(lambda: "next"), 5) == "next"
    release.set()


async def test_a_cancelled_call_is_abandoned() -> None:
    workers = ThreadWorkers(1)
    release = threading.Event()
    started = threading.Event()

    def hang() -> None:
        started.set()
        release.wait(10)

    task = asyncio.ensure_future(workers.run(hang))
    await asyncio.to_thread(started.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert workers.abandoned == 1
    assert await asyncio.wait_for(workers.run(lambda: 7), 5) == 7
    release.set()


async def test_a_started_call_runs_without_a_way_back_and_can_be_abandoned() -> None:
    workers = ThreadWorkers(1)
    release, started, ran = threading.Event(), threading.Event(), threading.Event()

    def hang() -> None:
        started.set()
        release.wait(10)
        ran.set()

    abandon = workers.start(hang)
    assert await asyncio.to_thread(started.wait, 5)
    abandon()  # as _run_batch does when stop()'s grace period ends
    assert workers.abandoned == 1
    assert await asyncio.wait_for(workers.run(lambda: 7), 5) == 7  # the stuck slot was replaced
    release.set()
    assert await asyncio.to_thread(ran.wait, 5)  # the abandoned call ends by itself, reporting nothing
    workers.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        workers.start(lambda: None)


async def test_idle_workers_exit_and_shutdown_refuses_new_calls() -> None:
    workers = ThreadWorkers(2, idle_timeout=0.05)
    await workers.run(lambda: None)

    async def no_threads() -> None:
        while workers.threads:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(no_threads(), 5)
    assert await workers.run(lambda: "again") == "again"
    workers.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        await workers.run(lambda: None)


async def test_calls_finishing_together_wake_the_loop_once(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    workers = ThreadWorkers(3)
    wakeups: List[Any] = []
    real = loop.call_soon_threadsafe

    def counting(callback: Any, *args: Any, **kwargs: Any) -> Any:
        wakeups.append(callback)
        return real(callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    barrier = threading.Barrier(3, timeout=5)
    calls = [asyncio.ensure_future(workers.run(barrier.wait)) for _ in range(3)]
    await asyncio.sleep(0)  # the three calls are handed to the workers
    # Hold the loop, as a busy one would, until all three outcomes wait for it (bounded).
    deadline = time.monotonic() + 5
    while len(workers._finished.get(loop, ())) < 3 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert sorted(await asyncio.wait_for(asyncio.gather(*calls), 5)) == [0, 1, 2]
    assert len(wakeups) == 1  # one hand-back for the three results
    assert workers._finished == {}
    workers.shutdown()


async def test_results_hand_back_in_finishing_order_one_at_a_time() -> None:
    workers = ThreadWorkers(1)
    done: List[int] = []

    async def one(n: int) -> None:
        done.append(await workers.run(lambda: n))

    await asyncio.wait_for(asyncio.gather(*(one(n) for n in range(20))), 5)
    assert done == list(range(20))
    workers.shutdown()


def test_a_result_for_a_closed_loop_is_dropped() -> None:
    workers = ThreadWorkers(1)
    loop = asyncio.new_event_loop()
    release = threading.Event()
    call = _Call(release.wait, (10,), loop, loop.create_future())
    workers._submit(call)
    loop.close()
    release.set()
    deadline = time.monotonic() + 5
    while (call.state != _DONE or workers._finished) and time.monotonic() < deadline:
        time.sleep(0.001)
    assert call.state == _DONE
    assert workers._finished == {}  # not kept for a loop that will never take it
    assert workers.threads == 1
    workers.shutdown()
