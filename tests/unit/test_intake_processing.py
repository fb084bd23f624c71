"""Unit tests for Listener.intake (payload → job data and id) and Listener.processing (calling processors)."""

from __future__ import annotations

import asyncio
import functools
import re
import threading
from pathlib import Path
from typing import Any, Dict

import pytest

from Listener.events import ErrorType
from Listener.intake import MAX_JOB_ID_LENGTH, RejectedMessage, decode_payload, generate_job_id, resolve_job_id
from Listener.processing import call_processor, describe_exception, is_async_callable
from Listener.safe_config_parser import SafeConfigParser


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


# -- is_async_callable ----------------------------------------------------------------------------


def sync_processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
    return {"job_id": job_id, "thread": threading.get_ident()}


async def async_processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
    return {"job_id": job_id, "thread": threading.get_ident()}


class Worker:
    def __init__(self) -> None:
        self.seen: list[str] = []

    async def handle(self, data: Dict[str, Any], job_id: str) -> str:
        self.seen.append(job_id)
        return f"async:{job_id}"

    def handle_sync(self, data: Dict[str, Any], job_id: str) -> str:
        self.seen.append(job_id)
        return f"sync:{job_id}"


class AsyncCallable:
    async def __call__(self, data: Dict[str, Any], job_id: str) -> str:
        return f"called:{job_id}"


class SyncCallable:
    def __call__(self, data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        return {"job_id": job_id, "thread": threading.get_ident()}


class SyncCallableWithFuncAttribute:
    """A sync callable object that happens to keep an async function in an attribute named ``func``."""

    def __init__(self) -> None:
        self.func = async_processor

    def __call__(self, data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        return {"job_id": job_id, "thread": threading.get_ident()}


def test_is_async_callable() -> None:
    worker = Worker()
    assert is_async_callable(async_processor)
    assert not is_async_callable(sync_processor)
    assert is_async_callable(worker.handle)
    assert not is_async_callable(worker.handle_sync)
    assert is_async_callable(functools.partial(async_processor))
    assert is_async_callable(functools.partial(functools.partial(async_processor), {}))
    assert not is_async_callable(functools.partial(sync_processor, {}))
    assert is_async_callable(AsyncCallable())
    assert not is_async_callable(SyncCallable())
    assert is_async_callable(lambda d, j: None) is False
    assert not is_async_callable(print)
    assert not is_async_callable(None)


def test_sync_callable_with_a_func_attribute_is_not_async() -> None:
    # Only functools.partial objects should be unwrapped through ``.func``.
    assert not is_async_callable(SyncCallableWithFuncAttribute())


# -- call_processor -------------------------------------------------------------------------------


async def test_sync_processor_runs_off_the_event_loop_thread() -> None:
    loop_thread = threading.get_ident()
    result = await call_processor(sync_processor, {"a": 1}, "job-1")
    assert result["job_id"] == "job-1"
    assert result["thread"] != loop_thread


async def test_sync_callable_object_runs_off_the_event_loop_thread() -> None:
    loop_thread = threading.get_ident()
    result = await call_processor(SyncCallable(), {}, "job-2")
    assert result["thread"] != loop_thread


async def test_sync_callable_with_func_attribute_runs_off_the_event_loop_thread() -> None:
    loop_thread = threading.get_ident()
    result = await call_processor(SyncCallableWithFuncAttribute(), {}, "job-3")
    assert result == {"job_id": "job-3", "thread": result["thread"]}
    assert result["thread"] != loop_thread


async def test_async_processor_is_awaited_on_the_loop() -> None:
    loop_thread = threading.get_ident()
    result = await call_processor(async_processor, {}, "job-4")
    assert result == {"job_id": "job-4", "thread": loop_thread}


async def test_async_variants_are_awaited() -> None:
    worker = Worker()
    assert await call_processor(worker.handle, {}, "m") == "async:m"
    assert await call_processor(functools.partial(Worker.handle, worker), {}, "p") == "async:p"
    assert await call_processor(AsyncCallable(), {}, "c") == "called:c"
    assert await call_processor(worker.handle_sync, {}, "s") == "sync:s"
    assert worker.seen == ["m", "p", "s"]


async def test_processor_receives_data_and_job_id() -> None:
    seen = []

    def record(data: Dict[str, Any], job_id: str) -> None:
        seen.append((data, job_id))

    data = {"x": 1, "_topic": "jobs/in"}
    assert await call_processor(record, data, "job-5") is None
    assert seen == [(data, "job-5")] and seen[0][0] is data


async def test_sync_function_returning_an_awaitable_is_awaited() -> None:
    def returns_coroutine(data: Dict[str, Any], job_id: str) -> Any:
        return async_processor(data, job_id)

    result = await call_processor(returns_coroutine, {}, "job-6")
    assert result["job_id"] == "job-6"


async def test_exceptions_propagate() -> None:
    def boom(data: Dict[str, Any], job_id: str) -> None:
        raise ValueError("sync boom")

    async def aboom(data: Dict[str, Any], job_id: str) -> None:
        raise KeyError("async boom")

    with pytest.raises(ValueError, match="sync boom"):
        await call_processor(boom, {}, "j")
    with pytest.raises(KeyError, match="async boom"):
        await call_processor(aboom, {}, "j")


async def test_slow_sync_processor_does_not_block_the_loop() -> None:
    loop = asyncio.get_running_loop()
    started = asyncio.Event()
    release = threading.Event()

    def blocking(data: Dict[str, Any], job_id: str) -> str:
        loop.call_soon_threadsafe(started.set)
        assert release.wait(timeout=30)
        return "done"

    task = asyncio.ensure_future(call_processor(blocking, {}, "slow"))
    await started.wait()  # the loop keeps serving callbacks while the processor blocks its own thread
    assert not task.done()
    release.set()
    assert await task == "done"


# -- describe_exception ---------------------------------------------------------------------------


@pytest.mark.parametrize("exc,expected", [
    (ValueError("bad value"), "ValueError: bad value"),
    (ValueError(), "ValueError"),
    (KeyError("k"), "KeyError: 'k'"),
    (RuntimeError(""), "RuntimeError"),
    (ZeroDivisionError("division by zero"), "ZeroDivisionError: division by zero"),
    (asyncio.CancelledError(), "CancelledError"),
])
def test_describe_exception(exc: BaseException, expected: str) -> None:
    assert describe_exception(exc) == expected


def test_describe_exception_has_no_traceback() -> None:
    try:
        raise TypeError("inner")
    except TypeError as exc:
        text = describe_exception(exc)
    assert text == "TypeError: inner" and "Traceback" not in text and "\n" not in text
