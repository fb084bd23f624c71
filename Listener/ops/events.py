"""What the listener reports: its log lines and the JSON error and log events it publishes (SPEC §8).

:class:`EventSink` is the one place that logs, redacts and mirrors a record to ``log_topic`` or
``error_topic``; the rest of the library says *what* happened and never formats an event itself.
"""

from __future__ import annotations

import enum
import logging
from datetime import datetime, timezone
from typing import Any, Dict, Optional, Protocol, Tuple

from ..core.redaction import redact
from .metrics import ListenerMetrics

__all__ = ["ErrorType", "EventSender", "EventSink", "error_event", "log_event", "utc_timestamp"]


class EventSender(Protocol):
    """Publishes event bodies (the listener's :class:`~Listener.mqtt.publisher.Publisher`)."""

    async def send_event(self, topic: str, body: Dict[str, Any]) -> None:
        """Publish one event body to ``topic`` (kept during an outage; never raises)."""


class ErrorType(str, enum.Enum):
    """The ``error_type`` values of error events (each compares equal to its string)."""

    #: Not UTF-8, not TOML, or a job id field of the wrong kind.
    INVALID_PAYLOAD = "invalid_payload"
    #: Larger than ``max_payload_bytes``.
    PAYLOAD_TOO_LARGE = "payload_too_large"
    #: No job id and ``allow_job_id_generation`` off.
    MISSING_JOB_ID = "missing_job_id"
    #: A known job id arrived again with ``duplicate_action = "error"``.
    DUPLICATE_JOB = "duplicate_job"
    #: The processor raised, or its result could not be encoded.
    PROCESSING_ERROR = "processing_error"
    #: A result could not be published.
    PUBLISH_ERROR = "publish_error"
    #: The job ran longer than ``job_timeout``.
    TIMEOUT = "timeout"

    def __str__(self) -> str:
        return str(self.value)


def utc_timestamp() -> str:
    """The current time as ISO 8601 in UTC."""
    return datetime.now(timezone.utc).isoformat()


def error_event(job_id: Optional[str], error_type: str, error_message: str, topic: str,
                **fields: Any) -> Dict[str, Any]:
    """An error event: what went wrong with which message, without a stack trace (``fields``: optional extras)."""
    body: Dict[str, Any] = {
        "job_id": job_id,
        "status": "error",
        "error_type": str(error_type),
        "error_message": error_message,
        "topic": topic,
        "timestamp": utc_timestamp(),
    }
    body.update(fields)
    return body


def log_event(event: str, level: str, job_id: Optional[str] = None, status: Optional[str] = None,
              duration_ms: Optional[float] = None, **fields: Any) -> Dict[str, Any]:
    """A log event mirroring one of the listener's own log records."""
    body: Dict[str, Any] = {"event": event, "level": level, "job_id": job_id, "status": status,
                            "timestamp": utc_timestamp()}
    if duration_ms is not None:
        body["duration_ms"] = round(duration_ms, 3)
    body.update(fields)
    return body


class EventSink:
    """Logs a record, redacted, and mirrors it as a JSON event when it reaches ``log_topic_level``.

    Args:
        logger: where the records go.
        secrets: strings masked in every text (the passwords in use).
        log_topic, error_topic: where events are published (an empty ``log_topic`` turns log events off).
        log_topic_level: the lowest level mirrored to ``log_topic``.
        metrics: counts error events by type.
        sender: publishes the event bodies.
    """

    def __init__(self, logger: logging.Logger, secrets: Tuple[str, ...], log_topic: str, error_topic: str,
                 log_topic_level: int, metrics: ListenerMetrics, sender: EventSender) -> None:
        self.logger = logger
        self.secrets = secrets
        self.log_topic = log_topic
        self.error_topic = error_topic
        self.level = log_topic_level
        self._metrics = metrics
        self._sender = sender

    def redact(self, text: str) -> str:
        """``text`` with every secret and URI password masked."""
        return redact(text, self.secrets)

    def info_wanted(self) -> bool:
        """Whether an INFO record goes anywhere (checked before building the one each job may emit)."""
        return self.logger.isEnabledFor(logging.INFO) or (self.level <= logging.INFO and bool(self.log_topic))

    async def log(self, level: int, event: str, message: str, *args: Any, job_id: Optional[str] = None,
                  status: Optional[str] = None, duration_ms: Optional[float] = None, topic: Optional[str] = None,
                  publish: bool = True) -> None:
        """Log ``message % args`` and publish it as the log event ``event`` (unless ``publish`` is off).

        The text is only formatted when the level is enabled: this runs for every job.
        """
        if self.logger.isEnabledFor(level):
            text = message % args if args else message
            self.logger.log(level, "%s", self.redact(text), extra={"job_id": job_id, "event": event, "topic": topic})
        if publish and level >= self.level and self.log_topic:
            body = log_event(event, logging.getLevelName(level), job_id, status, duration_ms)
            await self._sender.send_event(self.log_topic, body)

    async def error(self, job_id: Optional[str], error_type: ErrorType, message: str, topic: Optional[str],
                    **fields: Any) -> None:
        """Count and publish an error event on ``error_topic`` (its message redacted; ``fields`` added as they are)."""
        error_type = ErrorType(error_type)
        self._metrics.errors[error_type.value] += 1
        body = error_event(job_id, error_type.value, self.redact(message), topic or "", **fields)
        await self._sender.send_event(self.error_topic, body)

    async def publication_dropped(self, topic: str, size: int, qos: int, job_id: Optional[str], reason: str) -> None:
        """A kept publication the publisher gave up on (its sending kept ending the connection): a
        ``publish_error`` event and an ERROR log event."""
        what = f"the result of job {job_id}" if job_id is not None else "a publication"
        text = f"Dropped {what} to {topic!r} ({size} bytes, QoS {qos}): {reason}"
        await self.error(job_id, ErrorType.PUBLISH_ERROR, text, None)
        await self.log(logging.ERROR, "publish_dropped", "%s", text, job_id=job_id)
