"""Unit tests for Listener.ops.events: ErrorType, the error and log event bodies, and the EventSink."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, List, Tuple

import pytest

from Listener.ops.events import ErrorType, EventSink, error_event, log_event, utc_timestamp
from Listener.ops.metrics import ListenerMetrics
from Listener.core.serialization import to_json_bytes
from tests.support.strict_json import strict_json


ERROR_KEYS = {"job_id", "status", "error_type", "error_message", "topic", "timestamp"}
LOG_KEYS = {"event", "level", "job_id", "status", "timestamp"}


def assert_utc_iso(timestamp: str) -> None:
    parsed = datetime.fromisoformat(timestamp)
    assert parsed.tzinfo is not None and parsed.utcoffset() == timedelta(0)
    assert abs(datetime.now(timezone.utc) - parsed) < timedelta(minutes=5)


def test_utc_timestamp() -> None:
    assert_utc_iso(utc_timestamp())


@pytest.mark.parametrize("error_type", [ErrorType.INVALID_PAYLOAD, ErrorType.PAYLOAD_TOO_LARGE,
                                        ErrorType.MISSING_JOB_ID, ErrorType.DUPLICATE_JOB,
                                        ErrorType.PROCESSING_ERROR, ErrorType.PUBLISH_ERROR])
def test_error_event_shape(error_type: str) -> None:
    body = error_event("job-1", error_type, "went wrong", "jobs/in")
    assert set(body) == ERROR_KEYS
    assert body["job_id"] == "job-1" and body["status"] == "error"
    assert body["error_type"] == error_type and body["error_message"] == "went wrong"
    assert body["topic"] == "jobs/in"
    assert_utc_iso(body["timestamp"])
    assert strict_json(to_json_bytes(body)) == body


def test_error_types_are_the_spec_values() -> None:
    values = {v for k, v in vars(ErrorType).items() if k.isupper()}
    assert values == {"invalid_payload", "payload_too_large", "missing_job_id", "duplicate_job",
                      "processing_error", "publish_error", "timeout"}


def test_error_event_without_job_id_is_null() -> None:
    body = error_event(None, ErrorType.INVALID_PAYLOAD, "bad TOML", "t")
    assert body["job_id"] is None
    assert b'"job_id":null' in to_json_bytes(body)


def test_log_event_shape_without_duration() -> None:
    body = log_event("listener_started", "INFO")
    assert set(body) == LOG_KEYS
    assert (body["event"], body["level"], body["job_id"], body["status"]) == ("listener_started", "INFO", None, None)
    assert_utc_iso(body["timestamp"])


def test_log_event_shape_with_duration() -> None:
    body = log_event("job_completed", "INFO", job_id="j-9", status="completed", duration_ms=12.345678)
    assert set(body) == LOG_KEYS | {"duration_ms"}
    assert body["job_id"] == "j-9" and body["status"] == "completed"
    assert body["duration_ms"] == 12.346
    assert log_event("x", "INFO", duration_ms=0.0)["duration_ms"] == 0.0


def test_log_event_extra_fields() -> None:
    body = log_event("connection_down", "WARNING", reason="timeout")
    assert set(body) == LOG_KEYS | {"reason"} and body["reason"] == "timeout"


def test_error_type_is_a_str_enum() -> None:
    assert ErrorType.TIMEOUT == "timeout" and str(ErrorType.PUBLISH_ERROR) == "publish_error"
    assert ErrorType("duplicate_job") is ErrorType.DUPLICATE_JOB
    assert json.dumps({"t": ErrorType.TIMEOUT}) == '{"t": "timeout"}'


async def test_the_event_sink_logs_redacts_and_mirrors_at_its_level(caplog: pytest.LogCaptureFixture) -> None:
    sent: List[Tuple[str, Dict[str, Any]]] = []

    class Sender:
        async def send_event(self, topic: str, body: Dict[str, Any]) -> None:
            sent.append((topic, body))

    metrics = ListenerMetrics()
    sink = EventSink(logging.getLogger("test.sink"), ("s3cret",), "t/log", "t/err", logging.WARNING, metrics, Sender())
    with caplog.at_level(logging.INFO, "test.sink"):
        await sink.log(logging.INFO, "quiet", "not mirrored %s", "s3cret")
        await sink.log(logging.ERROR, "loud", "mirrored", job_id="j", status="failed", duration_ms=1.23456)
        await sink.log(logging.ERROR, "local", "not published", publish=False)
        await sink.error("j", ErrorType.TIMEOUT, "password s3cret leaked", "in/t")
    assert "not mirrored ***" in caplog.text and "s3cret" not in caplog.text
    assert [(topic, body.get("event")) for topic, body in sent] == [("t/log", "loud"), ("t/err", None)]
    assert sent[0][1]["duration_ms"] == 1.235 and sent[0][1]["status"] == "failed"
    assert sent[1][1]["error_type"] == "timeout" and sent[1][1]["error_message"] == "password *** leaked"
    assert metrics.errors == {"timeout": 1}
    assert not sink.info_wanted() or logging.getLogger("test.sink").isEnabledFor(logging.INFO)


async def test_a_dropped_publication_is_a_publish_error_event_and_an_error_log_event() -> None:
    sent: List[Tuple[str, Dict[str, Any]]] = []

    class Sender:
        async def send_event(self, topic: str, body: Dict[str, Any]) -> None:
            sent.append((topic, body))

    metrics = ListenerMetrics()
    sink = EventSink(logging.getLogger("test.sink"), (), "t/log", "t/err", logging.WARNING, metrics, Sender())
    await sink.publication_dropped("results/big", 2048, 1, "big-1", "given up after 2 attempts")
    [(error_topic, error), (log_topic, log)] = sent
    assert (error_topic, error["error_type"], error["job_id"]) == ("t/err", "publish_error", "big-1")
    assert error["error_message"] == ("Dropped the result of job big-1 to 'results/big' (2048 bytes, QoS 1): "
                                      "given up after 2 attempts")
    assert (log_topic, log["event"], log["level"]) == ("t/log", "publish_dropped", "ERROR")
    assert metrics.errors["publish_error"] == 1
