"""The end of a job whose QoS 1/2 result went out in the background, followed without a task where it can be.

Most such jobs end the same way: the broker acknowledges the result, and the job is recorded COMPLETED in a
store that needs no await for it. :class:`Finishing` does that in a callback of the publication's future.
Anything else (a publication that failed or was given up on, an INFO event to send, a store whose lock is
held) goes the ordinary way, a coroutine in a task. A :class:`Finishing` is cancelled as that task would be.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Optional

from ..core.eager import EagerFuture, add_follower

__all__ = ["Finishing"]


class Finishing(EagerFuture):
    """Done once the job is recorded (result None), or cancelled once the job was recorded as cut short. Eager
    (:class:`~Listener.core.eager.EagerFuture`), as ``sending`` may be: the job is recorded, and its message's
    acknowledgement released, in the turn of the loop the publisher's answer came in.

    ``sending`` gives the publisher's answer (None: the result went out or was kept). Once it has it and it
    is None, ``complete_now()`` records the job if it can without awaiting (False: it could not, nothing was
    recorded); otherwise ``complete()`` does, in a task, and this future ends as that task does.

    :meth:`cancel` (``stop()``'s grace period ran out) is a task's: while the result is still on its way, the
    publication is given up on and ``complete()`` runs to record the job cut short (it sees ``sending``
    cancelled), then this future is cancelled.
    """

    def __init__(self, sending: "asyncio.Future[Optional[str]]", complete_now: Callable[[], bool],
                 complete: Callable[[], Awaitable[None]], loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self._sending = sending
        self._complete_now = complete_now
        self._complete = complete
        self._task: "Optional[asyncio.Future[None]]" = None
        add_follower(sending, self._sent)

    def _sent(self, sending: "asyncio.Future[Optional[str]]") -> None:
        if self.done() or self._task is not None:
            return
        if not sending.cancelled() and sending.exception() is None and sending.result() is None and self._complete_now():
            self.set_result(None)
            return
        self._start()

    def _start(self) -> "asyncio.Future[None]":
        task = self._task = asyncio.ensure_future(self._complete())
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: "asyncio.Future[None]") -> None:
        if self.done():
            return
        if task.cancelled():
            super().cancel()
        elif task.exception() is not None:
            self.set_exception(task.exception())
        else:
            self.set_result(None)

    def cancel(self, msg: Any = None) -> bool:
        if self.done():
            return False
        if self._task is None:
            # Started first: cancelling ``sending`` calls _sent at once (eagerly), which must find the task there.
            self._start()  # complete() sees the publication given up on, and records the job cut short
            self._sending.cancel()
            return True
        return self._task.cancel(msg)
