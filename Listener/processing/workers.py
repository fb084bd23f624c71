"""Worker threads for sync processors, which can give up on a job that hangs.

``asyncio.to_thread`` cannot abandon a call: a hung processor keeps its executor thread, and the
interpreter joins executor threads at exit, so one hung job could block the pool and the process.
Here each worker is a daemon thread; a job that times out (or is cancelled) is *abandoned*: its
thread no longer counts towards the pool size, a new worker takes its place, and the thread
exits by itself if the call ever returns.

Each call is one hand-off to a worker and one back. Results travel back in batches: a worker that
finishes a call while the loop has not yet taken the previous results adds its own to them instead
of waking the loop again, so concurrent calls finishing together cost one wake-up. A call started with
:meth:`ThreadWorkers.start` has no way back: it reports its progress itself (the batches of
:mod:`Listener.processing.batches`).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import queue
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..errors import ListenerError

__all__ = ["CallTimeoutError", "ThreadWorkers"]

_QUEUED, _RUNNING, _DONE, _ABANDONED = range(4)


class CallTimeoutError(ListenerError, asyncio.TimeoutError):
    """The call did not finish in time (unlike a TimeoutError the call itself raised)."""


class _Call:
    __slots__ = ("func", "args", "context", "loop", "future", "state")

    def __init__(self, func: Callable[..., Any], args: tuple[Any, ...], loop: Optional[asyncio.AbstractEventLoop],
                 future: "Optional[asyncio.Future[Any]]") -> None:
        self.func = func
        self.args = args
        self.context = contextvars.copy_context()
        self.loop = loop
        self.future = future
        self.state = _QUEUED


_Outcome = Tuple["asyncio.Future[Any]", Any, Optional[BaseException]]


def _settle(future: "asyncio.Future[Any]", result: Any, error: Optional[BaseException]) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class ThreadWorkers:
    """Up to ``size`` daemon threads running sync calls for the event loop; idle ones exit."""

    def __init__(self, size: int, name: str = "listener-worker", idle_timeout: float = 30.0) -> None:
        self.size = max(1, size)
        self.name = name
        self.idle_timeout = idle_timeout
        self.abandoned = 0
        self._calls: "queue.SimpleQueue[Optional[_Call]]" = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._unclaimed = 0
        self._closed = False
        #: Outcomes not yet handed to their loop, per loop; a loop has an entry while a wake-up is pending.
        self._finished: Dict[asyncio.AbstractEventLoop, List[_Outcome]] = {}

    async def run(self, func: Callable[..., Any], *args: Any, timeout: Optional[float] = None) -> Any:
        """Run ``func(*args)`` on a worker thread and return its result.

        Raises:
            CallTimeoutError: it did not finish within ``timeout`` seconds (it is abandoned); an
                ``asyncio.TimeoutError``.
            RuntimeError: the workers were shut down.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        call = _Call(func, args, loop, future)
        self._submit(call)
        try:
            if timeout is None:
                return await future
            done, _ = await asyncio.wait({future}, timeout=timeout)
        except BaseException:
            self._abandon(call)
            raise
        if not done:
            self._abandon(call)
            future.cancel()
            raise CallTimeoutError(f"call did not finish within {timeout:g} s")
        return future.result()

    def start(self, func: Callable[..., Any], *args: Any) -> Callable[[], None]:
        """Start ``func(*args)`` on a worker thread without waiting for it; what it returns or raises is dropped.

        Returns a function that abandons the call, as a timeout would: a thread stuck in it stops
        counting towards the pool size. The call must tell its caller what it did by its own means.

        Raises:
            RuntimeError: the workers were shut down.
        """
        call = _Call(func, args, None, None)
        self._submit(call)
        return functools.partial(self._abandon, call)

    def shutdown(self) -> None:
        """Let idle workers exit now; running calls finish on their threads."""
        with self._lock:
            self._closed = True
            count = self._threads
        for _ in range(count):
            self._calls.put(None)

    @property
    def threads(self) -> int:
        """Worker threads alive and not abandoned."""
        return self._threads

    def _submit(self, call: _Call) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("worker threads are shut down")
            self._calls.put(call)
            self._unclaimed += 1
            if self._idle < self._unclaimed and self._threads < self.size:
                self._threads += 1
                threading.Thread(target=self._work, name=f"{self.name}-{self._threads}", daemon=True).start()

    def _abandon(self, call: _Call) -> None:
        with self._lock:
            if call.state == _RUNNING:
                # The thread is stuck in the call: stop counting it, so a new worker can take its place.
                self._threads -= 1
                self.abandoned += 1
            if call.state in (_QUEUED, _RUNNING):
                call.state = _ABANDONED

    def _work(self) -> None:
        while True:
            call = self._next_call()
            if call is None:
                return
            try:
                result, error = call.context.run(call.func, *call.args), None
            except BaseException as exc:  # noqa: B036 - handed to the waiting coroutine, whatever it is
                result, error = None, exc
            loop, future = call.loop, call.future
            with self._lock:
                abandoned = call.state == _ABANDONED
                call.state = _DONE
                if loop is None or future is None:  # started with start(): nothing to hand back
                    wake = False
                elif not abandoned:
                    batch = self._finished.get(loop)
                    wake = batch is None
                    if batch is None:
                        batch = self._finished[loop] = []
                    batch.append((future, result, error))
            if abandoned:
                return  # already replaced by another worker
            if wake and loop is not None:
                try:
                    loop.call_soon_threadsafe(self._hand_back, loop)
                except RuntimeError:  # the loop is closed: nobody waits any more
                    with self._lock:
                        self._finished.pop(loop, None)

    def _hand_back(self, loop: asyncio.AbstractEventLoop) -> None:
        """On ``loop``: settle every outcome that finished for it since the last wake-up."""
        with self._lock:
            batch = self._finished.pop(loop, [])
        for future, result, error in batch:
            _settle(future, result, error)

    def _next_call(self) -> Optional[_Call]:
        """Wait for a call to run; None when this worker should exit (shut down, or idle too long)."""
        while True:
            with self._lock:
                self._idle += 1
            try:
                call = self._calls.get(timeout=self.idle_timeout)
            except queue.Empty:
                with self._lock:
                    self._idle -= 1
                    if self._calls.empty():
                        self._threads -= 1
                        return None
                continue
            with self._lock:
                self._idle -= 1
                if call is None:
                    self._threads -= 1
                    return None
                self._unclaimed -= 1
                if call.state == _ABANDONED:
                    continue
                call.state = _RUNNING
            return call
