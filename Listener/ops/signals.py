"""SIGTERM/SIGINT for a running listener: the first drains, the second stops at once.

The handlers are plain ``signal`` handlers, not the event loop's: they run even while a processor holds
up the loop, and hand their work to the loop. Optionally (the CLI does it) a watchdog thread, started
beforehand so that nothing is started inside a handler, ends the process ``exit_after`` seconds after
the second signal if it is still there: exit code 128 + the signal number.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from typing import Any, Callable, Dict, Iterable, Optional

__all__ = ["StopSignals"]

logger = logging.getLogger("Listener.signals")


class StopSignals:
    """Signal handlers: the first signal calls ``stop``, the second ``stop_now``.

    Args:
        loop: the loop the listener runs on (the callbacks run there).
        stop: the first signal (drain: let the jobs in flight finish).
        stop_now: the second signal (cancel what runs).
        signals: the signals handled.
        then: called after ``stop_now`` (the CLI cancels its main task).
        exit_after: with a value, a watchdog ends the process that many seconds after the second signal.
        before_exit: called (with the exit code) just before the watchdog ends the process.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, stop: Callable[[], None], stop_now: Callable[[], None],
                 signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT), *, then: Callable[[], None] = lambda: None,
                 exit_after: Optional[float] = None,
                 before_exit: Callable[[int], None] = lambda code: None) -> None:
        self.loop = loop
        self.stop = stop
        self.stop_now = stop_now
        self.then = then
        self.exit_after = exit_after
        self.before_exit = before_exit
        #: How many of the signals arrived.
        self.received = 0
        #: 128 + the number of the second signal (0 before it).
        self.exit_code = 0
        self._previous: Dict[int, Any] = {}
        self._armed = threading.Event()
        self._disarmed = False
        for sig in signals:
            self._previous[int(sig)] = signal.signal(sig, self._on_signal)
        if exit_after is not None:
            threading.Thread(target=self._watchdog, name="mqtt-listener-watchdog", daemon=True).start()

    @property
    def signals(self) -> tuple[int, ...]:
        """The signals handled now (none once removed)."""
        return tuple(self._previous)

    def _on_signal(self, signum: int, frame: Any) -> None:
        """Runs on the main thread between two bytecodes: hand the work to the loop, start nothing here."""
        self.received += 1
        if self.received > 2:
            return
        if self.received == 2:
            self.exit_code = 128 + signum
            self._armed.set()
        with contextlib.suppress(RuntimeError):  # the loop is closed: the process is ending anyway
            self.loop.call_soon_threadsafe(self._handle, signal.Signals(signum), self.received)

    def _handle(self, sig: signal.Signals, count: int) -> None:
        if count == 1:
            logger.info("%s received: stopping after the job in flight (send it again to stop at once)", sig.name)
            self.stop()
        else:
            logger.warning("%s received again: stopping now", sig.name)
            self.stop_now()
            self.then()

    def _watchdog(self) -> None:
        self._armed.wait()
        if self._disarmed:
            return
        time.sleep(self.exit_after or 0.0)
        logger.error("Still running %g s after the second signal: exiting now with code %d",
                     self.exit_after, self.exit_code)
        self.before_exit(self.exit_code)
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        os._exit(self.exit_code)

    def remove(self) -> None:
        """Put the previous handlers back; the watchdog stays armed once a second signal came."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}
        if not self._armed.is_set():
            self._disarmed = True
            self._armed.set()
