"""Unit tests for Listener.pipeline.payloads: payload → job data and job id."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict

import pytest

from Listener.ops.events import ErrorType
from Listener.pipeline.payloads import (LARGE_PAYLOAD_BYTES, MAX_JOB_ID_LENGTH, RejectedMessage, decode_payload,
                                        decode_payload_now, generate_job_id, resolve_job_id)
from Listener.config.parser import SafeConfigParser


MIB = 1024 * 1024
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture
def parser() -> SafeConfigParser:
    return SafeConfigParser()


def rejected(payload: Any, parser: SafeConfigParser, max_bytes: int = MIB) -> RejectedMessage:
    with pytest.raises(RejectedMessage) as info:
        decode_payload(payload, parser, max_bytes)
    return info.value


# -- decode_payload -------------------------------------------------------------------------------


def test_valid_toml_bytes(parser: SafeConfigParser) -> None:
    data = decode_payload(b'job_id = "j-1"\ncount = 3\n[options]\nfast = true\n', parser, MIB)
    assert data == {"job_id": "j-1", "count": 3, "options": {"fast": True}}


@pytest.mark.parametrize("payload", [bytearray(b'job_id = "j"'), memoryview(b'job_id = "j"'), 'job_id = "j"'])
def test_other_payload_types(parser: SafeConfigParser, payload: Any) -> None:
    assert decode_payload(payload, parser, MIB) == {"job_id": "j"}


def test_utf8_text(parser: SafeConfigParser) -> None:
    assert decode_payload('name = "Zoë €"'.encode("utf-8"), parser, MIB) == {"name": "Zoë €"}


def test_empty_payload_is_an_empty_document(parser: SafeConfigParser) -> None:
    assert decode_payload(b"", parser, MIB) == {}


def test_decode_now_parses_a_small_payload_and_leaves_a_large_one_untouched(
        parser: SafeConfigParser, monkeypatch: pytest.MonkeyPatch) -> None:
    assert decode_payload_now(b"", parser, MIB) == {}  # an empty document is a result, not "do it in a thread"
    assert decode_payload_now(b'job_id = "j"', parser, MIB) == {"job_id": "j"}
    parsed = []
    monkeypatch.setattr(parser, "parse_config_from_string", lambda text: parsed.append(text) or {})
    assert decode_payload_now(b"#" * (LARGE_PAYLOAD_BYTES + 1), parser, MIB) is None and parsed == []


def test_payload_over_the_limit(parser: SafeConfigParser) -> None:
    payload = b'k = "' + b"x" * 100 + b'"'
    error = rejected(payload, parser, max_bytes=len(payload) - 1)
    assert error.error_type == ErrorType.PAYLOAD_TOO_LARGE == "payload_too_large"
    assert str(len(payload)) in error.message and str(len(payload) - 1) in error.message
    assert str(error) == error.message and error.job_id is None
    assert decode_payload(payload, parser, len(payload)) == {"k": "x" * 100}  # exactly at the limit


def test_str_payload_size_counts_utf8_bytes(parser: SafeConfigParser) -> None:
    payload = 'k = "' + "€" * 10 + '"'  # 16 characters, 36 bytes
    assert rejected(payload, parser, max_bytes=20).error_type == ErrorType.PAYLOAD_TOO_LARGE


def test_payload_over_one_mib_by_default(parser: SafeConfigParser) -> None:
    payload = b"k = 1\n" + b"#" * MIB
    assert rejected(payload, parser).error_type == "payload_too_large"


def test_limit_above_the_parsers_cannot_be_configured() -> None:
    # The TOML parser refuses strings over 1 MiB, so a larger payload limit could never be honoured.
    from Listener import ConfigError, EventListenerConfig
    with pytest.raises(ConfigError, match="max_payload_bytes"):
        EventListenerConfig(max_payload_bytes=2 * MIB)
    assert EventListenerConfig(max_payload_bytes=MIB).max_payload_bytes == MIB


@pytest.mark.parametrize("payload", [b"\xff\xfe", b'job_id = "\xc3"', b"k = 1\n\x80"])
def test_non_utf8(parser: SafeConfigParser, payload: bytes) -> None:
    error = rejected(payload, parser)
    assert error.error_type == ErrorType.INVALID_PAYLOAD == "invalid_payload"
    assert "UTF-8" in error.message


@pytest.mark.parametrize("payload", [b"not toml at all", b"[[[[", b"a = ", b'a = 1\na = 2', b"{}", b'{"job_id": 1}'])
def test_invalid_toml(parser: SafeConfigParser, payload: bytes) -> None:
    error = rejected(payload, parser)
    assert error.error_type == "invalid_payload"
    assert error.message


def test_payload_naming_an_existing_file_is_parsed_as_text(parser: SafeConfigParser, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "server.toml"
    secret.write_text('leaked = "from the file"\njob_id = "file-job"\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    for payload in (str(secret).encode("utf-8"), b"server.toml", str(secret)):
        try:
            data = decode_payload(payload, parser, MIB)
        except RejectedMessage as exc:
            assert exc.error_type == "invalid_payload"
        else:  # only reached if the path happened to be valid TOML
            assert "leaked" not in data and data.get("job_id") != "file-job"


# -- resolve_job_id -------------------------------------------------------------------------------


@pytest.mark.parametrize("value,expected", [
    ("abc-123", "abc-123"),
    (42, "42"),
    (0, "0"),
    (-7, "-7"),
    (1.5, "1.5"),
    (True, "True"),
    ("x" * MAX_JOB_ID_LENGTH, "x" * MAX_JOB_ID_LENGTH),
])
def test_job_id_from_field(value: Any, expected: str) -> None:
    assert resolve_job_id({"job_id": value, "other": 1}, "job_id", False) == expected
    assert resolve_job_id({"job_id": value}, "job_id", True) == expected


def test_custom_job_id_field() -> None:
    assert resolve_job_id({"task": "t-1", "job_id": "ignored"}, "task", False) == "t-1"


@pytest.mark.parametrize("data", [{}, {"job_id": ""}, {"job_id": None}, {"other": "x"}])
def test_missing_job_id_without_generation(data: Dict[str, Any]) -> None:
    with pytest.raises(RejectedMessage) as info:
        resolve_job_id(data, "job_id", False)
    assert info.value.error_type == ErrorType.MISSING_JOB_ID == "missing_job_id"
    assert "job_id" in info.value.message


def test_empty_job_id_is_reported_as_empty_not_missing() -> None:
    with pytest.raises(RejectedMessage) as empty:
        resolve_job_id({"job_id": ""}, "job_id", False)
    assert empty.value.error_type == ErrorType.MISSING_JOB_ID
    assert "empty 'job_id'" in empty.value.message and "has no" not in empty.value.message
    with pytest.raises(RejectedMessage) as absent:
        resolve_job_id({"task": "x"}, "task_id", False)
    assert "has no 'task_id' field" in absent.value.message


@pytest.mark.parametrize("data", [{}, {"job_id": ""}, {"job_id": None}])
def test_missing_job_id_with_generation(data: Dict[str, Any]) -> None:
    first = resolve_job_id(data, "job_id", True)
    second = resolve_job_id(data, "job_id", True)
    assert UUID4.match(first) and UUID4.match(second)
    assert first != second


def test_generate_job_id_is_uuid4() -> None:
    ids = {generate_job_id() for _ in range(100)}
    assert len(ids) == 100 and all(UUID4.match(i) for i in ids)


@pytest.mark.parametrize("value,kind", [({"a": 1}, "table"), ([1, 2], "array"), ([], "array")])
def test_table_or_array_job_id_rejected(value: Any, kind: str) -> None:
    for allow in (False, True):
        with pytest.raises(RejectedMessage) as info:
            resolve_job_id({"job_id": value}, "job_id", allow)
        assert info.value.error_type == "invalid_payload"
        assert kind in info.value.message and "job_id" in info.value.message


def test_over_long_job_id_rejected() -> None:
    with pytest.raises(RejectedMessage) as info:
        resolve_job_id({"job_id": "x" * (MAX_JOB_ID_LENGTH + 1)}, "job_id", True)
    assert info.value.error_type == "invalid_payload"
    assert str(MAX_JOB_ID_LENGTH) in info.value.message


def test_rejected_message_carries_job_id() -> None:
    error = RejectedMessage("duplicate_job", "seen before", job_id="j-1")
    assert (error.error_type, error.message, error.job_id) == ("duplicate_job", "seen before", "j-1")
    assert str(error) == "seen before"
