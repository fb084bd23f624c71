"""The JSON error and log events the listener publishes (SPEC §8 shapes)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Dict, Optional

__all__ = ["ErrorType", "error_event", "log_event", "utc_timestamp"]


class ErrorType:
    """The ``error_type`` values of error events."""

    INVALID_PAYLOAD = "invalid_payload"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    MISSING_JOB_ID = "missing_job_id"
    DUPLICATE_JOB = "duplicate_job"
    PROCESSING_ERROR = "processing_error"
    PUBLISH_ERROR = "publish_error"
    TIMEOUT = "timeout"


def utc_timestamp() -> str:
    """The current time as ISO 8601 in UTC."""
    return datetime.now(timezone.utc).isoformat()


def error_event(job_id: Optional[str], error_type: str, error_message: str, topic: str) -> Dict[str, Any]:
    """An error event: what went wrong with which message, without a stack trace."""
    return {
        "job_id": job_id,
        "status": "error",
        "error_type": error_type,
        "error_message": error_message,
        "topic": topic,
        "timestamp": utc_timestamp(),
    }


def log_event(event: str, level: str, job_id: Optional[str] = None, status: Optional[str] = None,
              duration_ms: Optional[float] = None, **fields: Any) -> Dict[str, Any]:
    """A log event mirroring one of the listener's own log records."""
    body: Dict[str, Any] = {"event": event, "level": level, "job_id": job_id, "status": status,
                            "timestamp": utc_timestamp()}
    if duration_ms is not None:
        body["duration_ms"] = round(duration_ms, 3)
    body.update(fields)
    return body
