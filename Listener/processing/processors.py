"""Calling the user's processor: sync ones on a worker thread, async ones awaited, both within a time limit."""

from __future__ import annotations

import asyncio
import functools
import inspect
from typing import Any, Awaitable, Callable, Dict, Optional, Tuple, TypeVar, Union

from ..core.deadlines import settle_within
from ..errors import ListenerError
from ..results import ReturnType
from .containment import Contained, ProcessorInterrupted, call_contained, cancel
from .workers import CallTimeoutError, ThreadWorkers

__all__ = ["JobTimeoutError", "Processor", "ProcessorInterrupted", "ProcessorResult", "call_processor",
           "describe_exception", "is_async_callable", "run_inline", "settle_result"]

ProcessorResult = Optional[Union[ReturnType, Dict[str, Any]]]
#: A message processor: ``(data, job_id)`` to a result, a dict, or None; plain or ``async def``.
Processor = Callable[[Dict[str, Any], str], Union[ProcessorResult, Awaitable[ProcessorResult]]]


class JobTimeoutError(ListenerError, TimeoutError):
    """The processor did not finish within ``job_timeout`` (distinct from a TimeoutError it raised itself)."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"Timed out after {timeout:g} s")
        self.timeout = timeout


F = TypeVar("F", bound=Callable[..., Any])


def run_inline(func: F) -> F:
    """Mark a sync processor as quick and non-blocking: it is then called on the event loop itself.

    That saves the hand-off to a worker thread (tens of microseconds, more on a busy machine), which
    dominates for trivial processors. Only for processors that never block: while one runs, nothing
    else does, keep-alive included, and ``job_timeout`` cannot interrupt it.
    """
    func.__listener_inline__ = True  # type: ignore[attr-defined]
    return func


#: The last callable :func:`is_async_callable` looked at, and its answer: a run asks about one processor per
#: job, and ``inspect`` takes longer to answer than a trivial job takes to run.
_last_asked: Tuple[Any, bool] = (None, False)


def is_async_callable(func: Any) -> bool:
    """True for ``async def`` functions, bound methods, partials of them, and objects with an async ``__call__``."""
    global _last_asked
    asked, answer = _last_asked
    if asked is func and func is not None:
        return answer
    target = func
    while isinstance(target, functools.partial):
        target = target.func
    answer = inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(getattr(target, "__call__", None))
    _last_asked = (func, answer)
    return answer


async def call_processor(func: Processor, data: Dict[str, Any], job_id: str, *,
                         workers: Optional[ThreadWorkers] = None, timeout: Optional[float] = None) -> Any:
    """Run ``func(data, job_id)`` without blocking the event loop and return what it returned.

    A sync processor runs on a worker thread (of ``workers``, else the default executor), so a slow
    one never starves MQTT keep-alive. With ``timeout``, an async processor still running is
    cancelled (and abandoned if it ignores that, see :mod:`Listener.processing.containment`), a sync one is
    abandoned, and :class:`JobTimeoutError` is raised.

    Whatever the processor raises stays an error of this call: ``SystemExit``, ``KeyboardInterrupt``
    and a ``CancelledError`` the listener did not ask for come out as :class:`ProcessorInterrupted`.
    """
    if is_async_callable(func):
        result = await _within(call_contained(func, data, job_id), timeout)
    elif getattr(func, "__listener_inline__", False):
        result = call_contained(func, data, job_id)
    elif workers is not None:
        try:
            result = await workers.run(call_contained, func, data, job_id, timeout=timeout)
        except CallTimeoutError:  # not a TimeoutError the processor raised itself
            raise JobTimeoutError(timeout or 0.0) from None
    else:
        result = await _within(asyncio.to_thread(call_contained, func, data, job_id), timeout)
    if result is not None and type(result) is not dict and inspect.isawaitable(result):
        result = await _within(result, timeout)
    return result


async def settle_result(result: Any) -> Any:
    """What a sync processor's return value ends as: awaited (within no time limit) when it is awaitable."""
    if inspect.isawaitable(result):
        result = await _within(result, None)
    return result


async def _within(awaitable: Awaitable[Any], timeout: Optional[float]) -> Any:
    if timeout is None:
        return await Contained(awaitable)
    task = await settle_within(_contained(awaitable), timeout, cancel=cancel)
    if task is None:
        raise JobTimeoutError(timeout)
    return task.result()


async def _contained(awaitable: Awaitable[Any]) -> Any:
    return await Contained(awaitable)


def describe_exception(exc: BaseException) -> str:
    """``Type: message`` for an exception, without its traceback (what a processor raised, if wrapped)."""
    if isinstance(exc, ProcessorInterrupted):
        exc = exc.original
    try:
        text = str(exc)
    except Exception:  # an exception whose __str__ fails is still described
        text = "<unprintable>"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
