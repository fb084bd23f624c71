"""Unit tests for Listener.core.backoff: the one exponential backoff with jitter (reconnects and job retries)."""

from __future__ import annotations

import pytest

from Listener.pipeline import runner
from Listener.core.backoff import backoff_delay


def test_base_scales_the_doubling_delays_up_to_the_cap() -> None:
    no_jitter = [backoff_delay(n, 60.0, jitter=lambda: 0.0, base=0.5) for n in range(1, 10)]
    assert no_jitter == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


@pytest.mark.parametrize("attempt", [1, 2, 5])
def test_jitter_takes_off_at_most_a_quarter(attempt: int) -> None:
    full = 0.2 * 2 ** (attempt - 1)
    assert backoff_delay(attempt, 100.0, jitter=lambda: 0.0, base=0.2) == pytest.approx(full)
    assert backoff_delay(attempt, 100.0, jitter=lambda: 1.0, base=0.2) == pytest.approx(0.75 * full)
    delays = [backoff_delay(attempt, 100.0, base=0.2) for _ in range(200)]
    assert all(0.75 * full <= delay <= full for delay in delays)
    assert len(set(delays)) > 1  # really random, so a crowd of retries spreads out


def test_base_zero_retries_at_once() -> None:
    assert backoff_delay(1, 300.0, base=0.0) == 0.0 and backoff_delay(7, 300.0, base=0.0) == 0.0


def test_a_long_run_of_failures_stays_at_the_cap_instead_of_overflowing() -> None:
    # Regression: 2.0 ** (attempt - 1) raised OverflowError from attempt 1025 on, which a listener with
    # reconnect_retries = -1 (retry forever) reaches after about three hours of outage at the default cap.
    assert backoff_delay(1025, 10.0, jitter=lambda: 0.0) == 10.0
    assert backoff_delay(10 ** 6, 10.0, jitter=lambda: 0.0) == 10.0


def test_the_runner_uses_the_shared_function() -> None:
    assert runner.backoff_delay is backoff_delay
