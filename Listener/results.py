"""What a processor returns, and the manual's helpers for building it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Dict, Optional

__all__ = ["ReturnType", "create_error_result", "create_return_type"]


@dataclass
class ReturnType:
    """A processor's result: ``data`` is published as JSON to ``topic``.

    An empty ``topic`` means the listener's ``results_topic``; a ``job_id`` of None is filled in
    with the job's id when the result is published.
    """

    data: Dict[str, Any]
    topic: str = ""
    qos: int = 0
    retain: bool = False
    message_id: int = field(default_factory=lambda: int(time.time()))
    timestamp: datetime = field(default_factory=datetime.now)
    job_id: Optional[str] = None


def create_return_type(data: Dict[str, Any], topic: str, job_id: Optional[str] = None,
                       qos: int = 0, retain: bool = False) -> ReturnType:
    """Helper to create a :class:`ReturnType` stamped with the current time."""
    return ReturnType(data=data, topic=topic, qos=qos, retain=retain, message_id=int(time.time()),
                      timestamp=datetime.now(), job_id=job_id)


def create_error_result(job_id: str, error_message: str, error_type: str = "processing_error") -> ReturnType:
    """Helper to create an error result on the ``errors`` topic at QoS 1 (manual §7.4.1)."""
    return create_return_type(
        data={
            "job_id": job_id,
            "status": "error",
            "error_type": error_type,
            "error_message": error_message,
            "timestamp": datetime.now().isoformat(),
        },
        topic="errors",
        job_id=job_id,
        qos=1,
    )
