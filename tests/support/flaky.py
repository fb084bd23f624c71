"""A processor that fails its first calls, for the retry tests."""

from __future__ import annotations

import time
from typing import Any, Dict, List


class Flaky:
    """Fails its first ``failures`` calls with ``ConnectionResetError("upstream down (call N)")``, then
    returns ``{"job_id": …, "attempts": N}``; records when each call started (``time.monotonic()``)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: List[float] = []

    def __call__(self, data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        self.calls.append(time.monotonic())
        if len(self.calls) <= self.failures:
            raise ConnectionResetError(f"upstream down (call {len(self.calls)})")
        return {"job_id": job_id, "attempts": len(self.calls)}
