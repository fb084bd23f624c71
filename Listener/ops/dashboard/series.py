"""Throughput and latency over the last minutes, sampled from the listener's metrics snapshot."""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Deque, Dict, List, Mapping, Optional, Tuple

__all__ = ["SAMPLE_INTERVAL", "SERIES_POINTS", "Series"]

#: Seconds between two samples.
SAMPLE_INTERVAL = 2.0
#: Samples kept: ten minutes at the default interval.
SERIES_POINTS = 300

_Totals = Tuple[float, float, float, float, Dict[str, float]]  # time, finished, failed, seconds, buckets


def _totals(metrics: Mapping[str, Any], now: float) -> _Totals:
    finished = metrics.get("jobs_finished") or {}
    histogram = metrics.get("processing_seconds") or {}
    buckets = {str(bound): float(count) for bound, count in dict(histogram.get("buckets") or {}).items()}
    return (now, float(sum(finished.values())), float(finished.get("failed", 0)), float(histogram.get("sum", 0.0)),
            buckets)


def _quantile_ms(before: Mapping[str, float], after: Mapping[str, float], quantile: float) -> Optional[float]:
    """The upper bound of the bucket holding ``quantile`` of the jobs finished between two histograms (ms)."""
    deltas = [(bound, after[bound] - before.get(bound, 0.0)) for bound in after]
    total = deltas[-1][1] if deltas else 0.0
    if total <= 0:
        return None
    for bound, cumulative in deltas:
        if cumulative >= quantile * total:
            return None if bound == "+Inf" else float(bound) * 1000.0
    return None


class Series:
    """Jobs per second, failures per second, mean and p95 processing time per interval (the chart's data).

    Counters that go down (a worker of a group restarted before its totals were kept) start a new interval
    rather than showing a negative rate.
    """

    def __init__(self, points: int = SERIES_POINTS) -> None:
        self._last: Optional[_Totals] = None
        self._rows: Deque[Tuple[float, float, float, Optional[float], Optional[float]]] = deque(maxlen=points)

    def sample(self, metrics: Mapping[str, Any], now: Optional[float] = None) -> None:
        """Add the interval since the previous sample (the first sample only sets the start)."""
        current = _totals(metrics, time.time() if now is None else now)
        last, self._last = self._last, current
        if last is None:
            return
        seconds = current[0] - last[0]
        finished, failed, spent = current[1] - last[1], current[2] - last[2], current[3] - last[3]
        if seconds <= 0 or finished < 0 or failed < 0:
            return
        mean_ms = spent / finished * 1000.0 if finished else None
        self._rows.append((round(current[0], 3), round(finished / seconds, 3), round(failed / seconds, 3),
                           None if mean_ms is None else round(mean_ms, 3), _quantile_ms(last[4], current[4], 0.95)))

    def as_dict(self) -> Dict[str, List[Any]]:
        """Columns for the chart: ``t`` (epoch seconds), ``jobs_per_s``, ``failed_per_s``, ``mean_ms``, ``p95_ms``."""
        columns: Dict[str, List[Any]] = {"t": [], "jobs_per_s": [], "failed_per_s": [], "mean_ms": [], "p95_ms": []}
        for row in self._rows:
            for name, value in zip(columns, row):
                columns[name].append(value)
        return columns
