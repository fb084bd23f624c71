"""Counting and reporting the QoS 0 messages the intake dropped.

Two reasons: :data:`OVERLOAD` (``max_pending_messages`` were queued, the reader's held bytes were full and
it had to read on: a sustained overload, see :mod:`Listener.mqtt.wire_handler`), and :data:`DUP_QOS0` (a
QoS 0 PUBLISH with the DUP flag set, which MQTT-3.3.1-2 forbids: a broker or proxy at fault).

A flood drops thousands of messages a second; one WARNING event each would add to the flood. The
reporter counts every drop at once (``messages_dropped``, and by reason ``messages_dropped_by_reason``) and
sends at most one WARNING per reason per ``every`` seconds, saying how many were dropped since the previous
one; the last ones are reported when the period ends even if no drop follows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Dict, Set

from .events import EventSink
from .metrics import ListenerMetrics

__all__ = ["DUP_QOS0", "DropReporter", "OVERLOAD"]

REPORT_EVERY = 5.0
#: No room: ``max_pending_messages`` queued, the held bytes full, and the reader had to read on.
OVERLOAD = "max_pending_messages"
#: A QoS 0 PUBLISH with the DUP flag set (MQTT-3.3.1-2).
DUP_QOS0 = "dup_qos0"
_REPORTS = {
    OVERLOAD: "%d QoS 0 message(s) dropped: %d messages were already waiting (max_pending_messages), as many "
              "bytes as the listener holds unread, and it had to read on for an acknowledgement",
    DUP_QOS0: "%d QoS 0 message(s) with the DUP flag set dropped: MQTT forbids DUP at QoS 0 (MQTT-3.3.1-2), "
              "so the broker or something in the middle is at fault (max_pending_messages %d)",
}


class DropReporter:
    """``record(reason)`` is called once per dropped message, on the event loop."""

    def __init__(self, metrics: ListenerMetrics, events: EventSink, limit: int, every: float = REPORT_EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._metrics = metrics
        self._events = events
        self._limit = limit
        self._every = every
        self._clock = clock
        self._unreported: Dict[str, int] = {}
        self._last_report: Dict[str, float] = {}
        self._timers: Dict[str, asyncio.TimerHandle] = {}
        self._sending: Set["asyncio.Task[None]"] = set()

    def record(self, reason: str = OVERLOAD) -> None:
        """Count one message dropped for ``reason``; report now, or when the current period ends."""
        self._metrics.messages_dropped += 1
        self._metrics.messages_dropped_by_reason[reason] += 1
        self._unreported[reason] = self._unreported.get(reason, 0) + 1
        if reason in self._timers:
            return
        now = self._clock()
        last = self._last_report.get(reason)
        if last is None or now - last >= self._every:
            self._report(reason)
        else:
            self._timers[reason] = asyncio.get_running_loop().call_later(last + self._every - now, self._on_timer, reason)

    def _on_timer(self, reason: str) -> None:
        self._timers.pop(reason, None)
        if self._unreported.get(reason):
            self._report(reason)

    def _report(self, reason: str) -> None:
        count, self._unreported[reason] = self._unreported.get(reason, 0), 0
        self._last_report[reason] = self._clock()
        sending = asyncio.ensure_future(self._events.log(
            logging.WARNING, "messages_dropped", _REPORTS.get(reason, _REPORTS[OVERLOAD]), count, self._limit))
        self._sending.add(sending)
        sending.add_done_callback(self._sending.discard)
