"""Unit tests for Listener.runner: the backoff and the run loop's states, seen through the listener."""

from __future__ import annotations

import asyncio

from Listener.runner import State, backoff_delay
from tests.unit.helpers import mocked_listener, wait_forever


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
