"""Hand-picked hostile payloads: too large, too deep, NUL bytes, bad UTF-8, file paths, odd job ids,
TOML datetimes and non-finite floats. Each must cost one clean error event (or be processed once),
never a crash, never a file read, never invalid JSON."""

from __future__ import annotations

import builtins
import gc
import io
import os
import time
import tracemalloc
from datetime import date, datetime, time as clock, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple, Union

import pytest

from Listener import EventListener, JobStatus, ReturnType
from tests.support.hostile_inputs import (
    ERROR_TOPIC, MAX_PAYLOAD, RESULTS_TOPIC, TOPIC, check_error_shape, check_every_publication_is_strict_json,
    error_events, events_on, hostile_listener, jsonable,
)
from tests.support.mocked_listeners import publications
from tests.support.strict_json import strict_json


DEPTH = 10_000
Calls = List[Tuple[Dict[str, Any], str]]


def recorder(calls: Calls, result: Callable[[Dict[str, Any], str], Any] = lambda data, job_id: {"echo": data}
             ) -> Callable[[Dict[str, Any], str], Any]:
    async def processor(data: Dict[str, Any], job_id: str) -> Any:
        calls.append((data, job_id))
        return result(data, job_id)
    return processor


async def rejected(payload: Union[bytes, str], **config: Any) -> Dict[str, Any]:
    """Process ``payload``, require exactly one error event and no processing; return the event."""
    listener = hostile_listener(**config)
    calls: Calls = []
    assert await listener._process_message(payload, recorder(calls), topic=TOPIC) is None
    check_every_publication_is_strict_json(listener)
    errors = error_events(listener)
    assert len(errors) == 1, errors
    check_error_shape(errors[0])
    assert calls == [] and listener.jobs == {}
    assert events_on(listener, RESULTS_TOPIC) == []
    return errors[0]


async def processed(payload: Union[bytes, str], **config: Any) -> Tuple[Dict[str, Any], str, Dict[str, Any]]:
    """Process ``payload``, require exactly one processor call, no error, one strict-JSON result."""
    listener = hostile_listener(**config)
    calls: Calls = []
    await listener._process_message(payload, recorder(calls), topic=TOPIC)
    check_every_publication_is_strict_json(listener)
    assert error_events(listener) == []
    assert len(calls) == 1
    data, job_id = calls[0]
    [result] = events_on(listener, RESULTS_TOPIC)
    assert listener.jobs[job_id].status is JobStatus.COMPLETED
    return data, job_id, result


async def still_works(listener: EventListener) -> None:
    """After a hostile message, an ordinary job is processed normally."""
    calls: Calls = []
    await listener._process_message(b'job_id = "after"', recorder(calls), topic=TOPIC)
    assert [job_id for _, job_id in calls] == ["after"]
    assert events_on(listener, RESULTS_TOPIC)[-1] == {"echo": {"job_id": "after", "_topic": TOPIC}}


# -- size -----------------------------------------------------------------------------------------------

def padded(size: int) -> bytes:
    """A valid TOML job of exactly ``size`` bytes (a comment fills it up)."""
    head = b'job_id = "big"\n#'
    return head + b"x" * (size - len(head))


async def test_payload_of_exactly_one_mebibyte_is_processed() -> None:
    payload = padded(MAX_PAYLOAD)
    assert len(payload) == MAX_PAYLOAD
    _, job_id, _ = await processed(payload)
    assert job_id == "big"


@pytest.mark.parametrize("payload", [
    pytest.param(padded(MAX_PAYLOAD + 1), id="one-byte-over"),
    pytest.param(padded(8 * MAX_PAYLOAD), id="eight-mebibytes"),
    pytest.param(b"\xff" * (MAX_PAYLOAD + 1), id="over-and-not-utf8"),
    # Fewer than 1 Mi characters, but more than 1 MiB once UTF-8 encoded.
    pytest.param('job_id = "wide"\n#' + "\u00e9" * (MAX_PAYLOAD // 2 + 10), id="str-over-in-utf8"),
])
async def test_payload_over_one_mebibyte_is_payload_too_large(payload: Union[bytes, str]) -> None:
    event = await rejected(payload)
    assert event["error_type"] == "payload_too_large" and event["job_id"] is None


async def test_huge_arrays_just_under_the_limit_are_processed_and_echoed() -> None:
    count = (MAX_PAYLOAD - 40) // 2
    payload = b'job_id = "arr"\nx = [' + b"7," * count + b"]"
    assert len(payload) <= MAX_PAYLOAD
    data, _, result = await processed(payload)
    assert len(data["x"]) == count and result["echo"]["x"] == [7] * count


async def test_many_keys_and_many_tables_are_processed() -> None:
    keys = "".join(f"k{i} = {i}\n" for i in range(40_000))
    tables = "".join(f"[t{i}]\nv = {i}\n" for i in range(20_000))
    data, _, _ = await processed(f'job_id = "wide"\n{keys}{tables}'.encode())
    assert data["k39999"] == 39_999 and data["t19999"] == {"v": 19_999}


# -- nesting --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    pytest.param("[" * DEPTH + "]" * DEPTH, id="arrays"),
    pytest.param("{a = " * DEPTH + "1" + "}" * DEPTH, id="inline-tables"),
    pytest.param("[{a = " * (DEPTH // 2) + "1" + "}]" * (DEPTH // 2), id="arrays-of-inline-tables"),
    pytest.param("[" * DEPTH, id="unclosed-arrays"),
])
async def test_deeply_nested_values_are_a_clear_invalid_payload_error(value: str) -> None:
    listener = hostile_listener()
    calls: Calls = []
    await listener._process_message(f'job_id = "deep"\nx = {value}\n'.encode(), recorder(calls), topic=TOPIC)
    [event] = error_events(listener)
    check_error_shape(event)
    assert event["error_type"] == "invalid_payload"
    assert calls == [] and listener.jobs == {}
    await still_works(listener)


def deep_header(depth: int) -> bytes:
    return ('job_id = "deep"\n[' + ".".join(["a"] * depth) + "]\nx = 1\n").encode()


def deep_dotted_key(depth: int) -> bytes:
    return ('job_id = "deep"\n' + ".".join(["a"] * depth) + " = 1\n").encode()


@pytest.mark.parametrize("payload", [pytest.param(deep_header(DEPTH), id="table-header"),
                                     pytest.param(deep_dotted_key(3000), id="dotted-key")])
async def test_deep_tables_from_dotted_keys_never_crash_and_cost_one_event(payload: bytes) -> None:
    """Valid TOML, 10,000 (3,000) tables deep: whatever the policy, one clean outcome and the loop goes on.

    Today such a message is accepted and the processor gets the deep dict; echoing it cannot be encoded
    (RecursionError inside json), so the job fails with one processing_error. Rejecting it up front as
    invalid_payload would satisfy this test as well.
    """
    listener = hostile_listener()
    calls: Calls = []
    await listener._process_message(payload, recorder(calls), topic=TOPIC)
    check_every_publication_is_strict_json(listener)
    [event] = error_events(listener)
    check_error_shape(event)
    if event["error_type"] == "invalid_payload":
        assert calls == [] and listener.jobs == {}
    else:
        assert event["error_type"] == "processing_error" and len(calls) == 1
        assert "JSON" in event["error_message"]
        assert listener.jobs["deep"].status is JobStatus.FAILED
    await still_works(listener)


async def test_deep_table_headers_are_rejected_as_invalid_payload() -> None:
    event = await rejected(deep_header(DEPTH))
    assert event["error_type"] == "invalid_payload"


@pytest.mark.parametrize("payload", [pytest.param(deep_dotted_key(5_000), id="dotted-key-10KB"),
                                     pytest.param(deep_header(60_000), id="table-header-120KB")])
async def test_deep_dotted_keys_cost_bounded_time_and_memory(payload: bytes) -> None:
    listener = hostile_listener()
    gc.collect()
    tracemalloc.start()
    started = time.perf_counter()
    try:
        await listener._process_message(payload, None, topic=TOPIC)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(error_events(listener)) <= 1
    assert elapsed < 1.0, f"{len(payload)} bytes of payload took {elapsed:.1f} s on the event loop"
    assert peak < 32 * 2 ** 20, f"{len(payload)} bytes of payload took {peak / 2 ** 20:.0f} MiB"


# -- bytes that are not text --------------------------------------------------------------------------------

@pytest.mark.parametrize("payload", [
    pytest.param(b'job_id = "a"\x00', id="nul-after-statement"),
    pytest.param(b'job_id = "a\x00b"', id="raw-nul-in-string"),
    pytest.param(b"\x00" * 64, id="only-nuls"),
    pytest.param(b'job_id\x00= "a"', id="nul-in-key"),
    pytest.param(b'job_id = "\xff"', id="invalid-byte"),
    pytest.param(b'job_id = "\xc0\xaf"', id="overlong-encoding"),
    pytest.param(b'job_id = "\xed\xa0\x80"', id="encoded-surrogate"),
    pytest.param(b'job_id = "\xe2\x82"', id="truncated-sequence"),
    pytest.param('job_id = "utf16"'.encode("utf-16"), id="utf-16"),
    pytest.param(b'job_id = "\\ud800"', id="escaped-surrogate"),
    pytest.param(b"job_id = 1" + b"0" * 5000, id="integer-with-5000-digits"),
])
async def test_binary_garbage_is_one_invalid_payload_error(payload: bytes) -> None:
    event = await rejected(payload)
    assert event["error_type"] == "invalid_payload" and event["job_id"] is None


async def test_escaped_nul_in_strings_round_trips_through_json() -> None:
    data, job_id, result = await processed(b'job_id = "a\\u0000b"\ntext = "x\\u0000y"')
    assert job_id == "a\x00b" and data["text"] == "x\x00y"
    assert result["echo"]["text"] == "x\x00y" and result["echo"]["job_id"] == "a\x00b"


async def test_a_utf8_byte_order_mark_gives_one_clean_outcome() -> None:
    listener = hostile_listener()
    calls: Calls = []
    await listener._process_message(b'\xef\xbb\xbfjob_id = "bom"', recorder(calls), topic=TOPIC)
    check_every_publication_is_strict_json(listener)
    outcomes = len(calls) + len(error_events(listener))
    assert outcomes == 1
    if calls:
        assert calls[0][1] == "bom"
    else:
        assert error_events(listener)[0]["error_type"] == "invalid_payload"


async def test_lone_surrogate_in_a_value_of_a_str_payload_fails_only_that_job() -> None:
    listener = hostile_listener()
    calls: Calls = []
    await listener._process_message('job_id = "s"\nx = "\udc80"', recorder(calls), topic=TOPIC)
    check_every_publication_is_strict_json(listener)
    [event] = error_events(listener)
    assert event["error_type"] == "processing_error" and event["job_id"] == "s"
    assert listener.jobs["s"].status is JobStatus.FAILED
    await still_works(listener)


async def test_lone_surrogate_in_the_job_id_of_a_str_payload_costs_one_error_event() -> None:
    listener = hostile_listener()
    await listener._process_message('job_id = "\ud800"', recorder([]), topic=TOPIC)
    assert len(error_events(listener)) == 1


# -- payloads that name files ---------------------------------------------------------------------------------

class FileGuard:
    """Records every attempt to open or stat the guarded paths (and refuses it)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *paths: Path) -> None:
        self.paths = {os.path.abspath(p) for p in paths}
        self.touched: List[Tuple[str, str]] = []
        for owner, name in ((builtins, "open"), (io, "open"), (os, "open"), (os, "stat"), (os, "lstat")):
            monkeypatch.setattr(owner, name, self._guard(name, getattr(owner, name)))

    def _guard(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(path: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(path, (str, bytes, os.PathLike)):
                text = os.fsdecode(path)
                if os.path.abspath(text) in self.paths:
                    self.touched.append((name, text))
                    raise PermissionError(f"test guard: {name}({text!r}) must not be called")
            return original(path, *args, **kwargs)
        return guarded


@pytest.fixture
def job_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tuple[Path, FileGuard]]:
    """A real TOML job file in the current directory; any access to it is recorded."""
    path = tmp_path / "job.toml"
    path.write_text('job_id = "from-file"\nsecret = "file-content"\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    yield path, FileGuard(monkeypatch, path)


@pytest.mark.parametrize("shape", ["absolute", "absolute-str", "file-uri", "trailing-newline", "relative"])
async def test_a_payload_naming_a_real_toml_file_is_invalid_toml_and_the_file_is_never_read(
        shape: str, job_file: Tuple[Path, FileGuard]) -> None:
    path, guard = job_file
    payload: Union[bytes, str] = {
        "absolute": str(path).encode(), "absolute-str": str(path), "file-uri": path.as_uri().encode(),
        "trailing-newline": (str(path) + "\n").encode(), "relative": path.name.encode(),
    }[shape]
    event = await rejected(payload)
    assert event["error_type"] == "invalid_payload"
    assert "file-content" not in event["error_message"] and "from-file" not in event["error_message"]
    assert guard.touched == []


async def test_a_payload_that_is_valid_toml_and_also_a_file_name_is_read_as_toml(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = 'job_id = "from-text"'
    (tmp_path / name).write_text('job_id = "from-file"\nsecret = "file-content"\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    guard = FileGuard(monkeypatch, tmp_path / name)
    data, job_id, _ = await processed(name.encode())
    assert job_id == "from-text" and "secret" not in data
    assert guard.touched == []


# -- job ids --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, error_type", [
    pytest.param("{a = 1}", "invalid_payload", id="inline-table"),
    pytest.param("[1, 2]", "invalid_payload", id="array"),
    pytest.param("[]", "invalid_payload", id="empty-array"),
    pytest.param("[[1], {a = 1}]", "invalid_payload", id="nested-array"),
    pytest.param('"' + "x" * 5000 + '"', "invalid_payload", id="5000-characters"),
    pytest.param('"' + "x" * 1025 + '"', "invalid_payload", id="1025-characters"),
    pytest.param("1" + "0" * 1100, "invalid_payload", id="1100-digit-integer"),
    pytest.param('""', "missing_job_id", id="empty-string"),
])
async def test_job_ids_that_cannot_be_ids_are_one_clean_error(value: str, error_type: str) -> None:
    event = await rejected(f"job_id = {value}\n".encode())
    assert event["error_type"] == error_type and event["job_id"] is None


@pytest.mark.parametrize("payload", [
    pytest.param(b"[job_id]\na = 1", id="table-header"),
    pytest.param(b"[[job_id]]\na = 1", id="array-of-tables"),
    pytest.param(b"job_id.a = 1", id="dotted-key"),
])
async def test_job_ids_defined_as_tables_are_one_invalid_payload_error(payload: bytes) -> None:
    event = await rejected(payload)
    assert event["error_type"] == "invalid_payload"


@pytest.mark.parametrize("value, expected", [
    pytest.param('"' + "x" * 1024 + '"', "x" * 1024, id="1024-characters"),
    pytest.param("0", "0", id="zero"),
    pytest.param("-9223372036854775808", "-9223372036854775808", id="min-int64"),
    pytest.param("1.5", "1.5", id="float"),
    pytest.param("nan", "nan", id="nan"),
    pytest.param("-inf", "-inf", id="minus-inf"),
    pytest.param("false", "False", id="bool"),
    pytest.param("1979-05-27", "1979-05-27", id="date"),
    pytest.param("07:32:00", "07:32:00", id="time"),
    pytest.param("1979-05-27T07:32:00Z", "1979-05-27 07:32:00+00:00", id="datetime"),
    pytest.param('"  "', "  ", id="blank"),
    pytest.param('"a/b/#/+"', "a/b/#/+", id="topic-characters"),
    pytest.param('"\\u202e\\u0000"', "\u202e\x00", id="control-characters"),
])
async def test_scalar_job_ids_become_clean_string_ids(value: str, expected: str) -> None:
    data, job_id, result = await processed(f"job_id = {value}\n".encode())
    assert isinstance(job_id, str) and job_id == expected
    assert result == {"echo": jsonable(data)} and data["_topic"] == TOPIC


# -- TOML dates and times, inf and nan ---------------------------------------------------------------------------

DATES_DOCUMENT = b"""
job_id = "dates"
odt = 1979-05-27T07:32:00Z
odt_offset = 1979-05-27T00:32:00.999999-07:00
odt_space = 1979-05-27 07:32:00+05:30
ldt = 1979-05-27T07:32:00
ld = 1979-05-27
lt = 00:32:00.5
in_array = [1979-05-27, 07:32:00]
[nested]
when = 2000-02-29T23:59:59.123456Z
"""


@pytest.mark.parametrize("sync", [False, True], ids=["async-processor", "sync-processor"])
async def test_toml_dates_and_times_are_echoed_as_iso_8601(sync: bool) -> None:
    listener = hostile_listener()
    seen: List[Dict[str, Any]] = []

    def echo(data: Dict[str, Any], job_id: str) -> ReturnType:
        seen.append(data)
        return ReturnType(data={"echo": data}, topic="", qos=0, retain=False, message_id=1, timestamp=datetime.now(),
                          job_id=job_id)

    async def async_echo(data: Dict[str, Any], job_id: str) -> ReturnType:
        return echo(data, job_id)

    await listener._process_message(DATES_DOCUMENT, echo if sync else async_echo, topic=TOPIC)
    assert seen[0]["odt"] == datetime(1979, 5, 27, 7, 32, tzinfo=timezone.utc)
    assert seen[0]["lt"] == clock(0, 32, 0, 500000) and seen[0]["ld"] == date(1979, 5, 27)
    [result] = events_on(listener, RESULTS_TOPIC)
    assert result["echo"] == {
        "job_id": "dates", "_topic": TOPIC,
        "odt": "1979-05-27T07:32:00+00:00", "odt_offset": "1979-05-27T00:32:00.999999-07:00",
        "odt_space": "1979-05-27T07:32:00+05:30", "ldt": "1979-05-27T07:32:00", "ld": "1979-05-27",
        "lt": "00:32:00.500000", "in_array": ["1979-05-27", "07:32:00"],
        "nested": {"when": "2000-02-29T23:59:59.123456+00:00"},
    }
    assert datetime.fromisoformat(result["echo"]["odt_offset"]).utcoffset() == timedelta(hours=-7)


NON_FINITE_DOCUMENT = b"""
job_id = "floats"
pos = inf
plus = +inf
neg = -inf
nan = nan
plus_nan = +nan
neg_nan = -nan
finite = 1e308
mixed = [inf, -inf, nan, 0.5, {deep = [nan]}]
[table]
x = -inf
"""


@pytest.mark.parametrize("sync", [False, True], ids=["async-processor", "sync-processor"])
async def test_inf_and_nan_echoed_back_are_strict_json(sync: bool) -> None:
    listener = hostile_listener()

    def echo(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        return {"echo": data, "extra": [float("nan"), float("inf")]}

    async def async_echo(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        return echo(data, job_id)

    await listener._process_message(NON_FINITE_DOCUMENT, echo if sync else async_echo, topic=TOPIC)
    assert error_events(listener) == []
    [(topic, payload, _, _)] = publications(listener)
    assert topic == RESULTS_TOPIC
    for token in (b"NaN,", b"NaN]", b"NaN}", b":Infinity", b"-Infinity,", b"[Infinity"):
        assert token not in payload, payload
    result = strict_json(payload)
    assert result == {
        "echo": {"job_id": "floats", "_topic": TOPIC, "pos": "Infinity", "plus": "Infinity", "neg": "-Infinity",
                 "nan": "NaN", "plus_nan": "NaN", "neg_nan": "NaN", "finite": 1e308,
                 "mixed": ["Infinity", "-Infinity", "NaN", 0.5, {"deep": ["NaN"]}], "table": {"x": "-Infinity"}},
        "extra": ["NaN", "Infinity"],
    }


async def test_strict_json_helper_really_rejects_bare_non_finite_tokens() -> None:
    for bad in (b'{"x":NaN}', b'{"x":Infinity}', b'{"x":-Infinity}', b'\xff'):
        with pytest.raises(ValueError):
            strict_json(bad)


# -- memory -------------------------------------------------------------------------------------------------------

class CountingClient:
    """A client that keeps no payloads (an AsyncMock would hold every one and distort the measurement)."""

    def __init__(self) -> None:
        self.counts: Dict[str, int] = {}

    async def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def is_connected(self) -> bool:
        return True


async def test_memory_stays_bounded_over_a_batch_of_large_messages() -> None:
    """A full store evicts old jobs: what a batch leaves behind does not grow with the batch."""
    max_jobs, messages, blob = 10, 300, 64 * 1024
    listener = hostile_listener(max_jobs_in_memory=max_jobs)
    client = CountingClient()
    listener.client = client
    rejected_payload = b"not toml " + b"z" * blob

    async def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        return {"echo": data, "pad": job_id * (blob // len(job_id))}  # kept as the job's result

    async def batch(first: int, count: int) -> None:
        for i in range(first, first + count):
            payload = rejected_payload if i % 4 == 3 else f'job_id = "job-{i:05d}"\ntext = "{"t" * 4096}"\n'.encode()
            await listener._process_message(payload, processor, topic=TOPIC)
            assert len(listener.jobs) <= max_jobs

    await batch(0, 2 * max_jobs)  # warm up: the store is full from here on
    gc.collect()
    tracemalloc.start()
    try:
        baseline, _ = tracemalloc.get_traced_memory()
        await batch(2 * max_jobs, messages)
        gc.collect()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    retained, peak_growth = current - baseline, peak - baseline
    # Had the batch's 225 results been kept, they alone would hold over 14 MiB.
    assert retained < 4 * 2 ** 20, f"{retained / 2 ** 20:.1f} MiB retained after {messages} messages"
    assert peak_growth < 8 * 2 ** 20, f"peak {peak_growth / 2 ** 20:.1f} MiB over {messages} messages"
    total = 2 * max_jobs + messages
    assert client.counts.get(ERROR_TOPIC) == total // 4
    assert client.counts.get(RESULTS_TOPIC) == total - total // 4
    assert len(listener.jobs) == max_jobs
