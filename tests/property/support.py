"""Shared pieces of the hostile-input tests: a listener with a recording mock client, strict JSON, an
independent model of what the listener must do with a payload (SPEC §4 steps 1-2), and a TOML writer
for generated documents."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any, Dict, List, Optional, Tuple
from unittest.mock import AsyncMock

import tomli

from Listener import EventListener, EventListenerConfig

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

Publication = Tuple[str, bytes, int, bool]


def make_listener(**overrides: Any) -> EventListener:
    """A listener whose ``client`` is an AsyncMock: ``client.publish`` records (topic, payload, qos, retain)."""
    options: Dict[str, Any] = {"host": "test-host", "client_id": "hostile-tests", "topic": "jobs/#",
                               "error_topic": ERROR_TOPIC, "log_topic": LOG_TOPIC, "results_topic": RESULTS_TOPIC}
    options.update(overrides)
    listener = EventListener(EventListenerConfig(**options))
    listener.client = AsyncMock()
    return listener


def publications(listener: EventListener) -> List[Publication]:
    return [tuple(call.args) for call in listener.client.publish.call_args_list]  # type: ignore[misc]


def _reject_constant(token: str) -> Any:
    raise ValueError(f"bare {token} is not valid JSON")


def strict_json(payload: bytes) -> Any:
    """Parse like a strict JSON reader: UTF-8 only, no NaN / Infinity / -Infinity tokens."""
    assert isinstance(payload, bytes), f"payload must be bytes, got {type(payload).__name__}"
    return json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)


def events_on(listener: EventListener, topic: str) -> List[Dict[str, Any]]:
    """Every publication on ``topic``, strictly parsed."""
    return [strict_json(payload) for t, payload, _, _ in publications(listener) if t == topic]


def error_events(listener: EventListener) -> List[Dict[str, Any]]:
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


# -- writing TOML -------------------------------------------------------------------------------------

def toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def toml_value(value: Any) -> str:
    """An inline TOML value for a bool, int, float, str, datetime, date, time, list or dict."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def toml_document(document: Dict[str, Any], headers: bool = False) -> str:
    """A TOML document; with ``headers``, top-level tables become ``[section]`` blocks."""
    lines: List[str] = []
    sections: List[Tuple[str, Dict[str, Any]]] = []
    for key, value in document.items():
        if headers and isinstance(value, dict):
            sections.append((key, value))
        else:
            lines.append(f"{toml_string(key)} = {toml_value(value)}")
    for key, table in sections:
        lines.append(f"[{toml_string(key)}]")
        lines.extend(f"{toml_string(k)} = {toml_value(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"
