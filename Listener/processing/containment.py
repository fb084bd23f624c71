"""Keeping whatever a processor does inside its own job.

Three things a processor can do would otherwise reach the listener itself:

- raise ``SystemExit``, ``KeyboardInterrupt`` or another ``BaseException`` that is not an
  ``Exception``: inside a task, asyncio re-raises those out of the event loop, ending ``asyncio.run``;
- raise ``asyncio.CancelledError`` on its own: the listener would take it for its own cancellation;
- ignore a cancellation (``except BaseException:`` around an ``await`` in a retry loop): ``job_timeout``
  and ``stop()`` would wait for it forever.

:class:`Contained` wraps the processor's awaitable: it turns the first two into
:class:`ProcessorInterrupted` (an ``Exception``, so the job fails like any other), and a processor that
goes on after the listener cancelled it (see :func:`cancel`) is *abandoned* ``ABANDON_AFTER`` seconds
later: its coroutine is closed and the listener stops waiting for it.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any, Awaitable, Callable, Generator, List, Optional

from ..errors import ListenerError

__all__ = ["ABANDON_AFTER", "Contained", "ProcessorInterrupted", "call_contained", "cancel", "cancelled_by_listener"]

logger = logging.getLogger("Listener.processing")

#: Seconds a cancelled processor that carries on is given before it is abandoned.
ABANDON_AFTER = 2.0

_cancelled: "weakref.WeakSet[asyncio.Future[Any]]" = weakref.WeakSet()
#: How many abandoned coroutines refused to close (see _keep_forever).
unclosable = 0


class ProcessorInterrupted(ListenerError):
    """A processor raised a ``BaseException`` that is not an ``Exception`` (``SystemExit``,
    ``KeyboardInterrupt``, a ``CancelledError`` the listener did not ask for, …), or a ``StopIteration``
    (which cannot be handed over through a Future).

    It fails that job like any other error; ``original`` is what the processor raised.
    """

    def __init__(self, original: BaseException) -> None:
        text = _text(original)
        super().__init__(f"{type(original).__name__}: {text}" if text else type(original).__name__)
        self.original = original


def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # an exception whose __str__ fails must still be reported
        return f"<unprintable {type(exc).__name__}>"


def cancel(task: "asyncio.Future[Any]") -> bool:
    """Cancel ``task`` on the listener's behalf.

    A ``CancelledError`` coming out of a processor is the listener's own only in a task cancelled
    this way, or in one whose ``cancelling()`` count is up (any task on Python 3.11+, one started with
    :func:`Listener.core.tasks.start_task` on 3.10); anything else is the processor's failure. A processor
    that carries on after this cancellation is abandoned.
    """
    _cancelled.add(task)
    return task.cancel()


def cancelled_by_listener(task: "Optional[asyncio.Future[Any]]") -> bool:
    """Whether ``task`` was cancelled with :func:`cancel`, or has a cancellation pending (``cancelling()``)."""
    if task is None:
        return False
    if task in _cancelled:
        return True
    cancelling = getattr(task, "cancelling", None)  # Python 3.11+, or a CountingTask
    return bool(cancelling()) if cancelling is not None else False


def call_contained(func: Callable[..., Any], *args: Any) -> Any:
    """``func(*args)``, with a ``BaseException`` that is not an ``Exception`` turned into :class:`ProcessorInterrupted`.

    For synchronous calls (on the loop or on a worker thread): nothing in them is a cancellation of ours.
    """
    try:
        return func(*args)
    except StopIteration as exc:  # a Future refuses it: the job would never end
        raise ProcessorInterrupted(exc) from exc
    except Exception:
        raise
    except BaseException as exc:  # noqa: B036 - contained on purpose: it is the processor's, not ours
        raise ProcessorInterrupted(exc) from exc


class Contained:
    """Await a processor's awaitable so that what it raises, or ignores, stays in its job."""

    __slots__ = ("_awaitable",)

    def __init__(self, awaitable: Awaitable[Any]) -> None:
        self._awaitable = awaitable

    def __await__(self) -> Generator[Any, Any, Any]:
        return _drive(self._awaitable.__await__())


def _close(iterator: Any) -> None:
    close = getattr(iterator, "close", None)
    if close is None:
        return
    try:
        close()
    except BaseException as exc:  # noqa: B036 - e.g. "coroutine ignored GeneratorExit": nothing more can be done
        logger.warning("An abandoned processor did not close cleanly: %s", _text(exc) or type(exc).__name__)
        _keep_forever(iterator)


def _keep_forever(iterator: Any) -> None:
    """Make sure a coroutine that swallowed GeneratorExit is never finalized.

    Nothing drives it any more, but finalizing it (when garbage-collected, at the latest at interpreter
    exit) would close it once more: with no event loop left, each of its awaits fails at once and a
    processor that swallows everything then spins forever, and the process never exits. One extra
    reference that is never released costs its frame's memory and nothing else.
    """
    global unclosable
    unclosable += 1
    try:
        import ctypes

        ctypes.pythonapi.Py_IncRef(ctypes.py_object(iterator))
    except Exception:  # pragma: no cover - not CPython: keep it referenced from here instead
        _kept.append(iterator)


_kept: List[Any] = []


def _drive(iterator: Any) -> Generator[Any, Any, Any]:
    """``yield from iterator``, plus the containment rules of this module.

    The processor's own ``CancelledError`` comes out of ``send()`` (it raised it) or out of ``throw()``
    of a cancellation that is not the listener's; the listener's cancellation is thrown in at the
    ``yield`` of a task marked by :func:`cancel`. If the processor yields again after that, it ignored
    the cancellation: ``ABANDON_AFTER`` seconds later the task is cancelled again and this time the
    processor's coroutine is closed instead of being asked.
    """
    task = asyncio.current_task()
    value: Any = None
    thrown: Optional[BaseException] = None
    delivered = False  # a cancellation reached the processor (a 3.10 task not started by start_task cannot say whose)
    ignored = False
    timer: Optional[asyncio.TimerHandle] = None
    try:
        while True:
            try:
                if thrown is None:
                    step = iterator.send(value)
                else:
                    error, thrown = thrown, None
                    throw = getattr(iterator, "throw", None)
                    if throw is None:
                        raise error
                    step = throw(error)
            except StopIteration as stop:
                return stop.value
            except asyncio.CancelledError as exc:
                if cancelled_by_listener(task) or (delivered and not hasattr(task, "cancelling")):
                    raise
                raise ProcessorInterrupted(exc) from exc
            except Exception:
                raise
            except BaseException as exc:  # noqa: B036 - SystemExit, KeyboardInterrupt, GeneratorExit …
                raise ProcessorInterrupted(exc) from exc
            if delivered and not ignored and task is not None and task in _cancelled:
                ignored = True
                logger.warning("A processor ignored its cancellation; it is abandoned in %g s", ABANDON_AFTER)
                timer = asyncio.get_running_loop().call_later(ABANDON_AFTER, task.cancel)
            try:
                value = yield step
            except GeneratorExit:
                _close(iterator)
                raise
            except asyncio.CancelledError as exc:
                if ignored:
                    logger.warning("Abandoning a processor that ignored its cancellation")
                    _close(iterator)
                    raise
                delivered = True
                thrown = exc
            except BaseException as exc:  # noqa: B036 - handed to the processor, as yield from does
                thrown = exc
            else:
                thrown = None
    finally:
        if timer is not None:
            timer.cancel()
