"""Passwords written into a URI never reach a message, whatever they contain (issue 9, item 9).

``mqtt://user:aB3/xYz9+Q==@host:1883`` (a ``/`` in a base64 password) failed validation with the whole
URI quoted, and ``mqtt://svc:pa ss@host`` (a space) was shown by repr, str, redacted_dict and check-config.
"""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import Iterator

import pytest

from Listener import EventListenerConfig
from Listener.cli.command import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, main
from Listener.errors import ConfigError
from Listener.ops.json_logging import JsonLogFormatter, RedactingTextFormatter, mask_secrets
from Listener.core.redaction import SecretRedactingFilter, mask_uri_credentials, redact


SLASH_URI = "mqtt://user:aB3/xYz9+Q==@host:1883"
SLASH_PARTS = ("aB3", "xYz9", "Q==")
SPACE_URI = "mqtt://svc:pa ss@host"
SPACE_PARTS = ("pa ss", ":pa ", " ss@")


@pytest.fixture(autouse=True)
def no_mqtt_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("MQTT_"):
            monkeypatch.delenv(name)
    yield


def assert_hidden(text: str, parts: tuple[str, ...]) -> None:
    for part in parts:
        assert part not in text, f"{part!r} leaked in {text!r}"


@pytest.mark.parametrize("text, expected", [
    (SLASH_URI, "mqtt://user:***@host:1883"),
    (SPACE_URI, "mqtt://svc:***@host"),
    (f"uri={SPACE_URI!r}, port=1", "uri='mqtt://svc:***@host', port=1"),
    ("mqtt://u:a#b?c@h/p", "mqtt://u:***@h/p"),
    ("mqtt://u:p@q r@h:1883 x", "mqtt://u:***@h:1883 x"),
    ("mqtt://u:has://inside@h", "mqtt://u:***@h"),
    ("two: mqtt://a:x y@h1 and 'wss://b:p/q@h2/mqtt'", "two: mqtt://a:***@h1 and 'wss://b:***@h2/mqtt'"),
    ("line one mqtt://h:1883\nmail me@example.com", "line one mqtt://h:1883\nmail me@example.com"),
    ("ws://token@h/mqtt", "ws://token@h/mqtt"),
])
def test_the_userinfo_ends_at_the_last_at_sign_of_the_uri(text: str, expected: str) -> None:
    assert mask_uri_credentials(text) == expected
    assert redact(text) == expected and mask_secrets(text) == expected


def test_masking_errs_towards_hiding_more() -> None:
    # No way to tell a password with a space from a later "@" on the same line: hide, never leak.
    assert mask_uri_credentials("mqtt://h:1883 ask admin@example.com") == "mqtt://h:***@example.com"


def test_a_slash_in_the_password_is_refused_without_quoting_it() -> None:
    with pytest.raises(ConfigError) as info:
        EventListenerConfig(uri=SLASH_URI)
    message = str(info.value)
    assert_hidden(message, SLASH_PARTS)
    assert message.startswith("Invalid uri: 'mqtt://user:***@host:1883'") and "percent-encode" in message


@pytest.mark.parametrize("uri", ["mqtt://user:aB3x@host:99999", "mqtt://user:aB3x@[::1:1883", "mqtt://u:aB3x@h:p0rt"])
def test_urllib_errors_are_not_quoted(uri: str) -> None:
    # urllib's own messages quote the port it could not read, which is where a mangled password lands.
    with pytest.raises(ConfigError) as info:
        EventListenerConfig(uri=uri)
    assert "aB3x" not in str(info.value) and "Invalid uri" in str(info.value)


def test_control_characters_in_the_uri_are_refused_and_not_shown() -> None:
    with pytest.raises(ConfigError) as info:
        EventListenerConfig(uri="mqtt://u:sec\nret@h")
    assert "sec" not in str(info.value) and "ret@" not in str(info.value) and "control characters" in str(info.value)


def test_a_space_in_the_password_is_hidden_by_repr_str_and_redacted_dict() -> None:
    config = EventListenerConfig(uri=SPACE_URI)
    assert config.uri == SPACE_URI  # the value itself is used as given
    for text in (repr(config), str(config), repr(config.redacted_dict()), json.dumps(config.redacted_dict())):
        assert_hidden(text, SPACE_PARTS)
    assert config.redacted_dict()["uri"] == "mqtt://svc:***@host"
    assert "uri='mqtt://svc:***@host'" in repr(config)


def test_other_fields_holding_uris_are_masked_in_errors_and_repr() -> None:
    with pytest.raises(ConfigError) as info:
        EventListenerConfig(error_topic=SPACE_URI + "/#")  # a wildcard: refused, and the URI masked
    assert_hidden(str(info.value), SPACE_PARTS)
    config = EventListenerConfig(additional_headers={"x": 1}, client_id=SPACE_URI)
    assert_hidden(repr(config), SPACE_PARTS)


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_check_config_does_not_show_either_password(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path / "bad.toml", f'uri = "{SLASH_URI}"\n')
    assert main(["check-config", bad]) == EXIT_FAILURE
    captured = capsys.readouterr()
    assert_hidden(captured.out + captured.err, SLASH_PARTS)
    assert "Invalid uri" in captured.err and "user:***@host:1883" in captured.err

    spaced = write(tmp_path / "spaced.toml", f'uri = "{SPACE_URI}"\n')
    for output_format in ("toml", "json"):
        assert main(["check-config", spaced, "--format", output_format]) == EXIT_OK
        captured = capsys.readouterr()
        assert_hidden(captured.out + captured.err, SPACE_PARTS)
        assert "mqtt://svc:***@host" in captured.out


@pytest.mark.parametrize("uri, parts", [(SLASH_URI, SLASH_PARTS), ("mqtt://user:aB3 x/yZ@host:1883", ("aB3", "yZ"))])
def test_run_does_not_print_the_password_on_stderr(uri: str, parts: tuple[str, ...],
                                                   capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["run", "json:dumps", "--set", f"uri={uri}"]) == EXIT_USAGE
    monkeypatch.setenv("MQTT_URI", uri)
    assert main(["run", "json:dumps"]) == EXIT_USAGE
    captured = capsys.readouterr()
    assert_hidden(captured.out + captured.err, parts)
    assert captured.err.count("invalid configuration: Invalid uri") == 2


@pytest.mark.parametrize("uri, parts", [(SLASH_URI, SLASH_PARTS), (SPACE_URI, SPACE_PARTS)])
def test_log_records_mentioning_the_uri_are_masked(uri: str, parts: tuple[str, ...]) -> None:
    record = logging.LogRecord("amqtt.client", logging.WARNING, __file__, 1, "Connecting to %s failed", (uri,), None)
    for formatter in (JsonLogFormatter(), RedactingTextFormatter()):
        assert_hidden(formatter.format(record), parts)
    try:
        raise ConnectionError(f"cannot reach {uri}")
    except ConnectionError:
        import sys
        failing = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", None, sys.exc_info())
    text = JsonLogFormatter(include_traceback=True).format(failing)
    assert_hidden(text, parts)
    assert "***" in json.loads(text)["exc_message"]
    SecretRedactingFilter().filter(record)
    assert_hidden(record.getMessage(), parts)


def test_text_logging_of_the_config_itself_is_masked() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingTextFormatter())
    log = logging.getLogger("test.uri_masking")
    log.addHandler(handler)
    try:
        log.warning("config: %s / %s", EventListenerConfig(uri=SPACE_URI), SPACE_URI)
    finally:
        log.removeHandler(handler)
    assert_hidden(stream.getvalue(), SPACE_PARTS)
    assert stream.getvalue().count("svc:***@host") == 2
