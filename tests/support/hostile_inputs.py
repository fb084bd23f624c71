"""The hostile-input tests' model: an independent account of what the listener must do with a payload (SPEC §4
steps 1-2), the shape of its error events (SPEC §8), what a TOML value reads back as in its JSON, and a mocked
listener on the topics the model uses."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any, Dict, List, Optional

import tomli

from Listener import EventListener
from tests.support.mocked_listeners import mocked_listener, publications
from tests.support.strict_json import strict_json

__all__ = [
    "ERROR_KEYS", "ERROR_TOPIC", "ERROR_TYPES", "INTAKE_ERRORS", "LOG_TOPIC", "MAX_JOB_ID_LENGTH", "MAX_PAYLOAD",
    "RESULTS_TOPIC", "TOPIC", "Expected", "check_error_shape", "check_every_publication_is_strict_json", "error_events",
    "events_on", "expected_outcome", "hostile_listener", "jsonable",
]

#: The topic the model's jobs arrive on (under the listener's ``jobs/#``) and the listener's own topics.
TOPIC = "jobs/x"
ERROR_TOPIC = "out/error"
LOG_TOPIC = "out/log"
RESULTS_TOPIC = "out/results"
MAX_PAYLOAD = 1024 * 1024
MAX_JOB_ID_LENGTH = 1024
ERROR_KEYS = {"job_id", "status", "error_type", "error_message", "topic", "timestamp"}
ERROR_TYPES = {"invalid_payload", "payload_too_large", "missing_job_id", "duplicate_job", "processing_error",
               "publish_error", "timeout"}
INTAKE_ERRORS = {"invalid_payload", "payload_too_large", "missing_job_id"}


def hostile_listener(**overrides: Any) -> EventListener:
    """A mocked listener (:func:`~tests.support.mocked_listeners.mocked_listener`) subscribed to ``jobs/#``, with
    the model's error, log and results topics."""
    options: Dict[str, Any] = {"client_id": "hostile-tests", "topic": "jobs/#", "error_topic": ERROR_TOPIC,
                               "log_topic": LOG_TOPIC, "results_topic": RESULTS_TOPIC}
    options.update(overrides)
    return mocked_listener(**options)


def events_on(listener: EventListener, topic: str) -> List[Dict[str, Any]]:
    """Every publication on ``topic``, strictly parsed."""
    return [strict_json(payload) for t, payload, _, _ in publications(listener) if t == topic]


def error_events(listener: EventListener) -> List[Dict[str, Any]]:
    """Every error event, strictly parsed."""
    return events_on(listener, ERROR_TOPIC)


def check_error_shape(event: Dict[str, Any], topic: str = TOPIC) -> None:
    """SPEC §8: exactly these keys, these types, no stack trace."""
    assert set(event) == ERROR_KEYS, event
    assert event["status"] == "error"
    assert event["error_type"] in ERROR_TYPES, event
    assert event["job_id"] is None or isinstance(event["job_id"], str)
    assert isinstance(event["error_message"], str) and event["error_message"].strip()
    assert "Traceback" not in event["error_message"]
    assert event["topic"] == topic
    datetime.fromisoformat(event["timestamp"])


def check_every_publication_is_strict_json(listener: EventListener) -> None:
    """Every publication is strict JSON with a valid QoS and a bool retain flag."""
    for topic, payload, qos, retain in publications(listener):
        strict_json(payload)
        assert qos in (0, 1, 2) and isinstance(retain, bool), (topic, qos, retain)


def jsonable(value: Any) -> Any:
    """What the listener's JSON encoding of a TOML value must read back as (README "Results")."""
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [jsonable(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    return value


# -- the model: what SPEC §4 steps 1-2 say should happen to a payload ---------------------------------

@dataclass
class Expected:
    """The outcome a payload must have: an intake error type, or acceptance with ``data`` / ``job_id``."""

    error_type: Optional[str] = None
    data: Dict[str, Any] = field(default_factory=dict)
    job_id: Optional[str] = None  # None with error_type None: a generated id is expected


def expected_outcome(payload: bytes, max_payload: int = MAX_PAYLOAD, job_id_field: str = "job_id",
                     allow_generation: bool = False) -> Expected:
    """Decode UTF-8, parse TOML as text, find the job id: each failure is one specific error type."""
    if len(payload) > max_payload:
        return Expected("payload_too_large")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return Expected("invalid_payload")
    try:
        data = tomli.loads(text)
    except (ValueError, RecursionError):  # TOMLDecodeError is a ValueError, and so is int()'s digit limit
        return Expected("invalid_payload")
    value = data.get(job_id_field)
    if value is None or value == "":
        return Expected(None, data) if allow_generation else Expected("missing_job_id")
    if isinstance(value, (dict, list)) or len(str(value)) > MAX_JOB_ID_LENGTH:
        return Expected("invalid_payload")
    return Expected(None, data, str(value))
