"""Unit tests for Listener.ops.drops: QoS 0 drops counted at once, reported at most once per period."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, List, Tuple

from Listener.ops.drops import DropReporter
from Listener.ops.metrics import ListenerMetrics


class FakeEvents:
    def __init__(self) -> None:
        self.logged: List[Tuple[int, str, str]] = []

    async def log(self, level: int, event: str, message: str, *args: Any, **_: Any) -> None:
        self.logged.append((level, event, message % args))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_every_drop_is_counted_and_reports_are_rate_limited() -> None:
    metrics, events, clock = ListenerMetrics(), FakeEvents(), Clock()
    reporter = DropReporter(metrics, events, 500, every=0.05, clock=clock)  # type: ignore[arg-type]
    reporter.record()  # the first drop after a quiet period is reported at once
    for _ in range(9):
        reporter.record()
    await asyncio.sleep(0)
    assert metrics.messages_dropped == 10
    assert [(level, event) for level, event, _ in events.logged] == [(logging.WARNING, "messages_dropped")]
    assert events.logged[0][2].startswith("1 QoS 0 message(s) dropped") and "500" in events.logged[0][2]
    clock.now += 0.05  # the period ends: the nine since are reported even though no drop follows
    await asyncio.sleep(0.1)
    assert len(events.logged) == 2 and events.logged[1][2].startswith("9 QoS 0 message(s) dropped")
    await asyncio.sleep(0.1)
    assert len(events.logged) == 2  # nothing new, nothing reported


async def test_drops_are_counted_and_reported_by_reason() -> None:
    """A QoS 0 message with DUP set was dropped with a WARNING line and counted nowhere."""
    metrics, events, clock = ListenerMetrics(), FakeEvents(), Clock()
    reporter = DropReporter(metrics, events, 500, every=10.0, clock=clock)  # type: ignore[arg-type]
    reporter.record()
    reporter.record("dup_qos0")  # its own period: reported at once, not folded into the overload's next report
    reporter.record("dup_qos0")
    await asyncio.sleep(0)
    assert metrics.messages_dropped == 3
    assert metrics.messages_dropped_by_reason == {"max_pending_messages": 1, "dup_qos0": 2}
    assert metrics.snapshot({}, 0, 0, True, True, False)["messages_dropped_by_reason"] == {
        "max_pending_messages": 1, "dup_qos0": 2}
    assert [message.split(":")[0] for _, _, message in events.logged] == [
        "1 QoS 0 message(s) dropped", "1 QoS 0 message(s) with the DUP flag set dropped"]
    assert "MQTT-3.3.1-2" in events.logged[1][2]
