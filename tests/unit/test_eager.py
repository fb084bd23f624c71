"""Unit tests for Listener.core.eager: an EagerFuture calls its eager callbacks the moment it is done."""

from __future__ import annotations

import asyncio
from typing import Any, Dict, List

import pytest

from Listener.core.eager import EagerFuture, add_follower

pytestmark = pytest.mark.unit


def _future() -> EagerFuture:
    return EagerFuture(loop=asyncio.get_running_loop())


@pytest.mark.parametrize("end", ["result", "exception", "cancel"])
async def test_eager_callbacks_run_at_once_in_order_before_the_done_callbacks(end: str) -> None:
    future = _future()
    seen: List[str] = []
    future.add_done_callback(lambda f: seen.append("done callback"))
    future.add_eager_callback(lambda f: seen.append(f"first {f.done()}"))
    future.add_eager_callback(lambda f: seen.append("second"))
    if end == "result":
        future.set_result(1)
    elif end == "exception":
        future.set_exception(ValueError("no"))
    else:
        assert future.cancel()
    assert seen == ["first True", "second"]  # in this call: no turn of the loop went by
    await asyncio.sleep(0)
    assert seen == ["first True", "second", "done callback"]
    if end == "exception":
        assert isinstance(future.exception(), ValueError)


async def test_each_eager_callback_runs_once() -> None:
    future = _future()
    calls: List[int] = []
    future.add_eager_callback(lambda f: calls.append(1))
    assert future.cancel()
    assert not future.cancel()  # already done: nothing runs again
    with pytest.raises(asyncio.InvalidStateError):
        future.set_result(None)
    assert calls == [1]


async def test_a_failing_eager_callback_is_reported_and_the_others_still_run() -> None:
    loop = asyncio.get_running_loop()
    reported: List[Dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        future = _future()
        after: List[str] = []

        def failing(_: Any) -> None:
            raise RuntimeError("follower broke")

        future.add_eager_callback(failing)
        future.add_eager_callback(lambda f: after.append("ran"))
        future.set_result(None)  # the failure does not reach whoever completed the future
        assert after == ["ran"]
        assert len(reported) == 1 and isinstance(reported[0]["exception"], RuntimeError)
        assert reported[0]["future"] is future
    finally:
        loop.set_exception_handler(None)


async def test_added_once_done_it_runs_as_a_done_callback() -> None:
    future = _future()
    future.set_result(None)
    seen: List[str] = []
    future.add_eager_callback(lambda f: seen.append("late"))
    assert seen == []
    await asyncio.sleep(0)
    assert seen == ["late"]


async def test_add_follower_is_eager_only_for_an_eager_future() -> None:
    eager, plain = _future(), asyncio.get_running_loop().create_future()
    seen: List[str] = []
    add_follower(eager, lambda f: seen.append("eager"))
    add_follower(plain, lambda f: seen.append("plain"))
    eager.set_result(None)
    plain.set_result(None)
    assert seen == ["eager"]
    await asyncio.sleep(0)
    assert seen == ["eager", "plain"]


async def test_it_is_awaited_as_any_future() -> None:
    future = _future()
    asyncio.get_running_loop().call_soon(future.set_result, 7)
    assert await asyncio.wait_for(future, 1) == 7
