"""JSON encoding of results and events: every TOML value and common Python type, always valid JSON.

Encoded with the compiled ``orjson`` (many times faster than ``json`` for a typical result). What it
cannot write the way this module promises goes through ``json`` with the same conversions instead, so
the output never depends on which encoder wrote it: a ``null`` in orjson's output may stand for a
non-finite float (which orjson writes as ``null``, and this module as a string), and orjson refuses
some values ``json`` takes (integers beyond 64 bits, keys that are not strings, very deep nesting).
Every error message comes from the ``json`` pass.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
import math
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Dict
from uuid import UUID

import orjson

from ..errors import ListenerError

__all__ = ["ResultEncodingError", "event_json_bytes", "to_json_bytes"]


class ResultEncodingError(ListenerError, TypeError):
    """A value cannot be represented as JSON."""


def _default(value: Any) -> Any:
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return str(value) if not value.is_finite() else (int(value) if value == value.to_integral_value() else float(value))
    if isinstance(value, (set, frozenset)):
        try:
            return sorted(value)
        except TypeError:
            return list(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(raw).decode("ascii")}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, UUID):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, tuple):
        return list(value)
    raise ResultEncodingError(f"Object of type {type(value).__name__} is not JSON serializable")


def _finite(value: Any) -> Any:
    """Replace non-finite floats (not valid JSON) with the strings "Infinity", "-Infinity" and "NaN"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS  # both through _default


def _dumps(value: Any, allow_nan: bool) -> str:
    return json.dumps(value, default=_default, allow_nan=allow_nan, separators=(",", ":"), ensure_ascii=False)


def to_json_bytes(value: Any) -> bytes:
    """Encode ``value`` as compact UTF-8 JSON.

    Raises:
        ResultEncodingError: the value (or something inside it) has no JSON form.
    """
    try:
        encoded = orjson.dumps(value, default=_default, option=_ORJSON_OPTIONS)
    except (TypeError, ValueError, RecursionError):  # JSONEncodeError is a TypeError
        encoded = b"null"
    if b"null" not in encoded:
        return encoded
    return _json_bytes(value)


def _json_bytes(value: Any) -> bytes:
    """:func:`to_json_bytes` through ``json``: non-finite floats as strings, and the error messages."""
    try:
        try:
            text = _dumps(value, allow_nan=False)
        except ValueError as exc:
            if "Out of range float" not in str(exc):
                raise
            # Rare path: let json write NaN/Infinity, read them back as floats, then make them strings.
            text = _dumps(_finite(json.loads(_dumps(value, allow_nan=True))), allow_nan=False)
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise ResultEncodingError("Result holds a string that is not valid Unicode (a lone surrogate)") from None
    except (TypeError, ValueError, RecursionError) as exc:
        raise ResultEncodingError(str(exc) or type(exc).__name__) from None


def event_json_bytes(body: Dict[str, Any]) -> bytes:
    """Encode an error or log event; never fails (an event must go out even about odd input).

    A lone surrogate (possible in a job id given as ``str``) is written as a ``\\udXXX`` escape.
    """
    try:
        return to_json_bytes(body)
    except ResultEncodingError:
        return json.dumps(body, default=str, separators=(",", ":"), ensure_ascii=True).encode("ascii")
