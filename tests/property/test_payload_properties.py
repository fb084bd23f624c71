"""Property tests: whatever bytes arrive, the listener does exactly what SPEC §4 says, once.

Each example drives a fresh listener (mocked client) through ``_process_message`` and compares what it
published, what it called and what it stored with an independent model of the rules.
"""

from __future__ import annotations

import math
import uuid
from collections import OrderedDict
from datetime import timedelta, timezone
from typing import Any, Callable, Dict, List, Tuple

from hypothesis import assume, given
from hypothesis import strategies as st

from Listener import EventListener, JobStatus
from tests.support.hostile_inputs import (
    ERROR_TOPIC, INTAKE_ERRORS, LOG_TOPIC, RESULTS_TOPIC, TOPIC, check_error_shape, check_every_publication_is_strict_json,
    error_events, events_on, expected_outcome, hostile_listener, jsonable,
)
from tests.support.mocked_listeners import publications
from tests.support.strict_json import strict_json
from tests.support.toml_writer import toml_document


Calls = List[Tuple[Dict[str, Any], str]]


def echo_processor(calls: Calls) -> Callable[[Dict[str, Any], str], Any]:
    async def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        calls.append((data, job_id))
        return {"job": job_id, "echo": data}
    return processor


async def check_one_payload(payload: bytes, **config: Any) -> None:
    """Process ``payload`` on a fresh listener and hold it to the model."""
    listener = hostile_listener(**config)
    calls: Calls = []
    expected = expected_outcome(payload, max_payload=listener.config.max_payload_bytes,
                                allow_generation=listener.config.allow_job_id_generation)

    returned = await listener._process_message(payload, echo_processor(calls), topic=TOPIC)

    check_every_publication_is_strict_json(listener)
    errors = error_events(listener)
    for event in errors:
        check_error_shape(event)
    if expected.error_type is not None:
        assert returned is None
        assert calls == [], "a rejected message must never reach the processor"
        assert [e["error_type"] for e in errors] == [expected.error_type], errors
        assert errors[0]["job_id"] is None
        assert listener.jobs == {}
        assert events_on(listener, RESULTS_TOPIC) == []
        return
    assert len(calls) == 1, "an accepted message is processed exactly once"
    data, job_id = calls[0]
    if expected.job_id is None:
        assert uuid.UUID(job_id).version == 4
    else:
        assert job_id == expected.job_id
    assert jsonable(data) == jsonable({**expected.data, "_topic": TOPIC})
    assert errors == []
    assert events_on(listener, RESULTS_TOPIC) == [{"job": job_id, "echo": jsonable(data)}]
    assert set(listener.jobs) == {job_id} and listener.jobs[job_id].status is JobStatus.COMPLETED
    assert returned == {"job": job_id, "echo": data}


# -- strategies ---------------------------------------------------------------------------------------

scalar_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
keys = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)
offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda minutes: timezone(timedelta(minutes=minutes)))
toml_scalars = st.one_of(
    st.booleans(),
    st.integers(-(2 ** 63), 2 ** 63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    scalar_text,
    st.datetimes(timezones=st.none() | st.just(timezone.utc) | offsets),
    st.dates(),
    st.times(),
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=15,
)
job_ids = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40),
    st.integers(-(2 ** 63), 2 ** 63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.dates(),
    st.just(""),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(keys, st.integers(), max_size=2),
    st.text(min_size=1020, max_size=1030, alphabet="ab"),  # around the 1024-character limit
)


@st.composite
def toml_payloads(draw: st.DrawFn) -> bytes:
    """A valid TOML document: maybe a job id of any TOML type, and arbitrary other keys and values."""
    body = draw(st.dictionaries(keys.filter(lambda k: k not in ("job_id", "_topic")), toml_values, max_size=6))
    document: Dict[str, Any] = {}
    if draw(st.booleans()) or draw(st.booleans()):
        document["job_id"] = draw(job_ids)
    document.update(body)
    return toml_document(document, headers=draw(st.booleans())).encode("utf-8")


@st.composite
def mutated(draw: st.DrawFn, source: st.SearchStrategy[bytes]) -> bytes:
    """A payload with a few random byte edits: near-valid TOML, the interesting kind of garbage."""
    data = bytearray(draw(source))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(["insert", "delete", "replace"]))
        byte = draw(st.integers(0, 255) | st.sampled_from(list(b'"[]{}=.,\n\\\x00#\'')))
        if edit == "insert":
            data.insert(position, byte)
        elif position < len(data):
            if edit == "delete":
                del data[position]
            else:
                data[position] = byte
    return bytes(data)


configs = st.fixed_dictionaries({}, optional={
    "allow_job_id_generation": st.booleans(),
    "max_payload_bytes": st.integers(1, 400),
})


# -- properties ---------------------------------------------------------------------------------------

@given(payload=st.binary(max_size=300), config=configs)
async def test_arbitrary_bytes_are_rejected_or_processed_exactly_as_specified(
        payload: bytes, config: Dict[str, Any]) -> None:
    await check_one_payload(payload, **config)


@given(payload=toml_payloads(), config=configs)
async def test_generated_toml_documents_are_processed_exactly_as_specified(payload: bytes,
                                                                           config: Dict[str, Any]) -> None:
    await check_one_payload(payload, **config)


@given(payload=mutated(toml_payloads()), config=configs)
async def test_mutated_toml_documents_are_rejected_or_processed_exactly_as_specified(payload: bytes,
                                                                                     config: Dict[str, Any]) -> None:
    await check_one_payload(payload, **config)


@given(document=st.dictionaries(keys.filter(lambda k: k not in ("job_id", "_topic")), toml_values, max_size=6),
       job_id=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30))
async def test_results_echoing_any_toml_value_are_strict_json(document: Dict[str, Any], job_id: str) -> None:
    """Datetimes, dates, times, inf and nan anywhere in the data still give strictly valid JSON."""
    listener = hostile_listener()
    calls: Calls = []
    payload = toml_document({"job_id": job_id, **document}).encode("utf-8")
    await listener._process_message(payload, echo_processor(calls), topic=TOPIC)
    [result] = events_on(listener, RESULTS_TOPIC)  # strict_json: no NaN / Infinity tokens
    assert result == {"job": job_id, "echo": jsonable({"job_id": job_id, **document, "_topic": TOPIC})}


# -- the job store under a stream of messages -----------------------------------------------------------

message_kinds = st.one_of(
    st.tuples(st.just("job"), st.sampled_from("abcdef"), st.booleans()),  # (kind, id, processor fails)
    st.tuples(st.just("garbage"), st.binary(max_size=40), st.just(False)),
)


@given(stream=st.lists(message_kinds, min_size=1, max_size=25), max_jobs=st.integers(1, 7),
       action=st.sampled_from(["skip", "reprocess", "error"]))
async def test_job_store_stays_bounded_and_every_message_has_exactly_one_outcome(
        stream: List[Tuple[str, Any, bool]], max_jobs: int, action: str) -> None:
    listener: EventListener = hostile_listener(max_jobs_in_memory=max_jobs, duplicate_action=action)
    calls: List[str] = []

    async def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        calls.append(job_id)
        if data.get("fail"):
            raise RuntimeError(f"job {job_id} asked to fail")
        return {"ok": job_id}

    # The exact model (which job ids are stored, in which state) holds while nothing has been evicted;
    # after the first eviction only the invariants are checked (eviction order is not part of the contract).
    model: "OrderedDict[str, JobStatus]" = OrderedDict()
    exact = True
    for kind, value, fail in stream:
        seen_before = len(publications(listener))
        calls_before = len(calls)
        if kind == "job":
            payload = f'job_id = "{value}"\nfail = {"true" if fail else "false"}\n'.encode()
        else:
            payload = value
            assume(expected_outcome(payload).error_type is not None)  # garbage that happens to be a job: rare
        duplicates_before = listener.metrics()["jobs_finished"].get("duplicate", 0)
        await listener._process_message(payload, processor, topic=TOPIC)

        assert len(listener.jobs) <= max_jobs
        new = publications(listener)[seen_before:]
        errors = [strict_json(p) for t, p, _, _ in new if t == ERROR_TOPIC]
        logs = [strict_json(p)["event"] for t, p, _, _ in new if t == LOG_TOPIC]
        processed = len(calls) - calls_before
        rejected = [e for e in errors if e["error_type"] in INTAKE_ERRORS]
        duplicate = listener.metrics()["jobs_finished"].get("duplicate", 0) > duplicates_before
        # skip/reprocess: a duplicate is logged at INFO, below the default log_topic_level; error: WARNING.
        assert ("duplicate_job" in logs) == (duplicate and action == "error")
        # Exactly one outcome per message: processed once, rejected once, or a duplicate.
        assert processed + len(rejected) + int(duplicate) == 1, (kind, value, new)
        assert processed <= 1 and len(errors) <= 1
        if kind == "garbage":
            assert len(rejected) == 1 and processed == 0
            continue
        if processed:
            failed_events = [e for e in errors if e["error_type"] == "processing_error"]
            assert len(failed_events) == int(fail)
        if duplicate:
            assert [e["error_type"] for e in errors] == (["duplicate_job"] if action == "error" else [])

        if value not in model and len(model) >= max_jobs:
            exact = False
        if exact:
            if value in model and action != "reprocess":
                assert not processed and duplicate
                model[value] = JobStatus.DUPLICATE
            else:
                assert processed == 1
                model[value] = JobStatus.FAILED if fail else JobStatus.COMPLETED
            assert {job_id: job.status for job_id, job in listener.jobs.items()} == dict(model)
    check_every_publication_is_strict_json(listener)


def test_the_model_itself_classifies_known_payloads() -> None:
    """The oracle must be able to say no: a few payloads with known outcomes."""
    assert expected_outcome(b'job_id = "a"').job_id == "a"
    assert expected_outcome(b"job_id = 1.5").job_id == "1.5"
    assert expected_outcome(b"x = 1").error_type == "missing_job_id"
    assert expected_outcome(b"x = 1", allow_generation=True).error_type is None
    assert expected_outcome(b"job_id = [1]").error_type == "invalid_payload"
    assert expected_outcome(b"\xff").error_type == "invalid_payload"
    assert expected_outcome(b"job_id = 'a'", max_payload=5).error_type == "payload_too_large"
    assert math.isnan(expected_outcome(b"job_id = 'n'\nx = nan").data["x"])
