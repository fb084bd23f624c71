"""Counters the listener keeps about itself, and the snapshot ``EventListener.metrics()`` returns.

Plain integers and a fixed-bucket histogram: recording costs a few attribute updates on the
event loop, so the numbers are always on, with no dependency.
"""

from __future__ import annotations

import bisect
from collections import Counter
from typing import Any, Dict, List, Tuple

__all__ = ["DURATION_BUCKETS", "ListenerMetrics"]

#: Upper bounds (seconds) of the processing-time histogram buckets; the last bucket is +Inf.
DURATION_BUCKETS: Tuple[float, ...] = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ListenerMetrics:
    """Running totals since the listener was created (never reset by reconnects)."""

    def __init__(self) -> None:
        self.messages_received = 0
        self.messages_rejected = 0
        self.messages_dropped = 0
        #: ``messages_dropped`` by reason (see :mod:`Listener.ops.drops`).
        self.messages_dropped_by_reason: Counter[str] = Counter()
        self.own_messages_ignored = 0
        self.own_echoes_ignored = 0
        self.jobs_finished: Counter[str] = Counter()
        #: Retries started (a job run three times counts two).
        self.jobs_retried = 0
        self.errors: Counter[str] = Counter()
        self.publishes = 0
        self.publish_errors = 0
        self.publishes_retried = 0
        self.publishes_refused = 0
        self.reconnects = 0
        self.connection_losses = 0
        self.abandoned_threads = 0
        self._bucket_counts: List[int] = [0] * (len(DURATION_BUCKETS) + 1)
        self._duration_sum = 0.0

    def observe_duration(self, seconds: float) -> None:
        """Record one job's processing time."""
        self._bucket_counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        self._duration_sum += seconds

    def histogram(self) -> Dict[str, Any]:
        """Processing times: cumulative counts per upper bound (Prometheus style), sum and count."""
        cumulative: List[Tuple[str, int]] = []
        running = 0
        for bound, count in zip(DURATION_BUCKETS + (float("inf"),), self._bucket_counts):
            running += count
            cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return {"buckets": dict(cumulative), "sum": round(self._duration_sum, 6), "count": running}

    def snapshot(self, jobs_by_status: Dict[str, int], in_flight: int, queue_depth: int,
                 connected: bool, ready: bool, draining: bool) -> Dict[str, Any]:
        """Every counter as plain JSON-ready values, with the current state given by the listener."""
        return {
            "messages_received": self.messages_received,
            "messages_rejected": self.messages_rejected,
            "messages_dropped": self.messages_dropped,
            "messages_dropped_by_reason": dict(self.messages_dropped_by_reason),
            "own_messages_ignored": self.own_messages_ignored,
            "own_echoes_ignored": self.own_echoes_ignored,
            "jobs": dict(jobs_by_status),
            "jobs_finished": dict(self.jobs_finished),
            "jobs_retried": self.jobs_retried,
            "errors": dict(self.errors),
            "processing_seconds": self.histogram(),
            "publishes": self.publishes,
            "publish_errors": self.publish_errors,
            "publishes_retried": self.publishes_retried,
            "publishes_refused": self.publishes_refused,
            "reconnects": self.reconnects,
            "connection_losses": self.connection_losses,
            "abandoned_threads": self.abandoned_threads,
            "in_flight": in_flight,
            "queue_depth": queue_depth,
            "connected": connected,
            "ready": ready,
            "draining": draining,
        }
