"""Exponential backoff with jitter: one function, for reconnecting and for retrying failed jobs."""

from __future__ import annotations

import random
from typing import Callable

__all__ = ["backoff_delay"]

# 2**62 seconds outlasts any cap; a larger exponent would only risk OverflowError (2.0 ** 1024 raises).
_MAX_EXPONENT = 62


def backoff_delay(attempt: int, cap: float, jitter: Callable[[], float] = random.random, *, base: float = 1.0) -> float:
    """Seconds to wait after the ``attempt``-th failure in a row (``attempt`` ≥ 1).

    min(``cap``, ``base`` × 2^(attempt-1)), less up to a quarter at random, so that many listeners
    cut off by the same outage (or jobs failing on the same dependency) do not all come back at the
    same instant. ``jitter`` returns a number in [0, 1).
    """
    exponent = min(max(attempt - 1, 0), _MAX_EXPONENT)
    return min(cap, base * 2.0 ** exponent) * (1.0 - 0.25 * jitter())
