"""Unit tests for Listener.ops.metrics."""

from __future__ import annotations

import pytest

from Listener.ops.metrics import ListenerMetrics


def test_histogram_is_cumulative() -> None:
    metrics = ListenerMetrics()
    for seconds in (0.0005, 0.003, 0.003, 2.0, 100.0):
        metrics.observe_duration(seconds)
    histogram = metrics.histogram()
    assert histogram["count"] == 5
    assert histogram["buckets"]["0.001"] == 1 and histogram["buckets"]["0.005"] == 3
    assert histogram["buckets"]["2.5"] == 4 and histogram["buckets"]["+Inf"] == 5
    assert histogram["sum"] == pytest.approx(102.0065)
