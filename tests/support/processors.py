"""Processors the tests run: one that counts its runs and can hold jobs back, one that fails its first calls."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any, Dict, List, Optional, Tuple

from Listener import ReturnType, create_return_type

__all__ = ["CountingProcessor", "Flaky"]


class CountingProcessor:
    """A sync processor that counts its runs per job id (:attr:`runs`, and :attr:`order` of arrival).

    It returns ``{"job_id": ...}`` (published on the results topic), or with ``topic`` a :class:`ReturnType`
    ``{"job_id": ..., "topic": <the job's topic>}`` on ``topic`` at ``qos`` and ``retain``.
    ``hold``: job ids whose run waits until :attr:`release` is set (:attr:`started` is set when one begins).
    ``seconds``: how long every other run takes.
    """

    def __init__(self, topic: Optional[str] = None, qos: int = 1, retain: bool = False, hold: Tuple[str, ...] = (),
                 seconds: float = 0.0) -> None:
        self.topic = topic
        self.qos = qos
        self.retain = retain
        self.hold = hold
        self.seconds = seconds
        self.runs: Counter[str] = Counter()
        self.order: List[str] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, data: Dict[str, Any], job_id: str) -> Any:
        with self._lock:
            self.runs[job_id] += 1
            self.order.append(job_id)
        if job_id in self.hold:
            self.started.set()
            if not self.release.wait(60):
                raise RuntimeError("never released")
        elif self.seconds:
            time.sleep(self.seconds)
        if self.topic is None:
            return {"job_id": job_id}
        result: ReturnType = create_return_type({"job_id": job_id, "topic": data.get("_topic")}, self.topic,
                                                qos=self.qos, retain=self.retain)
        return result

    def ran_twice(self) -> List[str]:
        """Job ids that ran more than once."""
        with self._lock:
            return sorted(job_id for job_id, count in self.runs.items() if count > 1)

    def ran(self) -> List[str]:
        """Job ids that ran at least once."""
        with self._lock:
            return sorted(self.runs)


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
