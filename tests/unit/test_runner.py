"""Unit tests for Listener.pipeline.runner: the backoff and the run loop's states, seen through the listener."""

from __future__ import annotations

import asyncio
import logging
from typing import List

import pytest

from Listener.pipeline.runner import RepeatedFailures, State, backoff_delay
from tests.support.mocked_listeners import mocked_listener, wait_forever


def test_backoff_doubles_up_to_the_cap_less_a_random_quarter() -> None:
    assert [backoff_delay(n, 10.0, jitter=lambda: 0.0) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert [backoff_delay(n, 10.0, jitter=lambda: 1.0) for n in (1, 5)] == [0.75, 7.5]
    delays = {backoff_delay(3, 10.0) for _ in range(50)}
    assert all(3.0 <= d <= 4.0 for d in delays) and len(delays) > 1


async def test_state_goes_idle_running_draining_stopped() -> None:
    listener = mocked_listener()
    listener.client.deliver_message.side_effect = wait_forever
    assert listener.state is State.IDLE and not listener.is_running
    run = asyncio.create_task(listener.run())
    await listener.wait_until_ready(5)
    assert listener.state is State.RUNNING and listener.is_running
    listener.stop()
    assert listener.state is State.DRAINING and listener.is_draining
    await asyncio.wait_for(run, 5)
    assert listener.state is State.STOPPED and not listener.is_running and not listener.is_draining
    run = asyncio.create_task(listener.run())  # reusable once stopped
    await listener.wait_until_ready(5)
    listener.stop()
    await asyncio.wait_for(run, 5)


async def test_stop_before_run_makes_the_next_run_return_without_connecting() -> None:
    listener = mocked_listener()
    listener.stop()
    await asyncio.wait_for(listener.run(), 5)
    listener.client.connect.assert_not_awaited()
    assert listener.state is State.STOPPED


# -- repeated connection failures are logged once ------------------------------------------------------


def test_repeated_failures_warn_once_per_reason_then_remind() -> None:
    now = [0.0]
    failures = RepeatedFailures(remind_every=300.0, clock=lambda: now[0])
    assert failures.level("closed during CONNECT") == logging.WARNING
    now[0] = 10.0
    assert failures.level("closed during CONNECT") == logging.DEBUG
    assert failures.level("timed out") == logging.WARNING  # a new reason is news
    assert failures.level("closed during CONNECT") == logging.WARNING  # and so is the old one coming back
    now[0] = 309.0
    assert failures.level("closed during CONNECT") == logging.DEBUG
    now[0] = 310.0
    assert failures.level("closed during CONNECT") == logging.WARNING  # a reminder, 300 s after the last warning
    failures.reset()
    assert failures.level("closed during CONNECT") == logging.WARNING  # connected in between: news again


def connect_records(caplog: pytest.LogCaptureFixture, text: str) -> List[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


async def test_the_same_connect_failure_at_every_attempt_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    listener = mocked_listener(reconnect_retries=3, reconnect_max_interval=0.01)
    listener.client.connect.side_effect = ConnectionError("closed by the broker during CONNECT")
    with pytest.raises(ConnectionError, match="gave up after 4 attempts"):
        await asyncio.wait_for(listener.run(), 5)
    retries = connect_records(caplog, "Connecting failed")
    assert [r.levelno for r in retries] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    shown = [r for r in caplog.records if r.levelno >= logging.WARNING and "during CONNECT" in r.getMessage()]
    assert len(shown) == 1


async def test_a_different_failure_reason_is_logged_again(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    listener = mocked_listener(reconnect_retries=3, reconnect_max_interval=0.01)
    listener.client.connect.side_effect = [ConnectionError("refused"), ConnectionError("refused"),
                                           ConnectionError("timed out"), ConnectionError("timed out")]
    with pytest.raises(ConnectionError, match="timed out"):
        await asyncio.wait_for(listener.run(), 5)
    warned = [r.getMessage() for r in connect_records(caplog, "Connecting failed") if r.levelno == logging.WARNING]
    assert len(warned) == 2 and "refused" in warned[0] and "timed out" in warned[1]
