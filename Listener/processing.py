"""Calling the user's processor: sync ones on a worker thread, async ones awaited."""

from __future__ import annotations

import asyncio
import functools
import inspect
from typing import Any, Awaitable, Callable, Dict, Optional, Union

from .results import ReturnType

__all__ = ["Processor", "ProcessorResult", "call_processor", "describe_exception", "is_async_callable"]

ProcessorResult = Optional[Union[ReturnType, Dict[str, Any]]]
#: A message processor: ``(data, job_id)`` to a result, a dict, or None; plain or ``async def``.
Processor = Callable[[Dict[str, Any], str], Union[ProcessorResult, Awaitable[ProcessorResult]]]


def is_async_callable(func: Any) -> bool:
    """True for ``async def`` functions, bound methods, partials of them, and objects with an async ``__call__``."""
    while isinstance(func, functools.partial):
        func = func.func
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(getattr(func, "__call__", None))


async def call_processor(func: Processor, data: Dict[str, Any], job_id: str) -> Any:
    """Run ``func(data, job_id)`` without blocking the event loop and return what it returned.

    A sync processor runs on a worker thread, so a slow one never starves MQTT keep-alive.
    """
    if is_async_callable(func):
        result = await func(data, job_id)  # type: ignore[misc]
    else:
        result = await asyncio.to_thread(func, data, job_id)
    if inspect.isawaitable(result):
        result = await result
    return result


def describe_exception(exc: BaseException) -> str:
    """``Type: message`` for an exception, without its traceback."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
