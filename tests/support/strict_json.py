"""Reading the listener's JSON the way a strict consumer would."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["strict_json"]


def _reject_constant(token: str) -> Any:
    raise ValueError(f"bare {token} is not valid JSON")


def strict_json(payload: bytes) -> Any:
    """Parse like a strict JSON reader: bytes in UTF-8 only, no NaN / Infinity / -Infinity tokens (ValueError)."""
    assert isinstance(payload, bytes), f"payload must be bytes, got {type(payload).__name__}"
    return json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
