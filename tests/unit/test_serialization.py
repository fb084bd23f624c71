"""Unit tests for Listener.core.serialization: results and events as strict JSON."""

from __future__ import annotations

import base64
import enum
from dataclasses import dataclass, field
from datetime import date, datetime, time as dtime, timedelta, timezone
from decimal import Decimal
from typing import Any, Dict, List
from uuid import UUID, uuid4

import pytest
import tomli

from Listener import ReturnType
from Listener.core import serialization
from Listener.core.serialization import ResultEncodingError, to_json_bytes
from tests.support.strict_json import strict_json


class Colour(enum.Enum):
    RED = "red"
    GREEN = 2


@dataclass
class Point:
    x: int
    y: int
    seen: datetime = datetime(2024, 1, 2, 3, 4, 5)
    tags: List[str] = field(default_factory=lambda: ["a"])


# -- to_json_bytes ----------------------------------------------------------------------------------


def test_plain_json_is_compact_utf8() -> None:
    payload = to_json_bytes({"a": 1, "b": [True, None, 1.5], "c": "é€"})
    assert payload == '{"a":1,"b":[true,null,1.5],"c":"é€"}'.encode("utf-8")


@pytest.mark.parametrize("value,expected", [
    (datetime(2024, 5, 6, 7, 8, 9), "2024-05-06T07:08:09"),
    (datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=timezone.utc), "2024-05-06T07:08:09.123000+00:00"),
    (datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone(timedelta(hours=-7))), "2024-05-06T07:08:09-07:00"),
    (date(2024, 5, 6), "2024-05-06"),
    (dtime(7, 8, 9), "07:08:09"),
    (dtime(7, 8, 9, 500), "07:08:09.000500"),
])
def test_dates_and_times_are_iso_8601(value: Any, expected: str) -> None:
    decoded = strict_json(to_json_bytes({"v": value}))["v"]
    assert decoded == expected
    assert type(value).fromisoformat(decoded) == value


def test_timedelta_is_seconds() -> None:
    assert strict_json(to_json_bytes(timedelta(minutes=1, milliseconds=500))) == 60.5


@pytest.mark.parametrize("value,expected", [
    (Decimal("10"), 10),
    (Decimal("-3"), -3),
    (Decimal("1.25"), 1.25),
    (Decimal("0.1"), 0.1),
    (Decimal("NaN"), "NaN"),
    (Decimal("Infinity"), "Infinity"),
    (Decimal("-Infinity"), "-Infinity"),
])
def test_decimal(value: Decimal, expected: Any) -> None:
    assert strict_json(to_json_bytes([value])) == [expected]


def test_integral_decimal_beyond_float_range_is_exact() -> None:
    assert strict_json(to_json_bytes([Decimal("1.5e400")])) == [15 * 10 ** 399]


def test_sets() -> None:
    assert strict_json(to_json_bytes({3, 1, 2})) == [1, 2, 3]
    assert strict_json(to_json_bytes(frozenset({"b", "a"}))) == ["a", "b"]
    mixed = strict_json(to_json_bytes({1, "a"}))  # not sortable: any order
    assert sorted(mixed, key=str) == [1, "a"]
    assert strict_json(to_json_bytes(set())) == []


def test_bytes_utf8_and_binary() -> None:
    assert strict_json(to_json_bytes(b"hello \xc3\xa9")) == "hello é"
    assert strict_json(to_json_bytes(bytearray(b"abc"))) == "abc"
    assert strict_json(to_json_bytes(memoryview(b"xyz"))) == "xyz"
    raw = b"\xff\x00\xfe binary"
    decoded = strict_json(to_json_bytes({"blob": raw}))
    assert decoded == {"blob": {"base64": base64.b64encode(raw).decode("ascii")}}
    assert base64.b64decode(decoded["blob"]["base64"]) == raw


def test_enum_uuid_dataclass_tuple() -> None:
    ident = uuid4()
    decoded = strict_json(to_json_bytes({
        "colour": Colour.RED,
        "number": Colour.GREEN,
        "id": ident,
        "point": Point(1, 2),
        "pair": (1, "two", (3,)),
    }))
    assert decoded == {
        "colour": "red",
        "number": 2,
        "id": str(ident),
        "point": {"x": 1, "y": 2, "seen": "2024-01-02T03:04:05", "tags": ["a"]},
        "pair": [1, "two", [3]],
    }
    assert UUID(decoded["id"]) == ident


def test_default_hook_turns_tuples_into_lists() -> None:
    # json encodes tuples itself; the hook's own tuple branch is only reachable directly.
    assert serialization._default((1, (2,))) == [1, (2,)]


def test_dataclass_class_itself_is_not_serialisable() -> None:
    with pytest.raises(ResultEncodingError):
        to_json_bytes(Point)


def test_return_type_is_serialisable() -> None:
    decoded = strict_json(to_json_bytes(ReturnType(data={"ok": True}, topic="t", message_id=7,
                                                   timestamp=datetime(2024, 1, 1), job_id="j")))
    assert decoded == {"data": {"ok": True}, "topic": "t", "qos": 0, "retain": False, "message_id": 7,
                       "timestamp": "2024-01-01T00:00:00", "job_id": "j"}


def test_nested_toml_document_with_datetimes() -> None:
    document = tomli.loads(
        'job_id = "t-1"\n'
        "odt = 1979-05-27T07:32:00-08:00\n"
        "ldt = 1979-05-27T07:32:00.999999\n"
        "ld = 1979-05-27\n"
        "lt = 07:32:00\n"
        "big = 9223372036854775807\n"
        "ratio = 0.5\n"
        "pos = inf\n"
        "neg = -inf\n"
        "nan = nan\n"
        "[owner]\n"
        'name = "Tom"\n'
        "dob = 1979-05-27T07:32:00Z\n"
        "[[items]]\n"
        "when = 2024-01-01\n"
        "[[items]]\n"
        "tags = [1979-05-27, 07:32:00, [1, 2]]\n"
    )
    decoded = strict_json(to_json_bytes(document))
    assert decoded == {
        "job_id": "t-1",
        "odt": "1979-05-27T07:32:00-08:00",
        "ldt": "1979-05-27T07:32:00.999999",
        "ld": "1979-05-27",
        "lt": "07:32:00",
        "big": 9223372036854775807,
        "ratio": 0.5,
        "pos": "Infinity",
        "neg": "-Infinity",
        "nan": "NaN",
        "owner": {"name": "Tom", "dob": "1979-05-27T07:32:00+00:00"},
        "items": [{"when": "2024-01-01"}, {"tags": ["1979-05-27", "07:32:00", [1, 2]]}],
    }


@pytest.mark.parametrize("value,expected", [
    (float("inf"), "Infinity"),
    (float("-inf"), "-Infinity"),
    (float("nan"), "NaN"),
    ({"a": [1.0, float("inf")], "b": (float("nan"),)}, {"a": [1.0, "Infinity"], "b": ["NaN"]}),
    ({"when": datetime(2024, 1, 1), "x": float("-inf")}, {"when": "2024-01-01T00:00:00", "x": "-Infinity"}),
    ({"s": {float("inf")}}, {"s": ["Infinity"]}),
])
def test_non_finite_floats_become_valid_json(value: Any, expected: Any) -> None:
    # strict_json fails on bare NaN / Infinity / -Infinity tokens, which are not JSON.
    assert strict_json(to_json_bytes(value)) == expected


@pytest.mark.parametrize("value", [object(), {"x": object()}, [lambda: 1], {"k": {1: Point}}, complex(1, 2)])
def test_unserialisable_value(value: Any) -> None:
    with pytest.raises(ResultEncodingError) as info:
        to_json_bytes(value)
    assert isinstance(info.value, TypeError)
    assert "not JSON serializable" in str(info.value)


def test_non_string_keys_are_rejected_cleanly() -> None:
    with pytest.raises(ResultEncodingError):
        to_json_bytes({(1, 2): "tuple key"})


def test_circular_reference() -> None:
    data: Dict[str, Any] = {"a": 1}
    data["self"] = data
    with pytest.raises(ResultEncodingError):
        to_json_bytes(data)
    looped: List[Any] = []
    looped.append(looped)
    with pytest.raises(ResultEncodingError):
        to_json_bytes({"loop": looped})


def test_circular_reference_with_non_finite_float() -> None:
    data: Dict[str, Any] = {"x": float("nan")}
    data["self"] = data
    with pytest.raises(ResultEncodingError):
        to_json_bytes(data)


def test_lone_surrogate_is_an_encoding_error() -> None:
    with pytest.raises(ResultEncodingError):
        to_json_bytes({"text": "broken \ud800 string"})


def test_huge_integer_is_an_encoding_error() -> None:
    # Python refuses to print ints with more than 4300 digits by default.
    with pytest.raises(ResultEncodingError):
        to_json_bytes(Decimal("1e5000"))


class Label(str):
    pass


class Ratio(float):
    pass


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("value", [
    {"job_id": "j-1", "sent": 1736418600.123, "ok": True, "n": -3, "text": "é€ \"quoted\" \\ \n"},
    {"when": datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=timezone.utc), "day": date(2024, 1, 2), "at": dtime(1, 2)},
    {"s": {3, 1, 2}, "b": b"raw", "blob": b"\xff\x00", "d": Decimal("2.50"), "td": timedelta(seconds=3)},
    {"p": Point(1, 2), "c": Colour.RED, "id": UUID("12345678-1234-5678-1234-567812345678"), "t": (1, (2, 3))},
    {"label": Label("x"), "ratio": Ratio(0.5)},
    {"none": None, "nan": float("nan")},
    {1: "int key", None: "none key", 1.5: "float key"},
    {"big": 2 ** 70, "small": -(2 ** 70)},
    _nested(300),
])
def test_compiled_encoder_writes_what_json_writes(value: Any) -> None:
    # Whatever orjson can or cannot do, the result decodes to what the json encoder gives.
    assert strict_json(to_json_bytes(value)) == strict_json(serialization._json_bytes(value))


def test_common_results_skip_the_json_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(value: Any) -> bytes:
        raise AssertionError("the json encoder was used")

    monkeypatch.setattr(serialization, "_json_bytes", forbidden)
    payload = to_json_bytes({"job_id": "j", "values": [1, 2.5, "x"], "at": datetime(2024, 1, 1), "tags": {"b"}})
    assert payload == b'{"job_id":"j","values":[1,2.5,"x"],"at":"2024-01-01T00:00:00","tags":["b"]}'


def test_a_null_in_the_output_is_checked_for_non_finite_floats() -> None:
    # orjson writes NaN as null; the json pass tells it apart from a real None.
    assert strict_json(to_json_bytes({"a": None, "b": float("inf")})) == {"a": None, "b": "Infinity"}
    assert strict_json(to_json_bytes([None])) == [None]


def test_error_messages_are_the_json_encoders() -> None:
    with pytest.raises(ResultEncodingError, match=r"^Object of type object is not JSON serializable$"):
        to_json_bytes({"x": object()})
    with pytest.raises(ResultEncodingError, match="lone surrogate"):
        to_json_bytes({"text": "\ud800"})
    with pytest.raises(ResultEncodingError, match="keys must be str"):
        to_json_bytes({(1, 2): "tuple key"})
