"""A future whose own followers run the moment it is done, not a turn of the event loop later.

asyncio runs a future's done callbacks in later turns of the loop, one scheduled handle each. The end of a
QoS 1/2 job is a chain of such futures (the broker's acknowledgement, the publisher's answer, the job recorded,
its message acknowledged): each link would cost a handle and a turn per job. The listener's own links are
*eager* callbacks of an :class:`EagerFuture` instead: called right after it is done, in the same turn, in the
order they were added, before the ordinary done callbacks run.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, List, Optional

__all__ = ["EagerFuture", "add_follower"]

Follower = Callable[[Any], None]


class EagerFuture(asyncio.Future):  # type: ignore[type-arg]
    """An ``asyncio.Future`` that also calls its eager callbacks synchronously when it is done (result, exception
    or cancellation). An eager callback that raises is reported to the loop's exception handler, as a done
    callback's would be; the others still run."""

    # No __init__ of its own: made as often as a job ends, it costs what a plain future does until followed.
    _eager: Optional[List[Follower]] = None

    def add_eager_callback(self, callback: Follower) -> None:
        """Call ``callback(self)`` as soon as this future is done; once it is done already, as a done callback."""
        if self.done():
            self.add_done_callback(callback)
        elif self._eager is None:
            self._eager = [callback]
        else:
            self._eager.append(callback)

    def set_result(self, result: Any) -> None:
        super().set_result(result)
        self._run_eager()

    def set_exception(self, exception: Any) -> None:
        super().set_exception(exception)
        self._run_eager()

    def cancel(self, msg: Any = None) -> bool:
        if not super().cancel(msg):
            return False
        self._run_eager()
        return True

    def _run_eager(self) -> None:
        callbacks, self._eager = self._eager, None
        for callback in callbacks or ():
            try:
                callback(self)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:  # noqa: B036 - reported as asyncio reports a failing done callback
                self.get_loop().call_exception_handler({
                    "message": f"Exception in eager callback {callback!r}", "exception": exc, "future": self})


def add_follower(future: "asyncio.Future[Any]", callback: Follower) -> None:
    """Call ``callback(future)`` once ``future`` is done: at once if it is an :class:`EagerFuture` not done yet,
    else as a done callback."""
    if isinstance(future, EagerFuture):
        future.add_eager_callback(callback)
    else:
        future.add_done_callback(callback)
