"""Generated processor return values: nested dicts and lists of odd types (bytes, sets, Decimals, datetimes,
NaN / infinite floats, huge ints, objects whose ``__str__`` raises), and ReturnTypes with odd qos, retain
and data. Each either publishes strict JSON or fails only its job with one clean error event; the
listener never crashes and the next job is processed."""

from __future__ import annotations

import asyncio
import enum
import uuid
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any, Dict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from Listener import JobStatus, ReturnType
from tests.support.hostile_inputs import (
    ERROR_TOPIC, RESULTS_TOPIC, TOPIC, check_error_shape, check_every_publication_is_strict_json, error_events,
    hostile_listener,
)
from tests.support.mocked_listeners import publications


class Unprintable:
    """An object no one can turn into text."""

    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


class Colour(enum.Enum):
    RED = "red"
    ODD = Decimal("NaN")


@dataclass
class Point:
    x: Any
    y: Any


class Hostile:
    """Values that raise when the listener looks at them."""

    def __bool__(self) -> bool:
        raise RuntimeError("no truth")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no equality")

    __hash__ = object.__hash__


leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10 ** 4400, max_value=10 ** 4400 + 5),
    st.floats(allow_nan=True, allow_infinity=True), st.text(), st.binary(max_size=64),
    st.decimals(allow_nan=True, allow_infinity=True), st.datetimes(timezones=st.none() | st.just(timezone.utc)),
    st.dates(), st.times(), st.timedeltas(), st.uuids(), st.sampled_from(list(Colour)),
    st.just(float("nan")), st.builds(Unprintable), st.builds(object), st.builds(Hostile),
    st.builds(Point, st.integers(), st.text(max_size=5)), st.just(b"\xff\xfe"), st.just("\ud800 lone surrogate"),
)
keys = st.one_of(st.text(max_size=10), st.integers(), st.floats(), st.booleans(), st.none(),
                 st.just(Decimal(1)), st.tuples(st.integers()))


def containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=4),
        st.tuples(children, children), st.frozensets(st.integers() | st.text(max_size=3), max_size=4),
        st.sets(st.one_of(st.integers(), st.text(max_size=3), st.floats()), max_size=4),
    )


values = st.recursive(leaves, containers, max_leaves=12)
odd_qos = st.one_of(st.sampled_from([0, 1, 2]), st.integers(), st.floats(), st.booleans(), st.none(),
                    st.builds(Hostile), st.text(max_size=2), st.decimals(allow_nan=True))
odd_retain = st.one_of(st.booleans(), st.none(), st.integers(), st.builds(Hostile), st.text(max_size=2))
return_types = st.builds(ReturnType, data=values, topic=st.sampled_from(["", "out/custom", "results/x"]),
                         qos=odd_qos, retain=odd_retain)
results = st.one_of(values, return_types)


async def process(result: Any) -> None:
    """Run one job returning ``result`` and one ordinary job after it, then check the contract."""
    listener = hostile_listener(job_timeout=5)

    async def processor(data: Dict[str, Any], job_id: str) -> Any:
        return result if job_id == "odd" else {"ok": job_id}

    await asyncio.wait_for(listener._process_message(b'job_id = "odd"', processor, topic=TOPIC), 10)
    await asyncio.wait_for(listener._process_message(b'job_id = "next"', processor, topic=TOPIC), 10)

    check_every_publication_is_strict_json(listener)
    job = listener.jobs["odd"]
    errors = error_events(listener)
    if job.status is JobStatus.FAILED:
        assert len(errors) == 1, errors
        check_error_shape(errors[0])
        assert errors[0]["job_id"] == "odd" and errors[0]["error_type"] == "processing_error"
    else:
        assert job.status is JobStatus.COMPLETED, job
        assert errors == []
        published_for_odd = [p for p in publications(listener) if p[0] not in (ERROR_TOPIC, "out/log")]
        if result is not None:
            assert len(published_for_odd) == 2  # the odd result, then the next job's
    assert listener.jobs["next"].status is JobStatus.COMPLETED
    assert any(p[0] == RESULTS_TOPIC and p[1] == b'{"ok":"next"}' for p in publications(listener))


@given(results)
async def test_any_return_value_publishes_strict_json_or_fails_only_its_job(result: Any) -> None:
    await process(result)


@pytest.mark.parametrize("result", [
    {"nan": float("nan"), "inf": float("inf"), "ninf": -float("inf")},
    {"huge": 10 ** 5000},
    {"bytes": b"\x00\xff", "set": {3, 1, 2}, "dec": Decimal("1.5"), "when": datetime(2024, 1, 2, 3, 4, 5)},
    {"bad": Unprintable()},
    {Unprintable(): 1},
    {(1, 2): "tuple key"},
    {"cycle": None},
    [date(2024, 1, 1), time(1, 2), timedelta(seconds=3), uuid.UUID(int=1), Colour.RED, Colour.ODD],
    ReturnType(data={"ok": 1}, qos=Hostile()),
    ReturnType(data={"ok": 1}, qos=10 ** 5000),
    ReturnType(data={"ok": 1}, qos=1.5),
    ReturnType(data={"ok": 1}, retain=Hostile()),
    ReturnType(data=Unprintable()),
    ReturnType(data={"ok": 1}, topic=Unprintable()),  # type: ignore[arg-type]
    ReturnType(data={"ok": 1}, topic="out/#"),
], ids=lambda value: type(value).__name__)
async def test_hand_picked_odd_return_values(result: Any) -> None:
    if isinstance(result, dict) and "cycle" in result:
        result["cycle"] = result
    await process(result)


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for this error")


raised = st.sampled_from([
    lambda: ValueError("plain"), lambda: SystemExit(0), lambda: SystemExit("text"), lambda: KeyboardInterrupt(),
    lambda: asyncio.CancelledError(), lambda: GeneratorExit(), lambda: UnprintableError(),
    lambda: StopIteration(1), lambda: StopAsyncIteration(), lambda: RecursionError("deep"),
    lambda: TimeoutError("its own"), lambda: MemoryError(),
])


@given(raised, st.booleans(), st.sampled_from([None, 5.0]))
async def test_whatever_a_processor_raises_fails_only_its_job(make_error: Any, is_async: bool, timeout: Any) -> None:
    listener = hostile_listener(job_timeout=timeout)

    def sync_processor(data: Dict[str, Any], job_id: str) -> Any:
        if job_id == "odd":
            raise make_error()
        return {"ok": job_id}

    async def async_processor(data: Dict[str, Any], job_id: str) -> Any:
        await asyncio.sleep(0)
        return sync_processor(data, job_id)

    processor = async_processor if is_async else sync_processor
    await asyncio.wait_for(listener._process_message(b'job_id = "odd"', processor, topic=TOPIC), 10)
    await asyncio.wait_for(listener._process_message(b'job_id = "next"', processor, topic=TOPIC), 10)
    check_every_publication_is_strict_json(listener)
    assert listener.jobs["odd"].status is JobStatus.FAILED
    [error] = error_events(listener)
    check_error_shape(error)
    assert error["job_id"] == "odd" and error["error_type"] == "processing_error"
    assert listener.jobs["next"].status is JobStatus.COMPLETED
    assert any(p[0] == RESULTS_TOPIC and p[1] == b'{"ok":"next"}' for p in publications(listener))
