"""Unit tests for Listener.ops.json_logging: one JSON object per line, context fields, exceptions, secrets masked."""

from __future__ import annotations

import io
import json
import logging
import sys
from datetime import datetime, timedelta, timezone
from typing import Any, Dict

import pytest

from Listener.core import redaction
from Listener.ops.json_logging import (JsonLogFormatter, RedactingTextFormatter, configure_json_logging, configure_logging,
                                       configure_text_logging, logging_config, mask_secrets)


SECRET = "pw-Zq81-never-shown"


def make_record(message: str = "hello %s", args: Any = ("world",), level: int = logging.INFO,
                exc_info: Any = None, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("Listener.test", level, __file__, 42, message, args, exc_info)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def formatted(record: logging.LogRecord, **options: Any) -> Dict[str, Any]:
    line = JsonLogFormatter(**options).format(record)
    assert "\n" not in line
    body: Dict[str, Any] = json.loads(line)
    return body


def boom() -> Any:
    try:
        raise ValueError(f"cannot reach mqtt://user:{SECRET}@broker:1883")
    except ValueError:
        return sys.exc_info()


# -- the shape of a line ------------------------------------------------------------------------------


def test_a_record_becomes_one_json_object_with_the_standard_fields() -> None:
    body = formatted(make_record())
    assert body["message"] == "hello world"
    assert body["level"] == "INFO"
    assert body["logger"] == "Listener.test"
    stamp = datetime.fromisoformat(body["timestamp"])
    assert stamp.utcoffset() == timedelta(0)
    assert abs(datetime.now(timezone.utc) - stamp) < timedelta(minutes=1)
    assert set(body) == {"timestamp", "level", "logger", "message"}


def test_context_fields_are_copied_when_present_and_not_none() -> None:
    body = formatted(make_record(job_id="task-1", event="job_completed", topic="jobs/in", duration_ms=12.5))
    assert body["job_id"] == "task-1"
    assert body["event"] == "job_completed"
    assert body["topic"] == "jobs/in"
    assert body["duration_ms"] == 12.5
    assert "job_id" not in formatted(make_record(job_id=None, event="listener_started"))


def test_multiline_messages_stay_on_one_line_and_non_ascii_is_kept() -> None:
    line = JsonLogFormatter().format(make_record("first\nsecond – ünïcode", ()))
    assert line.count("\n") == 0
    assert json.loads(line)["message"] == "first\nsecond – ünïcode"


def test_a_broken_format_string_does_not_lose_the_record() -> None:
    body = formatted(make_record("%d items", ("not a number",)))
    assert "%d items" in body["message"]


def test_non_json_context_values_become_strings() -> None:
    body = formatted(make_record(job_id=object(), topic=b"raw"))
    assert body["job_id"].startswith("<object object")
    assert body["topic"] == "b'raw'"


def test_custom_context_fields() -> None:
    body = formatted(make_record(tenant="acme", job_id="x"), context_fields=("tenant",))
    assert body["tenant"] == "acme"
    assert "job_id" not in body


# -- exceptions -----------------------------------------------------------------------------------


def test_exception_info_is_a_type_and_message_pair_without_traceback_by_default() -> None:
    body = formatted(make_record("failed", (), level=logging.ERROR, exc_info=boom()))
    assert body["exc_type"] == "ValueError"
    assert body["exc_message"] == "cannot reach mqtt://user:***@broker:1883"
    assert "traceback" not in body


def test_traceback_only_on_request_and_masked() -> None:
    body = formatted(make_record("failed", (), level=logging.ERROR, exc_info=boom()), include_traceback=True)
    assert "Traceback (most recent call last)" in body["traceback"]
    assert "ValueError" in body["traceback"]
    assert SECRET not in body["traceback"]


def test_stack_info_only_with_tracebacks() -> None:
    record = make_record()
    record.stack_info = "Stack (most recent call last):\n  frame"
    assert "stack" not in formatted(record)
    assert formatted(record, include_traceback=True)["stack"].startswith("Stack")


# -- secrets ----------------------------------------------------------------------------------------


def test_given_secrets_are_masked_everywhere() -> None:
    record = make_record("connecting with %s", (SECRET,), job_id=f"job-{SECRET}", topic=f"t/{SECRET}",
                         exc_info=boom())
    line = JsonLogFormatter(secrets=[SECRET, ""]).format(record)
    assert SECRET not in line
    body = json.loads(line)
    assert body["message"] == "connecting with ***"
    assert body["job_id"] == "job-***"


def test_uri_credentials_are_masked_without_being_told_the_secret() -> None:
    body = formatted(make_record("broker is %s", ("mqtts://alice:hunter2@host:8883",)))
    assert body["message"] == "broker is mqtts://alice:***@host:8883"


@pytest.mark.parametrize("text, expected", [
    ("password=hunter2", "password=***"),
    ("PASSWORD = hunter2 and more", "PASSWORD = *** and more"),
    ("token: abc.def.ghi", "token: ***"),
    ('{"secret": "two words", "x": 1}', '{"secret": "***", "x": 1}'),
    ("{'password': 'hunter2'}", "{'password': '***'}"),
    ("api_key=K123&next=1", "api_key=***&next=1"),
    ("client_key=abc, other", "client_key=***, other"),
    ("mqtt_password=abc", "mqtt_password=***"),
    ("auth_token='t0k'", "auth_token='***'"),
])
def test_password_like_assignments_are_masked(text: str, expected: str) -> None:
    assert mask_secrets(text) == expected


@pytest.mark.parametrize("text", [
    "monkey=banana", "keep_alive=10", "keyfile=/etc/listener/client.key", "password is required",
    "Job task-1 completed", "job_id = \"x\"",
])
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert mask_secrets(text) == text


def test_text_formatter_masks_the_same_way() -> None:
    formatter = RedactingTextFormatter(secrets=(SECRET,))
    line = formatter.format(make_record("login password=%s as %s", ("hunter2", SECRET), exc_info=boom()))
    assert "hunter2" not in line and SECRET not in line
    assert "INFO Listener.test: login password=*** as ***" in line
    assert "ValueError" in line  # the text format keeps the traceback


# -- installing it ----------------------------------------------------------------------------------


def test_configure_json_logging_installs_one_handler_and_is_idempotent(root_logger: logging.Logger) -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_json_logging("debug", secrets=[SECRET], stream=first)
    handler = configure_json_logging("INFO", secrets=[SECRET], stream=second)
    ours = [h for h in root_logger.handlers if isinstance(h.formatter, JsonLogFormatter)]
    assert ours == [handler]
    assert root_logger.level == logging.INFO
    logging.getLogger("Listener.somewhere").info("using %s", SECRET, extra={"job_id": "j-1", "event": "x"})
    logging.getLogger("Listener.somewhere").debug("not shown")
    assert first.getvalue() == ""
    [line] = second.getvalue().splitlines()
    body = json.loads(line)
    assert body["message"] == "using ***"
    assert body["job_id"] == "j-1"
    assert body["logger"] == "Listener.somewhere"


def test_configure_text_logging_replaces_the_json_handler(root_logger: logging.Logger) -> None:
    stream = io.StringIO()
    configure_json_logging(stream=io.StringIO())
    configure_text_logging(logging.WARNING, secrets=[SECRET], stream=stream)
    assert not [h for h in root_logger.handlers if isinstance(h.formatter, JsonLogFormatter)]
    logging.getLogger("Listener.x").warning("secret=%s", "abc")
    assert stream.getvalue().rstrip().endswith("WARNING Listener.x: secret=***")


def test_one_dictconfig_set_up_with_the_one_redaction_filter() -> None:
    config = logging_config("json", "debug", secrets=[SECRET, ""])
    assert config["version"] == 1 and config["disable_existing_loggers"] is False
    assert config["root"] == {"level": "DEBUG", "handlers": ["listener"]}
    assert config["handlers"]["listener"]["filters"] == ["redact"]
    assert isinstance(config["filters"]["redact"]["()"](), redaction.SecretRedactingFilter)
    assert isinstance(config["formatters"]["listener"]["()"](), JsonLogFormatter)
    assert isinstance(logging_config("text")["formatters"]["listener"]["()"](), RedactingTextFormatter)
    with pytest.raises(ValueError, match="log_format"):
        logging_config("xml")


def test_configure_logging_keeps_the_applications_handlers_and_logger_levels(root_logger: logging.Logger) -> None:
    theirs, ours = io.StringIO(), io.StringIO()
    application = logging.StreamHandler(theirs)
    root_logger.addHandler(application)
    logging.getLogger("amqtt.example").setLevel(logging.ERROR)
    try:
        handler = configure_logging("text", "INFO", secrets=["ext://sys.stdout"], stream=ours)
        assert application in root_logger.handlers and handler in root_logger.handlers
        assert handler.filters and isinstance(handler.filters[0], redaction.SecretRedactingFilter)
        assert logging.getLogger("amqtt.example").level == logging.ERROR
        logging.getLogger("Listener.x").info("connecting with token=abc to ext://sys.stdout")
    finally:
        logging.getLogger("amqtt.example").setLevel(logging.NOTSET)
    # The filter rewrote the record before any handler formatted it: the application's handler is masked too.
    assert "token=***" in theirs.getvalue() and "abc" not in theirs.getvalue()
    assert ours.getvalue().rstrip().endswith("INFO Listener.x: connecting with token=*** to ***")
