"""Helpers several unit test files share."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from unittest.mock import AsyncMock

from Listener import EventListener, EventListenerConfig


def _no_constants(token: str) -> Any:
    raise AssertionError(f"not valid JSON: {token}")


def strict_loads(payload: bytes) -> Any:
    """Parse JSON the way a strict consumer would: NaN / Infinity / -Infinity tokens fail the test."""
    assert isinstance(payload, bytes)
    return json.loads(payload.decode("utf-8"), parse_constant=_no_constants)


async def wait_forever() -> Any:
    await asyncio.Event().wait()


def mocked_listener(**overrides: Any) -> EventListener:
    listener = EventListener(EventListenerConfig(host="test-host", topic="test/topic", **overrides))
    listener.client = AsyncMock()
    listener.client.subscribe.return_value = [0]
    return listener
