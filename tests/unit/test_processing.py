"""Unit tests for Listener.processing.processors: calling processors (sync, async, inline), timeouts, describing errors."""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from typing import Any, Dict, List

import pytest

from Listener.processing.processors import JobTimeoutError, call_processor, describe_exception, is_async_callable
from Listener.processing.workers import ThreadWorkers


# -- is_async_callable ----------------------------------------------------------------------------


def sync_processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
    return {"job_id": job_id, "thread": threading.get_ident()}


async def async_processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
    return {"job_id": job_id, "thread": threading.get_ident()}


class Worker:
    def __init__(self) -> None:
        self.seen: list[str] = []

    async def handle(self, data: Dict[str, Any], job_id: str) -> str:
        self.seen.append(job_id)
        return f"async:{job_id}"

    def handle_sync(self, data: Dict[str, Any], job_id: str) -> str:
        self.seen.append(job_id)
        return f"sync:{job_id}"


class AsyncCallable:
    async def __call__(self, data: Dict[str, Any], job_id: str) -> str:
        return f"called:{job_id}"


class SyncCallable:
    def __call__(self, data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        return {"job_id": job_id, "thread": threading.get_ident()}


class SyncCallableWithFuncAttribute:
    """A sync callable object that happens to keep an async function in an attribute named ``func``."""

    def __init__(self) -> None:
        self.func = async_processor

    def __call__(self, data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        return {"job_id": job_id, "thread": threading.get_ident()}


def test_is_async_callable() -> None:
    worker = Worker()
    assert is_async_callable(async_processor)
    assert not is_async_callable(sync_processor)
    assert is_async_callable(worker.handle)
    assert not is_async_callable(worker.handle_sync)
    assert is_async_callable(functools.partial(async_processor))
    assert is_async_callable(functools.partial(functools.partial(async_processor), {}))
    assert not is_async_callable(functools.partial(sync_processor, {}))
    assert is_async_callable(AsyncCallable())
    assert not is_async_callable(SyncCallable())
    assert is_async_callable(lambda d, j: None) is False
    assert not is_async_callable(print)
    assert not is_async_callable(None)


def test_is_async_callable_remembers_only_the_callable_it_last_answered_for(monkeypatch: pytest.MonkeyPatch) -> None:
    # A run asks once per job about one processor: inspect answers once, and a different callable
    # (even one of the other kind) is never given that answer.
    sync_twin = functools.partial(sync_processor)
    async_twin = functools.partial(async_processor)
    for _ in range(3):
        assert is_async_callable(async_twin) and not is_async_callable(sync_twin)
    asked: List[Any] = []
    real = inspect.iscoroutinefunction
    monkeypatch.setattr(inspect, "iscoroutinefunction", lambda f: asked.append(f) or real(f))
    assert is_async_callable(async_twin)
    first = len(asked)
    assert first >= 1
    for _ in range(5):
        assert is_async_callable(async_twin)
    assert len(asked) == first
    assert not is_async_callable(sync_twin)
    assert len(asked) > first


def test_sync_callable_with_a_func_attribute_is_not_async() -> None:
    # Only functools.partial objects should be unwrapped through ``.func``.
    assert not is_async_callable(SyncCallableWithFuncAttribute())


# -- call_processor -------------------------------------------------------------------------------


async def test_sync_processor_runs_off_the_event_loop_thread() -> None:
    loop_thread = threading.get_ident()
    result = await call_processor(sync_processor, {"a": 1}, "job-1")
    assert result["job_id"] == "job-1"
    assert result["thread"] != loop_thread


async def test_sync_callable_object_runs_off_the_event_loop_thread() -> None:
    loop_thread = threading.get_ident()
    result = await call_processor(SyncCallable(), {}, "job-2")
    assert result["thread"] != loop_thread


async def test_sync_callable_with_func_attribute_runs_off_the_event_loop_thread() -> None:
    loop_thread = threading.get_ident()
    result = await call_processor(SyncCallableWithFuncAttribute(), {}, "job-3")
    assert result == {"job_id": "job-3", "thread": result["thread"]}
    assert result["thread"] != loop_thread


async def test_async_processor_is_awaited_on_the_loop() -> None:
    loop_thread = threading.get_ident()
    result = await call_processor(async_processor, {}, "job-4")
    assert result == {"job_id": "job-4", "thread": loop_thread}


async def test_async_variants_are_awaited() -> None:
    worker = Worker()
    assert await call_processor(worker.handle, {}, "m") == "async:m"
    assert await call_processor(functools.partial(Worker.handle, worker), {}, "p") == "async:p"
    assert await call_processor(AsyncCallable(), {}, "c") == "called:c"
    assert await call_processor(worker.handle_sync, {}, "s") == "sync:s"
    assert worker.seen == ["m", "p", "s"]


async def test_processor_receives_data_and_job_id() -> None:
    seen = []

    def record(data: Dict[str, Any], job_id: str) -> None:
        seen.append((data, job_id))

    data = {"x": 1, "_topic": "jobs/in"}
    assert await call_processor(record, data, "job-5") is None
    assert seen == [(data, "job-5")] and seen[0][0] is data


async def test_sync_function_returning_an_awaitable_is_awaited() -> None:
    def returns_coroutine(data: Dict[str, Any], job_id: str) -> Any:
        return async_processor(data, job_id)

    result = await call_processor(returns_coroutine, {}, "job-6")
    assert result["job_id"] == "job-6"


async def test_exceptions_propagate() -> None:
    def boom(data: Dict[str, Any], job_id: str) -> None:
        raise ValueError("sync boom")

    async def aboom(data: Dict[str, Any], job_id: str) -> None:
        raise KeyError("async boom")

    with pytest.raises(ValueError, match="sync boom"):
        await call_processor(boom, {}, "j")
    with pytest.raises(KeyError, match="async boom"):
        await call_processor(aboom, {}, "j")


async def test_slow_sync_processor_does_not_block_the_loop() -> None:
    loop = asyncio.get_running_loop()
    started = asyncio.Event()
    release = threading.Event()

    def blocking(data: Dict[str, Any], job_id: str) -> str:
        loop.call_soon_threadsafe(started.set)
        assert release.wait(timeout=30)
        return "done"

    task = asyncio.ensure_future(call_processor(blocking, {}, "slow"))
    await started.wait()  # the loop keeps serving callbacks while the processor blocks its own thread
    assert not task.done()
    release.set()
    assert await task == "done"


# -- timeouts and run_inline ------------------------------------------------------------------------


async def test_call_processor_times_out_async_and_sync_processors() -> None:
    async def slow(data: Any, job_id: str) -> None:
        await asyncio.sleep(10)

    with pytest.raises(JobTimeoutError, match="Timed out after 0.05 s"):
        await call_processor(slow, {}, "a", timeout=0.05)
    release = threading.Event()
    with pytest.raises(JobTimeoutError):
        await call_processor(lambda d, j: release.wait(10), {}, "b", workers=ThreadWorkers(1), timeout=0.05)
    with pytest.raises(JobTimeoutError):
        await call_processor(lambda d, j: release.wait(10), {}, "c", timeout=0.05)
    release.set()


async def test_a_timeout_error_raised_by_the_processor_is_not_a_job_timeout() -> None:
    async def raises(data: Any, job_id: str) -> None:
        raise TimeoutError("its own")

    with pytest.raises(TimeoutError) as caught:
        await call_processor(raises, {}, "a", timeout=5)
    assert not isinstance(caught.value, JobTimeoutError)


async def test_run_inline_processors_are_called_on_the_loop_thread() -> None:
    from Listener import run_inline

    @run_inline
    def quick(data: Any, job_id: str) -> str:
        return threading.current_thread().name

    assert await call_processor(quick, {}, "j", workers=ThreadWorkers(1)) == threading.current_thread().name


# -- describe_exception ---------------------------------------------------------------------------


@pytest.mark.parametrize("exc,expected", [
    (ValueError("bad value"), "ValueError: bad value"),
    (ValueError(), "ValueError"),
    (KeyError("k"), "KeyError: 'k'"),
    (RuntimeError(""), "RuntimeError"),
    (ZeroDivisionError("division by zero"), "ZeroDivisionError: division by zero"),
    (asyncio.CancelledError(), "CancelledError"),
])
def test_describe_exception(exc: BaseException, expected: str) -> None:
    assert describe_exception(exc) == expected


def test_describe_exception_has_no_traceback() -> None:
    try:
        raise TypeError("inner")
    except TypeError as exc:
        text = describe_exception(exc)
    assert text == "TypeError: inner" and "Traceback" not in text and "\n" not in text
