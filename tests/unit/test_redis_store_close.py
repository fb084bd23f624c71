"""Closing the Redis store is bounded whatever the client does: a cluster client once hung closing its
connections for more than 90 s in a test's teardown, holding the listener's stop with it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from Listener.jobs import redis as redis_store

pytestmark = pytest.mark.unit


class StuckClient:
    """A client whose close never returns, and shrugs off the first cancellation as well."""

    def __init__(self) -> None:
        self.calls = 0

    async def aclose(self) -> None:
        self.calls += 1
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(3600)


async def test_closing_a_client_that_hangs_returns_within_the_command_timeout(monkeypatch: Any) -> None:
    monkeypatch.setattr(redis_store, "COMMAND_TIMEOUT", 0.2)
    client = StuckClient()
    started = time.monotonic()
    await asyncio.wait_for(redis_store._close_client(client), 5)
    assert client.calls == 1 and time.monotonic() - started < 2


async def test_a_writer_that_ignores_its_cancellation_does_not_hold_close(monkeypatch: Any) -> None:
    monkeypatch.setattr(redis_store, "COMMAND_TIMEOUT", 0.2)
    store = redis_store.RedisJobStore("redis://127.0.0.1:1/0", 10, 60)

    async def stubborn() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(3600)

    store._writer = asyncio.get_running_loop().create_task(stubborn())
    store._client = StuckClient()
    store._committed = store._taken = 0
    await asyncio.sleep(0)
    await asyncio.wait_for(store.close(), 5)
    assert store._client is None and store._writer is None
