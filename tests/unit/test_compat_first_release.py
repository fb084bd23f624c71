"""Drop-in behaviours of the first public release (1.0.x) that its users' code and test suite rely on,
and the duplicate rules the manual states ("skip" ignores duplicates silently; a duplicate changes nothing
of the first job)."""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import uuid
from pathlib import Path
from typing import Any, Dict, List
from unittest.mock import AsyncMock

import pytest

from Listener import EventListener, EventListenerConfig, JobStatus
from Listener.jobs import JobStore
from Listener.safe_config_parser import MAX_FILE_BYTES, ConfigParseError, ConfigSource, ParsedConfig, SafeConfigParser


def make_listener(**overrides: Any) -> EventListener:
    listener = EventListener(EventListenerConfig(host="test-host", client_id="compat-tests", **overrides))
    listener.client = AsyncMock()
    return listener


def published_json(listener: EventListener, topic: str) -> List[Dict[str, Any]]:
    return [json.loads(call.args[1]) for call in listener.client.publish.call_args_list if call.args[0] == topic]


# -- 1. generate_job_id ---------------------------------------------------------------------------------


def test_generate_job_id_is_none_when_generation_is_off() -> None:
    assert make_listener().generate_job_id() is None


def test_generate_job_id_is_a_fresh_uuid4_when_generation_is_on() -> None:
    listener = make_listener(allow_job_id_generation=True)
    first, second = listener.generate_job_id(), listener.generate_job_id()
    assert isinstance(first, str) and first != second
    assert uuid.UUID(first).version == 4


# -- 2. is_running can be assigned ----------------------------------------------------------------------


def test_is_running_can_be_set_and_stop_resets_it() -> None:
    listener = make_listener()
    listener.is_running = True
    assert listener.is_running is True
    listener.stop()
    assert listener.is_running is False


async def test_assigning_false_while_running_stops_the_listener() -> None:
    listener = make_listener()

    async def wait_forever() -> None:
        await asyncio.Event().wait()

    listener.client.deliver_message.side_effect = wait_forever
    listener.client.subscribe.return_value = [0]
    run = asyncio.create_task(listener.run(lambda data, job_id: None))
    await listener.wait_until_ready(5)
    assert listener.is_running is True
    listener.is_running = False
    await asyncio.wait_for(run, 5)
    assert listener.is_running is False
    listener.client.disconnect.assert_awaited_once()


# -- 3. ParsedConfig defaults ---------------------------------------------------------------------------


def test_parsed_config_validation_errors_default_to_none() -> None:
    parsed = ParsedConfig({"a": 1}, ConfigSource.DICT_OBJECT, "Dictionary object")
    assert parsed.validation_errors is None
    assert parsed.is_valid is True


# -- 4. _sanitize_path ----------------------------------------------------------------------------------


def test_sanitize_path_refuses_a_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigParseError, match="does not exist"):
        SafeConfigParser()._sanitize_path(tmp_path / "missing.toml")


def test_sanitize_path_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigParseError, match="not a file"):
        SafeConfigParser()._sanitize_path(str(tmp_path))


def test_sanitize_path_refuses_a_file_over_10_mib(tmp_path: Path) -> None:
    big = tmp_path / "big.toml"
    with open(big, "wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)  # sparse: no 10 MiB written
    with pytest.raises(ConfigParseError, match="too large"):
        SafeConfigParser()._sanitize_path(big)


def test_sanitize_path_accepts_a_file(tmp_path: Path) -> None:
    path = tmp_path / "ok.toml"
    path.write_text("a = 1\n", encoding="utf-8")
    assert SafeConfigParser()._sanitize_path(str(path)) == path.resolve()


# -- 5. _parse_toml_file reads through builtins.open ----------------------------------------------------


def test_parse_toml_file_reports_permission_denied_from_open_even_for_a_missing_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def deny(*_args: Any, **_kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(builtins, "open", deny)
    with pytest.raises(ConfigParseError, match="Permission denied"):
        SafeConfigParser()._parse_toml_file(tmp_path / "does-not-exist.toml")


def test_parse_toml_file_reports_other_os_errors_with_their_message(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.toml"
    path.write_text("a = 1\n", encoding="utf-8")

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise OSError("Disk quota exceeded on the test volume")

    monkeypatch.setattr(builtins, "open", broken)
    with pytest.raises(ConfigParseError, match="Disk quota exceeded on the test volume"):
        SafeConfigParser()._parse_toml_file(path)


def test_parse_toml_file_opens_the_file_with_builtins_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.toml"
    path.write_text('name = "x"\n', encoding="utf-8")
    real_open = builtins.open
    opened: List[Any] = []

    def recording_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", recording_open)
    assert SafeConfigParser()._parse_toml_file(path) == {"name": "x"}
    assert [Path(p) for p in opened] == [path]


# -- duplicates -----------------------------------------------------------------------------------------


def test_a_duplicate_keeps_the_first_jobs_completion_time_and_result() -> None:
    store = JobStore(max_jobs=5, ttl_seconds=60)
    store.insert("a", {"v": 1})
    store.set_status("a", JobStatus.COMPLETED, result={"answer": 42})
    job = store.get("a")
    assert job is not None
    completed_at = job.completed_at
    assert completed_at is not None
    store.mark_duplicate("a")
    assert (job.status, job.completed_at, job.result) == (JobStatus.DUPLICATE, completed_at, {"answer": 42})


def test_a_duplicate_of_a_failed_job_keeps_its_error_and_completion_time() -> None:
    store = JobStore(max_jobs=5, ttl_seconds=60)
    store.insert("f", None)
    store.set_status("f", JobStatus.FAILED, error="boom")
    job = store.get("f")
    assert job is not None
    completed_at = job.completed_at
    store.mark_duplicate("f")
    assert (job.status, job.completed_at, job.error) == (JobStatus.DUPLICATE, completed_at, "boom")


async def test_skip_logs_a_duplicate_at_info_and_publishes_no_log_event(caplog: pytest.LogCaptureFixture) -> None:
    listener = make_listener(duplicate_action="skip")
    processor_calls: List[str] = []

    def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        processor_calls.append(job_id)
        return {"job_id": job_id, "n": len(processor_calls)}

    await listener._process_message({"job_id": "d-1"}, processor)
    first = (await listener.get_job_status("d-1"))
    assert first is not None and first.completed_at is not None
    completed_at = first.completed_at
    with caplog.at_level(logging.INFO, logger="Listener.event_listener"):
        await listener._process_message({"job_id": "d-1"}, processor)
    records = [r for r in caplog.records if "Duplicate job d-1" in r.getMessage()]
    assert [r.levelno for r in records] == [logging.INFO]
    assert processor_calls == ["d-1"]
    assert published_json(listener, "test/log") == []  # below the default log_topic_level (WARNING)
    assert published_json(listener, "test/error") == []
    job = await listener.get_job_status("d-1")
    assert job is not None
    assert (job.status, job.result, job.completed_at) == (JobStatus.DUPLICATE, {"job_id": "d-1", "n": 1}, completed_at)


async def test_skip_duplicates_reach_log_topic_when_info_is_asked_for() -> None:
    listener = make_listener(duplicate_action="skip", log_topic_level="INFO")
    await listener._process_message({"job_id": "d-2"}, lambda data, job_id: None)
    await listener._process_message({"job_id": "d-2"}, lambda data, job_id: None)
    events = [e for e in published_json(listener, "test/log") if e["event"] == "duplicate_job"]
    assert [e["level"] for e in events] == ["INFO"]


async def test_error_keeps_its_error_event_and_warning(caplog: pytest.LogCaptureFixture) -> None:
    listener = make_listener(duplicate_action="error")
    await listener._process_message({"job_id": "d-3"}, lambda data, job_id: {"ok": True})
    with caplog.at_level(logging.INFO, logger="Listener.event_listener"):
        await listener._process_message({"job_id": "d-3"}, lambda data, job_id: {"ok": False})
    assert [e["error_type"] for e in published_json(listener, "test/error")] == ["duplicate_job"]
    assert [e["level"] for e in published_json(listener, "test/log") if e["event"] == "duplicate_job"] == ["WARNING"]
    assert [r.levelno for r in caplog.records if "Duplicate job d-3" in r.getMessage()] == [logging.WARNING]
    job = await listener.get_job_status("d-3")
    assert job is not None and job.result == {"ok": True}
