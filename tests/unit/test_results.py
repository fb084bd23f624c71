"""Unit tests for Listener.results: ReturnType, create_return_type and create_error_result."""

from __future__ import annotations

import time
from datetime import datetime

from Listener import ReturnType, create_error_result, create_return_type
from Listener.core.serialization import to_json_bytes
from tests.support.strict_json import strict_json


def test_return_type_defaults() -> None:
    before = int(time.time())
    result = ReturnType(data={"v": 1})
    after = int(time.time())
    assert result.data == {"v": 1}
    assert result.topic == "" and result.qos == 0 and result.retain is False and result.job_id is None
    assert isinstance(result.message_id, int) and before <= result.message_id <= after
    assert isinstance(result.timestamp, datetime)


def test_return_type_manual_full_construction() -> None:
    job_id = "job-123"
    data = {"status": "processed", "data": {"x": 1}}
    now = datetime.now()
    result = ReturnType(data=data, topic="results/processed", qos=1, retain=False,
                        message_id=int(time.time()), timestamp=now, job_id=job_id)
    assert (result.data, result.topic, result.qos, result.retain, result.timestamp, result.job_id) == (
        data, "results/processed", 1, False, now, job_id)
    result.job_id = "other"  # a plain mutable dataclass
    assert result.job_id == "other"


def test_create_return_type_defaults() -> None:
    before = datetime.now()
    result = create_return_type({"a": 1}, "out/topic")
    assert isinstance(result, ReturnType)
    assert result.data == {"a": 1} and result.topic == "out/topic"
    assert result.job_id is None and result.qos == 0 and result.retain is False
    assert before <= result.timestamp <= datetime.now()
    assert abs(result.message_id - time.time()) < 60


def test_create_return_type_all_arguments() -> None:
    result = create_return_type({"a": 1}, "out", "job-7", 2, True)
    assert (result.job_id, result.qos, result.retain) == ("job-7", 2, True)
    result = create_return_type(data={}, topic="t", job_id="j", qos=1, retain=False)
    assert (result.job_id, result.qos, result.retain) == ("j", 1, False)


def test_create_error_result() -> None:
    result = create_error_result("job-5", "division by zero")
    assert isinstance(result, ReturnType)
    assert result.topic == "errors" and result.qos == 1 and result.retain is False and result.job_id == "job-5"
    assert set(result.data) == {"job_id", "status", "error_type", "error_message", "timestamp"}
    assert result.data["job_id"] == "job-5"
    assert result.data["status"] == "error"
    assert result.data["error_type"] == "processing_error"
    assert result.data["error_message"] == "division by zero"
    datetime.fromisoformat(result.data["timestamp"])
    assert strict_json(to_json_bytes(result.data)) == result.data


def test_create_error_result_custom_type() -> None:
    result = create_error_result("job-6", "bad input", error_type="validation_error")
    assert result.data["error_type"] == "validation_error"
