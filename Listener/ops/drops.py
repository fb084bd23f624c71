"""Counting and reporting the QoS 0 messages the intake dropped (``max_pending_messages`` were queued).

A flood drops thousands of messages a second; one WARNING event each would add to the flood. The
reporter counts every drop (``messages_dropped``) at once and sends at most one WARNING per ``every``
seconds, saying how many were dropped since the previous one; the last ones are reported when the
period ends even if no drop follows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Optional, Set

from .events import EventSink
from .metrics import ListenerMetrics

__all__ = ["DropReporter"]

REPORT_EVERY = 5.0


class DropReporter:
    """``record()`` is called once per dropped message, on the event loop."""

    def __init__(self, metrics: ListenerMetrics, events: EventSink, limit: int, every: float = REPORT_EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._metrics = metrics
        self._events = events
        self._limit = limit
        self._every = every
        self._clock = clock
        self._unreported = 0
        self._last_report: Optional[float] = None
        self._timer: Optional[asyncio.TimerHandle] = None
        self._sending: Set["asyncio.Task[None]"] = set()

    def record(self) -> None:
        """Count one dropped message; report now, or when the current period ends."""
        self._metrics.messages_dropped += 1
        self._unreported += 1
        if self._timer is not None:
            return
        now = self._clock()
        if self._last_report is None or now - self._last_report >= self._every:
            self._report()
        else:
            self._timer = asyncio.get_running_loop().call_later(self._last_report + self._every - now, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._unreported:
            self._report()

    def _report(self) -> None:
        count, self._unreported = self._unreported, 0
        self._last_report = self._clock()
        sending = asyncio.ensure_future(self._events.log(
            logging.WARNING, "messages_dropped",
            "%d QoS 0 message(s) dropped: %d messages were already waiting (max_pending_messages)",
            count, self._limit))
        self._sending.add(sending)
        sending.add_done_callback(self._sending.discard)
